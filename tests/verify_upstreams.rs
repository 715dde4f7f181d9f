//! `serve --verify-upstreams` end to end: the binary with `--manifests`, rustls HTTPS
//! upstreams on 127.0.0.1 with rcgen certificates, reached through the
//! `trust-sds.io/verify-connect-to` annotation while the URL's host sets SNI and the name
//! check. Results are read from `/statuses`, `/metrics` and `trust-sds status`.

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::envoy::http_get;
use support::manifests::{secret_yaml, write_atomic};
use support::pki::Ca;
use support::serve_process::ServeProcess;
use support::upstream::Upstream;

const NS: &str = "team";
const HOST: &str = "weather.example";

/// A registration whose upstream is `https://weather.example/mcp`, reached at `connect_to`.
fn registration(name: &str, secret: &str, connect_to: Option<&str>) -> String {
    let mut annotations = format!("    trust-sds.io/verify-url: https://{HOST}/mcp\n");
    if let Some(addr) = connect_to {
        annotations.push_str(&format!("    trust-sds.io/verify-connect-to: \"{addr}\"\n"));
    }
    format!(
        "apiVersion: mcp.kuadrant.io/v1\nkind: MCPServerRegistration\nmetadata:\n  name: {name}\n  namespace: {NS}\n  annotations:\n{annotations}spec:\n  targetRef:\n    group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: {name}-route\n  caCertSecretRef:\n    name: {secret}\n"
    )
}

/// The running binary.
struct Serve(ServeProcess);

async fn serve(dir: &Path) -> Serve {
    let args = [
        "--verify-upstreams",
        // Long enough that only bundle changes cause the re-checks seen here.
        "--verify-interval",
        "60m",
        "--verify-timeout",
        "5s",
        "--manifests",
    ];
    let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    args.push(dir.as_os_str());
    Serve(ServeProcess::start(&args).await)
}

impl Serve {
    async fn upstreams(&self) -> Vec<Value> {
        let (_, body) = http_get(self.0.admin_port(), "/statuses")
            .await
            .unwrap_or_default();
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["upstreams"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits (bounded, polling) until registration `name` has an `UpstreamTrusted` result
    /// with `reason`, and returns it.
    async fn wait_for(&self, name: &str, reason: &str) -> Value {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let current = self.upstreams().await;
                if let Some(u) = current.iter().find(|u| {
                    u["target"]["object"] == format!("{NS}/{name}") && u["reason"] == reason
                }) {
                    return u.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match found {
            Ok(u) => u,
            Err(_) => panic!(
                "{name} never reached {reason}; upstreams: {:#?}",
                self.upstreams().await
            ),
        }
    }
}

/// An address where nothing listens.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn each_verdict_and_a_rotation_without_restart() {
    let good = Ca::root("Weather CA");
    let other = Ca::root("Other CA");
    let right = Upstream::start(&good.leaf(HOST), &[]).await;
    let wrong_ca = Upstream::start(&other.leaf(HOST), &[]).await;
    let wrong_san = Upstream::start(&good.leaf("other.example"), &[]).await;
    let closed = closed_port().await;
    let (right_addr, wrong_addr, san_addr) = (
        right.addr.to_string(),
        wrong_ca.addr.to_string(),
        wrong_san.addr.to_string(),
    );

    let dir = tempfile::tempdir().unwrap();
    let docs = [
        secret_yaml(NS, "good-ca", &good.pem()),
        registration("right", "good-ca", Some(&right_addr)),
        registration("wrong-ca", "good-ca", Some(&wrong_addr)),
        registration("wrong-san", "good-ca", Some(&san_addr)),
        registration("closed", "good-ca", Some(&closed)),
        // Trusts the old CA until the Secret is rotated below.
        registration("rotating", "rotating-ca", Some(&right_addr)),
    ];
    std::fs::write(dir.path().join("all.yaml"), docs.join("---\n")).unwrap();
    let rotating = dir.path().join("rotating.yaml");
    let old = Ca::root("Old CA");
    std::fs::write(&rotating, secret_yaml(NS, "rotating-ca", &old.pem())).unwrap();
    let server = serve(dir.path()).await;

    let verified = server.wait_for("right", "Verified").await;
    assert_eq!(verified["status"], "True");
    let message = verified["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "upstream {HOST}:443 verified with bundle version "
        )),
        "{message}"
    );

    let unknown_issuer = server.wait_for("wrong-ca", "UnknownIssuer").await;
    assert_eq!(unknown_issuer["status"], "False");
    assert_eq!(
        unknown_issuer["message"],
        format!(
            "upstream {HOST}:443 presents a certificate issued by \"CN=Other CA\" that the served bundle does not trust"
        )
    );

    let mismatch = server.wait_for("wrong-san", "HostnameMismatch").await;
    assert_eq!(mismatch["status"], "False");
    assert_eq!(
        mismatch["message"],
        format!(
            "upstream {HOST}:443 presents a certificate for \"other.example\", not for \"{HOST}\""
        )
    );

    let unreachable = server.wait_for("closed", "Unreachable").await;
    assert_eq!(
        unreachable["status"], "Unknown",
        "no TLS answer is not a trust failure"
    );
    let message = unreachable["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "upstream {HOST}:443 unreachable (connecting to {closed}): "
        )),
        "{message}"
    );

    let before = server.wait_for("rotating", "UnknownIssuer").await;
    assert!(
        before["message"]
            .as_str()
            .unwrap()
            .contains("\"CN=Weather CA\""),
        "{before}"
    );
    // Rotation of the Secret to the right CA: verified again, same process.
    write_atomic(&rotating, &secret_yaml(NS, "rotating-ca", &good.pem()));
    let after = server.wait_for("rotating", "Verified").await;
    assert_eq!(after["status"], "True");

    // Shown with --no-capture: what an operator reads in /statuses.
    for u in server.upstreams().await {
        eprintln!(
            "{}: {} {} {}",
            u["target"]["object"], u["status"], u["reason"], u["message"]
        );
    }
    // The same results through the gRPC admin API and the metrics.
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_trust-sds"))
        .args([
            "status",
            "--server",
            &format!("http://{}", server.0.sds_addr),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(2),
        "a trust failure fails the command: {stdout}"
    );
    for line in [
        "team/right",
        "Verified",
        "team/wrong-ca",
        "UnknownIssuer",
        "HostnameMismatch",
        "Unreachable",
    ] {
        assert!(stdout.contains(line), "missing {line} in:\n{stdout}");
    }
    let (_, metrics) = http_get(server.0.admin_port(), "/metrics").await.unwrap();
    for expected in [
        "trust_sds_upstreams{result=\"Verified\"} 2",
        "trust_sds_upstreams{result=\"UnknownIssuer\"} 1",
        "trust_sds_upstreams{result=\"HostnameMismatch\"} 1",
        "trust_sds_upstreams{result=\"Unreachable\"} 1",
        "trust_sds_upstream_verifications_total{result=\"Verified\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in:\n{metrics}"
        );
    }
}

/// A registration whose URL cannot be derived says what to set, rather than being skipped
/// in silence; one without a served bundle has no result at all.
#[tokio::test]
async fn no_url_and_no_bundle() {
    let ca = Ca::root("Weather CA");
    let dir = tempfile::tempdir().unwrap();
    let plain = "apiVersion: mcp.kuadrant.io/v1\nkind: MCPServerRegistration\nmetadata:\n  name: plain\n  namespace: team\nspec:\n  targetRef:\n    name: plain-route\n  caCertSecretRef:\n    name: ca\n";
    let docs = [
        secret_yaml(NS, "ca", &ca.pem()),
        plain.to_owned(),
        registration("unserved", "missing-ca", None),
    ];
    std::fs::write(dir.path().join("all.yaml"), docs.join("---\n")).unwrap();
    let server = serve(dir.path()).await;
    let no_url = server.wait_for("plain", "NoUpstreamURL").await;
    assert_eq!(no_url["status"], "Unknown");
    assert_eq!(
        no_url["message"],
        "no upstream URL: HTTPRoute team/plain-route is not known; set the annotation trust-sds.io/verify-url"
    );
    assert!(
        !server
            .upstreams()
            .await
            .iter()
            .any(|u| u["target"]["object"] == "team/unserved"),
        "no bundle, no verification"
    );
}
