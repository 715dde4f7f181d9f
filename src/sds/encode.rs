//! Domain bundles -> Envoy `Secret` resources, encoded once per version and shared by every
//! stream (only version and nonce differ per response).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::watch;

use super::SECRET_TYPE_URL;
use super::interest::Interest;
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

/// One resource, encoded once per version and shared by every stream: as an `Any`, and as
/// the ready-made `resources` field of a SotW and of a Delta response, which the transport
/// writes as they are (zero copy) after each stream's own few fields.
#[derive(Debug)]
pub struct EncodedResource {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub any: Any,
    /// Field 2 of `DiscoveryResponse`: key, length, the `Any`.
    pub sotw_field: Bytes,
    /// Field 2 of `DeltaDiscoveryResponse`: key, length, a `Resource` (name, version, `Any`).
    pub delta_field: Bytes,
}

impl EncodedResource {
    /// The ready-made `resources` field for a SotW or a Delta response.
    fn field(&self, sotw: bool) -> &Bytes {
        if sotw {
            &self.sotw_field
        } else {
            &self.delta_field
        }
    }

    pub fn new(name: &str, version: Arc<str>, any: Any) -> Self {
        let mut sotw = Vec::with_capacity(any.encoded_len() + 8);
        prost::encoding::message::encode(SOTW_RESOURCES_FIELD, &any, &mut sotw);
        let resource = Resource {
            name: name.to_owned(),
            version: version.to_string(),
            resource: Some(any),
            ..Default::default()
        };
        let mut delta = Vec::with_capacity(resource.encoded_len() + 8);
        prost::encoding::message::encode(DELTA_RESOURCES_FIELD, &resource, &mut delta);
        Self {
            name: Arc::from(name),
            version,
            any: resource.resource.unwrap_or_default(),
            sotw_field: Bytes::from(sotw),
            delta_field: Bytes::from(delta),
        }
    }
}

/// Responses up to this size are copied into one frame; larger ones are sent as the head
/// frame plus the shared resource bytes.
const COALESCE_BELOW: usize = 4096;

/// `DiscoveryResponse.resources` and `DeltaDiscoveryResponse.resources`.
const SOTW_RESOURCES_FIELD: u32 = 2;
const DELTA_RESOURCES_FIELD: u32 = 2;

/// A response as a stream sends it: its own fields (`head`, with no resources) and the
/// shared resources. Protobuf allows fields in any order and repeated fields to be split, so
/// `head` bytes followed by each resource's pre-encoded field is the same message as the
/// prost one [`WireResponse::to_sotw`] / [`WireResponse::to_delta`] build.
#[derive(Debug, Clone)]
pub struct WireResponse<H> {
    pub head: H,
    pub resources: Vec<Arc<EncodedResource>>,
}

impl<H: Message> WireResponse<H> {
    /// The gRPC message frames: a 5-byte prefix (uncompressed, length) with the head, then
    /// each resource's shared bytes.
    pub fn frames(&self, sotw: bool) -> Vec<Bytes> {
        let head_len = self.head.encoded_len();
        let total = head_len
            + self
                .resources
                .iter()
                .map(|r| r.field(sotw).len())
                .sum::<usize>();
        // Small: one frame costs the transport less than the copy saves.
        let coalesce = total <= COALESCE_BELOW;
        let mut first = Vec::with_capacity(5 + if coalesce { total } else { head_len });
        first.push(0);
        first.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
        // Writing into a Vec cannot fail.
        let _ = self.head.encode(&mut first);
        if coalesce {
            for r in &self.resources {
                first.extend_from_slice(r.field(sotw));
            }
            return vec![Bytes::from(first)];
        }
        let mut frames = Vec::with_capacity(1 + self.resources.len());
        frames.push(Bytes::from(first));
        frames.extend(self.resources.iter().map(|r| r.field(sotw).clone()));
        frames
    }
}

impl WireResponse<DiscoveryResponse> {
    /// The whole message as a prost value (FetchSecrets, tests).
    pub fn to_sotw(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            resources: self.resources.iter().map(|r| r.any.clone()).collect(),
            ..self.head.clone()
        }
    }
}

impl WireResponse<DeltaDiscoveryResponse> {
    /// The whole message as a prost value (tests).
    pub fn to_delta(&self) -> DeltaDiscoveryResponse {
        let resources = self
            .resources
            .iter()
            .map(|r| Resource {
                name: r.name.to_string(),
                version: r.version.to_string(),
                resource: Some(r.any.clone()),
                ..Default::default()
            })
            .collect();
        DeltaDiscoveryResponse {
            resources,
            ..self.head.clone()
        }
    }
}

/// Encoded resources by name: persistent, so a publication shares every unchanged entry
/// with the one before.
pub type EncodedResources = imbl::HashMap<Arc<str>, Arc<EncodedResource>>;

/// What every stream reads: the encoded resources and when they were published.
#[derive(Debug)]
pub struct SdsSnapshot {
    pub resources: EncodedResources,
    pub published: Instant,
}

impl Default for SdsSnapshot {
    fn default() -> Self {
        Self {
            resources: EncodedResources::new(),
            published: Instant::now(),
        }
    }
}

/// The encoding of one served bundle.
fn encode(name: &str, bundle: &TrustBundle) -> Arc<EncodedResource> {
    Arc::new(EncodedResource::new(
        name,
        Arc::from(bundle.version()),
        Any {
            type_url: SECRET_TYPE_URL.to_owned(),
            value: to_secret(name, bundle).encode_to_vec(),
        },
    ))
}

impl SdsSnapshot {
    /// Encodes every resource of `snapshot`.
    pub fn encode(snapshot: &Snapshot) -> Self {
        let resources = snapshot
            .resources
            .iter()
            .map(|(name, bundle)| (name.clone(), encode(name, bundle)))
            .collect();
        Self {
            resources,
            published: Instant::now(),
        }
    }

    /// This snapshot with `changed` names brought up to date with `snapshot`: the cost is
    /// the changed names', not the number of resources served.
    pub fn update(&self, snapshot: &Snapshot, changed: &[Arc<str>]) -> Self {
        let mut resources = self.resources.clone();
        for name in changed {
            match snapshot.resources.get(name) {
                Some(bundle) => {
                    let current = resources.get(name).map(|r| &*r.version);
                    if current != Some(bundle.version()) {
                        resources.insert(name.clone(), encode(name, bundle));
                    }
                }
                None => {
                    resources.remove(name);
                }
            }
        }
        Self {
            resources,
            published: Instant::now(),
        }
    }
}

/// What the SDS streams read: the newest encoded snapshot, and who to wake when it changes.
#[derive(Clone, Debug)]
pub struct Feed {
    pub snapshots: watch::Receiver<Arc<SdsSnapshot>>,
    pub interest: Arc<Interest>,
}

/// Keeps an encoded view of the domain snapshot up to date until the source side closes,
/// and wakes the streams that want what each publication changed.
pub fn spawn_encoder(
    mut domain: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Feed {
    let first = domain.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Arc::new(SdsSnapshot::encode(&first)));
    let interest = Arc::new(Interest::default());
    let wake = interest.clone();
    tokio::spawn(async move {
        let mut seen = first.changes.clone();
        drop(first);
        while domain.changed().await.is_ok() {
            let snapshot = domain.borrow_and_update().clone();
            // Every name changed since the last snapshot seen, even if some were skipped.
            let changed = seen.since(&snapshot.changes);
            seen = snapshot.changes.clone();
            let next = tx.borrow().update(&snapshot, &changed);
            metrics.snapshots.inc();
            if tx.send(Arc::new(next)).is_err() {
                break;
            }
            wake.notify(&changed);
        }
        drop(tx);
        wake.close();
    });
    Feed {
        snapshots: rx,
        interest,
    }
}

#[cfg(test)]
impl SdsSnapshot {
    /// A snapshot serving `(name, version)` pairs (the content is the name), for the state
    /// machines' unit tests.
    pub(crate) fn of(resources: &[(&str, &str)]) -> Self {
        let resources = resources
            .iter()
            .map(|(name, version)| {
                let any = envoy_types::pb::google::protobuf::Any {
                    type_url: super::SECRET_TYPE_URL.into(),
                    value: name.as_bytes().to_vec(),
                };
                let encoded = EncodedResource::new(name, Arc::from(*version), any);
                (Arc::from(*name), Arc::new(encoded))
            })
            .collect();
        Self {
            resources,
            ..Self::default()
        }
    }
}
