//! Per-name trust: the current verifier (built once per bundle version), swapped atomically.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use tokio::sync::{broadcast, watch};

use crate::validation::{Subject, validate_data};

/// What changed, for whoever listens (the probe's `--watch`, the broker's logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustEvent {
    /// New trust is in use for `name` from now on.
    Updated {
        name: String,
        version: String,
        at: std::time::Instant,
    },
    /// The server withdrew `name`, or (Delta, `--unknown-names not-found`) says it does not
    /// serve it: connections to it fail closed.
    Removed {
        name: String,
    },
    /// A served bundle was refused (and NACKed); the previous trust stays.
    Rejected {
        name: String,
        reason: String,
    },
    Connected,
    Disconnected {
        reason: String,
    },
}

/// Where the subscription stands with trust-sds ([`super::TrustClient::connection`]): what
/// the last `Connected` or `Disconnected` event said, for a reader that subscribed to the
/// events after it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// No connection yet since the client started.
    Connecting,
    Connected,
    Disconnected {
        reason: String,
    },
}

/// The trust in force for one name.
#[derive(Clone)]
pub struct TrustState {
    pub version: String,
    pub verifier: Arc<WebPkiServerVerifier>,
    /// Number of certificates served for this name (system roots not counted).
    pub served_certificates: usize,
    /// The served bundle as canonical PEM (the bytes trust-sds serves), for consumers that
    /// need the certificates themselves, such as `trust-sds sync`.
    pub pem: Arc<str>,
}

impl std::fmt::Debug for TrustState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustState")
            .field("version", &self.version)
            .field("served_certificates", &self.served_certificates)
            .finish()
    }
}

/// Every name's trust, shared by the subscriber (writer) and verifiers (readers).
pub(crate) struct Stores {
    pub(crate) provider: Arc<CryptoProvider>,
    system_roots: Vec<CertificateDer<'static>>,
    by_name: RwLock<BTreeMap<String, TrustState>>,
    pub(crate) events: broadcast::Sender<TrustEvent>,
    /// Number of names that have trust; readiness is "all of them".
    pub(crate) ready: watch::Sender<usize>,
    pub(crate) connection: watch::Sender<Connection>,
}

impl Stores {
    pub(crate) fn new(
        provider: Arc<CryptoProvider>,
        system_roots: Vec<CertificateDer<'static>>,
    ) -> Self {
        Self {
            provider,
            system_roots,
            by_name: RwLock::new(BTreeMap::new()),
            events: broadcast::channel(64).0,
            ready: watch::channel(0).0,
            connection: watch::channel(Connection::Connecting).0,
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<TrustState> {
        self.read().get(name).cloned()
    }

    pub(crate) fn versions(&self) -> BTreeMap<String, String> {
        self.read()
            .iter()
            .map(|(n, s)| (n.clone(), s.version.clone()))
            .collect()
    }

    /// Validates `pem` like the server does and installs it. Errors are NACK messages.
    pub(crate) fn install(&self, name: &str, version: &str, pem: &[u8]) -> Result<(), String> {
        let bundle = validate_data(Subject::GatewayBundle, pem)
            .map_err(|check| format!("bundle for {name} rejected: {check}"))?;
        let served = crate::cert::parse_ca_bundle(bundle.pem().as_bytes())
            .map_err(|e| format!("bundle for {name} rejected: {e}"))?;
        let verifier = verifier_for(&self.provider, &self.system_roots, &served)
            .map_err(|e| format!("bundle for {name} rejected: {e}"))?;
        let state = TrustState {
            version: version.to_owned(),
            verifier,
            served_certificates: served.len(),
            pem: bundle.pem().into(),
        };
        let count = {
            let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
            map.insert(name.to_owned(), state);
            map.len()
        };
        self.ready.send_replace(count);
        let _ = self.events.send(TrustEvent::Updated {
            name: name.to_owned(),
            version: version.to_owned(),
            at: std::time::Instant::now(),
        });
        Ok(())
    }

    /// Drops `name`'s trust. The event is sent even when there was none: a server that
    /// answers unknown names with not-found says so through a removal, and a consumer
    /// waiting for the name (`trust-sds sync --once`) must learn that it will not come.
    pub(crate) fn remove(&self, name: &str) {
        let (removed, count) = {
            let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
            (map.remove(name).is_some(), map.len())
        };
        if removed {
            self.ready.send_replace(count);
        }
        let _ = self.events.send(TrustEvent::Removed {
            name: name.to_owned(),
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, TrustState>> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// A verifier that trusts `system_roots` plus the `served` certificates: what the broker
/// trusts for one registration (also what `serve --verify-upstreams` checks upstreams with).
pub fn verifier_for(
    provider: &Arc<CryptoProvider>,
    system_roots: &[CertificateDer<'static>],
    served: &[crate::cert::Certificate],
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for der in system_roots {
        // A system root rustls cannot use is skipped, as rustls-native-certs advises.
        let _ = roots.add(der.clone());
    }
    for cert in served {
        roots
            .add(CertificateDer::from(cert.der.clone()))
            .map_err(|e| {
                format!(
                    "certificate \"{}\" unusable as a trust anchor: {e}",
                    cert.display_name
                )
            })?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())
}

/// The platform's trust anchors (none when they cannot be read; each problem is logged).
pub fn load_system_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "could not load some system roots");
    }
    found.certs
}
