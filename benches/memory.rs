//! Memory and base-rotation cost with a shared gateway bundle.
//!
//! `cargo bench --bench memory [-- 500,2000,10000]`: for each count, a manifests directory
//! holds one `MCPGatewayExtension` whose base bundle is about 132 KB of PEM, and that many
//! registrations in its namespace, each with a CA of its own, so every served bundle is the
//! base plus a few hundred bytes. The server runs as `serve --manifests` does, in a child
//! process (this binary re-executed with `--child`), so its resident memory is its own.
//! It reports the RSS once every bundle is served, then rewrites the base Secret's file
//! (one certificate replaced) and reports the time and CPU until every bundle carries the
//! new base.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use support::manifests::{registration_yaml, secret_yaml, write_atomic};
use support::pki::Ca;
use trust_sds::server::{self, ServeConfig};

const NAMESPACE: &str = "bench";
/// The size of the gateway-wide base bundle, as in the issue that asked for this bench.
const BASE_BYTES: usize = 132 * 1024;

fn extension_yaml() -> String {
    format!(
        "apiVersion: mcp.kuadrant.io/v1\nkind: MCPGatewayExtension\nmetadata:\n  name: gateway\n  namespace: {NAMESPACE}\nspec:\n  targetRef:\n    group: gateway.networking.k8s.io\n    kind: Gateway\n    name: gateway\n  caCertBundleRef:\n    name: base-ca\n"
    )
}

/// Certificates until the PEM reaches `BASE_BYTES`.
fn base_certificates() -> Vec<String> {
    let mut certs = Vec::new();
    let mut bytes = 0;
    while bytes < BASE_BYTES {
        let pem = Ca::root(&format!(
            "Base CA {} of the platform's trust store",
            certs.len()
        ))
        .pem();
        bytes += pem.len();
        certs.push(pem);
    }
    certs
}

fn write_manifests(dir: &Path, registrations: usize, base: &[String]) {
    std::fs::write(dir.join("gateway.yaml"), extension_yaml()).unwrap();
    std::fs::write(
        dir.join("base.yaml"),
        secret_yaml(NAMESPACE, "base-ca", &base.concat()),
    )
    .unwrap();
    let mut regs = String::new();
    let mut secrets = String::new();
    for i in 0..registrations {
        let secret = format!("r{i}-ca");
        regs.push_str(&registration_yaml(NAMESPACE, &format!("r{i}"), &secret));
        regs.push_str("---\n");
        secrets.push_str(&secret_yaml(
            NAMESPACE,
            &secret,
            &Ca::root(&format!("r{i}")).pem(),
        ));
        secrets.push_str("---\n");
    }
    std::fs::write(dir.join("registrations.yaml"), regs).unwrap();
    std::fs::write(dir.join("secrets.yaml"), secrets).unwrap();
}

fn proc_self(field: &str) -> u64 {
    support::procfs::status_kib("self", field)
}

fn cpu_self() -> Duration {
    support::procfs::cpu("self")
}

/// The server: loads the directory, reports, rotates the base, reports.
async fn child(dir: &Path, registrations: usize) {
    let started = Instant::now();
    let running =
        server::start_manifests(ServeConfig::default(), dir.to_path_buf(), "default".into())
            .await
            .unwrap();
    let mut snapshot = running.sds_snapshot.clone();
    let served = registrations + 1;
    snapshot
        .wait_for(|s| s.resources.len() == served)
        .await
        .unwrap();
    let loaded = started.elapsed();
    println!(
        "loaded {} {} {}",
        loaded.as_micros(),
        proc_self("VmRSS:"),
        proc_self("VmHWM:")
    );
    let before: Vec<(std::sync::Arc<str>, std::sync::Arc<str>)> = snapshot
        .borrow()
        .resources
        .iter()
        .map(|(n, r)| (n.clone(), r.version.clone()))
        .collect();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let new_base = line.trim().to_owned();
    let cpu = cpu_self();
    let start = Instant::now();
    write_atomic(
        &dir.join("base.yaml"),
        &std::fs::read_to_string(new_base).unwrap(),
    );
    snapshot
        .wait_for(|s| {
            before
                .iter()
                .all(|(n, v)| s.resources.get(n).is_some_and(|r| r.version != *v))
        })
        .await
        .unwrap();
    println!(
        "rotated {} {} {}",
        start.elapsed().as_micros(),
        (cpu_self() - cpu).as_micros(),
        proc_self("VmRSS:")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(
            Path::new(&args[pos + 1]),
            args[pos + 2].parse().unwrap(),
        ));
        return;
    }
    let counts: Vec<usize> = args
        .iter()
        .skip(1)
        .find(|a| a.contains(|c: char| c.is_ascii_digit()) && !a.starts_with('-'))
        .map(|a| a.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![500, 2_000, 10_000]);
    let base = base_certificates();
    let mut rotated = base.clone();
    rotated[0] = Ca::root("Base CA 0, rotated").pem();
    println!(
        "memory: one gateway base of {} certificates ({} KB of PEM) in every registration's bundle, served as `serve --manifests` serves it",
        base.len(),
        base.concat().len() / 1024
    );
    println!(
        "{:>13} {:>10} {:>10} {:>14} {:>10} {:>14} {:>14} {:>12}",
        "registrations",
        "loaded in",
        "RSS MiB",
        "KiB/registr.",
        "peak MiB",
        "base rotation",
        "rotation CPU",
        "CPU/registr."
    );
    for registrations in counts {
        let dir = tempfile::tempdir().unwrap();
        write_manifests(dir.path(), registrations, &base);
        // The next base waits outside the watched directory.
        let spare = tempfile::tempdir().unwrap();
        let rotated_file = spare.path().join("base.yaml");
        std::fs::write(
            &rotated_file,
            secret_yaml(NAMESPACE, "base-ca", &rotated.concat()),
        )
        .unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .arg(dir.path())
            .arg(registrations.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut stdin = child.stdin.take().unwrap();
        let mut read = || {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            line.split_whitespace()
                .skip(1)
                .map(|x| x.parse::<u64>().unwrap())
                .collect::<Vec<u64>>()
        };
        let loaded = read();
        writeln!(stdin, "{}", rotated_file.display()).unwrap();
        stdin.flush().unwrap();
        let rotation = read();
        let _ = child.wait();
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "{registrations:>13} {:>10.2?} {:>10.1} {:>14.1} {:>10.1} {:>14.2?} {:>14.2?} {:>12.2?}",
            Duration::from_micros(loaded[0]),
            mib(loaded[1]),
            loaded[1] as f64 / registrations as f64,
            mib(loaded[2].max(rotation[2])),
            Duration::from_micros(rotation[0]),
            Duration::from_micros(rotation[1]),
            Duration::from_micros(rotation[1]) / registrations as u32,
        );
    }
}
