//! Fuzz drivers: each takes arbitrary bytes, runs one input path of trust-sds and panics
//! when an invariant that protects clients breaks. The cargo-fuzz targets in `fuzz/` call
//! them, and `tests/robustness.rs` replays the committed corpora and crashers through them
//! on every test run (and feeds them its own random inputs), so a finding stays fixed.
//!
//! Not part of the supported API.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use prost::Message;

use crate::sds::Subscription as _;
use crate::sds::delta::DeltaStream;
use crate::sds::encode::{EncodedResource, SdsSnapshot};
use crate::sds::sotw::SotwStream;
use crate::sds::{SECRET_TYPE_URL, UnknownNamePolicy};
use crate::validation::{Subject, validate_data};

/// The PEM/X.509 validation path: never panics; a valid bundle has certificates and no
/// private key material; an error message never quotes what could be secret: a run of
/// base64 from the input (a certificate's or a key's body). The message's own words may
/// well appear in the input (a fuzzer copies them there), so plain text is not a leak.
pub fn pem(data: &[u8]) {
    for subject in [Subject::ServerCa, Subject::GatewayBundle] {
        match validate_data(subject, data) {
            Ok(bundle) => {
                assert!(bundle.certificate_count() > 0, "a valid bundle is empty");
                // Layering a bundle on itself, or merging it with itself, adds nothing.
                let layered = crate::bundle::TrustBundle::layered(&bundle, &bundle);
                assert_eq!(layered.version(), bundle.version());
                assert_eq!(layered.pem(), bundle.pem());
                let merged = crate::bundle::TrustBundle::merge([&bundle, &bundle]);
                assert_eq!(merged.version(), bundle.version());
                assert!(
                    !bundle.pem().contains("PRIVATE KEY"),
                    "a served bundle carries a private key"
                );
            }
            Err(check) => {
                let message = check.to_string();
                let text = String::from_utf8_lossy(data);
                for run in base64_runs(&text) {
                    assert!(!message.contains(run), "input echoed in {message:?}");
                }
            }
        }
    }
}

/// Shortest base64 run that counts as key or certificate material (48 bytes encoded).
const SECRET_RUN: usize = 64;

/// Runs of at least [`SECRET_RUN`] base64 characters in the input outside PEM armour lines,
/// less those that also appear in an armour line: a block's label is echoed on purpose
/// (`unexpected PEM block type "<T>"`), and a fuzzer readily copies it into a body.
fn base64_runs(text: &str) -> impl Iterator<Item = &str> {
    let is_armour = |line: &&str| line.trim_start().starts_with("-----");
    let armour: Vec<&str> = text.lines().filter(is_armour).collect();
    text.lines()
        .filter(move |line| !is_armour(line))
        .flat_map(|line| {
            line.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
        })
        .filter(move |run| run.len() >= SECRET_RUN && !armour.iter().any(|a| a.contains(run)))
}

/// The manifests parser: never panics, whatever the file holds.
pub fn manifests(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::source::manifests::parse_manifests(&text, "fuzz.yaml", "default");
}

/// Reads fuzz bytes as a script of choices; an exhausted script reads zeros.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn done(&self) -> bool {
        self.data.is_empty()
    }
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }
    /// A length-prefixed slice (for raw protobuf requests).
    fn chunk(&mut self) -> &[u8] {
        let len = usize::from(self.byte()).min(self.data.len());
        let (chunk, rest) = self.data.split_at(len);
        self.data = rest;
        chunk
    }
}

/// Served names, plus the wildcard and a name never served.
const NAMES: [&str; 6] = ["a/1", "a/2", "b/1", "gateway/a/x", "*", "c/none"];
/// How many of `NAMES` a snapshot may hold.
const SERVABLE: usize = 4;

fn snapshot(script: &mut Script) -> SdsSnapshot {
    let mut resources = crate::sds::encode::EncodedResources::new();
    let present = script.byte();
    for (i, name) in NAMES[..SERVABLE].iter().enumerate() {
        if present & (1 << i) == 0 {
            continue;
        }
        let version: Arc<str> = Arc::from(format!("v{}", script.below(3)));
        // The value in pieces, as a layered bundle's is: none, small, or past the size up
        // to which frames are coalesced.
        let body = (0..script.below(3))
            .map(|_| bytes::Bytes::from(vec![b'p'; 1 + script.below(4) * 1500]))
            .collect();
        resources.insert(
            Arc::from(*name),
            Arc::new(EncodedResource::new(name, version, name.as_bytes(), body)),
        );
    }
    SdsSnapshot {
        resources,
        ..SdsSnapshot::default()
    }
}

fn names(script: &mut Script) -> Vec<String> {
    (0..script.below(4))
        .map(|_| NAMES[script.below(NAMES.len())].to_owned())
        .collect()
}

fn error_detail(script: &mut Script) -> Option<Status> {
    (script.below(4) == 0).then(|| Status {
        code: 3,
        message: "rejected".into(),
        details: vec![],
    })
}

fn nonce(script: &mut Script, last: u64) -> String {
    match script.below(4) {
        0 => String::new(),
        1 | 2 => last.to_string(),
        _ => u64::from(script.byte()).to_string(),
    }
}

/// The message inside gRPC frames, checking the 5-byte prefix (uncompressed, length).
fn wire_message(frames: &[bytes::Bytes]) -> Vec<u8> {
    let all: Vec<u8> = frames.concat();
    assert_eq!(all[0], 0, "uncompressed");
    let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
    assert_eq!(len, all.len() - 5, "the prefix gives the message length");
    all[5..].to_vec()
}

/// Longest script run per input: keeps each fuzz iteration short.
const MAX_STEPS: usize = 256;

/// The State-of-the-World stream state machine fed a script of snapshots and requests
/// (structured ones, and raw bytes decoded as protobuf the way the server would). Nonces
/// are consecutive; a response is never empty and never repeats or invents a name.
pub fn sotw(data: &[u8]) {
    let mut script = Script { data };
    let mut stream = SotwStream::new(script.byte() & 1 == 0);
    let mut snap = snapshot(&mut script);
    let mut last_nonce = 0u64;
    for _ in 0..MAX_STEPS {
        if script.done() {
            break;
        }
        let response = match script.below(4) {
            0 => {
                snap = snapshot(&mut script);
                stream.on_snapshot(&snap)
            }
            1 => {
                let Ok(req) = DiscoveryRequest::decode(script.chunk()) else {
                    continue;
                };
                stream.on_request(&req, &snap).1
            }
            _ => {
                let req = DiscoveryRequest {
                    resource_names: names(&mut script),
                    response_nonce: nonce(&mut script, last_nonce),
                    error_detail: error_detail(&mut script),
                    type_url: if script.below(10) == 0 {
                        "bogus".into()
                    } else {
                        SECRET_TYPE_URL.into()
                    },
                    ..Default::default()
                };
                stream.on_request(&req, &snap).1
            }
        };
        let Some(wire) = response else { continue };
        let r = wire.to_sotw();
        assert_eq!(
            DiscoveryResponse::decode(wire_message(&wire.frames(true)).as_slice())
                .expect("decodes"),
            r,
            "the wire bytes are the response"
        );
        let nonce: u64 = r.nonce.parse().expect("numeric nonce");
        assert_eq!(nonce, last_nonce + 1, "nonces are consecutive");
        last_nonce = nonce;
        let sent: Vec<String> = r
            .resources
            .iter()
            // The value is the name, then the body's 'p' pieces.
            .map(|a| {
                String::from_utf8_lossy(&a.value)
                    .trim_end_matches('p')
                    .to_owned()
            })
            .collect();
        let unique: BTreeSet<&String> = sent.iter().collect();
        assert_eq!(unique.len(), sent.len(), "a name repeated");
        assert!(!sent.is_empty(), "empty SotW responses make Envoy NACK");
        for n in &sent {
            assert!(snap.resources.contains_key(n.as_str()), "invented {n}");
            assert!(
                stream.is_wildcard() || stream.names().any(|s| s == n),
                "unrequested {n}"
            );
        }
    }
}

/// The Delta stream state machine, as [`sotw`]; also: a name is never sent and removed in
/// one response, and only existing resources are sent.
pub fn delta(data: &[u8]) {
    let mut script = Script { data };
    let policy = if script.byte() & 1 == 0 {
        UnknownNamePolicy::Hold
    } else {
        UnknownNamePolicy::NotFound
    };
    let mut stream = DeltaStream::new(policy, script.byte() & 1 == 0);
    let mut snap = snapshot(&mut script);
    let mut last_nonce = 0u64;
    for _ in 0..MAX_STEPS {
        if script.done() {
            break;
        }
        let response = match script.below(4) {
            0 => {
                snap = snapshot(&mut script);
                stream.on_snapshot(&snap)
            }
            1 => {
                let Ok(req) = DeltaDiscoveryRequest::decode(script.chunk()) else {
                    continue;
                };
                stream.on_request(&req, &snap).1
            }
            _ => {
                let req = DeltaDiscoveryRequest {
                    type_url: SECRET_TYPE_URL.into(),
                    resource_names_subscribe: names(&mut script),
                    resource_names_unsubscribe: names(&mut script),
                    initial_resource_versions: names(&mut script)
                        .into_iter()
                        .map(|n| {
                            let v = format!("v{}", script.below(3));
                            (n, v)
                        })
                        .collect(),
                    response_nonce: nonce(&mut script, last_nonce),
                    error_detail: error_detail(&mut script),
                    ..Default::default()
                };
                stream.on_request(&req, &snap).1
            }
        };
        let Some(wire) = response else { continue };
        let r = wire.to_delta();
        assert_eq!(
            DeltaDiscoveryResponse::decode(wire_message(&wire.frames(false)).as_slice())
                .expect("decodes"),
            r,
            "the wire bytes are the response"
        );
        let nonce: u64 = r.nonce.parse().expect("numeric nonce");
        assert_eq!(nonce, last_nonce + 1, "nonces are consecutive");
        last_nonce = nonce;
        assert!(
            !r.resources.is_empty() || !r.removed_resources.is_empty(),
            "empty Delta response"
        );
        let sent: BTreeSet<&String> = r.resources.iter().map(|x| &x.name).collect();
        assert_eq!(sent.len(), r.resources.len(), "a name repeated");
        for x in &r.resources {
            assert!(
                snap.resources.contains_key(x.name.as_str()),
                "sent a resource that does not exist"
            );
            assert!(
                stream.is_wildcard() || stream.names().any(|s| s == x.name),
                "unrequested {}",
                x.name
            );
            assert!(
                !r.removed_resources.contains(&x.name),
                "sent and removed at once"
            );
        }
    }
}

/// The gRPC message framing of requests (`MessageBuffer`), fed a body in chunks of sizes
/// the input chooses: the messages and the final error are the same however the bytes are
/// split, an error is final, and after each drain the buffer holds less than one message
/// of the limit (what bounds a hostile client). The first byte chooses the limit. The
/// bytes are also decoded as one request, with prost and with the transport's decode,
/// which must agree but for the node's bulk.
pub fn grpc_frames(data: &[u8]) {
    use crate::sds::transport::requests::{MessageBuffer, PREFIX};
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(first) * 8;
    // The bytes as a message, and as the message after a prefix.
    for message in [body, body.get(PREFIX..).unwrap_or_default()] {
        decodes_as_prost_but_for_the_node(message);
    }
    // What one drain yields: messages, then `Err(code)` if the stream must end.
    fn drain(buffer: &mut MessageBuffer, out: &mut Vec<Result<DiscoveryRequest, i32>>) -> bool {
        loop {
            match buffer.message::<DiscoveryRequest>() {
                Ok(Some(message)) => out.push(Ok(message)),
                Ok(None) => return true,
                Err(status) => {
                    out.push(Err(status.code() as i32));
                    return false;
                }
            }
        }
    }
    let mut whole = Vec::new();
    let mut buffer = MessageBuffer::new(max);
    buffer.push(body);
    let whole_ok = drain(&mut buffer, &mut whole);
    let whole_left = buffer.len();

    let mut split = Vec::new();
    let mut buffer = MessageBuffer::new(max);
    let mut rest = body;
    let mut split_ok = true;
    let mut sizes = data.iter().cycle();
    while !rest.is_empty() && split_ok {
        let size = (1 + usize::from(*sizes.next().unwrap_or(&1) % 23)).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        buffer.push(chunk);
        rest = tail;
        split_ok = drain(&mut buffer, &mut split);
        if split_ok {
            assert!(
                buffer.len() < PREFIX + max,
                "{} bytes held with a limit of {max}",
                buffer.len()
            );
        }
    }
    assert_eq!(whole, split, "the split changed what was decoded");
    assert_eq!(whole_ok, split_ok);
    if whole_ok {
        assert_eq!(whole_left, buffer.len(), "the split left other bytes");
    }
}

/// What prost decodes, the transport's decode (`sds::transport::trim`) decodes too, the
/// same but for the node, which it reduces to its `id`.
fn decodes_as_prost_but_for_the_node(bytes: &[u8]) {
    use crate::sds::transport::trim::decode;
    use envoy_types::pb::envoy::config::core::v3::Node;
    let id_only = |node: Option<Node>| {
        node.map(|n| Node {
            id: n.id,
            ..Default::default()
        })
    };
    if let Ok(mut full) = DiscoveryRequest::decode(bytes) {
        full.node = id_only(full.node);
        assert_eq!(decode::<DiscoveryRequest>(bytes).ok(), Some(full));
    }
    if let Ok(mut full) = DeltaDiscoveryRequest::decode(bytes) {
        full.node = id_only(full.node);
        assert_eq!(decode::<DeltaDiscoveryRequest>(bytes).ok(), Some(full));
    }
}

/// A node shaped like the one Envoy 1.40 sends, with `extensions` extensions (Envoy's own,
/// with 516, encoded to about 61 KB in `tests/envoy_conformance.rs`; this one to about
/// 70 KB): for the trimmed request decode's tests and the fanout bench.
pub fn envoy_like_node(
    id: &str,
    extensions: usize,
) -> envoy_types::pb::envoy::config::core::v3::Node {
    use envoy_types::pb::envoy::config::core::v3::{Extension, Node};
    Node {
        id: id.into(),
        cluster: "mcp-gateway".into(),
        user_agent_name: "envoy".into(),
        extensions: (0..extensions)
            .map(|i| Extension {
                name: format!("envoy.filters.http.extension_number_{i}"),
                category: "envoy.filters.http".into(),
                type_urls: vec![format!(
                    "type.googleapis.com/envoy.extensions.filters.http.extension_{i}.v3.Config"
                )],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leak check looks at key and certificate bodies, not at words: the fuzzer's
    /// copy of an error message into the input is no leak, a key's body line would be.
    #[test]
    fn secret_material_is_base64_bodies_not_words_or_labels() {
        let own_words = "failed to parse certificate: PEM data could not be read\n";
        assert_eq!(base64_runs(own_words).count(), 0);
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDQ1x3nJ8m2Kc7Z";
        let key = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
        assert_eq!(base64_runs(&key).collect::<Vec<_>>(), [body]);
        let label = "A".repeat(70);
        let echoed = format!("-----BEGIN {label}-----\n{label}\n-----END {label}-----\n");
        assert_eq!(
            base64_runs(&echoed).count(),
            0,
            "a label is echoed on purpose"
        );
    }
}
