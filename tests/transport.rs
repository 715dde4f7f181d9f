//! The HTTP/2 transport seen by a raw client (the h2 crate, no gRPC library): what a
//! hostile or broken client can send ends only its own stream with a status that says
//! why, pings are answered, a client that stops answering the server's pings is
//! disconnected, and shutdown ends every stream with `OK` and closes the connection.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use h2::client::{ResponseFuture, SendRequest};
use prost::Message;
use std::time::Duration;
use support::objects::{ca_secret, registration};
use support::pki::Ca;
use support::sds::{TIMEOUT, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use trust_sds::sds::transport::keepalive::Keepalive;
use trust_sds::sds::{SECRET_TYPE_URL, SdsOptions, UnknownNamePolicy};
use trust_sds::server::ServeConfig;

const SOTW: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

async fn server_with_a() -> TestServer {
    with_a(TestServer::start(UnknownNamePolicy::Hold).await).await
}

/// `server`, serving registration `team/a` with its CA.
async fn with_a(server: TestServer) -> TestServer {
    server
        .apply(vec![
            registration("team", "a", "a-ca"),
            ca_secret("team", "a-ca", &Ca::root("a root").pem()),
        ])
        .await;
    server
}

type Header = (&'static str, &'static str);

struct Raw {
    send: SendRequest<Bytes>,
    connection: JoinHandle<Result<(), h2::Error>>,
    ping: h2::PingPong,
}

async fn connect(server: &TestServer) -> Raw {
    let tcp = TcpStream::connect(server.running.sds_addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let ping = connection.ping_pong().expect("ping_pong");
    Raw {
        send,
        connection: tokio::spawn(connection),
        ping,
    }
}

/// One gRPC message: flag, length, bytes.
fn frame(flag: u8, length: u32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(flag);
    out.put_u32(length);
    out.put_slice(body);
    out.freeze()
}

fn request(names: &[&str], nonce: &str) -> Vec<u8> {
    DiscoveryRequest {
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: SECRET_TYPE_URL.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

impl Raw {
    /// Opens a stream on `path`, sends `body`, and ends the client's side if `end`.
    async fn open(
        &mut self,
        path: &str,
        extra: Option<Header>,
        body: Bytes,
        end: bool,
    ) -> (ResponseFuture, h2::SendStream<Bytes>) {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(format!("http://trust-sds{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some((name, value)) = extra {
            builder = builder.header(name, value);
        }
        let ready = tokio::time::timeout(TIMEOUT, self.send.clone().ready()).await;
        let mut send = ready.expect("ready in time").expect("connection open");
        let (response, mut stream) = send.send_request(builder.body(()).unwrap(), false).unwrap();
        stream.send_data(body, end).unwrap();
        (response, stream)
    }
}

/// The status a stream ended with (`grpc-status`, `grpc-message`), from its trailers or,
/// for a trailers-only response, its headers; and the messages before it.
async fn ended(response: ResponseFuture) -> (i32, String, Vec<DiscoveryResponse>) {
    tokio::time::timeout(TIMEOUT, async {
        let response = response.await.expect("response headers");
        let status_of = |headers: &http::HeaderMap| {
            let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
            let message = headers
                .get("grpc-message")
                .map(|m| percent_decoded(m.as_bytes()))
                .unwrap_or_default();
            Some((code, message))
        };
        if let Some((code, message)) = status_of(response.headers()) {
            return (code, message, Vec::new());
        }
        let mut body = response.into_body();
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.expect("trailers").expect("some");
        let (code, message) = status_of(&trailers).expect("grpc-status in trailers");
        (code, message, messages(&mut bytes))
    })
    .await
    .expect("the stream ends in time")
}

/// `grpc-message` is percent-encoded (the gRPC HTTP/2 spec).
fn percent_decoded(value: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < value.len() {
        let hex = value
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.map(|h| u8::from_str_radix(h, 16)) {
            Some(Ok(byte)) if value[i] == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(value[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The whole messages in `bytes`.
fn messages(bytes: &mut BytesMut) -> Vec<DiscoveryResponse> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if bytes.len() < 5 + len {
            break;
        }
        let message = bytes.split_to(5 + len);
        out.push(DiscoveryResponse::decode(&message[5..]).expect("a response"));
    }
    out
}

/// The next response on a stream that stays open.
async fn next_response(body: &mut h2::RecvStream, pending: &mut BytesMut) -> DiscoveryResponse {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(first) = messages(pending).into_iter().next() {
                return first;
            }
            let chunk = body.data().await.expect("more data").expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
            pending.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("a response in time")
}

#[tokio::test]
async fn broken_requests_end_only_their_own_stream_with_a_clear_status() {
    let server = server_with_a().await;
    let mut raw = connect(&server).await;

    // A well-behaved stream on the same connection, open throughout.
    let body = request(&["team/a"], "");
    let (good, mut good_send) = raw
        .open(SOTW, None, frame(0, body.len() as u32, &body), false)
        .await;
    let mut good = tokio::time::timeout(TIMEOUT, good)
        .await
        .expect("headers in time")
        .expect("headers")
        .into_body();
    let mut pending = BytesMut::new();
    let first = next_response(&mut good, &mut pending).await;
    assert_eq!(first.resources.len(), 1);

    // (what, an extra header, the body, the status code, what its message says)
    type Case = (&'static str, Option<Header>, Bytes, i32, &'static str);
    let cases: Vec<Case> = vec![
        (
            "compressed message",
            None,
            frame(1, body.len() as u32, &body),
            12,
            "compressed requests are not supported",
        ),
        (
            "gzip declared",
            Some(("grpc-encoding", "gzip")),
            frame(0, body.len() as u32, &body),
            12,
            "grpc-encoding gzip is not supported",
        ),
        (
            "not protobuf",
            None,
            frame(0, 5, &[0xff; 5]),
            13,
            "cannot decode the request",
        ),
        (
            "ends inside a message",
            None,
            frame(0, body.len() as u32, &body[..body.len() / 2]),
            13,
            "ended in the middle of a message",
        ),
        (
            "claims 4 GiB",
            None,
            frame(0, u32::MAX, b"xx"),
            11,
            "--max-request-bytes",
        ),
        (
            "bad compression flag",
            None,
            frame(9, body.len() as u32, &body),
            13,
            "invalid gRPC compression flag 9",
        ),
    ];
    for (what, header, bytes, code, says) in cases {
        let (response, _send) = raw.open(SOTW, header, bytes, true).await;
        let (got, message, _) = ended(response).await;
        assert_eq!(got, code, "{what}: {message}");
        assert!(message.contains(says), "{what}: {message:?}");
    }

    // The good stream and the connection are fine: a rotation still reaches it, and a
    // ping is answered.
    let nonce = first.nonce.clone();
    let ack = request(&["team/a"], &nonce);
    good_send
        .send_data(frame(0, ack.len() as u32, &ack), false)
        .unwrap();
    server
        .apply(vec![ca_secret("team", "a-ca", &Ca::root("a root 2").pem())])
        .await;
    let pushed = next_response(&mut good, &mut pending).await;
    assert_ne!(pushed.version_info, first.version_info);
    tokio::time::timeout(TIMEOUT, raw.ping.ping(h2::Ping::opaque()))
        .await
        .expect("pong in time")
        .expect("pong");
}

#[tokio::test]
async fn shutdown_ends_streams_with_ok_and_closes_the_connection() {
    let server = server_with_a().await;
    let mut raw = connect(&server).await;
    let body = request(&["team/a"], "");
    let (response, _send) = raw
        .open(SOTW, None, frame(0, body.len() as u32, &body), false)
        .await;
    let TestServer { running, .. } = server;
    // The stream is admitted before the server stops (its first response proves it).
    let mut response = tokio::time::timeout(TIMEOUT, response)
        .await
        .expect("headers in time")
        .expect("headers");
    let mut pending = BytesMut::new();
    let first = next_response(response.body_mut(), &mut pending).await;
    assert_eq!(first.resources.len(), 1);

    let stopped = tokio::spawn(running.shutdown());
    let body = response.body_mut();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(chunk) = body.data().await {
            chunk.expect("data");
        }
    })
    .await
    .expect("the stream ends in time");
    let trailers = body.trailers().await.expect("trailers").expect("some");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    // GOAWAY, then the server closes the connection once its streams are done.
    tokio::time::timeout(TIMEOUT, raw.connection)
        .await
        .expect("the connection closes in time")
        .unwrap()
        .expect("closed cleanly");
    tokio::time::timeout(TIMEOUT, stopped)
        .await
        .expect("shutdown completes")
        .unwrap();
}

/// A client that writes and reads HTTP/2 frames by hand, so that it can leave the
/// server's PINGs unanswered (the h2 crate always answers them).
struct Frames {
    tcp: TcpStream,
    read: BytesMut,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const ACK: u8 = 1;

impl Frames {
    /// Connects, and opens a SotW stream (id 1) that asks for `team/a`.
    async fn open_sotw(server: &TestServer) -> Self {
        let tcp = TcpStream::connect(server.running.sds_addr).await.unwrap();
        let mut frames = Self {
            tcp,
            read: BytesMut::new(),
        };
        frames.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        frames.send(SETTINGS, 0, 0, &[]).await;
        // HPACK, nothing indexed but the static table: :method POST, :scheme http, then
        // literals without indexing (a name index, or a new name) and no Huffman coding.
        let mut block = vec![0x83, 0x86];
        // Static table: 4 is :path, 1 is :authority.
        for (index, value) in [(4, SOTW), (1, "trust-sds")] {
            block.push(index);
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
            block.push(0);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        frames.send(HEADERS, 0x4, 1, &block).await; // END_HEADERS
        let body = request(&["team/a"], "");
        frames
            .send(DATA, 0, 1, &frame(0, body.len() as u32, &body))
            .await;
        frames
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut out = BytesMut::new();
        out.put_uint(payload.len() as u64, 3);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(stream);
        out.put_slice(payload);
        self.write(&out).await;
    }

    /// The next frame (kind, flags, stream, payload); `None` once the server closed the
    /// connection.
    async fn next(&mut self) -> Option<(u8, u8, u32, Bytes)> {
        loop {
            if self.read.len() >= 9 {
                let len = u32::from_be_bytes([0, self.read[0], self.read[1], self.read[2]]);
                if self.read.len() >= 9 + len as usize {
                    let head = self.read.split_to(9);
                    let payload = self.read.split_to(len as usize).freeze();
                    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                    return Some((head[3], head[4], stream & 0x7fff_ffff, payload));
                }
            }
            match tokio::time::timeout(TIMEOUT, self.tcp.read_buf(&mut self.read)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("nothing from the server in {TIMEOUT:?}"),
            }
        }
    }
}

async fn server_with_a_pinging(keepalive: Keepalive) -> TestServer {
    let config = ServeConfig {
        sds: SdsOptions {
            keepalive: Some(keepalive),
            ..Default::default()
        },
        ..ServeConfig::default()
    };
    with_a(TestServer::start_with(config).await).await
}

const QUICK: Keepalive = Keepalive {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(200),
};

#[tokio::test]
async fn a_client_that_answers_pings_keeps_its_connection() {
    let server = server_with_a_pinging(QUICK).await;
    let mut frames = Frames::open_sotw(&server).await;
    let (mut answered, mut data) = (0, 0);
    // Each ping is answered; the server would close the connection 200 ms after an
    // unanswered one, so three answered pings mean the answers counted.
    while answered < 3 {
        let (kind, flags, stream, payload) = frames
            .next()
            .await
            .expect("the connection stays open while pings are answered");
        match (kind, flags & ACK) {
            (SETTINGS, 0) => frames.send(SETTINGS, ACK, 0, &[]).await,
            (PING, 0) => {
                frames.send(PING, ACK, 0, &payload).await;
                answered += 1;
            }
            (DATA, _) if stream == 1 => data += payload.len(),
            _ => {}
        }
    }
    assert!(data > 0, "the stream got its bundle");
    assert_eq!(server.running.clients.len(), 1, "the stream is still open");
    assert_eq!(server.running.metrics.keepalive_timeouts.get(), 0);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_disconnected_and_its_streams_end() {
    let server = server_with_a_pinging(QUICK).await;
    let mut frames = Frames::open_sotw(&server).await;
    let (mut pings, mut data) = (0, 0);
    // Nothing is answered (not even SETTINGS): like a peer whose node vanished.
    while let Some((kind, flags, stream, payload)) = frames.next().await {
        match kind {
            PING if flags & ACK == 0 => pings += 1,
            DATA if stream == 1 => data += payload.len(),
            _ => {}
        }
    }
    assert!(
        data > 0,
        "the stream got its bundle before the client went quiet"
    );
    assert_eq!(pings, 1, "one unanswered ping is enough");
    // The connection's streams are dropped before its socket closes.
    assert!(server.running.clients.is_empty(), "its stream is gone");
    assert_eq!(server.running.metrics.keepalive_timeouts.get(), 1);
}
