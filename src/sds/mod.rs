//! The Secret Discovery Service (xDS v3): State-of-the-World, Delta, Fetch and ADS.
//!
//! This layer sees only domain snapshots ([`crate::snapshot::Snapshot`]), never Kubernetes
//! types. Each resource is encoded once per version ([`encode`]); each stream is a small
//! state machine ([`sotw`], [`delta`]) driven by one task that selects over client
//! requests, snapshot changes and shutdown ([`service`]).

pub mod authz;
pub mod clients;
pub mod connection;
pub mod delivery;
pub mod delta;
pub mod encode;
pub mod grpc;
pub mod limits;
pub mod service;
pub mod sotw;

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
}

impl Default for SdsOptions {
    fn default() -> Self {
        Self {
            unknown_names: UnknownNamePolicy::Hold,
            max_names_per_request: 5_000,
            authz: None,
            streams: limits::StreamLimits::default(),
            request_rate: limits::RateLimit::default(),
        }
    }
}

/// Whether a request's type URL is one this server answers. Empty means "the service's
/// own type" on the SDS endpoints.
pub fn accepts_type(type_url: &str, allow_empty: bool) -> bool {
    type_url == SECRET_TYPE_URL || (allow_empty && type_url.is_empty())
}
