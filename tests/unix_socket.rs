//! The Unix socket listener: how its clients are identified (streams and FetchSecrets
//! alike), what `--uds PATH` may replace, and which gRPC client stacks can use it.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message as _;
use support::objects::{ca_secret, registration};
use support::pki::Ca;
use support::sds::{SotwClient, TestServer, secret_name};
use tonic::transport::Channel;
use trust_sds::sds::SECRET_TYPE_URL;
use trust_sds::sds::authz::Authz;
use trust_sds::server::ServeConfig;

/// A client on the Unix socket at `path`.
async fn unix_client(path: &Path) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(support::sds::unix_channel(path).await)
}

fn fetch_request(node: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node.to_owned(),
            ..Default::default()
        }),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        ..Default::default()
    }
}

/// A server on TCP and a Unix socket whose policy grants node `tenant` the namespaces
/// `team` and `gateway` (a namespace that shares its name with the gateway-bundle prefix).
async fn tenant_server(path: &Path) -> TestServer {
    let policy = "clients:\n- identity: node:tenant\n  namespaces: [team, gateway]\n";
    let server = TestServer::start_with(ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            authz: Some(Arc::new(Authz::from_yaml(policy).unwrap())),
            ..Default::default()
        },
        uds_path: Some(path.to_owned()),
        ..ServeConfig::default()
    })
    .await;
    server
        .apply(vec![
            registration("team", "a", "a-ca"),
            ca_secret("team", "a-ca", &Ca::root("team a").pem()),
            registration("gateway", "foo", "foo-ca"),
            ca_secret("gateway", "foo-ca", &Ca::root("gateway foo").pem()),
            registration("other", "b", "b-ca"),
            ca_secret("other", "b-ca", &Ca::root("other b").pem()),
        ])
        .await;
    server
}

/// A node id identifies a Unix-socket client to FetchSecrets exactly as it does to a
/// stream; over TCP it identifies no one. A registration in the namespace `gateway` is
/// authorised by a grant of `gateway`, like any other namespace.
#[tokio::test]
async fn fetch_and_streams_identify_unix_clients_alike() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sds.sock");
    let server = tenant_server(&path).await;
    let mut unix = unix_client(&path).await;

    for name in ["team/a", "gateway/foo"] {
        let fetched = unix
            .fetch_secrets(fetch_request("tenant", &[name]))
            .await
            .unwrap_or_else(|s| panic!("FetchSecrets {name} as node:tenant: {s}"))
            .into_inner();
        assert_eq!(fetched.resources.len(), 1);
        assert_eq!(secret_name(&fetched.resources[0]), name);
        assert_eq!(fetched.version_info, server.version(name));
    }
    let denied = unix
        .fetch_secrets(fetch_request("tenant", &["other/b"]))
        .await
        .expect_err("other/b is not granted");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("node:tenant may not read other/b"),
        "{denied}"
    );

    // The same identity on a stream.
    let mut stream = SotwClient::open_with(unix.clone()).await;
    stream
        .send(DiscoveryRequest {
            resource_names: vec!["gateway/foo".into(), "team/a".into()],
            ..fetch_request("tenant", &[])
        })
        .await;
    let pushed = stream.recv(&["gateway/foo", "team/a"]).await;
    assert_eq!(SotwClient::names(&pushed), ["gateway/foo", "team/a"]);

    // Over TCP a node id is anybody's claim.
    let denied = server
        .sds()
        .await
        .fetch_secrets(fetch_request("tenant", &["team/a"]))
        .await
        .expect_err("a node id over TCP is no identity");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("an unidentified client"),
        "{denied}"
    );
}

/// `--uds` never replaces a file that is not a stale socket, and the socket goes away
/// with the server.
#[tokio::test]
async fn the_socket_path_is_claimed_safely_and_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("notes.txt");
    std::fs::write(&taken, "keep me").unwrap();
    let (_events, rx) = tokio::sync::mpsc::channel(1);
    let refused = trust_sds::server::start(
        ServeConfig {
            uds_path: Some(taken.clone()),
            ..ServeConfig::default()
        },
        rx,
    )
    .await
    .err()
    .expect("a regular file at --uds is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("a regular file is already there") && message.contains("--uds"),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "keep me");

    let path: PathBuf = dir.path().join("sds.sock");
    let server = TestServer::start_with(ServeConfig {
        uds_path: Some(path.clone()),
        ..ServeConfig::default()
    })
    .await;
    assert!(path.exists());
    server.running.shutdown().await;
    assert!(!path.exists(), "the socket is removed on shutdown");
}

/// gRPC C-core clients (grpcio here) send the percent-encoded socket path as `:authority`
/// on a Unix socket; the HTTP/2 layer (h2, http) rejects a `%` in an authority and resets
/// the stream.
/// With `grpc.default_authority=localhost`, as the broker guide says, they work. If a
/// future h2 accepts the encoded path, the first half fails: update the guide then.
#[tokio::test]
async fn grpc_core_clients_need_a_default_authority_on_the_unix_socket() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/envoy-venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpcio_fetch.py");
    assert!(
        python.exists(),
        "no {}: run ./scripts/test.sh (it installs grpcio)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sds.sock");
    let server = tenant_server(&path).await;
    let request = hex::encode(fetch_request("tenant", &["team/a"]).encode_to_vec());
    // tokio's Command: the server runs on this test's runtime while the client waits.
    let run = async |timeout: &str, authority: Option<&str>| {
        let mut command = tokio::process::Command::new(&python);
        command.arg(&script).arg(&path).arg(&request).arg(timeout);
        command.args(authority);
        let out = command.output().await.expect("run python");
        assert!(
            out.status.success(),
            "grpcio_fetch.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };

    // Refused: the stream is reset (`RST_STREAM` PROTOCOL_ERROR), which grpcio reports as
    // INTERNAL.
    let plain = run("10", None).await;
    assert!(
        plain.starts_with("ERR INTERNAL"),
        "without grpc.default_authority the call should fail, and the broker guide says so: {plain}"
    );

    let with_authority = run("10", Some("localhost")).await;
    let response = with_authority
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("with grpc.default_authority=localhost: {with_authority}"));
    let response = DiscoveryResponse::decode(hex::decode(response).unwrap().as_slice()).unwrap();
    assert_eq!(response.version_info, server.version("team/a"));
    assert_eq!(secret_name(&response.resources[0]), "team/a");
}
