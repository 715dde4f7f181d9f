//! Who a stream's peer is: its connection and its client, the keys the stream limits count
//! by. TCP and TLS connections are told apart by remote address; Unix-socket connections
//! get a process-unique id here, because their peer addresses are all unnamed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

/// A connection accepted on the Unix socket.
pub struct UnixConnection {
    stream: UnixStream,
    info: UnixConnectInfo,
}

/// What a request on the Unix socket knows about its connection.
#[derive(Clone, Debug)]
pub struct UnixConnectInfo {
    pub id: u64,
    /// The peer process (SO_PEERCRED), when the platform tells.
    pub pid: Option<i32>,
}

static NEXT_UNIX_CONNECTION: AtomicU64 = AtomicU64::new(1);

impl UnixConnection {
    fn new(stream: UnixStream) -> Self {
        let pid = stream.peer_cred().ok().and_then(|c| c.pid());
        Self {
            stream,
            info: UnixConnectInfo {
                id: NEXT_UNIX_CONNECTION.fetch_add(1, Ordering::Relaxed),
                pid,
            },
        }
    }
}

/// Accepts connections on `listener`, each with its own id.
pub fn unix_incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<UnixConnection>> + Send + 'static {
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|accepted| accepted.map(UnixConnection::new))
}

impl UnixConnection {
    pub fn info(&self) -> &UnixConnectInfo {
        &self.info
    }
}

impl AsyncRead for UnixConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for UnixConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The keys a stream is counted by, and how it is shown in logs and the admin view.
#[derive(Clone, Debug)]
pub struct PeerKeys {
    /// `ip:port`, or `unix#<id>` on the Unix socket.
    pub connection: String,
    /// The first certificate identity, else the IP address, else `unix pid <pid>`.
    pub client: String,
    pub is_unix: bool,
}

/// What the transport knows about a connection's peer, worked out once per connection. The
/// SDS streams get it directly; the unary services find it in their requests' extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    pub keys: PeerKeys,
    /// SANs of the mTLS client certificate (the stream adds `node:<id>` on the Unix socket).
    pub identities: Vec<String>,
}

impl Peer {
    /// A TCP peer, with the certificate it presented over TLS, if any (DER).
    pub fn tcp(addr: std::net::SocketAddr, cert: Option<&[u8]>) -> Self {
        let identities = cert.map(crate::cert::identities).unwrap_or_default();
        Self {
            keys: PeerKeys {
                connection: addr.to_string(),
                client: identities
                    .first()
                    .cloned()
                    .unwrap_or_else(|| addr.ip().to_string()),
                is_unix: false,
            },
            identities,
        }
    }

    /// A peer on the Unix socket.
    pub fn unix(info: &UnixConnectInfo) -> Self {
        Self {
            keys: PeerKeys {
                connection: format!("unix#{}", info.id),
                client: match info.pid {
                    Some(pid) => format!("unix pid {pid}"),
                    None => "unix".to_owned(),
                },
                is_unix: true,
            },
            identities: Vec::new(),
        }
    }

    /// The peer of a unary request (its extensions), or an unknown one.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request.extensions().get::<Peer>().cloned().unwrap_or(Self {
            keys: PeerKeys {
                connection: "unknown".to_owned(),
                client: "unknown".to_owned(),
                is_unix: false,
            },
            identities: Vec::new(),
        })
    }
}
