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
use prost::encoding::{self, WireType};
use tokio::sync::watch;

use super::SECRET_TYPE_URL;
use super::interest::Interest;
use crate::bundle::TrustBundle;
use crate::snapshot::Snapshot;

/// The Envoy `Secret` for a bundle: `validation_context.trusted_ca.inline_bytes` only. No
/// SAN matchers or weakening flags: they would widen a combined validation context.
/// (The served bytes are built by [`secret_head`] and the bundle's pieces; this prost value
/// is what they must decode to.)
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

/// Field numbers of the messages written by hand below (checked against prost's encoding
/// by the tests and the fuzz drivers).
mod field {
    pub const SECRET_NAME: u32 = 1;
    pub const SECRET_VALIDATION_CONTEXT: u32 = 4;
    pub const VALIDATION_CONTEXT_TRUSTED_CA: u32 = 1;
    pub const DATA_SOURCE_INLINE_BYTES: u32 = 2;
    pub const ANY_TYPE_URL: u32 = 1;
    pub const ANY_VALUE: u32 = 2;
    pub const RESOURCE_VERSION: u32 = 1;
    pub const RESOURCE_RESOURCE: u32 = 2;
    pub const RESOURCE_NAME: u32 = 3;
    /// `DiscoveryResponse.resources` and `DeltaDiscoveryResponse.resources`.
    pub const RESPONSE_RESOURCES: u32 = 2;
}

/// Writes the key and length of a length-delimited field.
fn open_field(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(len as u64, buf);
}

/// The size of a length-delimited field's key and length.
fn field_overhead(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64)
}

/// The `Secret` message up to its CA bytes: the name, then the keys and lengths down to
/// `validation_context.trusted_ca.inline_bytes`, whose `pem_len` bytes follow. Protobuf
/// writes a message's fields in any order, so the CA can come last, in pieces.
pub fn secret_head(name: &str, pem_len: usize) -> Vec<u8> {
    let data_source = field_overhead(field::DATA_SOURCE_INLINE_BYTES, pem_len) + pem_len;
    let context = field_overhead(field::VALIDATION_CONTEXT_TRUSTED_CA, data_source) + data_source;
    let mut head = Vec::with_capacity(name.len() + 24);
    encoding::string::encode(field::SECRET_NAME, &name.to_owned(), &mut head);
    open_field(field::SECRET_VALIDATION_CONTEXT, context, &mut head);
    open_field(field::VALIDATION_CONTEXT_TRUSTED_CA, data_source, &mut head);
    open_field(field::DATA_SOURCE_INLINE_BYTES, pem_len, &mut head);
    head
}

/// One resource, encoded once per version and shared by every stream, as the ready-made
/// `resources` field of a SotW and of a Delta response, which the transport writes as they
/// are (zero copy) after each stream's own few fields. Each is a small head (keys,
/// lengths, names) followed by the body: the bundle's PEM pieces, shared with the bundle,
/// so a base held by 2,000 registrations is in memory once.
#[derive(Debug)]
pub struct EncodedResource {
    pub name: Arc<str>,
    pub version: Arc<str>,
    /// Field 2 of `DiscoveryResponse` (an `Any`) up to the body.
    sotw_head: Bytes,
    /// Field 2 of `DeltaDiscoveryResponse` (a `Resource`: name, version, `Any`) up to the body.
    delta_head: Bytes,
    body: Box<[Bytes]>,
}

impl EncodedResource {
    /// The resource whose `Any.value` (a `Secret`) is `value_head` followed by `body`.
    pub fn new(name: &str, version: Arc<str>, value_head: &[u8], body: Vec<Bytes>) -> Self {
        let body_len: usize = body.iter().map(Bytes::len).sum();
        let value_len = value_head.len() + body_len;
        let mut any_head = Vec::with_capacity(value_head.len() + SECRET_TYPE_URL.len() + 16);
        encoding::string::encode(
            field::ANY_TYPE_URL,
            &SECRET_TYPE_URL.to_owned(),
            &mut any_head,
        );
        open_field(field::ANY_VALUE, value_len, &mut any_head);
        any_head.extend_from_slice(value_head);
        let any_len = any_head.len() + body_len;

        let mut sotw = Vec::with_capacity(any_head.len() + 8);
        open_field(field::RESPONSE_RESOURCES, any_len, &mut sotw);
        sotw.extend_from_slice(&any_head);

        let mut resource = Vec::with_capacity(any_head.len() + name.len() + version.len() + 16);
        encoding::string::encode(field::RESOURCE_NAME, &name.to_owned(), &mut resource);
        encoding::string::encode(field::RESOURCE_VERSION, &version.to_string(), &mut resource);
        open_field(field::RESOURCE_RESOURCE, any_len, &mut resource);
        resource.extend_from_slice(&any_head);
        let mut delta = Vec::with_capacity(resource.len() + 8);
        open_field(
            field::RESPONSE_RESOURCES,
            resource.len() + body_len,
            &mut delta,
        );
        delta.extend_from_slice(&resource);

        Self {
            name: Arc::from(name),
            version,
            sotw_head: Bytes::from(sotw),
            delta_head: Bytes::from(delta),
            body: body.into(),
        }
    }

    /// The served `Secret` of `bundle`, its CA bytes shared with the bundle.
    pub fn of_bundle(name: &str, bundle: &TrustBundle) -> Self {
        let head = secret_head(name, bundle.pem_len());
        let body = bundle.pem_pieces().cloned().collect();
        Self::new(name, Arc::from(bundle.version()), &head, body)
    }

    /// The ready-made `resources` field for a SotW or a Delta response: head, then body.
    fn field(&self, sotw: bool) -> (&Bytes, &[Bytes]) {
        let head = if sotw {
            &self.sotw_head
        } else {
            &self.delta_head
        };
        (head, &self.body)
    }

    fn field_len(&self, sotw: bool) -> usize {
        let (head, body) = self.field(sotw);
        head.len() + body.iter().map(Bytes::len).sum::<usize>()
    }

    /// The resource as an `Any` (FetchSecrets, tests): decoded from the served bytes.
    pub fn any(&self) -> Any {
        let (head, body) = self.field(true);
        let mut bytes = head.to_vec();
        body.iter().for_each(|b| bytes.extend_from_slice(b));
        DiscoveryResponse::decode(bytes.as_slice())
            .ok()
            .and_then(|r| r.resources.into_iter().next())
            .unwrap_or_default()
    }
}

/// Responses up to this size are copied into one frame; larger ones are sent as the head
/// frame plus the shared resource bytes.
const COALESCE_BELOW: usize = 4096;

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
    /// each resource's small head and shared body pieces.
    pub fn frames(&self, sotw: bool) -> Vec<Bytes> {
        let head_len = self.head.encoded_len();
        let total = head_len
            + self
                .resources
                .iter()
                .map(|r| r.field_len(sotw))
                .sum::<usize>();
        // Small: one frame costs the transport less than the copy saves.
        let coalesce = total <= COALESCE_BELOW;
        let mut small = Vec::with_capacity(5 + if coalesce { total } else { head_len + 64 });
        small.push(0);
        small.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
        // Writing into a Vec cannot fail.
        let _ = self.head.encode(&mut small);
        let mut frames = Vec::new();
        for r in &self.resources {
            let (head, body) = r.field(sotw);
            small.extend_from_slice(head);
            if coalesce {
                body.iter().for_each(|b| small.extend_from_slice(b));
            } else {
                // The small bytes so far go first, then the shared pieces as they are.
                frames.push(Bytes::from(std::mem::take(&mut small)));
                frames.extend(body.iter().cloned());
            }
        }
        if !small.is_empty() || frames.is_empty() {
            frames.push(Bytes::from(small));
        }
        frames
    }
}

impl WireResponse<DiscoveryResponse> {
    /// The whole message as a prost value (FetchSecrets, tests).
    pub fn to_sotw(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            resources: self.resources.iter().map(|r| r.any()).collect(),
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
                resource: Some(r.any()),
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
    /// Unique to this snapshot (process-wide, never reused): a stream that found its last
    /// response current against a generation need not look again while it is the newest.
    pub generation: u64,
}

/// The next snapshot generation (from 1).
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Default for SdsSnapshot {
    fn default() -> Self {
        Self {
            resources: EncodedResources::new(),
            published: Instant::now(),
            generation: next_generation(),
        }
    }
}

/// The encoding of one served bundle.
fn encode(name: &str, bundle: &TrustBundle) -> Arc<EncodedResource> {
    Arc::new(EncodedResource::of_bundle(name, bundle))
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
            ..Self::default()
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
            ..Self::default()
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
                let encoded =
                    EncodedResource::new(name, Arc::from(*version), name.as_bytes(), Vec::new());
                (Arc::from(*name), Arc::new(encoded))
            })
            .collect();
        Self {
            resources,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;

    fn bundle() -> TrustBundle {
        let pem = crate::cert::test_ca_pem("Test CA");
        TrustBundle::from_certificates(&crate::cert::parse_ca_bundle(pem.as_bytes()).unwrap())
    }

    /// The hand-written heads plus the shared pieces decode to the prost `Secret`, as a
    /// SotW `Any` and as a Delta `Resource` (field numbers and lengths right), for a bundle
    /// of one piece and of two.
    #[test]
    fn heads_and_pieces_are_the_prost_encoding() {
        let base = bundle();
        for served in [base.clone(), TrustBundle::layered(&base, &bundle())] {
            let name = "team/weather";
            let encoded = EncodedResource::of_bundle(name, &served);
            let secret = Secret::decode(encoded.any().value.as_slice()).unwrap();
            assert_eq!(secret, to_secret(name, &served));
            let join = |(head, body): (&Bytes, &[Bytes])| {
                let mut all = head.to_vec();
                body.iter().for_each(|b| all.extend_from_slice(b));
                all
            };
            let delta = DeltaDiscoveryResponse::decode(join(encoded.field(false)).as_slice())
                .unwrap()
                .resources;
            let Resource {
                name: got_name,
                version,
                resource,
                ..
            } = delta.into_iter().next().unwrap();
            assert_eq!(
                (got_name.as_str(), version.as_str()),
                (name, served.version())
            );
            assert_eq!(resource.unwrap(), encoded.any());
        }
    }

    /// Large responses are written as small frames around the shared pieces; small ones
    /// in one frame. Either way the bytes are the prost message.
    #[test]
    fn frames_share_the_pieces_of_large_responses() {
        let big = Bytes::from(vec![b'x'; 5000]);
        let resource = Arc::new(EncodedResource::new(
            "team/a",
            Arc::from("v1"),
            b"head",
            vec![big.clone(), Bytes::from_static(b"tail")],
        ));
        let small = Arc::new(EncodedResource::new(
            "team/b",
            Arc::from("v1"),
            b"b",
            vec![],
        ));
        let wire = WireResponse {
            head: DiscoveryResponse {
                version_info: "1".into(),
                nonce: "1".into(),
                ..Default::default()
            },
            resources: vec![resource, small.clone()],
        };
        let frames = wire.frames(true);
        assert!(
            frames.iter().any(|f| f.as_ptr() == big.as_ptr()),
            "the piece is sent as it is"
        );
        let all: Vec<u8> = frames.concat();
        assert_eq!(
            DiscoveryResponse::decode(&all[5..]).unwrap(),
            wire.to_sotw()
        );
        let one = WireResponse {
            head: wire.head.clone(),
            resources: vec![small],
        };
        assert_eq!(one.frames(true).len(), 1);
    }
}
