//! Domain bundles -> Envoy `Secret` resources, encoded once per version and shared by every
//! stream (only version and nonce differ per response).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::watch;

use super::SECRET_TYPE_URL;
use crate::bundle::TrustBundle;
use crate::snapshot::Snapshot;

/// The Envoy `Secret` for a bundle: `validation_context.trusted_ca.inline_bytes` only. No
/// SAN matchers or weakening flags: they would widen a combined validation context.
pub fn to_secret(name: &str, bundle: &TrustBundle) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(bundle.pem().as_bytes().to_vec())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

/// One resource, ready to put in any response.
#[derive(Debug)]
pub struct EncodedResource {
    pub version: Arc<str>,
    pub any: Any,
}

/// What every stream reads: the encoded resources and when they were published.
#[derive(Debug)]
pub struct SdsSnapshot {
    pub resources: HashMap<Arc<str>, Arc<EncodedResource>>,
    pub published: Instant,
}

impl Default for SdsSnapshot {
    fn default() -> Self {
        Self {
            resources: HashMap::new(),
            published: Instant::now(),
        }
    }
}

impl SdsSnapshot {
    /// Encodes `snapshot`, reusing entries of `previous` whose version did not change.
    pub fn encode(snapshot: &Snapshot, previous: &SdsSnapshot) -> Self {
        let resources = snapshot
            .resources
            .iter()
            .map(|(name, bundle)| {
                let reused = previous
                    .resources
                    .get(name)
                    .filter(|r| &*r.version == bundle.version())
                    .cloned();
                let encoded = reused.unwrap_or_else(|| {
                    Arc::new(EncodedResource {
                        version: Arc::from(bundle.version()),
                        any: Any {
                            type_url: SECRET_TYPE_URL.to_owned(),
                            value: to_secret(name, bundle).encode_to_vec(),
                        },
                    })
                });
                (name.clone(), encoded)
            })
            .collect();
        Self {
            resources,
            published: Instant::now(),
        }
    }
}

/// Keeps an encoded view of the domain snapshot up to date until the source side closes.
pub fn spawn_encoder(
    mut domain: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<crate::metrics::Metrics>,
) -> watch::Receiver<Arc<SdsSnapshot>> {
    let first = SdsSnapshot::encode(&domain.borrow_and_update(), &SdsSnapshot::default());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        while domain.changed().await.is_ok() {
            let snapshot = domain.borrow_and_update().clone();
            let next = SdsSnapshot::encode(&snapshot, &tx.borrow());
            metrics.snapshots.inc();
            if tx.send(Arc::new(next)).is_err() {
                break;
            }
        }
    });
    rx
}
