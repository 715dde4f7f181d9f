//! The Secret Discovery Service (xDS v3): State-of-the-World, Delta, Fetch and ADS.
//!
//! This layer sees only domain snapshots ([`crate::snapshot::Snapshot`]), never Kubernetes
//! types. Each resource is encoded once per version ([`encode`]); each stream is a small
//! state machine ([`sotw`], [`delta`]) driven by one task that selects over client
//! requests, snapshot changes and shutdown ([`service`]), on HTTP/2 connections served by one
//! task each ([`transport`]).

pub mod authz;
pub mod clients;
pub mod connection;
pub mod delivery;
pub mod delta;
pub mod encode;
pub mod grpc;
pub mod interest;
pub mod limits;
pub mod service;
pub mod sotw;
pub mod transport;

pub use crate::xds::SECRET_TYPE_URL;

/// What to do when a client subscribes to a name that is not (yet) served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownNamePolicy {
    /// Say nothing until the resource appears, then push it.
    #[default]
    Hold,
    /// Delta: answer at once with the name in `removed_resources`. (SotW cannot express
    /// absence for Secrets, so it holds.)
    NotFound,
}

/// Per-server protocol settings.
#[derive(Clone, Debug)]
pub struct SdsOptions {
    pub unknown_names: UnknownNamePolicy,
    /// A request naming more resources ends its stream with RESOURCE_EXHAUSTED.
    pub max_names_per_request: usize,
    /// Who may read what; `None` lets every client read everything.
    pub authz: Option<std::sync::Arc<authz::Authz>>,
    /// Open streams per connection and per client.
    pub streams: limits::StreamLimits,
    /// Requests per stream that are not replies to responses.
    pub request_rate: limits::RateLimit,
    /// The largest request message accepted from a client (a larger one ends its stream).
    pub max_request_bytes: usize,
    /// HTTP/2 pings that find dead peers; `None`: never ping.
    pub keepalive: Option<transport::keepalive::Keepalive>,
}

impl SdsOptions {
    pub const DEFAULT_MAX_NAMES_PER_REQUEST: usize = 5_000;
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1 << 20;
}

impl Default for SdsOptions {
    fn default() -> Self {
        Self {
            unknown_names: UnknownNamePolicy::Hold,
            max_names_per_request: Self::DEFAULT_MAX_NAMES_PER_REQUEST,
            authz: None,
            streams: limits::StreamLimits::default(),
            request_rate: limits::RateLimit::default(),
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            keepalive: Some(transport::keepalive::Keepalive::DEFAULT),
        }
    }
}

/// Whether a request's type URL is one this server answers. Empty means "the service's
/// own type" on the SDS endpoints.
pub fn accepts_type(type_url: &str, allow_empty: bool) -> bool {
    type_url == SECRET_TYPE_URL || (allow_empty && type_url.is_empty())
}

/// The (name, version) pairs a reply answers: what the client now holds (ACK) or refused
/// (NACK), for the delivery report. Shared: a SotW stream's ACK answers exactly what its
/// last response carried, which the stream keeps in this form.
pub type Answered = std::sync::Arc<[(std::sync::Arc<str>, std::sync::Arc<str>)]>;

/// What a request meant, for logs, metrics and the client registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    None,
    Ack {
        version: String,
        answers: Answered,
    },
    /// `code`: the gRPC status code in the client's `error_detail`.
    Nack {
        version: String,
        message: String,
        code: i32,
        answers: Answered,
    },
    Stale,
    UnsupportedType(String),
}

/// One xDS stream's protocol state, implemented by the State-of-the-World
/// ([`sotw::SotwStream`]) and Delta ([`delta::DeltaStream`]) machines; the stream driver
/// ([`service`]) runs either, and authorization asks it which names a request wants, so
/// each xDS rule is written once, in the machine. Pure: no I/O, testable without gRPC.
pub trait Subscription: Send + Unpin + 'static {
    type Req: transport::trim::Request + Send + 'static;
    type Resp: Send + 'static;
    /// Applies a request (ACK/NACK bookkeeping, subscription changes): what it meant, and
    /// a response when there is something to send.
    fn on_request(
        &mut self,
        req: &Self::Req,
        snap: &encode::SdsSnapshot,
    ) -> (Ack, Option<Self::Resp>);
    /// A new snapshot: a response when the subscribed content changed.
    fn on_snapshot(&mut self, snap: &encode::SdsSnapshot) -> Option<Self::Resp>;
    fn node(req: &Self::Req) -> Option<&str>;
    /// How many resource names the request carries (for the per-request limit).
    fn name_count(req: &Self::Req) -> usize;
    /// The names a request asks for, and whether it asks for everything (authorization).
    fn requested<'a>(&self, req: &'a Self::Req) -> (Vec<&'a str>, bool);
    /// Whether a request only answers a response (ACK/NACK) and leaves the subscription as
    /// it is: the only kind of request a response pays for (see `RequestBudget`).
    fn is_reply(&self, req: &Self::Req) -> bool;
    /// A count that moves whenever the subscription (names, wildcard) may have changed: the
    /// stream driver re-reads [`Self::subscription`] only then, rather than comparing name
    /// lists on every ACK.
    fn subscription_seq(&self) -> u64;
    /// The subscribed names, and whether it is a wildcard.
    fn subscription(&self) -> (Vec<String>, bool);
    fn resource_count(resp: &Self::Resp) -> usize;
    /// Versions the request says the client already holds (Delta's
    /// `initial_resource_versions`), for the delivery report.
    fn claimed(&self, _req: &Self::Req) -> Answered {
        Answered::default()
    }
}

#[cfg(test)]
impl Ack {
    /// A word per variant, for the machines' protocol tables.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Ack::None => "none",
            Ack::Ack { .. } => "ack",
            Ack::Nack { .. } => "nack",
            Ack::Stale => "stale",
            Ack::UnsupportedType(_) => "type",
        }
    }
}

/// A client's `error_detail` for a NACK, in the machines' protocol tables.
#[cfg(test)]
pub(crate) fn nack_detail(message: &str) -> envoy_types::pb::google::rpc::Status {
    envoy_types::pb::google::rpc::Status {
        code: 3,
        message: message.into(),
        details: vec![],
    }
}
