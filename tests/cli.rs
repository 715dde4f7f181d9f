//! The `trust-sds` binary as an operator runs it.

mod support;

use std::process::Command;

use support::manifests::{registration_yaml, secret_yaml};
use support::pki::{self, Ca};
use support::upstream::Upstream;
use trust_sds::server::{self, ServeConfig};

fn trust_sds() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trust-sds"))
}

fn repo(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_reports_each_secret_with_the_status_messages() {
    let out = trust_sds()
        .args(["check", &repo("examples/quickstart/secrets.yaml")])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing Secret fails the command:\n{stdout}"
    );
    assert!(
        stdout.contains("secret mcp-demo/weather-ca: OK: 1 certificate(s)"),
        "{stdout}"
    );
    assert!(stdout.contains(
        "secret mcp-demo/news-ca: CA certificate secret news-ca is missing required label mcp.kuadrant.io/secret=true (CACertSecretMissingLabel)"
    ));
}

#[test]
fn check_accepts_pem_files_and_refuses_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, Ca::root("Good").pem()).unwrap();
    let out = trust_sds().arg("check").arg(&good).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let key = dir.path().join("key.pem");
    let key_pem = pki::private_key_pem();
    std::fs::write(&key, &key_pem).unwrap();
    let out = trust_sds().arg("check").arg(&key).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("CA certificate in secret key.pem is invalid: unexpected PEM block type \"PRIVATE KEY\", expected CERTIFICATE"), "{stdout}");
    assert!(!stdout.contains(key_pem.lines().nth(1).unwrap()));
}

/// `check` accepts an expiring or expired CA (it is still served) and says so.
#[test]
fn check_warns_about_expiring_and_expired_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let now = trust_sds::pipeline::unix_now();
    let soon = dir.path().join("soon.pem");
    std::fs::write(
        &soon,
        Ca::root_expiring("Soon", now + 3 * 86_400 + 3_600).pem(),
    )
    .unwrap();
    let out = trust_sds().arg("check").arg(&soon).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("OK: 1 certificate(s)")
            && stdout.contains("; warning: certificate \"Soon\" expires at ")
            && stdout.contains("(in 3 days)"),
        "{stdout}"
    );

    let past = dir.path().join("past.pem");
    std::fs::write(&past, Ca::root_expiring("Past", now - 86_400).pem()).unwrap();
    let out = trust_sds().arg("check").arg(&past).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("; warning: certificate \"Past\" expired at "),
        "{stdout}"
    );

    let fresh = dir.path().join("fresh.pem");
    std::fs::write(&fresh, Ca::root("Fresh").pem()).unwrap();
    let out = trust_sds().arg("check").arg(&fresh).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("warning"), "{stdout}");
}

/// A condition type the API server would refuse fails at start-up, saying what is allowed.
#[test]
fn serve_refuses_an_invalid_condition_type() {
    let out = trust_sds()
        .args(["serve", "--kube", "--condition-type", "CA Ready!"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"CA Ready!\" is not a valid condition type")
            && stderr.contains("CACertificateReady"),
        "{stderr}"
    );
}

#[test]
fn crd_prints_the_committed_crds() {
    let out = trust_sds().arg("crd").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(repo("deploy/crds.yaml")).unwrap()
    );
}

#[tokio::test]
async fn probe_and_status_against_a_running_server() {
    let ca = Ca::root("Probe CA");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("all.yaml"),
        format!(
            "{}---\n{}",
            registration_yaml("mcp-demo", "weather", "weather-ca"),
            secret_yaml("mcp-demo", "weather-ca", &ca.pem())
        ),
    )
    .unwrap();
    let running = server::start_manifests(
        ServeConfig::default(),
        dir.path().to_path_buf(),
        "default".into(),
    )
    .await
    .unwrap();
    let upstream = Upstream::start(&ca.leaf("weather.mcp.test"), &[]).await;
    let sds = format!("http://{}", running.sds_addr);

    let probe = tokio::process::Command::new(env!("CARGO_BIN_EXE_trust-sds"))
        .args([
            "probe",
            "--sds",
            &sds,
            "--registration",
            "mcp-demo/weather",
            "--connect-to",
            &upstream.addr.to_string(),
            "https://weather.mcp.test/mcp",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert!(
        stdout.contains("initialize: HTTP 200 from upstream ok (protocol 2025-06-18)"),
        "{stdout}"
    );

    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_trust-sds"))
        .args(["status", "--server", &sds])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{stdout}");
    assert!(stdout.contains("source: synced"));
    assert!(
        stdout.contains("mcp-demo/weather") && stdout.contains("True") && stdout.contains("Valid"),
        "{stdout}"
    );
}

/// The printed bootstrap is accepted by a real Envoy, with and without SAN matching.
#[test]
fn envoy_config_prints_a_bootstrap_envoy_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        &[][..],
        &[
            "--match-san",
            "weather.mcp.test",
            "--delta",
            "--sds-address",
            "trust-sds.mcp-system.svc:18000",
        ][..],
    ] {
        let out = trust_sds()
            .args([
                "envoy-config",
                "--registration",
                "mcp-demo/weather",
                "--upstream",
                "weather.mcp.svc:443",
                "--bootstrap",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("name: mcp-demo/weather"));
        let path = dir.path().join("bootstrap.yaml");
        std::fs::write(&path, &text).unwrap();
        let validate = Command::new(support::envoy::envoy_binary())
            .args([
                "--mode",
                "validate",
                "--use-dynamic-base-id",
                "-l",
                "error",
                "-c",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            validate.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&validate.stderr)
        );
    }
    let bad = trust_sds()
        .args(["envoy-config", "--registration", "weather"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--registration must be <namespace>/<name>")
    );
}
