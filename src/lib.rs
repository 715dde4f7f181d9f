//! trust-sds: an Envoy Secret Discovery Service for the CA trust bundles of MCP gateway
//! upstreams.
//!
//! Flow: source -> [`index`] -> [`translate`] (pure) -> [`snapshot`] -> SDS streams.

pub mod admin;
pub mod bundle;
pub mod cert;
pub mod cli;
pub mod client;
pub mod crd;
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod probe;
pub mod sds;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod status_writer;
pub mod sync;
pub mod tls;
pub mod translate;
pub mod uds;
pub mod validation;
pub mod verify;
