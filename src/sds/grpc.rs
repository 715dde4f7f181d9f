//! The SDS and ADS gRPC endpoints, routed here rather than through envoy-types' generated
//! servers so the codec can be tuned: tonic's default codec gives every stream an 8 KiB
//! encode buffer and an 8 KiB decode buffer that stay allocated while the stream idles.
//! Requests are small (ACKs) and responses are written once per change, so small initial
//! buffers that grow on demand keep an idle stream cheap. The handlers are the
//! `SecretDiscoveryService` / `AggregatedDiscoveryService` implementations of
//! [`SdsServer`].

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tonic::codec::{BufferSettings, Codec};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::service::SdsServer;

/// Initial codec buffer per stream and direction. An ACK is ~100 bytes; a response grows
/// the encode buffer to its size only while it is written.
const STREAM_BUFFER: usize = 512;
/// Encoded bytes after which the encoder yields to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost messages with small initial buffers.
struct SmallBufferCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for SmallBufferCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E, D> Codec for SmallBufferCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD))
    }
    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD))
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
type HttpResponse = http::Response<tonic::body::Body>;

/// One gRPC method as a tower service (what `tonic::server::Grpc` drives): a handler of
/// [`SdsServer`].
struct Method<Req, Resp> {
    server: SdsServer,
    call: fn(SdsServer, Request<Req>) -> BoxFuture<Response<Resp>, Status>,
}

impl<Req, Resp> tonic::codegen::Service<Request<Req>> for Method<Req, Resp> {
    type Response = Response<Resp>;
    type Error = Status;
    type Future = BoxFuture<Response<Resp>, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Req>) -> Self::Future {
        (self.call)(self.server.clone(), request)
    }
}

type Sds = SdsServer;
type SotwResponses = <Sds as SecretDiscoveryService>::StreamSecretsStream;
type DeltaResponses = <Sds as SecretDiscoveryService>::DeltaSecretsStream;

fn stream_secrets(
    s: Sds,
    r: Request<Streaming<DiscoveryRequest>>,
) -> BoxFuture<Response<SotwResponses>, Status> {
    Box::pin(async move { s.stream_secrets(r).await })
}

fn delta_secrets(
    s: Sds,
    r: Request<Streaming<DeltaDiscoveryRequest>>,
) -> BoxFuture<Response<DeltaResponses>, Status> {
    Box::pin(async move { s.delta_secrets(r).await })
}

fn fetch_secrets(
    s: Sds,
    r: Request<DiscoveryRequest>,
) -> BoxFuture<Response<DiscoveryResponse>, Status> {
    Box::pin(async move { s.fetch_secrets(r).await })
}

fn stream_aggregated(
    s: Sds,
    r: Request<Streaming<DiscoveryRequest>>,
) -> BoxFuture<Response<SotwResponses>, Status> {
    Box::pin(async move { s.stream_aggregated_resources(r).await })
}

fn delta_aggregated(
    s: Sds,
    r: Request<Streaming<DeltaDiscoveryRequest>>,
) -> BoxFuture<Response<DeltaResponses>, Status> {
    Box::pin(async move { s.delta_aggregated_resources(r).await })
}

fn grpc<E, D>(max_request_bytes: usize) -> Grpc<SmallBufferCodec<E, D>>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    Grpc::new(SmallBufferCodec::default())
        .apply_max_message_size_config(Some(max_request_bytes), None)
}

fn unimplemented_method() -> HttpResponse {
    Status::unimplemented("this server serves Secrets only").into_http()
}

/// `envoy.service.secret.v3.SecretDiscoveryService`.
#[derive(Clone)]
pub struct SdsGrpc {
    server: SdsServer,
    max_request_bytes: usize,
}

/// `envoy.service.discovery.v3.AggregatedDiscoveryService` (Secrets only).
#[derive(Clone)]
pub struct AdsGrpc {
    server: SdsServer,
    max_request_bytes: usize,
}

impl SdsGrpc {
    pub fn new(server: SdsServer, max_request_bytes: usize) -> Self {
        Self {
            server,
            max_request_bytes,
        }
    }
}

impl AdsGrpc {
    pub fn new(server: SdsServer, max_request_bytes: usize) -> Self {
        Self {
            server,
            max_request_bytes,
        }
    }
}

impl NamedService for SdsGrpc {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
}

impl NamedService for AdsGrpc {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> tonic::codegen::Service<http::Request<B>> for SdsGrpc
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        let max = self.max_request_bytes;
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        match method {
            "StreamSecrets" => Box::pin(async move {
                let method = Method {
                    server,
                    call: stream_secrets,
                };
                Ok(grpc::<DiscoveryResponse, DiscoveryRequest>(max)
                    .streaming(method, req)
                    .await)
            }),
            "DeltaSecrets" => Box::pin(async move {
                let method = Method {
                    server,
                    call: delta_secrets,
                };
                Ok(grpc::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>(max)
                    .streaming(method, req)
                    .await)
            }),
            "FetchSecrets" => Box::pin(async move {
                let method = Method {
                    server,
                    call: fetch_secrets,
                };
                Ok(grpc::<DiscoveryResponse, DiscoveryRequest>(max)
                    .unary(method, req)
                    .await)
            }),
            _ => Box::pin(async { Ok(unimplemented_method()) }),
        }
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for AdsGrpc
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        let max = self.max_request_bytes;
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        match method {
            "StreamAggregatedResources" => Box::pin(async move {
                let method = Method {
                    server,
                    call: stream_aggregated,
                };
                Ok(grpc::<DiscoveryResponse, DiscoveryRequest>(max)
                    .streaming(method, req)
                    .await)
            }),
            "DeltaAggregatedResources" => Box::pin(async move {
                let method = Method {
                    server,
                    call: delta_aggregated,
                };
                Ok(grpc::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>(max)
                    .streaming(method, req)
                    .await)
            }),
            _ => Box::pin(async { Ok(unimplemented_method()) }),
        }
    }
}
