//! mTLS on the SDS listener (rustls, certificates from rcgen), identity-based authorization
//! of resource names, and certificate reload without restart.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::objects::{ca_secret, registration};
use support::pki::{Ca, Leaf};
use support::sds::TestServer;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trust_sds::sds::SECRET_TYPE_URL;
use trust_sds::sds::authz::Authz;
use trust_sds::server::ServeConfig;
use trust_sds::tls::TlsFiles;

const BROKER: &str = "spiffe://cluster.local/ns/mcp-system/sa/mcp-broker";
const TEAM_ENVOY: &str = "envoy.team.svc";

struct Pki {
    server_ca: Ca,
    client_ca: Ca,
    dir: tempfile::TempDir,
}

fn write_server_files(dir: &Path, ca: &Ca) {
    let leaf = ca.leaf("localhost");
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
}

async fn mtls_server(pki: &Pki) -> TestServer {
    write_server_files(pki.dir.path(), &pki.server_ca);
    std::fs::write(pki.dir.path().join("client-ca.crt"), pki.client_ca.pem()).unwrap();
    let policy = format!(
        "clients:\n- identity: {BROKER}\n  namespaces: ['*']\n- identity: {TEAM_ENVOY}\n  namespaces: [team]\n"
    );
    let config = ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            authz: Some(Arc::new(Authz::from_yaml(&policy).unwrap())),
            ..Default::default()
        },
        tls: Some(TlsFiles {
            cert: pki.dir.path().join("tls.crt"),
            key: pki.dir.path().join("tls.key"),
            client_ca: Some(pki.dir.path().join("client-ca.crt")),
        }),
        ..ServeConfig::default()
    };
    let server = TestServer::start_with(config).await;
    server
        .apply(vec![
            registration("team", "a", "a-ca"),
            ca_secret("team", "a-ca", &Ca::root("a").pem()),
            registration("other", "b", "b-ca"),
            ca_secret("other", "b-ca", &Ca::root("b").pem()),
        ])
        .await;
    server
}

fn client_config(trust: &Ca, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.issuer.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(leaf.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

async fn connect(
    server: &TestServer,
    tls: Arc<rustls::ClientConfig>,
) -> Result<SecretDiscoveryServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    Ok(SecretDiscoveryServiceClient::new(
        channel(server, tls).await?,
    ))
}

async fn channel(
    server: &TestServer,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let addr = server.running.sds_addr;
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let tls = tls.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// One SotW request; the first response or the error status.
async fn fetch(
    client: &mut SecretDiscoveryServiceClient<tonic::transport::Channel>,
    names: &[&str],
) -> Result<Vec<String>, tonic::Status> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_secrets(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let response = tokio::time::timeout(support::sds::TIMEOUT, stream.message())
        .await
        .expect("answer in time")?
        .expect("a response");
    Ok(response
        .resources
        .iter()
        .map(support::sds::secret_name)
        .collect())
}

fn pki() -> Pki {
    Pki {
        server_ca: Ca::root("trust-sds serving CA"),
        client_ca: Ca::root("SDS client CA"),
        dir: tempfile::tempdir().unwrap(),
    }
}

#[tokio::test]
async fn clients_without_a_certificate_are_refused() {
    let pki = pki();
    let server = mtls_server(&pki).await;
    let refused = match connect(&server, client_config(&pki.server_ca, None)).await {
        Err(_) => true,
        Ok(mut c) => fetch(&mut c, &["team/a"]).await.is_err(),
    };
    assert!(refused, "no client certificate, no service");
    let stranger = Ca::root("someone else").client_leaf(&[BROKER], &[]);
    let refused = match connect(&server, client_config(&pki.server_ca, Some(&stranger))).await {
        Err(_) => true,
        Ok(mut c) => fetch(&mut c, &["team/a"]).await.is_err(),
    };
    assert!(refused, "a certificate from another CA is refused");
}

#[tokio::test]
async fn identities_limit_what_a_client_may_read() {
    let pki = pki();
    let server = mtls_server(&pki).await;
    let broker = pki.client_ca.client_leaf(&[BROKER], &[]);
    let mut c = connect(&server, client_config(&pki.server_ca, Some(&broker)))
        .await
        .unwrap();
    assert_eq!(
        fetch(&mut c, &["team/a", "other/b"]).await.unwrap().len(),
        2
    );
    assert_eq!(
        fetch(&mut c, &[]).await.unwrap().len(),
        2,
        "'*' grants the wildcard"
    );

    let envoy = pki.client_ca.client_leaf(&[], &[TEAM_ENVOY]);
    let mut c = connect(&server, client_config(&pki.server_ca, Some(&envoy)))
        .await
        .unwrap();
    assert_eq!(fetch(&mut c, &["team/a"]).await.unwrap(), ["team/a"]);
    let denied = fetch(&mut c, &["team/a", "other/b"]).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(denied.message(), "envoy.team.svc may not read other/b");
    // FetchSecrets and the admin API honour the policy too.
    let fetched = c
        .fetch_secrets(DiscoveryRequest {
            resource_names: vec!["other/b".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fetched.code(), tonic::Code::PermissionDenied);
    let mut admin = trust_sds::admin::proto::admin_client::AdminClient::new(
        channel(&server, client_config(&pki.server_ca, Some(&envoy)))
            .await
            .unwrap(),
    );
    let listed = admin
        .list_bundles(trust_sds::admin::proto::ListBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        listed.code(),
        tonic::Code::PermissionDenied,
        "the admin API lists every tenant: '*' only"
    );
    let wildcard = fetch(&mut c, &[]).await.unwrap_err();
    assert_eq!(wildcard.code(), tonic::Code::PermissionDenied);
    assert!(wildcard.message().contains("wildcard"));
}

#[tokio::test]
async fn serving_certificate_reloads_without_restart() {
    let pki = pki();
    let server = mtls_server(&pki).await;
    let broker = pki.client_ca.client_leaf(&[BROKER], &[]);
    let rotated = Ca::root("rotated serving CA");
    write_server_files(pki.dir.path(), &rotated);
    // Bounded wait for the reload (the files are checked every 2 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut c) = connect(&server, client_config(&rotated, Some(&broker))).await
            && fetch(&mut c, &["team/a"]).await.is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = match connect(&server, client_config(&pki.server_ca, Some(&broker))).await {
        Err(_) => true,
        Ok(mut c) => fetch(&mut c, &["team/a"]).await.is_err(),
    };
    assert!(old, "clients that trust only the old CA no longer connect");
}

#[tokio::test]
async fn the_client_library_subscribes_over_mtls() {
    use trust_sds::client::{ClientOptions, ClientTls, TrustClient};
    let pki = pki();
    let server = mtls_server(&pki).await;
    let broker = pki.client_ca.client_leaf(&[BROKER], &[]);
    let mut options = ClientOptions::new(
        format!("https://localhost:{}", server.running.sds_addr.port()),
        vec!["team/a".into()],
    );
    options.tls = Some(ClientTls {
        server_ca_pem: pki.server_ca.pem().into_bytes(),
        identity: Some((
            broker.cert_pem.clone().into_bytes(),
            broker.key_pem.clone().into_bytes(),
        )),
        server_name: None,
    });
    let client = TrustClient::start(options).unwrap();
    client.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        client.trust("team/a").unwrap().version,
        server.version("team/a")
    );

    // The same client without a certificate gets nothing.
    let mut anonymous = ClientOptions::new(
        format!("https://localhost:{}", server.running.sds_addr.port()),
        vec!["team/a".into()],
    );
    anonymous.tls = Some(ClientTls {
        server_ca_pem: pki.server_ca.pem().into_bytes(),
        identity: None,
        server_name: None,
    });
    let client = TrustClient::start(anonymous).unwrap();
    let mut events = client.events();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(trust_sds::client::TrustEvent::Disconnected { reason }) = events.recv().await
            {
                return reason;
            }
        }
    })
    .await
    .expect("the server refuses the anonymous client");
    assert!(!refused.is_empty());
    assert!(!client.is_ready());
}
