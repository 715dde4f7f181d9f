//! The broker's path end to end, over loopback with real TLS (rustls, rcgen certificates):
//! manifests file change -> trust-sds -> SDS push -> client trust store -> new TLS
//! connections to an HTTPS MCP upstream, with no client rebuilt and nothing restarted.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::manifests::{registration_yaml, secret_yaml, write_atomic};
use support::objects::{ca_secret, registration};
use support::pki::Ca;
use support::sds::TestServer;
use support::upstream::Upstream;
use tokio::sync::broadcast;
use trust_sds::client::{ClientOptions, Connection, Protocol, TrustClient, TrustEvent};
use trust_sds::probe::mcp_initialize;
use trust_sds::server::{self, ServeConfig};

const NAME: &str = "mcp-demo/weather";
const URL: &str = "https://weather.mcp.test/mcp";

async fn wait_event(
    rx: &mut broadcast::Receiver<TrustEvent>,
    what: &str,
    pred: impl Fn(&TrustEvent) -> bool,
) -> TrustEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events closed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn updated(e: &TrustEvent) -> bool {
    matches!(e, TrustEvent::Updated { name, .. } if name == NAME)
}

/// A client that was configured once with `roots` and never learns anything new.
fn static_config(roots: &[&Ca]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        store.add(ca.issuer.der().clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

struct Setup {
    dir: tempfile::TempDir,
    server: server::Running,
}

async fn manifests_server(pem: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reg.yaml"),
        registration_yaml("mcp-demo", "weather", "weather-ca"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ca.yaml"),
        secret_yaml("mcp-demo", "weather-ca", pem),
    )
    .unwrap();
    let server = server::start_manifests(
        ServeConfig::default(),
        dir.path().to_path_buf(),
        "default".into(),
    )
    .await
    .unwrap();
    Setup { dir, server }
}

fn client(endpoint: String, protocol: Protocol) -> TrustClient {
    let mut options = ClientOptions::new(endpoint, vec![NAME.to_owned()]);
    options.protocol = protocol;
    TrustClient::start(options).unwrap()
}

async fn rotation_without_restart(protocol: Protocol) {
    let (a, b) = (Ca::root("CA A"), Ca::root("CA B"));
    let setup = manifests_server(&a.pem()).await;
    let upstream = Upstream::start(&a.leaf("weather.mcp.test"), &[]).await;
    let client = client(format!("http://{}", setup.server.sds_addr), protocol);
    client.wait_ready(Duration::from_secs(10)).await.unwrap();
    let mut events = client.events();
    // One config for the whole test: it is never rebuilt.
    let tls = client.client_config(NAME);
    let ok = mcp_initialize(URL, tls.clone(), Some(upstream.addr))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.server_name.as_deref(), Some("upstream ok"));

    // Rotation step 1: serve A+B, move the upstream to a B certificate.
    write_atomic(
        &setup.dir.path().join("ca.yaml"),
        &secret_yaml("mcp-demo", "weather-ca", &format!("{}{}", a.pem(), b.pem())),
    );
    wait_event(&mut events, "A+B", updated).await;
    assert_eq!(client.trust(NAME).unwrap().served_certificates, 2);
    upstream.set_certificate(&b.leaf("weather.mcp.test"), &[]);
    assert_eq!(
        mcp_initialize(URL, tls.clone(), Some(upstream.addr))
            .await
            .unwrap()
            .status,
        200
    );
    let stale = mcp_initialize(URL, static_config(&[&a]), Some(upstream.addr)).await;
    assert!(
        stale.is_err(),
        "a client that only had A must fail against B"
    );

    // Step 2: B only. The live client keeps working; A is no longer trusted.
    write_atomic(
        &setup.dir.path().join("ca.yaml"),
        &secret_yaml("mcp-demo", "weather-ca", &b.pem()),
    );
    wait_event(&mut events, "B only", updated).await;
    assert_eq!(
        mcp_initialize(URL, tls.clone(), Some(upstream.addr))
            .await
            .unwrap()
            .status,
        200
    );
    upstream.set_certificate(&a.leaf("weather.mcp.test"), &[]);
    let err = mcp_initialize(URL, tls.clone(), Some(upstream.addr))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
}

#[tokio::test]
async fn delta_client_follows_rotation_without_restart() {
    rotation_without_restart(Protocol::Delta).await;
}

#[tokio::test]
async fn sotw_client_follows_rotation_without_restart() {
    rotation_without_restart(Protocol::Sotw).await;
}

#[tokio::test]
async fn unserved_and_withdrawn_names_fail_closed() {
    let a = Ca::root("CA A");
    let setup = manifests_server(&a.pem()).await;
    let upstream = Upstream::start(&a.leaf("weather.mcp.test"), &[]).await;
    let endpoint = format!("http://{}", setup.server.sds_addr);

    let other = TrustClient::start(ClientOptions::new(
        endpoint.clone(),
        vec!["mcp-demo/unknown".into()],
    ))
    .unwrap();
    assert!(!other.is_ready());
    let err = mcp_initialize(
        URL,
        other.client_config("mcp-demo/unknown"),
        Some(upstream.addr),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("no trust bundle for mcp-demo/unknown"),
        "{err:#}"
    );

    let client = client(endpoint, Protocol::Delta);
    let mut events = client.events();
    client.wait_ready(Duration::from_secs(10)).await.unwrap();
    let tls = client.client_config(NAME);
    assert_eq!(
        mcp_initialize(URL, tls.clone(), Some(upstream.addr))
            .await
            .unwrap()
            .status,
        200
    );
    std::fs::remove_file(setup.dir.path().join("ca.yaml")).unwrap();
    wait_event(&mut events, "withdrawal", |e| {
        matches!(e, TrustEvent::Removed { .. })
    })
    .await;
    assert!(
        mcp_initialize(URL, tls, Some(upstream.addr)).await.is_err(),
        "withdrawn trust fails closed"
    );
}

#[tokio::test]
async fn self_signed_upstream_is_its_own_anchor() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["weather.mcp.test".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weather.mcp.test");
    let cert = params.self_signed(&key).unwrap();
    let leaf = support::pki::Leaf {
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    };
    let setup = manifests_server(&leaf.cert_pem).await;
    let upstream = Upstream::start(&leaf, &[]).await;
    let client = client(format!("http://{}", setup.server.sds_addr), Protocol::Delta);
    client.wait_ready(Duration::from_secs(10)).await.unwrap();
    let ok = mcp_initialize(URL, client.client_config(NAME), Some(upstream.addr))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn intermediate_chain_verifies_against_the_root() {
    let root = Ca::root("Root");
    let intermediate = root.intermediate("Issuing CA");
    let setup = manifests_server(&root.pem()).await;
    let upstream = Upstream::start(
        &intermediate.leaf("weather.mcp.test"),
        &[intermediate.issuer.der().to_vec()],
    )
    .await;
    let client = client(format!("http://{}", setup.server.sds_addr), Protocol::Delta);
    client.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        mcp_initialize(URL, client.client_config(NAME), Some(upstream.addr))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn server_restart_keeps_trust_then_resyncs() {
    let (a, b) = (Ca::root("CA A"), Ca::root("CA B"));
    let first = TestServer::start(trust_sds::sds::UnknownNamePolicy::Hold).await;
    first
        .apply(vec![
            registration("mcp-demo", "weather", "ca"),
            ca_secret("mcp-demo", "ca", &a.pem()),
        ])
        .await;
    let addr = first.running.sds_addr;
    let upstream = Upstream::start(&a.leaf("weather.mcp.test"), &[]).await;
    let client = client(format!("http://{addr}"), Protocol::Delta);
    let mut events = client.events();
    client.wait_ready(Duration::from_secs(10)).await.unwrap();
    // The state says what the events said, for a reader that subscribes late.
    assert_eq!(client.connection(), Connection::Connected);
    let tls = client.client_config(NAME);

    first.running.shutdown().await;
    wait_event(&mut events, "disconnect", |e| {
        matches!(e, TrustEvent::Disconnected { .. })
    })
    .await;
    // A reconnect that fails says why: the transport error's cause, not just its name.
    wait_event(&mut events, "a refused reconnect, with its cause", |e| {
        matches!(e, TrustEvent::Disconnected { reason } if reason.contains("Connection refused"))
    })
    .await;
    assert!(
        matches!(client.connection(), Connection::Disconnected { reason } if reason.contains("Connection refused")),
        "{:?}",
        client.connection()
    );
    assert_eq!(
        mcp_initialize(URL, tls.clone(), Some(upstream.addr))
            .await
            .unwrap()
            .status,
        200,
        "last good trust kept"
    );

    let second = TestServer::start_with(ServeConfig {
        sds_addr: addr,
        ..ServeConfig::default()
    })
    .await;
    second
        .apply(vec![
            registration("mcp-demo", "weather", "ca"),
            ca_secret("mcp-demo", "ca", &b.pem()),
        ])
        .await;
    let event = wait_event(&mut events, "resync", updated).await;
    let TrustEvent::Updated { version, .. } = event else {
        unreachable!()
    };
    assert_eq!(version, second.version(NAME));
    upstream.set_certificate(&b.leaf("weather.mcp.test"), &[]);
    assert_eq!(
        mcp_initialize(URL, tls, Some(upstream.addr))
            .await
            .unwrap()
            .status,
        200
    );
}
