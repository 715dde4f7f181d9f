//! The SDS and ADS gRPC endpoints, routed here rather than through envoy-types' generated
//! servers, for two reasons:
//!
//! - Responses are written without copying the bundles: each stream sends its own few
//!   fields (version, nonce) in one small frame, followed by the resources' shared bytes,
//!   encoded once per version ([`super::encode::EncodedResource`]). tonic's encoder would
//!   re-encode every response into a per-stream buffer, and keep that buffer (the size of
//!   the largest response) allocated while the stream idles.
//! - Requests are decoded with small initial buffers (tonic's default is 8 KiB per stream):
//!   they are ACKs of ~100 bytes.
//!
//! Request decoding is still tonic's (`Streaming`), and unary `FetchSecrets` goes through
//! `tonic::server::Grpc`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use futures::StreamExt;
use http::HeaderMap;
use http_body::Frame;
use tonic::codec::{BufferSettings, Codec};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::encode::WireResponse;
use super::service::{ResponseStream, SdsServer};

/// Initial decode buffer per stream. An ACK is ~100 bytes; the buffer grows on demand.
const REQUEST_BUFFER: usize = 512;
/// tonic's default: bytes decoded before yielding.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(REQUEST_BUFFER, YIELD_THRESHOLD)
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
type HttpResponse = http::Response<tonic::body::Body>;

/// A streaming method: decodes requests with tonic, writes [`WireResponse`]s itself.
fn streaming<B, Req, H>(
    req: http::Request<B>,
    max_request_bytes: usize,
    sotw: bool,
    open: impl FnOnce(Request<Streaming<Req>>) -> Result<ResponseStream<WireResponse<H>>, Status>,
) -> HttpResponse
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    H: prost::Message + Send + 'static,
{
    if let Err(status) = check_content(&req) {
        return status.into_http();
    }
    let request = Request::from_http(req.map(|body| {
        Streaming::new_request(
            ProstDecoder::<Req>::new(buffer_settings()),
            body,
            None,
            Some(max_request_bytes),
        )
    }));
    match open(request) {
        Ok(responses) => http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(tonic::body::Body::new(WireBody {
                responses,
                sotw,
                pending: VecDeque::new(),
                ended: false,
            }))
            .unwrap_or_else(|_| Status::internal("response").into_http()),
        // Refused before the first message (limits): a trailers-only response.
        Err(status) => status.into_http(),
    }
}

/// Only uncompressed gRPC is spoken (Envoy and the client library never compress).
fn check_content<B>(req: &http::Request<B>) -> Result<(), Status> {
    match req.headers().get("grpc-encoding").map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(()),
        Some(other) => Err(Status::unimplemented(format!(
            "grpc-encoding {} is not supported; send uncompressed messages",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// The response body of a discovery stream: each response as gRPC frames (a small head
/// frame, then shared resource bytes), then the status as trailers.
struct WireBody<H> {
    responses: ResponseStream<WireResponse<H>>,
    sotw: bool,
    pending: VecDeque<Bytes>,
    ended: bool,
}

impl<H: prost::Message> http_body::Body for WireBody<H> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(data) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            let status = match ready!(self.responses.poll_next_unpin(cx)) {
                Some(Ok(response)) => {
                    let frames = response.frames(self.sotw);
                    self.pending.extend(frames);
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            self.ended = true;
            let mut trailers = HeaderMap::new();
            // A status whose message cannot be a header value still reports its code.
            if status.add_header(&mut trailers).is_err() {
                let _ = Status::new(status.code(), "").add_header(&mut trailers);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending.is_empty()
    }
}

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
        let response = match (ADS, method) {
            (false, "StreamSecrets") | (true, "StreamAggregatedResources") => {
                streaming(req, max, true, |r: Request<Streaming<DiscoveryRequest>>| {
                    server.stream_sotw(r, ADS)
                })
            }
            (false, "DeltaSecrets") | (true, "DeltaAggregatedResources") => streaming(
                req,
                max,
                false,
                |r: Request<Streaming<DeltaDiscoveryRequest>>| server.stream_delta(r, ADS),
            ),
            (false, "FetchSecrets") => {
                return Box::pin(async move {
                    let mut grpc =
                        Grpc::new(SmallBufferCodec).apply_max_message_size_config(Some(max), None);
                    Ok(grpc.unary(Fetch(server), req).await)
                });
            }
            _ => unimplemented_method(),
        };
        Box::pin(async move { Ok(response) })
    }
}
