//! The SDS and ADS services as tonic sees them: their names, and unary `FetchSecrets`.
//!
//! The discovery streams never get here: the transport ([`super::transport`]) serves them
//! on HTTP/2 itself and hands every other request to tonic's router, which routes
//! `FetchSecrets` to this service through `tonic::server::Grpc`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::codec::{BufferSettings, Codec};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::service::SdsServer;

/// Initial decode buffer: a request is ~100 bytes; the buffer grows on demand.
const REQUEST_BUFFER: usize = 512;
/// tonic's default: bytes decoded before yielding.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(REQUEST_BUFFER, YIELD_THRESHOLD)
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
type HttpResponse = http::Response<tonic::body::Body>;

/// Unary `FetchSecrets` through tonic's server machinery.
struct Fetch(SdsServer);

impl tonic::codegen::Service<Request<DiscoveryRequest>> for Fetch {
    type Response = Response<DiscoveryResponse>;
    type Error = Status;
    type Future = BoxFuture<Response<DiscoveryResponse>, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<DiscoveryRequest>) -> Self::Future {
        let result = self.0.fetch(request).map(Response::new);
        Box::pin(async move { result })
    }
}

/// Prost messages with small initial buffers (for `FetchSecrets`).
struct SmallBufferCodec;

impl Codec for SmallBufferCodec {
    type Encode = DiscoveryResponse;
    type Decode = DiscoveryRequest;
    type Encoder = ProstEncoder<DiscoveryResponse>;
    type Decoder = ProstDecoder<DiscoveryRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }
    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffer_settings())
    }
}

fn unimplemented_method() -> HttpResponse {
    Status::unimplemented("this server serves Secrets only").into_http()
}

/// A discovery service: `envoy.service.secret.v3.SecretDiscoveryService` ([`SdsGrpc`]) or
/// `envoy.service.discovery.v3.AggregatedDiscoveryService` for Secrets ([`AdsGrpc`]).
#[derive(Clone)]
pub struct DiscoveryGrpc<const ADS: bool> {
    server: SdsServer,
    max_request_bytes: usize,
}

pub type SdsGrpc = DiscoveryGrpc<false>;
pub type AdsGrpc = DiscoveryGrpc<true>;

impl<const ADS: bool> DiscoveryGrpc<ADS> {
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

impl<B, const ADS: bool> tonic::codegen::Service<http::Request<B>> for DiscoveryGrpc<ADS>
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
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
        if !ADS && method == "FetchSecrets" {
            return Box::pin(async move {
                let mut grpc =
                    Grpc::new(SmallBufferCodec).apply_max_message_size_config(Some(max), None);
                Ok(grpc.unary(Fetch(server), req).await)
            });
        }
        Box::pin(async move { Ok(unimplemented_method()) })
    }
}
