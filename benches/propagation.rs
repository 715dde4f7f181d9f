//! Propagation time from a manifests file change to the broker client's trust swap.
//!
//! `cargo bench --bench propagation [-- ROTATIONS]`: starts trust-sds on a temporary
//! manifests directory, subscribes one client (Delta and SotW), rewrites the CA Secret file
//! ROTATIONS times (atomic rename, as editors and kubelet do) and reports the time from the
//! rename to the client's `TrustEvent::Updated`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::manifests::{registration_yaml, secret_yaml, write_atomic};
use support::pki::Ca;
use trust_sds::client::{ClientOptions, Protocol, TrustClient, TrustEvent};
use trust_sds::server::{self, ServeConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn measure(protocol: Protocol, rotations: usize, pems: &[String]) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reg.yaml"),
        registration_yaml("bench", "weather", "weather-ca"),
    )
    .unwrap();
    let ca_file = dir.path().join("ca.yaml");
    std::fs::write(&ca_file, secret_yaml("bench", "weather-ca", &pems[0])).unwrap();
    let running = server::start_manifests(
        ServeConfig::default(),
        dir.path().to_path_buf(),
        "default".into(),
    )
    .await
    .unwrap();
    let mut options = ClientOptions::new(
        format!("http://{}", running.sds_addr),
        vec!["bench/weather".into()],
    );
    options.protocol = protocol;
    let client = TrustClient::start(options).unwrap();
    client.wait_ready(Duration::from_secs(10)).await.unwrap();
    let mut events = client.events();
    let mut samples = Vec::with_capacity(rotations);
    for i in 1..=rotations {
        let text = secret_yaml("bench", "weather-ca", &pems[i % pems.len()]);
        let start = Instant::now();
        write_atomic(&ca_file, &text);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Ok(TrustEvent::Updated { at, .. })) => {
                    samples.push(at.duration_since(start));
                    break;
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                other => panic!("rotation {i}: no update ({other:?})"),
            }
        }
    }
    running.shutdown().await;
    samples
}

fn main() {
    let rotations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Distinct CAs, generated before timing starts.
    let pems: Vec<String> = (0..rotations + 1)
        .map(|i| Ca::root(&format!("Rotation {i}")).pem())
        .collect();
    println!("propagation: manifests file rename -> client trust swap, {rotations} rotations");
    for protocol in [Protocol::Delta, Protocol::Sotw] {
        let mut samples = rt.block_on(measure(protocol, rotations, &pems));
        samples.sort();
        println!(
            "  {protocol:?}: median {:?}  p99 {:?}  min {:?}  max {:?}",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples[0],
            samples[samples.len() - 1]
        );
    }
}
