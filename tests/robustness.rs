//! Robustness on every test run, on stable Rust: the fuzz drivers of `trust_sds::fuzzing`
//! (the same ones the cargo-fuzz targets in `fuzz/` call) replay the committed seeds and
//! crashers, then get thousands of deterministic mutated or random inputs. Nothing may
//! panic, and the invariants that protect clients must hold. Coverage-guided fuzzing:
//! `scripts/fuzz.sh` (CI runs it briefly).

mod support;

use std::path::Path;

use support::pki::{self, Ca};
use trust_sds::fuzzing;

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
fn committed_fuzz_seeds_and_crashers_replay_cleanly() {
    type Driver = fn(&[u8]);
    let targets: [(&str, Driver); 5] = [
        ("pem", fuzzing::pem),
        ("manifests", fuzzing::manifests),
        ("sotw", fuzzing::sotw),
        ("delta", fuzzing::delta),
        ("frames", fuzzing::grpc_frames),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, run) in targets {
        let mut replayed = 0;
        for dir in ["seeds", "regressions"] {
            let dir = root.join(dir).join(target);
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&input));
                assert!(outcome.is_ok(), "{target}: {} fails", path.display());
                replayed += 1;
            }
        }
        assert!(replayed >= 3, "{target}: only {replayed} committed inputs");
    }
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
        fuzzing::pem(&mutate(&mut rng, &seeds[i % seeds.len()]));
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
        fuzzing::manifests(&mutate(&mut rng, seed.as_bytes()));
    }
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    (0..rng.below(512)).map(|_| rng.next() as u8).collect()
}

#[test]
fn sotw_state_machine_keeps_its_invariants() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..1_000 {
        fuzzing::sotw(&random_bytes(&mut rng));
    }
}

#[test]
fn delta_state_machine_keeps_its_invariants() {
    let mut rng = Rng(0x5eed_0004);
    for _ in 0..1_000 {
        fuzzing::delta(&random_bytes(&mut rng));
    }
}

#[test]
fn request_framing_is_the_same_however_the_bytes_arrive() {
    let mut rng = Rng(0x5eed_0005);
    for _ in 0..2_000 {
        fuzzing::grpc_frames(&random_bytes(&mut rng));
    }
}
