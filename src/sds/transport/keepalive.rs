//! HTTP/2 pings that find dead peers.
//!
//! A client whose node vanished leaves a half-open connection behind: nothing is read from
//! it, its streams stay open, and they keep counting against its identity's stream limit,
//! so the same client coming back from another node can be refused. Every `interval` the
//! connection sends a PING; a client that has not answered `timeout` later has its
//! connection closed, which ends its streams. Envoy, grpc-go and the client library
//! answer pings without being asked to (HTTP/2 requires it), so live clients never notice.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use h2::{Ping, PingPong};
use tokio::time::{Instant, Sleep};

/// How often a connection is pinged, and how long an answer may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Keepalive {
    /// Istio's xDS server uses the same: a dead peer is found within 40 s.
    pub const DEFAULT: Self = Self {
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(10),
    };
}

/// One connection's pinger.
pub struct Pinger {
    ping_pong: PingPong,
    keepalive: Keepalive,
    /// When the next ping is due, or (while `waiting`) when the answer is overdue.
    due: Pin<Box<Sleep>>,
    waiting: bool,
    /// The connection failed; it is ending and has nothing left to ping.
    broken: bool,
}

impl Pinger {
    pub fn new(ping_pong: PingPong, keepalive: Keepalive) -> Self {
        Self {
            ping_pong,
            keepalive,
            due: Box::pin(tokio::time::sleep(keepalive.interval)),
            waiting: false,
            broken: false,
        }
    }

    /// Sends a ping when one is due (h2 writes it on the connection's next pass). Ready
    /// when the peer let one go unanswered for `timeout`: the connection should close.
    pub fn poll_dead(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.broken {
                return Poll::Pending;
            }
            if self.waiting {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.rearm(self.keepalive.interval);
                    }
                    // The connection's own poll reports why it ended.
                    Poll::Ready(Err(_)) => self.broken = true,
                    Poll::Pending => {}
                }
            }
            if self.due.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.waiting {
                return Poll::Ready(());
            }
            match self.ping_pong.send_ping(Ping::opaque()) {
                Ok(()) => {
                    self.waiting = true;
                    self.rearm(self.keepalive.timeout);
                }
                Err(_) => self.broken = true,
            }
        }
    }

    fn rearm(&mut self, after: Duration) {
        self.due.as_mut().reset(Instant::now() + after);
    }
}
