//! Accepting connections on TCP (optionally TLS) and on the Unix socket. Each connection is
//! served by its own task ([`Transport::serve`]); on shutdown the listener is closed at
//! once and the connections drain (GOAWAY, then their streams end with `OK`).

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::super::connection::{Peer, unix_incoming};
use super::Transport;
use crate::tls::{AcceptBackoff, ReloadingTls};

/// Serves TCP connections, over TLS when `tls` is set, until `stop`.
pub async fn tcp(
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    transport: Arc<Transport>,
    stop: watch::Receiver<bool>,
) {
    let mut connections = Connections::new(transport, stop.clone());
    match tls {
        None => {
            let mut backoff = AcceptBackoff::default();
            while let Some(accepted) = until(&stop, listener.accept()).await {
                match accepted {
                    Ok((tcp, addr)) => {
                        backoff.reset();
                        // Pushes are small and latency is the point.
                        let _ = tcp.set_nodelay(true);
                        connections.serve(tcp, Peer::tcp(addr, None));
                    }
                    Err(e) => {
                        // E.g. EMFILE: retrying at once would spin; connections wait in the
                        // kernel's backlog meanwhile.
                        let pause = backoff.next_pause();
                        tracing::warn!(error = %e, retry_in = ?pause, "accept failed");
                        if until(&stop, tokio::time::sleep(pause)).await.is_none() {
                            break;
                        }
                    }
                }
            }
            drop(listener);
        }
        Some(tls) => {
            // Handshakes run off this loop, bounded in time (see `ReloadingTls::incoming`).
            let mut incoming = tls.incoming(listener);
            while let Some(Some(accepted)) = until(&stop, incoming.next()).await {
                let Ok(stream) = accepted else { continue };
                let (tcp, session) = stream.get_ref();
                let Ok(addr) = tcp.peer_addr() else { continue };
                let _ = tcp.set_nodelay(true);
                let cert = session.peer_certificates().and_then(|c| c.first());
                let peer = Peer::tcp(addr, cert.map(|c| c.as_ref()));
                connections.serve(stream, peer);
            }
        }
    }
    connections.drain().await;
}

/// Serves connections on the Unix socket until `stop`.
pub async fn unix(listener: UnixListener, transport: Arc<Transport>, stop: watch::Receiver<bool>) {
    let mut connections = Connections::new(transport, stop.clone());
    let mut incoming = unix_incoming(listener);
    while let Some(Some(accepted)) = until(&stop, incoming.next()).await {
        match accepted {
            Ok(connection) => {
                let peer = Peer::unix(connection.info());
                connections.serve(connection, peer);
            }
            Err(e) => tracing::warn!(error = %e, "accept on the Unix socket failed"),
        }
    }
    drop(incoming);
    connections.drain().await;
}

/// `future`'s output, or `None` once `stop` is set.
async fn until<T>(stop: &watch::Receiver<bool>, future: impl Future<Output = T>) -> Option<T> {
    let mut stop = stop.clone();
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => None,
        out = future => Some(out),
    }
}

/// The connections' tasks.
struct Connections {
    tasks: JoinSet<()>,
    transport: Arc<Transport>,
    stop: watch::Receiver<bool>,
}

impl Connections {
    fn new(transport: Arc<Transport>, stop: watch::Receiver<bool>) -> Self {
        Self {
            tasks: JoinSet::new(),
            transport,
            stop,
        }
    }

    fn serve<IO>(&mut self, io: IO, peer: Peer)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Finished connections are collected as new ones come.
        while self.tasks.try_join_next().is_some() {}
        self.tasks
            .spawn(self.transport.clone().serve(io, peer, self.stop.clone()));
    }

    async fn drain(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}
