//! Randomised robustness tests ("fuzzing" on stable Rust, deterministic seeds): the PEM/X.509
//! path, the manifests parser and the SDS stream state machines get thousands of mutated or
//! random inputs. Nothing may panic, and the invariants that protect clients must hold.
//! (cargo-fuzz needs a nightly toolchain, which this project's machines do not have.)

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use support::pki::{self, Ca};
use trust_sds::sds::delta::DeltaStream;
use trust_sds::sds::encode::{EncodedResource, SdsSnapshot};
use trust_sds::sds::sotw::SotwStream;
use trust_sds::sds::{SECRET_TYPE_URL, UnknownNamePolicy};
use trust_sds::source::manifests::parse_manifests;
use trust_sds::validation::{Subject, validate_data};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(rng.below(out.len() + 1)),
            2 => {
                let i = rng.below(out.len() + 1);
                let junk: &[&[u8]] = &[
                    b"-----BEGIN CERTIFICATE-----\n",
                    b"-----END CERTIFICATE-----\n",
                    b"-----BEGIN RSA PRIVATE KEY-----\n",
                    b"\x00\xff",
                    b"====\n",
                    b"\r\n",
                ];
                let piece = junk[rng.below(junk.len())];
                out.splice(i..i, piece.iter().copied());
            }
            3 if out.len() > 2 => {
                let (a, b) = (rng.below(out.len()), rng.below(out.len()));
                let (a, b) = (a.min(b), a.max(b));
                out.drain(a..b);
            }
            4 => {
                let copy = out.clone();
                out.extend_from_slice(&copy[..rng.below(copy.len() + 1)]);
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out
}

#[test]
fn pem_validation_never_panics_and_never_echoes_input() {
    let root = Ca::root("Fuzz Root");
    let bundle = format!(
        "{}{}{}",
        root.pem(),
        root.intermediate("Fuzz Int").pem(),
        pki::not_ca_pem("leaf")
    );
    let seeds = [
        bundle.into_bytes(),
        root.pem().into_bytes(),
        pki::private_key_pem().into_bytes(),
    ];
    let mut rng = Rng(0x5eed_0001);
    for i in 0..3_000 {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        match validate_data(Subject::ServerCa, &input) {
            Ok(bundle) => assert!(!bundle.certificates().is_empty()),
            Err(check) => {
                let message = check.to_string();
                // No base64 body line of the input may show up in the message.
                for line in String::from_utf8_lossy(&input)
                    .lines()
                    .filter(|l| l.len() >= 40 && !l.starts_with("-----"))
                {
                    assert!(!message.contains(line), "input echoed in {message:?}");
                }
            }
        }
    }
}

#[test]
fn manifest_parser_never_panics() {
    let ca = Ca::root("Fuzz");
    let seed = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: n\n  labels: {{mcp.kuadrant.io/secret: \"true\"}}\nstringData:\n  ca.crt: |\n{}---\napiVersion: mcp.kuadrant.io/v1\nkind: MCPServerRegistration\nmetadata: {{name: r, namespace: n}}\nspec:\n  targetRef: {{name: route}}\n  caCertSecretRef: {{name: s}}\n  state: Enabled\n---\napiVersion: v1\nkind: List\nitems: []\n",
        ca.pem()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..2_000 {
        let input = mutate(&mut rng, seed.as_bytes());
        let _ = parse_manifests(&String::from_utf8_lossy(&input), "fuzz.yaml", "default");
    }
}

fn snapshot(rng: &mut Rng, names: &[&str]) -> SdsSnapshot {
    let mut resources: HashMap<Arc<str>, Arc<EncodedResource>> = HashMap::new();
    for n in names {
        if rng.below(3) == 0 {
            continue;
        }
        let version: Arc<str> = Arc::from(format!("v{}", rng.below(3)));
        let any = Any {
            type_url: SECRET_TYPE_URL.into(),
            value: n.as_bytes().to_vec(),
        };
        resources.insert(Arc::from(*n), Arc::new(EncodedResource { version, any }));
    }
    SdsSnapshot {
        resources,
        ..SdsSnapshot::default()
    }
}

const NAMES: [&str; 5] = ["a/1", "a/2", "b/1", "gateway/a/x", "*"];

fn pick_names(rng: &mut Rng) -> Vec<String> {
    (0..rng.below(4))
        .map(|_| NAMES[rng.below(NAMES.len())].to_owned())
        .collect()
}

fn status(rng: &mut Rng) -> Option<Status> {
    (rng.below(4) == 0).then(|| Status {
        code: 3,
        message: "nope".into(),
        details: vec![],
    })
}

#[test]
fn sotw_state_machine_keeps_its_invariants() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..300 {
        let mut stream = SotwStream::new(true);
        let mut last_nonce = 0u64;
        for _ in 0..40 {
            let snap = snapshot(&mut rng, &NAMES[..4]);
            let response = if rng.below(2) == 0 {
                let names = pick_names(&mut rng);
                let nonce = match rng.below(3) {
                    0 => String::new(),
                    1 => last_nonce.to_string(),
                    _ => rng.next().to_string(),
                };
                let type_url = if rng.below(10) == 0 {
                    "bogus".into()
                } else {
                    SECRET_TYPE_URL.into()
                };
                let req = DiscoveryRequest {
                    resource_names: names,
                    response_nonce: nonce,
                    error_detail: status(&mut rng),
                    type_url,
                    ..Default::default()
                };
                stream.on_request(&req, &snap).1
            } else {
                stream.on_snapshot(&snap)
            };
            if let Some(r) = response {
                let nonce: u64 = r.nonce.parse().unwrap();
                assert_eq!(nonce, last_nonce + 1, "nonces are consecutive");
                last_nonce = nonce;
                let names: Vec<String> = r
                    .resources
                    .iter()
                    .map(|a| String::from_utf8(a.value.clone()).unwrap())
                    .collect();
                let unique: BTreeSet<&String> = names.iter().collect();
                assert_eq!(unique.len(), names.len(), "a name repeated");
                assert!(!names.is_empty(), "empty SotW responses make Envoy NACK");
                if !stream.is_wildcard() {
                    for n in &names {
                        assert!(stream.names().any(|s| s == n), "unrequested {n}");
                    }
                }
            }
        }
    }
}

#[test]
fn delta_state_machine_keeps_its_invariants() {
    let mut rng = Rng(0x5eed_0004);
    for round in 0..300 {
        let policy = if round % 2 == 0 {
            UnknownNamePolicy::Hold
        } else {
            UnknownNamePolicy::NotFound
        };
        let mut stream = DeltaStream::new(policy, true);
        let mut last_nonce = 0u64;
        for _ in 0..40 {
            let snap = snapshot(&mut rng, &NAMES[..4]);
            let response = if rng.below(2) == 0 {
                let req = DeltaDiscoveryRequest {
                    type_url: SECRET_TYPE_URL.into(),
                    resource_names_subscribe: pick_names(&mut rng),
                    resource_names_unsubscribe: pick_names(&mut rng),
                    initial_resource_versions: pick_names(&mut rng)
                        .into_iter()
                        .map(|n| (n, format!("v{}", rng.below(3))))
                        .collect(),
                    response_nonce: if rng.below(2) == 0 {
                        String::new()
                    } else {
                        last_nonce.to_string()
                    },
                    error_detail: status(&mut rng),
                    ..Default::default()
                };
                stream.on_request(&req, &snap).1
            } else {
                stream.on_snapshot(&snap)
            };
            if let Some(r) = response {
                let nonce: u64 = r.nonce.parse().unwrap();
                assert_eq!(nonce, last_nonce + 1);
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
    }
}
