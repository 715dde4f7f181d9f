//! The broker's side: a subscriber that keeps a live rustls trust store per registration.
//!
//! [`TrustClient`] subscribes to trust-sds over SDS (Delta by default, SotW available),
//! validates each served bundle with the same rules as the server, and swaps the store for
//! that name atomically. [`TrustClient::client_config`] returns a rustls `ClientConfig`
//! whose verifier always reads the current store, so an existing HTTP client picks up new
//! trust for its next connection without being rebuilt. Over Delta (the default), names the
//! server withdraws fail closed (`removed_resources`); SotW cannot express the withdrawal of
//! a Secret, so a SotW subscriber keeps the last trust it got for such a name. While the
//! server is away the last good trust stays in use.
//!
//! Uses no Kubernetes types.

mod store;
mod subscriber;
mod verifier;

pub use store::{Connection, TrustEvent, TrustState, load_system_roots, verifier_for};
pub use subscriber::{ClientOptions, ClientTls, Protocol, TrustClient};
pub use verifier::LiveVerifier;
