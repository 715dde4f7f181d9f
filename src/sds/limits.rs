//! Limits that keep one client from taking the server: streams per connection, streams per
//! client, and the rate of requests a stream may send. Breaking a limit ends only the
//! offending stream (or refuses the new one) with RESOURCE_EXHAUSTED naming the flag to
//! change; every other stream carries on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// Which limit refused a stream (the `limit` label of `trust_sds_sds_limit_rejections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    StreamsPerConnection,
    StreamsPerClient,
    RequestRate,
    NamesPerRequest,
    MessageSize,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::StreamsPerConnection => "streams_per_connection",
            Limit::StreamsPerClient => "streams_per_client",
            Limit::RequestRate => "request_rate",
            Limit::NamesPerRequest => "names_per_request",
            Limit::MessageSize => "message_size",
        }
    }
}

/// Limits on open streams. Zero means "no limit".
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub per_connection: usize,
    pub per_client: usize,
}

impl StreamLimits {
    // Envoy puts every SDS stream of a cluster on one HTTP/2 connection, one stream per
    // secret name, so a large gateway legitimately holds thousands on one connection.
    pub const DEFAULT_PER_CONNECTION: usize = 10_000;
    pub const DEFAULT_PER_CLIENT: usize = 20_000;
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_connection: Self::DEFAULT_PER_CONNECTION,
            per_client: Self::DEFAULT_PER_CLIENT,
        }
    }
}

/// Open streams counted by connection and by client.
#[derive(Debug, Default)]
pub struct StreamCounter {
    limits: StreamLimits,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    connections: HashMap<Arc<str>, usize>,
    clients: HashMap<Arc<str>, usize>,
}

/// A refused stream: which limit and the message for the client.
#[derive(Debug)]
pub struct Refusal {
    pub limit: Limit,
    pub message: String,
}

impl StreamCounter {
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            open: Mutex::default(),
        }
    }

    /// Counts a new stream of `connection` opened by `client`, or refuses it. The count
    /// drops when the returned guard does.
    pub fn admit(self: &Arc<Self>, connection: &str, client: &str) -> Result<Admitted, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let on_connection = open.connections.get(connection).copied().unwrap_or(0);
        let per_connection = self.limits.per_connection;
        if per_connection > 0 && on_connection >= per_connection {
            return Err(Refusal {
                limit: Limit::StreamsPerConnection,
                message: format!(
                    "connection {connection} already has {on_connection} SDS streams open; \
                     at most {per_connection} per connection (--max-streams-per-connection)"
                ),
            });
        }
        let of_client = open.clients.get(client).copied().unwrap_or(0);
        let per_client = self.limits.per_client;
        if per_client > 0 && of_client >= per_client {
            return Err(Refusal {
                limit: Limit::StreamsPerClient,
                message: format!(
                    "client {client} already has {of_client} SDS streams open; at most \
                     {per_client} per client (--max-streams-per-client; clients are told \
                     apart by certificate identity, else by address)"
                ),
            });
        }
        let connection: Arc<str> = connection.into();
        let client: Arc<str> = client.into();
        *open.connections.entry(connection.clone()).or_default() += 1;
        *open.clients.entry(client.clone()).or_default() += 1;
        Ok(Admitted {
            counter: self.clone(),
            connection,
            client,
        })
    }

    /// Streams open on `connection` (for tests and the admin view).
    pub fn on_connection(&self, connection: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.connections.get(connection).copied().unwrap_or(0)
    }

    /// Connections and clients with at least one open stream.
    pub fn tracked(&self) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        (open.connections.len(), open.clients.len())
    }
}

/// An admitted stream; dropping it gives its slot back.
#[derive(Debug)]
pub struct Admitted {
    counter: Arc<StreamCounter>,
    connection: Arc<str>,
    client: Arc<str>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(|p| p.into_inner());
        release(&mut open.connections, &self.connection);
        release(&mut open.clients, &self.client);
    }
}

/// Decrements a count, forgetting keys that reach zero so the maps stay as small as the set
/// of live connections.
fn release(map: &mut HashMap<Arc<str>, usize>, key: &Arc<str>) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// How fast a stream may send requests that are not replies to the server's responses.
/// Zero `per_second` means "no limit".
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    // Envoy sends one request per subscription change plus one ACK per response; ACKs are
    // free (see RequestBudget), so only subscription churn counts.
    pub const DEFAULT_PER_SECOND: u32 = 100;

    /// `per_second`, with bursts of twice as many.
    pub fn per_second(per_second: u32) -> Self {
        Self {
            per_second,
            burst: per_second.saturating_mul(2),
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::per_second(Self::DEFAULT_PER_SECOND)
    }
}

/// One stream's request budget: every response the server sends earns the client one free
/// reply (its ACK or NACK), so a client that keeps up with a rotation storm is never cut
/// off. A reply is free only if it changes nothing: a request that changes the subscription
/// always draws from a token bucket, even when it carries a nonce, or a client alternating
/// between two names would earn a free change with every answer it provokes.
#[derive(Debug)]
pub struct RequestBudget {
    limit: RateLimit,
    replies_owed: u64,
    tokens: f64,
    refilled: Instant,
}

impl RequestBudget {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            replies_owed: 0,
            tokens: f64::from(limit.burst.max(1)),
            refilled: Instant::now(),
        }
    }

    /// The server sent a response: the client may answer it.
    pub fn responded(&mut self) {
        self.replies_owed += 1;
    }

    /// Whether a request that just arrived is within the budget. `is_reply`: it only
    /// answers a response (ACK/NACK) and leaves the subscription as it is.
    pub fn admit(&mut self, is_reply: bool) -> bool {
        if self.limit.per_second == 0 {
            return true;
        }
        if is_reply && self.replies_owed > 0 {
            self.replies_owed -= 1;
            return true;
        }
        let now = Instant::now();
        let burst = f64::from(self.limit.burst.max(1));
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.per_second)).min(burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn refusal(&self) -> String {
        format!(
            "stream sent more than {} requests per second (burst {}) that were not replies \
             to responses; the stream is closed (--max-request-rate); reconnect with backoff",
            self.limit.per_second, self.limit.burst
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_connection_and_client_and_given_back() {
        let counter = Arc::new(StreamCounter::new(StreamLimits {
            per_connection: 2,
            per_client: 3,
        }));
        let a1 = counter.admit("c1", "alice").unwrap();
        let _a2 = counter.admit("c1", "alice").unwrap();
        let refused = counter.admit("c1", "alice").unwrap_err();
        assert_eq!(refused.limit, Limit::StreamsPerConnection);
        assert!(refused.message.contains("--max-streams-per-connection"));
        let _a3 = counter.admit("c2", "alice").unwrap();
        let refused = counter.admit("c3", "alice").unwrap_err();
        assert_eq!(refused.limit, Limit::StreamsPerClient);
        // Another client is not affected.
        let _b = counter.admit("c3", "bob").unwrap();
        drop(a1);
        assert_eq!(counter.on_connection("c1"), 1);
        let _a4 = counter.admit("c4", "alice").unwrap();
        assert_eq!(counter.tracked(), (4, 2));
    }

    #[test]
    fn replies_to_responses_are_free_and_other_requests_are_rate_limited() {
        let mut budget = RequestBudget::new(RateLimit {
            per_second: 1,
            burst: 2,
        });
        for _ in 0..1_000 {
            budget.responded();
            assert!(
                budget.admit(true),
                "an ACK of a response is always admitted"
            );
        }
        assert!(budget.admit(false));
        assert!(budget.admit(false));
        assert!(!budget.admit(false), "the burst is spent");
    }

    /// A subscription change that carries a nonce is not a free reply, however many
    /// responses are owed: answering it must not earn the next change for free.
    #[test]
    fn subscription_changes_draw_from_the_bucket_even_when_replies_are_owed() {
        let mut budget = RequestBudget::new(RateLimit {
            per_second: 1,
            burst: 2,
        });
        for _ in 0..100 {
            budget.responded();
        }
        assert!(budget.admit(false));
        assert!(budget.admit(false));
        assert!(!budget.admit(false), "owed replies do not pay for changes");
        assert!(
            budget.admit(true),
            "a plain ACK still rides on an owed reply"
        );
    }
}
