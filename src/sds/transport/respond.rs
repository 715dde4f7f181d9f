//! Writing HTTP/2 responses: a discovery stream's pushes and status, a refusal, and the
//! unary services' responses piped from tonic.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::StreamExt;
use h2::SendStream;
use h2::server::SendResponse;
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tonic::Status;
use tonic::codegen::Service;
use tonic::service::Routes;

use super::super::connection::Peer;
use super::super::encode::WireResponse;
use super::super::service::ResponseStream;

/// The headers of every gRPC response.
fn grpc_headers() -> http::Response<()> {
    let mut response = http::Response::new(());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// `grpc-status` and `grpc-message` for `status`.
fn status_headers(status: &Status, headers: &mut HeaderMap) {
    // A status whose message cannot be a header value still reports its code.
    if status.add_header(headers).is_err() {
        let _ = Status::new(status.code(), "").add_header(headers);
    }
}

/// A trailers-only response: the stream is refused before any message.
pub fn refuse(mut respond: SendResponse<Bytes>, status: &Status) {
    let mut response = grpc_headers();
    status_headers(status, response.headers_mut());
    let _ = respond.send_response(response, true);
}

/// Waits until the client has window for more than what is already queued, so a
/// response is built only when it can be sent: a slow reader then gets the newest
/// snapshot, not a queue of old ones. `false`: the stream is gone.
async fn room(send: &mut SendStream<Bytes>) -> bool {
    send.reserve_capacity(1);
    while send.capacity() == 0 {
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return false,
        }
    }
    true
}

/// A discovery stream: its responses as gRPC frames (a small head, then the shared
/// resource bytes), then its status as trailers.
pub async fn push<H: prost::Message>(
    mut responses: ResponseStream<WireResponse<H>>,
    mut respond: SendResponse<Bytes>,
    sotw: bool,
) {
    let Ok(mut send) = respond.send_response(grpc_headers(), false) else {
        return;
    };
    let status = loop {
        if !room(&mut send).await {
            return;
        }
        match responses.next().await {
            Some(Ok(response)) => {
                for frame in response.frames(sotw) {
                    if send.send_data(frame, false).is_err() {
                        return;
                    }
                }
            }
            Some(Err(status)) => break status,
            None => break Status::ok(""),
        }
    };
    let mut trailers = HeaderMap::new();
    status_headers(&status, &mut trailers);
    let _ = send.send_trailers(trailers);
}

/// A request for another service (health, admin, `FetchSecrets`), answered by tonic's
/// router, with the peer in its extensions.
pub async fn call(
    mut routes: Routes,
    request: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Peer,
) {
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(peer);
    let request = http::Request::from_parts(
        parts,
        tonic::body::Body::new(RecvBody {
            recv: body,
            data_done: false,
        }),
    );
    let Ok(()) = poll_fn(|cx| {
        <Routes as Service<http::Request<tonic::body::Body>>>::poll_ready(&mut routes, cx)
    })
    .await;
    let Ok(response) = routes.call(request).await;
    let (parts, mut body) = response.into_parts();
    let end = body.is_end_stream();
    let Ok(mut send) = respond.send_response(http::Response::from_parts(parts, ()), end) else {
        return;
    };
    if end {
        return;
    }
    loop {
        if !room(&mut send).await {
            return;
        }
        let sent = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => send.send_data(data, false),
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    let _ = send.send_trailers(trailers);
                    return;
                }
            },
            Some(Err(status)) => {
                let mut trailers = HeaderMap::new();
                status_headers(&status, &mut trailers);
                let _ = send.send_trailers(trailers);
                return;
            }
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// An h2 request body as an `http_body::Body`, returning window as it is read.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
