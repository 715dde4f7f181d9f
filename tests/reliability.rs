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
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trust_sds::pipeline::SourceEvent;
use trust_sds::sds::SECRET_TYPE_URL;
use trust_sds::sds::limits::{RateLimit, StreamLimits};
use trust_sds::server::ServeConfig;
use trust_sds::snapshot::SourceHealth;

/// Counts every live heap byte of this test process, for the leak check below. nextest runs
/// each test in its own process; under plain `cargo test` the tests share one heap, so the
/// leak check refuses to run there (the README's test command uses nextest).
#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

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
    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    assert!(metrics.contains("trust_sds_source_stale 1"), "{metrics}");
    let lag_samples = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trust_sds_source_lag_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        lag_samples >= 1,
        "the applied objects were timed: {metrics}"
    );

    let mut c = SotwClient::open(&server).await;
    c.request(&["team/a"]).await;
    c.recv(&["team/a"]).await;
    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    for expected in [
        "trust_sds_sds_streams{api=\"sotw\"} 1",
        "trust_sds_sds_responses_total{api=\"sotw\"} 1",
        "trust_sds_bundle_expiry_timestamp_seconds{resource=\"team/a\"}",
        "trust_sds_statuses{ready=\"true\"} 1",
        "trust_sds_sds_deliveries{state=\"rejected\"} 0",
        "trust_sds_sds_resource_deliveries{resource=\"team/a\",state=\"acked\"}",
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
    // The keys are the Kubernetes API's camelCase, every one of them.
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(
        keys(&bundles[0]["certificates"][0]),
        ["subject", "displayName", "sha256", "notBefore", "notAfter"]
    );
    assert_eq!(
        keys(&statuses["statuses"][0]),
        [
            "target",
            "ready",
            "reason",
            "message",
            "observedGeneration",
            "delivery"
        ]
    );
    assert_eq!(
        keys(&bundles[0]["delivery"]),
        ["version", "subscribers", "acked", "rejected", "pending"]
    );
    assert_eq!(keys(&statuses["source"]), ["synced", "error", "skipped"]);
    assert_eq!(
        keys(&clients[0]),
        [
            "api",
            "node",
            "peer",
            "identities",
            "names",
            "wildcard",
            "acked",
            "nacked",
            "nackMessage",
            "nacks"
        ]
    );
}

#[tokio::test]
async fn too_many_names_end_only_that_stream() {
    let server = served(ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            max_names_per_request: 2,
            ..Default::default()
        },
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

    garbage_connections(&server).await;
    // A client that half-closes after one request: its stream ends and its state is freed.
    half_closed_stream(server.sds().await).await;
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
    let serve = support::serve_process::ServeProcess::start(&[
        "--manifests".as_ref(),
        dir.path().as_os_str(),
    ])
    .await;
    let (mut child, addr) = (serve.child, serve.sds_addr);

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

/// A held subscription (the name is not served, so no response and no reply credit).
fn held(i: usize) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: vec![format!("team/none-{i}")],
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    }
}

fn limit_rejections(server: &TestServer, limit: &str) -> String {
    let wanted = format!("trust_sds_sds_limit_rejections_total{{limit=\"{limit}\"}} ");
    server
        .running
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&wanted).map(str::to_owned))
        .unwrap_or_else(|| "0".to_owned())
}

/// A SotW stream on `sds`'s connection that subscribed to team/a and got it.
async fn serving_stream(
    sds: &SecretDiscoveryServiceClient<tonic::transport::Channel>,
) -> SotwClient {
    let mut c = SotwClient::open_with(sds.clone()).await;
    c.request(&["team/a"]).await;
    c.recv(&["team/a"]).await;
    c
}

/// Opens one more stream on `sds`'s connection, which the server must refuse.
async fn refused_stream(
    sds: &SecretDiscoveryServiceClient<tonic::transport::Channel>,
    what: &str,
) -> tonic::Status {
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    sds.clone()
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .expect_err(what)
}

#[tokio::test]
async fn streams_per_connection_and_per_client_are_limited_without_harming_others() {
    let server = served(ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            streams: StreamLimits {
                per_connection: 3,
                per_client: 5,
            },
            ..Default::default()
        },
        ..ServeConfig::default()
    })
    .await;
    // Connection one: three streams fit, the fourth is refused.
    let one = server.sds().await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(serving_stream(&one).await);
    }
    let refused = refused_stream(&one, "a fourth stream on one connection").await;
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("already has 3 SDS streams open; at most 3 per connection (--max-streams-per-connection)"),
        "{}",
        refused.message()
    );

    // Connection two, same client (127.0.0.1): two more fit, then the client limit.
    let two = server.sds().await;
    for _ in 0..2 {
        streams.push(serving_stream(&two).await);
    }
    let refused = refused_stream(&two, "a sixth stream of one client").await;
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("client 127.0.0.1 already has 5 SDS streams open; at most 5 per client"),
        "{}",
        refused.message()
    );
    assert_eq!(limit_rejections(&server, "streams_per_connection"), "1");
    assert_eq!(limit_rejections(&server, "streams_per_client"), "1");

    // Refusals harmed no one: every admitted stream gets the rotation.
    server
        .apply(vec![ca_secret("team", "a-ca", &Ca::root("a2").pem())])
        .await;
    let version = server.version("team/a");
    for c in &mut streams {
        c.ack(&["team/a"]).await;
        let pushed = c.recv(&["team/a"]).await;
        assert_eq!(pushed.version_info, version);
    }

    // A closed stream gives its slot back.
    drop(streams.remove(0));
    server
        .wait_for_client("the closed stream is gone", |_| {
            server.running.clients.len() == 4
        })
        .await;
    let mut again = SotwClient::open_with(one.clone()).await;
    again.request(&["team/a"]).await;
    assert_eq!(again.recv(&["team/a"]).await.version_info, version);
}

#[tokio::test]
async fn request_flood_ends_only_that_stream_and_replies_to_pushes_are_free() {
    let server = served(ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            request_rate: RateLimit {
                per_second: 5,
                burst: 5,
            },
            ..Default::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let sds = server.sds().await;
    let mut good = SotwClient::open_with(sds.clone()).await;
    good.request(&["team/a"]).await;
    good.recv(&["team/a"]).await;

    // A flooder on the same connection: subscription changes with no response to reply to.
    let (tx, rx) = mpsc::channel(64);
    let mut flood = sds
        .clone()
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..50 {
        if tx.send(held(i)).await.is_err() {
            break;
        }
    }
    let err = tokio::time::timeout(support::sds::TIMEOUT, flood.message())
        .await
        .expect("the flooding stream ends")
        .expect_err("ended with a status");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("more than 5 requests per second (burst 5)")
            && err.message().contains("--max-request-rate"),
        "{}",
        err.message()
    );
    assert_eq!(limit_rejections(&server, "request_rate"), "1");

    // A rotation storm: 40 pushes, each ACKed at once, far above 5 per second. ACKs are
    // replies to responses, so the good stream is never cut off and ends on the newest.
    for i in 0..40 {
        server
            .apply(vec![ca_secret(
                "team",
                "a-ca",
                &Ca::root(&format!("storm-{i}")).pem(),
            )])
            .await;
        let pushed = good.recv(&["team/a"]).await;
        assert_eq!(pushed.version_info, server.version("team/a"));
        good.ack(&["team/a"]).await;
    }
    assert_eq!(limit_rejections(&server, "request_rate"), "1");
}

/// A client that alternates its subscription between two served names, each change
/// carrying the nonce of the response it provoked, gets no free changes: its stream ends
/// once the burst (20 here) is spent, instead of going on for ever as it did when every
/// response paid for the next request (3,000 responses in 0.77 s under the default limit).
/// A slow limit (1 per second) keeps the figure independent of the machine's speed.
#[tokio::test]
async fn alternating_subscriptions_draw_from_the_rate_limit() {
    let server = served(ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            request_rate: RateLimit {
                per_second: 1,
                burst: 20,
            },
            ..Default::default()
        },
        ..ServeConfig::default()
    })
    .await;
    server
        .apply(vec![
            registration("team", "b", "b-ca"),
            ca_secret("team", "b-ca", &Ca::root("b").pem()),
        ])
        .await;
    let mut client = SotwClient::open(&server).await;
    let mut responses = 0usize;
    let ended = loop {
        let name = if responses.is_multiple_of(2) {
            "team/a"
        } else {
            "team/b"
        };
        client.request(&[name]).await;
        match tokio::time::timeout(support::sds::TIMEOUT, client.next()).await {
            Ok(Ok(Some(_))) => responses += 1,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("no response to a subscription change"),
        }
        assert!(
            responses < 2_000,
            "{responses} subscription changes in a row were answered: the rate limit is bypassed"
        );
    };
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended}");
    assert!(ended.message().contains("--max-request-rate"), "{ended}");
    assert!(
        (15..=40).contains(&responses),
        "the stream ended after {responses} responses; the burst is 20 changes"
    );
    assert_eq!(limit_rejections(&server, "request_rate"), "1");
}

#[tokio::test]
async fn oversized_request_ends_its_stream_with_a_clear_error() {
    let server = served(ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            max_request_bytes: 4096,
            ..Default::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let sds = server.sds().await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        resource_names: (0..100).map(|i| format!("team/{i:0>100}")).collect(),
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut big = sds
        .clone()
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(support::sds::TIMEOUT, big.message())
        .await
        .expect("the stream ends")
        .expect_err("ended with a status");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert!(
        err.message().contains("the limit is: 4096 bytes")
            && err.message().contains("--max-request-bytes"),
        "{}",
        err.message()
    );
    assert_eq!(limit_rejections(&server, "message_size"), "1");
    // The connection and the server are fine.
    let mut polite = SotwClient::open_with(sds).await;
    polite.request(&["team/a"]).await;
    polite.recv(&["team/a"]).await;
}

/// Unix-socket connections have no peer address; each still counts as its own connection.
#[tokio::test]
async fn unix_socket_connections_are_counted_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sds.sock");
    let _server = served(ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            streams: StreamLimits {
                per_connection: 1,
                per_client: 0,
            },
            ..Default::default()
        },
        uds_path: Some(path.clone()),
        ..ServeConfig::default()
    })
    .await;
    let connect =
        async || SecretDiscoveryServiceClient::new(support::sds::unix_channel(&path).await);
    let first = connect().await;
    let _a = serving_stream(&first).await;
    let refused = refused_stream(&first, "a second stream on the same Unix connection").await;
    assert!(
        refused.message().contains("connection unix#"),
        "{}",
        refused.message()
    );
    serving_stream(&connect().await).await;
}

/// Connections that are not HTTP/2 at all, or an HTTP/2 preface followed by junk frames:
/// the server closes them.
async fn garbage_connections(server: &TestServer) {
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
}

/// A stream that sends one request and half-closes; returns when the server ended it.
async fn half_closed_stream(mut sds: SecretDiscoveryServiceClient<tonic::transport::Channel>) {
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
}

/// One round of everything hostile a client can do; returns when the server has forgotten
/// every stream of it.
async fn hostile_round(server: &TestServer, round: usize) {
    garbage_connections(server).await;
    let sds = server.sds().await;
    // Two streams that fit, one refused by the per-connection limit, then all dropped
    // abruptly with their connection.
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(serving_stream(&sds).await);
    }
    refused_stream(&sds, "a third stream on one connection").await;
    drop(open);
    drop(sds);
    // A half-closed stream, a flood cut by the rate limit, and an oversized request.
    let sds = server.sds().await;
    half_closed_stream(sds.clone()).await;
    let (tx, rx) = mpsc::channel(64);
    for i in 0..20 {
        tx.send(held(round * 100 + i)).await.unwrap();
    }
    let mut flood = sds
        .clone()
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let cut = tokio::time::timeout(support::sds::TIMEOUT, flood.message()).await;
    assert!(matches!(cut, Ok(Err(_))), "the flood is cut");
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        resource_names: (0..100).map(|i| format!("team/{i:0>100}")).collect(),
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut big = sds
        .clone()
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let refused = tokio::time::timeout(support::sds::TIMEOUT, big.message()).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "the oversized request is refused"
    );
    drop((flood, big, sds));
    server
        .wait_for_client("every hostile stream is forgotten", |_| {
            server.running.clients.len() == 1
        })
        .await;
}

/// Hostile clients leave nothing behind: after warm-up rounds (lazily grown tables settle),
/// twenty more rounds of garbage, refused, dropped, half-closed, flooding and oversized
/// streams leave the heap where it was, and a well-behaved stream keeps getting pushes.
#[tokio::test]
async fn hostile_clients_leave_nothing_behind() {
    let server = served(ServeConfig {
        sds: trust_sds::sds::SdsOptions {
            streams: StreamLimits {
                per_connection: 2,
                per_client: 0,
            },
            request_rate: RateLimit {
                per_second: 5,
                burst: 5,
            },
            max_request_bytes: 4096,
            ..Default::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let mut good = SotwClient::open(&server).await;
    good.request(&["team/a"]).await;
    let first = good.recv(&["team/a"]).await;
    for round in 0..5 {
        hostile_round(&server, round).await;
    }
    let before = HEAP.allocated();
    let rounds = 20;
    for round in 5..5 + rounds {
        hostile_round(&server, round).await;
    }
    // About 8 streams and 4 connections a round: a leak of 7 bytes per stream would show.
    // Connections close in the background after their last stream, so wait (bounded) for
    // the heap to come back rather than reading it once.
    let budget = 1024;
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while HEAP.allocated().saturating_sub(before) > budget {
            tick.tick().await;
        }
    })
    .await;
    let after = HEAP.allocated();
    println!("heap: {before} bytes after warm-up, {after} after {rounds} hostile rounds");
    // The heap is the process's: only a process of its own (nextest's model) makes the
    // figure this test's. Refuse to pass without checking rather than pass vacuously.
    assert!(
        std::env::var("NEXTEST").is_ok(),
        "this heap check needs a process of its own: run the suite with cargo nextest \
         (scripts/test.sh installs it)"
    );
    assert!(
        settled.is_ok(),
        "heap grew by {} bytes over {rounds} hostile rounds (budget {budget})",
        after.saturating_sub(before)
    );
    server
        .apply(vec![ca_secret("team", "a-ca", &Ca::root("a3").pem())])
        .await;
    let pushed = good.recv(&["team/a"]).await;
    assert_ne!(pushed.version_info, first.version_info);
}
