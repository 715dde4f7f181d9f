//! trust-sds: an Envoy Secret Discovery Service for the CA trust bundles of MCP gateway
//! upstreams.
//!
//! Flow: source -> [`index`] -> [`translate`] (pure) -> [`snapshot`] -> SDS streams.
//!
//! Features: `server` (default) is the server and the `trust-sds` binary; `client` is
//! [`client`] alone, for brokers that embed it, with no Kubernetes, HTTP server or CLI
//! crates; `fuzzing` adds the fuzz drivers (tests and `fuzz/` only). Bundle validation
//! ([`validation`], [`cert`], [`bundle`], [`model`]) is in every build.

// Domain types and bundle validation: in every build.
pub mod bundle;
pub mod cert;
pub mod model;
pub mod validation;

// The broker's side (`client` feature, included in `server`).
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod xds;

// The server and the `trust-sds` command line (`server` feature, the default).
#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod crd;
#[cfg(feature = "server")]
pub mod index;
#[cfg(feature = "server")]
pub mod leader;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod pipeline;
#[cfg(feature = "server")]
pub mod probe;
#[cfg(feature = "server")]
pub mod sds;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod snapshot;
#[cfg(feature = "server")]
pub mod source;
#[cfg(feature = "server")]
pub mod status;
#[cfg(feature = "server")]
pub mod status_writer;
#[cfg(feature = "server")]
pub mod sync;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub mod translate;
#[cfg(feature = "server")]
pub mod uds;
#[cfg(feature = "server")]
pub mod verify;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
