//! Hostile clients, limits, the admin surface and graceful shutdown.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use support::envoy::http_get;
use support::manifests::{registration_yaml, secret_yaml};
use support::objects::{ca_secret, registration};
use support::pki::Ca;
use support::sds::{SotwClient, TestServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trust_sds::pipeline::SourceEvent;
use trust_sds::sds::SECRET_TYPE_URL;
use trust_sds::server::ServeConfig;
use trust_sds::snapshot::SourceHealth;

async fn served(config: ServeConfig) -> TestServer {
    let server = TestServer::start_with(config).await;
    server
        .apply(vec![
            registration("team", "a", "a-ca"),
            ca_secret("team", "a-ca", &Ca::root("a").pem()),
        ])
        .await;
    server
}

#[tokio::test]
async fn admin_endpoints_report_health_metrics_and_views() {
    let server = served(ServeConfig::default()).await;
    let port = server.running.admin_addr.port();
    assert_eq!(http_get(port, "/healthz").await.unwrap().0, 200);
    assert_eq!(
        http_get(port, "/readyz").await.unwrap().0,
        503,
        "not ready before the source synced"
    );

    server
        .events
        .send(SourceEvent::Health(SourceHealth {
            synced: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    server.sync().await;
    assert_eq!(
        http_get(port, "/readyz").await.unwrap(),
        (200, "ready\n".to_owned())
    );
    let stale = SourceHealth {
        synced: true,
        error: Some("API server unreachable".into()),
        ..Default::default()
    };
    server
        .events
        .send(SourceEvent::Health(stale))
        .await
        .unwrap();
    server.sync().await;
    let (code, body) = http_get(port, "/readyz").await.unwrap();
    assert_eq!(code, 200, "a stale source keeps serving");
    assert!(body.contains("source stale: API server unreachable"));

    let mut c = SotwClient::open(&server).await;
    c.request(&["team/a"]).await;
    c.recv(&["team/a"]).await;
    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    for expected in [
        "trust_sds_sds_streams{api=\"sotw\"} 1",
        "trust_sds_sds_responses_total{api=\"sotw\"} 1",
        "trust_sds_bundle_expiry_timestamp_seconds{resource=\"team/a\"}",
        "trust_sds_statuses{ready=\"true\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in:\n{metrics}"
        );
    }
    let bundles: serde_json::Value =
        serde_json::from_str(&http_get(port, "/bundles").await.unwrap().1).unwrap();
    assert_eq!(bundles[0]["name"], "team/a");
    assert_eq!(bundles[0]["version"], server.version("team/a"));
    let statuses: serde_json::Value =
        serde_json::from_str(&http_get(port, "/statuses").await.unwrap().1).unwrap();
    assert_eq!(statuses["statuses"][0]["reason"], "Valid");
    let clients: serde_json::Value =
        serde_json::from_str(&http_get(port, "/clients").await.unwrap().1).unwrap();
    assert_eq!(clients[0]["names"][0], "team/a");
    assert_eq!(clients[0]["node"], "test-node");
}

#[tokio::test]
async fn too_many_names_end_only_that_stream() {
    let server = served(ServeConfig {
        max_names_per_request: 2,
        ..ServeConfig::default()
    })
    .await;
    let mut sds = server.sds().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        resource_names: vec!["team/a".into(), "team/b".into(), "team/c".into()],
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut greedy = sds
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(support::sds::TIMEOUT, greedy.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("request names 3 resources; at most 2"),
        "{}",
        err.message()
    );

    let mut polite = SotwClient::open(&server).await;
    polite.request(&["team/a"]).await;
    polite.recv(&["team/a"]).await;
}

#[tokio::test]
async fn garbage_connections_and_half_closed_streams_harm_no_one() {
    let server = served(ServeConfig::default()).await;
    let mut good = SotwClient::open(&server).await;
    good.request(&["team/a"]).await;
    let first = good.recv(&["team/a"]).await;

    // Not HTTP/2 at all, then an HTTP/2 preface followed by junk frames.
    for junk in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff garbage".to_vec(),
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            &[0xffu8; 64],
        ]
        .concat(),
    ] {
        let mut raw = tokio::net::TcpStream::connect(server.running.sds_addr)
            .await
            .unwrap();
        raw.write_all(&junk).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(
            support::sds::TIMEOUT,
            tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut buf),
        )
        .await
        .expect("server closes the connection");
    }

    // A client that half-closes after one request: its stream ends and its state is freed.
    let mut sds = server.sds().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        resource_names: vec!["team/a".into()],
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    drop(tx);
    let mut half = sds
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(_)) = tokio::time::timeout(support::sds::TIMEOUT, half.message())
        .await
        .unwrap()
    {}
    server
        .wait_for_client("only the good stream left", |_| {
            server.running.clients.len() == 1
        })
        .await;

    // The good stream still gets pushes.
    server
        .apply(vec![ca_secret("team", "a-ca", &Ca::root("a2").pem())])
        .await;
    let pushed = good.recv(&["team/a"]).await;
    assert_ne!(pushed.version_info, first.version_info);
}

#[tokio::test]
async fn sigterm_drains_a_thousand_streams_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("all.yaml"),
        format!(
            "{}---\n{}",
            registration_yaml("team", "a", "a-ca"),
            secret_yaml("team", "a-ca", &Ca::root("a").pem())
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_trust-sds"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--manifests",
        ])
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("sds_addr=").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("server exited before serving");
    })
    .await
    .expect("server started");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let mut streams = Vec::new();
    for c in 0..10 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..100 {
            let mut client = SecretDiscoveryServiceClient::new(channel.clone());
            let (tx, rx) = mpsc::channel(1);
            tx.send(DiscoveryRequest {
                resource_names: vec!["team/a".into()],
                type_url: SECRET_TYPE_URL.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            let mut s = client
                .stream_secrets(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            tokio::time::timeout(support::sds::TIMEOUT, s.message())
                .await
                .unwrap()
                .unwrap()
                .expect("first response");
            streams.push((tx, s));
        }
        let _ = c;
    }
    assert_eq!(streams.len(), 1000);

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "clean exit: {status}");
    for (_tx, mut s) in streams {
        let end = tokio::time::timeout(support::sds::TIMEOUT, s.message())
            .await
            .expect("stream ended");
        assert!(
            !matches!(end, Ok(Some(_))),
            "no further responses after shutdown"
        );
    }
}
