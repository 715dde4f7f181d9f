//! SDS on HTTP/2 directly: one task per connection.
//!
//! A rotation pushed through hyper cost, per stream, a wakeup of that stream's task, a
//! lock of the connection's shared state from another thread, a wakeup of the connection's
//! task, and a `write` call. Here a connection's streams are futures inside the
//! connection's own task ([`FuturesUnordered`]): a push wakes the task once for all of its
//! streams; each woken stream queues its frames in h2 without contention; h2 encodes them
//! all; and the [`cork`] writes them with one call. The gRPC rules stay the transport's:
//! trailers carry the status, a client without window gets nothing until it has some (then
//! the newest snapshot), message sizes are checked on the prefix ([`requests`]), the
//! stream limits and `max_concurrent_streams` hold, client pings are answered, a peer that
//! stops answering ours is dropped ([`keepalive`]), and shutdown sends GOAWAY and lets the
//! streams end with `OK`.
//!
//! Everything that is not a discovery stream (`FetchSecrets`, health, the admin service)
//! goes to tonic's router as an ordinary HTTP request ([`respond::call`]), with the peer in
//! its extensions.

pub mod cork;
pub mod keepalive;
pub mod listen;
pub mod requests;
pub mod respond;
pub mod trim;

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use h2::server::{Connection, SendResponse};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::Status;
use tonic::server::NamedService;
use tonic::service::Routes;

use super::connection::Peer;
use super::delta::DeltaResponse;
use super::grpc::{AdsGrpc, SdsGrpc};
use super::service::{ResponseStream, SdsServer};
use super::sotw::SotwResponse;
use keepalive::{Keepalive, Pinger};
use requests::Requests;

/// The window each stream opens to its client. Requests are ACKs of ~100 bytes; a larger
/// one still flows, as window is returned when its bytes are read.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Request headers (hyper's default; h2's own is 16 MiB).
const MAX_HEADER_LIST: u32 = 16 * 1024;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The HTTP/2 settings of every SDS connection (windows, header list), before the stream
/// limit; the fanout bench's transport floor uses them too, so it measures this transport.
pub fn h2_settings() -> h2::server::Builder {
    let mut h2 = h2::server::Builder::new();
    h2.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST);
    h2
}

/// Serves the SDS and ADS streams itself, and everything else through `other`.
pub struct Transport {
    sds: SdsServer,
    other: Routes,
    h2: h2::server::Builder,
    max_request_bytes: usize,
    keepalive: Option<Keepalive>,
}

/// The discovery streams, by gRPC method.
#[derive(Clone, Copy)]
enum Discovery {
    Sotw { ads: bool },
    Delta { ads: bool },
}

impl Discovery {
    fn of(path: &str) -> Option<Self> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        match (service, method) {
            (SdsGrpc::NAME, "StreamSecrets") => Some(Self::Sotw { ads: false }),
            (SdsGrpc::NAME, "DeltaSecrets") => Some(Self::Delta { ads: false }),
            (AdsGrpc::NAME, "StreamAggregatedResources") => Some(Self::Sotw { ads: true }),
            (AdsGrpc::NAME, "DeltaAggregatedResources") => Some(Self::Delta { ads: true }),
            _ => None,
        }
    }
}

impl Transport {
    /// `max_streams`: HTTP/2 streams a connection may open (`max_concurrent_streams`);
    /// `keepalive`: how connections are pinged (`None`: never).
    pub fn new(
        sds: SdsServer,
        other: Routes,
        max_request_bytes: usize,
        max_streams: Option<u32>,
        keepalive: Option<Keepalive>,
    ) -> Arc<Self> {
        let mut h2 = h2_settings();
        if let Some(max) = max_streams {
            h2.max_concurrent_streams(max);
        }
        Arc::new(Self {
            sds,
            other,
            h2,
            max_request_bytes,
            keepalive,
        })
    }

    /// Serves one connection until it closes, or until `stop` and its streams have ended.
    pub async fn serve<IO>(self: Arc<Self>, io: IO, peer: Peer, mut stop: watch::Receiver<bool>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (corked, cork) = cork::wrap(io);
        // A client may never send its preface; shutdown must not wait for it.
        let handshake = self.h2.handshake::<_, Bytes>(corked);
        let mut conn = tokio::select! {
            conn = handshake => match conn {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(peer = %peer.keys.connection, error = %e, "HTTP/2 handshake failed");
                    return;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let peer = Arc::new(peer);
        let mut pinger = self
            .keepalive
            .and_then(|k| Some(Pinger::new(conn.ping_pong()?, k)));
        let mut streams = FuturesUnordered::<Task>::new();
        let mut stopping = pin!(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let (mut closing, mut done) = (false, false);
        poll_fn(|cx| {
            if !closing && stopping.as_mut().poll(cx).is_ready() {
                // GOAWAY: no new streams; the open ones end with OK as they see the stop.
                conn.graceful_shutdown();
                closing = true;
            }
            if let Some(pinger) = pinger.as_mut()
                && pinger.poll_dead(cx).is_ready()
            {
                self.sds.metrics().keepalive_timeouts.inc();
                tracing::info!(
                    peer = %peer.keys.connection,
                    "no answer to a keepalive ping; closing the connection and its streams"
                );
                return Poll::Ready(());
            }
            cork.cork();
            self.accept(&mut conn, cx, &mut streams, &peer, &mut done);
            while !done {
                // The streams woken since the last pass: requests read, responses queued.
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
                // h2 encodes what they queued, and may hand over new streams to run.
                if !self.accept(&mut conn, cx, &mut streams, &peer, &mut done) {
                    break;
                }
            }
            cork.uncork();
            // One write for everything this pass produced.
            if let Poll::Ready(Err(e)) = cork.poll_flush(cx) {
                tracing::debug!(peer = %peer.keys.connection, error = %e, "connection write failed");
                return Poll::Ready(());
            }
            if done {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Drives the connection (reads frames, writes queued ones) and starts a task for each
    /// new stream. Returns whether a stream was accepted; sets `done` when the connection
    /// is over.
    fn accept<IO>(
        &self,
        conn: &mut Connection<cork::Corked<IO>, Bytes>,
        cx: &mut Context<'_>,
        streams: &mut FuturesUnordered<Task>,
        peer: &Arc<Peer>,
        done: &mut bool,
    ) -> bool
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut accepted = false;
        while !*done {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    streams.push(self.route(request, respond, peer));
                    accepted = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(peer = %peer.keys.connection, error = %e, "connection ended");
                    *done = true;
                }
                Poll::Ready(None) => *done = true,
                Poll::Pending => break,
            }
        }
        accepted
    }

    /// The task of one HTTP/2 stream.
    fn route(
        &self,
        request: http::Request<h2::RecvStream>,
        respond: SendResponse<Bytes>,
        peer: &Peer,
    ) -> Task {
        let Some(discovery) = Discovery::of(request.uri().path()) else {
            return Box::pin(respond::call(
                self.other.clone(),
                request,
                respond,
                peer.clone(),
            ));
        };
        if let Err(status) = check_content(request.headers()) {
            respond::refuse(respond, &status);
            return Box::pin(std::future::ready(()));
        }
        let (body, max) = (request.into_body(), self.max_request_bytes);
        let opened = match discovery {
            Discovery::Sotw { ads } => self
                .sds
                .stream_sotw(peer, Requests::new(body, max), ads)
                .map(Opened::Sotw),
            Discovery::Delta { ads } => self
                .sds
                .stream_delta(peer, Requests::new(body, max), ads)
                .map(Opened::Delta),
        };
        match opened {
            Ok(Opened::Sotw(responses)) => Box::pin(respond::push(responses, respond, true)),
            Ok(Opened::Delta(responses)) => Box::pin(respond::push(responses, respond, false)),
            Err(status) => {
                // Refused before the first message (limits): a trailers-only response.
                respond::refuse(respond, &status);
                Box::pin(std::future::ready(()))
            }
        }
    }
}

/// An admitted discovery stream's responses.
enum Opened {
    Sotw(ResponseStream<SotwResponse>),
    Delta(ResponseStream<DeltaResponse>),
}

/// Only uncompressed gRPC is spoken (Envoy and the client library never compress).
fn check_content(headers: &http::HeaderMap) -> Result<(), Status> {
    match headers.get("grpc-encoding").map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(()),
        Some(other) => Err(Status::unimplemented(format!(
            "grpc-encoding {} is not supported; send uncompressed messages",
            String::from_utf8_lossy(other)
        ))),
    }
}
