//! SDS protocol behaviour over real gRPC on loopback, with tonic clients from envoy-types.
//!
//! "No reply" is proven without sleeping: after the request that must not be answered, a
//! second request that must be answered is sent; the next response on the (ordered) stream
//! must be the answer to the second one, with the very next nonce.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use support::objects::{ca_secret, registration};
use support::pki::Ca;
use support::sds::{DeltaClient, SotwClient, TestServer, secret_pem};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trust_sds::model::Kind;
use trust_sds::pipeline::SourceEvent;
use trust_sds::sds::{SECRET_TYPE_URL, UnknownNamePolicy};

async fn server_with(names: &[&str]) -> TestServer {
    let server = TestServer::start(UnknownNamePolicy::Hold).await;
    let mut objects = Vec::new();
    for n in names {
        objects.push(registration("team", n, &format!("{n}-ca")));
        objects.push(ca_secret(
            "team",
            &format!("{n}-ca"),
            &Ca::root(&format!("{n} root")).pem(),
        ));
    }
    server.apply(objects).await;
    server
}

async fn rotate(server: &TestServer, name: &str, cn: &str) {
    server
        .apply(vec![ca_secret(
            "team",
            &format!("{name}-ca"),
            &Ca::root(cn).pem(),
        )])
        .await;
}

fn nonce(n: &str) -> u64 {
    n.parse().unwrap()
}

#[tokio::test]
async fn sotw_first_response_ack_silence_push_on_change() {
    let server = server_with(&["a", "b"]).await;
    let mut c = SotwClient::open(&server).await;
    c.request(&["team/a"]).await;
    let first = c.recv(&["team/a"]).await;
    assert_eq!(SotwClient::names(&first), ["team/a"]);
    assert_eq!(
        first.version_info,
        server.version("team/a"),
        "version is the content hash"
    );
    assert!(secret_pem(&first.resources[0], "team/a").contains("BEGIN CERTIFICATE"));

    // ACK: no reply. Barrier: grow the subscription.
    c.ack(&["team/a"]).await;
    c.request(&["team/a", "team/b"]).await;
    let grown = c.recv(&["team/a", "team/b"]).await;
    assert_eq!(
        nonce(&grown.nonce),
        nonce(&first.nonce) + 1,
        "the ACK got no reply"
    );
    assert_eq!(SotwClient::names(&grown), ["team/a", "team/b"]);
    c.ack(&["team/a", "team/b"]).await;

    // Byte-identical content (reformatted Secret) is never pushed; a real change is.
    let pem = server
        .running
        .published
        .snapshot
        .borrow()
        .get("team/b")
        .unwrap()
        .pem()
        .into_owned();
    server
        .send(vec![ca_secret(
            "team",
            "b-ca",
            &format!("# comment\n{pem}\n"),
        )])
        .await;
    rotate(&server, "a", "a rotated").await;
    let pushed = c.recv(&["team/a", "team/b"]).await;
    assert_eq!(nonce(&pushed.nonce), nonce(&grown.nonce) + 1);
    let pem_of = |r: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse| {
        r.resources
            .iter()
            .map(|a| secret_pem(a, &support::sds::secret_name(a)))
            .collect::<Vec<_>>()
    };
    assert!(
        pem_of(&pushed)
            .iter()
            .all(|p| p.contains("BEGIN CERTIFICATE"))
    );
    assert_ne!(pem_of(&pushed), pem_of(&grown));
    assert_ne!(pushed.version_info, grown.version_info);
}

#[tokio::test]
async fn sotw_stale_nonce_is_ignored_and_shrink_stops_pushes() {
    let server = server_with(&["a", "b"]).await;
    let mut c = SotwClient::open(&server).await;
    c.request(&["team/a", "team/b"]).await;
    let first = c.recv(&["team/a", "team/b"]).await;
    c.ack(&["team/a", "team/b"]).await;
    rotate(&server, "a", "a2").await;
    let second = c.recv(&["team/a", "team/b"]).await;

    // A request carrying the old nonce is stale: ignored, even though it changes names.
    c.send(DiscoveryRequest {
        resource_names: vec!["team/a".into()],
        type_url: SECRET_TYPE_URL.into(),
        response_nonce: first.nonce.clone(),
        version_info: first.version_info.clone(),
        ..Default::default()
    })
    .await;
    // Shrink to b only (current nonce): then a change of a is not pushed, a change of b is.
    c.ack(&["team/b"]).await;
    server
        .wait_for_client("shrink to b", |c| c.names == ["team/b"])
        .await;
    rotate(&server, "a", "a3").await;
    rotate(&server, "b", "b2").await;
    let third = c.recv(&["team/b"]).await;
    assert_eq!(nonce(&third.nonce), nonce(&second.nonce) + 1);
    assert_eq!(SotwClient::names(&third), ["team/b"]);
}

#[tokio::test]
async fn sotw_nack_is_recorded_not_resent_and_next_change_pushed() {
    let server = server_with(&["a", "b"]).await;
    let mut c = SotwClient::open(&server).await;
    c.request(&["team/a"]).await;
    let first = c.recv(&["team/a"]).await;
    // NACK with a subscription change inside: the growth is honoured, nothing is resent.
    c.nack(&["team/a", "team/b"], "bad certificate").await;
    let grown = c.recv(&["team/a", "team/b"]).await;
    assert_eq!(nonce(&grown.nonce), nonce(&first.nonce) + 1);
    assert_eq!(SotwClient::names(&grown), ["team/a", "team/b"]);
    // A plain NACK of that: no resend; the next change is pushed.
    c.nack(&["team/a", "team/b"], "still bad").await;
    server
        .wait_for_client("second NACK", |c| c.nacks == 2)
        .await;
    rotate(&server, "b", "b2").await;
    let pushed = c.recv(&["team/a", "team/b"]).await;
    assert_eq!(
        nonce(&pushed.nonce),
        nonce(&grown.nonce) + 1,
        "NACKed version not resent"
    );
    // The push is the rotation, not the NACKed content again under a new nonce.
    assert_ne!(
        pushed.version_info, grown.version_info,
        "NACKed content resent"
    );
    let b = pushed
        .resources
        .iter()
        .find(|r| support::sds::secret_name(r) == "team/b")
        .expect("team/b pushed");
    assert_eq!(
        support::sds::secret_pem(b, "team/b"),
        server
            .running
            .published
            .snapshot
            .borrow()
            .get("team/b")
            .unwrap()
            .pem(),
        "the pushed team/b is the rotated bundle"
    );
    assert_eq!(
        server
            .running
            .metrics
            .nacks
            .get_or_create(&trust_sds::metrics::ApiLabels { api: "sotw" })
            .get(),
        2
    );
    assert!(
        server.running.metrics.render().contains(
            "trust_sds_sds_nacks_by_reason_total{api=\"sotw\",reason=\"InvalidArgument\"} 2"
        ),
        "NACKs counted by the gRPC code of their error_detail"
    );
    let clients = server.running.clients.list();
    assert_eq!(clients[0].nack_message.as_deref(), Some("still bad"));
    assert_eq!(clients[0].nacks, 2);
    assert_eq!(clients[0].node, "test-node");
}

#[tokio::test]
async fn sotw_unknown_name_is_held_until_it_appears() {
    let server = server_with(&["a"]).await;
    let mut c = SotwClient::open(&server).await;
    c.request(&["team/late"]).await;
    server
        .apply(vec![
            registration("team", "late", "late-ca"),
            ca_secret("team", "late-ca", &Ca::root("late").pem()),
        ])
        .await;
    let resp = c.recv(&["team/late"]).await;
    assert_eq!(SotwClient::names(&resp), ["team/late"]);
}

#[tokio::test]
async fn slow_client_skips_to_the_newest_version() {
    let server = server_with(&["a"]).await;
    // Small HTTP/2 windows, so flow control pushes back after a few responses.
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let client = envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient::new(channel);
    let mut c = SotwClient::open_with(client).await;
    c.request(&["team/a"]).await;
    c.recv(&["team/a"]).await;
    c.ack(&["team/a"]).await;
    // The client reads nothing while 200 versions are published.
    let rotations = 200;
    let mut pems = Vec::new();
    for i in 0..rotations {
        let pem = Ca::root(&format!("a v{i}")).pem();
        pems.push(pem.clone());
        server.apply(vec![ca_secret("team", "a-ca", &pem)]).await;
    }
    let newest = server.version("team/a");
    let mut received = 0;
    loop {
        let r = c.recv(&["team/a"]).await;
        received += 1;
        if r.version_info == newest {
            break;
        }
    }
    assert!(
        received < rotations,
        "received {received} responses for {rotations} versions"
    );
}

#[tokio::test]
async fn delta_subscribe_ack_unsubscribe_and_removal() {
    let server = server_with(&["a", "b"]).await;
    let mut c = DeltaClient::open(&server).await;
    c.subscribe(&["team/a"], "").await;
    let first = c.recv().await;
    assert_eq!(DeltaClient::names(&first), ["team/a"]);
    assert_eq!(first.resources[0].version, server.version("team/a"));

    // ACK: no reply; barrier: subscribe b, the next response is b alone.
    c.subscribe(&[], &first.nonce).await;
    c.subscribe(&["team/b"], "").await;
    let second = c.recv().await;
    assert_eq!(nonce(&second.nonce), nonce(&first.nonce) + 1);
    assert_eq!(DeltaClient::names(&second), ["team/b"]);

    // Unsubscribe a: its changes stop; b's rotation is pushed alone.
    c.unsubscribe(&["team/a"], &second.nonce).await;
    server
        .wait_for_client("unsubscribe a", |c| c.names == ["team/b"])
        .await;
    rotate(&server, "a", "a2").await;
    rotate(&server, "b", "b2").await;
    let third = c.recv().await;
    assert_eq!(DeltaClient::names(&third), ["team/b"]);
    assert!(third.removed_resources.is_empty());

    // Withdrawal (Secret deleted) is a removed_resources entry.
    server
        .events
        .send(SourceEvent::Delete(
            Kind::Secret,
            support::objects::key("team", "b-ca"),
        ))
        .await
        .unwrap();
    let fourth = c.recv().await;
    assert!(fourth.resources.is_empty());
    assert_eq!(fourth.removed_resources, ["team/b"]);
}

/// Under the default `hold` policy a Delta subscription to a name that is not served gets
/// no answer at all (not a `removed_resources` entry) until the name appears.
#[tokio::test]
async fn delta_unknown_name_is_held_until_it_appears() {
    let server = server_with(&["a"]).await;
    let mut c = DeltaClient::open(&server).await;
    c.subscribe(&["team/late"], "").await;
    // Barrier: a second subscription on the same stream is answered; had the first been
    // answered (as absent), that answer would come first.
    c.subscribe(&["team/a"], "").await;
    let first = c.recv().await;
    assert!(
        first.removed_resources.is_empty(),
        "held name answered as removed: {:?}",
        first.removed_resources
    );
    assert_eq!(DeltaClient::names(&first), ["team/a"]);
    server
        .apply(vec![
            registration("team", "late", "late-ca"),
            ca_secret("team", "late-ca", &Ca::root("late").pem()),
        ])
        .await;
    let appeared = c.recv().await;
    assert_eq!(DeltaClient::names(&appeared), ["team/late"]);
    assert!(appeared.removed_resources.is_empty());
}

#[tokio::test]
async fn delta_not_found_policy_answers_at_once() {
    let server = TestServer::start(UnknownNamePolicy::NotFound).await;
    server
        .apply(vec![
            registration("team", "a", "a-ca"),
            ca_secret("team", "a-ca", &Ca::root("a").pem()),
        ])
        .await;
    let mut c = DeltaClient::open(&server).await;
    c.subscribe(&["team/missing", "team/a"], "").await;
    let r = c.recv().await;
    assert_eq!(DeltaClient::names(&r), ["team/a"]);
    assert_eq!(r.removed_resources, ["team/missing"]);
    // Appearing later is pushed.
    server
        .apply(vec![
            registration("team", "missing", "m-ca"),
            ca_secret("team", "m-ca", &Ca::root("m").pem()),
        ])
        .await;
    let r = c.recv().await;
    assert_eq!(DeltaClient::names(&r), ["team/missing"]);
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_skips_what_the_client_has() {
    let server = server_with(&["a", "b"]).await;
    let mut c = DeltaClient::open(&server).await;
    c.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        resource_names_subscribe: vec!["team/a".into(), "team/b".into()],
        initial_resource_versions: [
            ("team/a".to_owned(), server.version("team/a")),
            ("team/b".to_owned(), "stale-version".to_owned()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    })
    .await;
    let r = c.recv().await;
    assert_eq!(
        DeltaClient::names(&r),
        ["team/b"],
        "a is current, only b is sent"
    );
}

#[tokio::test]
async fn versions_are_stable_across_restarts() {
    let ca = Ca::root("stable").pem();
    let mut versions = Vec::new();
    for _ in 0..2 {
        let server = TestServer::start(UnknownNamePolicy::Hold).await;
        server
            .apply(vec![
                registration("team", "a", "a-ca"),
                ca_secret("team", "a-ca", &ca),
            ])
            .await;
        let mut c = SotwClient::open(&server).await;
        c.request(&["team/a"]).await;
        versions.push(c.recv(&["team/a"]).await.version_info);
        server.running.shutdown().await;
    }
    assert_eq!(versions[0], versions[1]);
}

#[tokio::test]
async fn stream_state_is_freed_when_clients_go_away() {
    let server = server_with(&["a"]).await;
    for _ in 0..3 {
        let mut c = SotwClient::open(&server).await;
        c.request(&["team/a"]).await;
        c.recv(&["team/a"]).await;
        drop(c);
    }
    let clients = server.running.clients.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !clients.is_empty() {
            tick.tick().await;
        }
    })
    .await
    .expect("every stream's state released");
}

#[tokio::test]
async fn ads_rejects_other_types_without_breaking_the_stream() {
    let server = server_with(&["a"]).await;
    let mut ads = AggregatedDiscoveryServiceClient::connect(server.url())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let stream = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut c = SotwClient::from_parts(tx, stream).await;
    c.send(DiscoveryRequest {
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    })
    .await;
    c.request(&["team/a"]).await;
    let r = c.recv(&["team/a"]).await;
    assert_eq!(r.nonce, "1", "the Cluster request got no response");
    assert_eq!(SotwClient::names(&r), ["team/a"]);
}

#[tokio::test]
async fn fetch_returns_current_bundle_or_not_found() {
    let server = server_with(&["a"]).await;
    let mut sds = server.sds().await;
    let resp = sds
        .fetch_secrets(DiscoveryRequest {
            resource_names: vec!["team/a".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.version_info, server.version("team/a"));
    secret_pem(&resp.resources[0], "team/a");
    let err = sds
        .fetch_secrets(DiscoveryRequest {
            resource_names: vec!["team/nope".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("team/nope"));
}

#[tokio::test]
async fn health_reports_serving() {
    let server = server_with(&["a"]).await;
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.secret.v3.SecretDiscoveryService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn delta_nack_is_recorded_and_not_resent() {
    let server = server_with(&["a", "b"]).await;
    let mut c = DeltaClient::open(&server).await;
    c.subscribe(&["team/a"], "").await;
    let first = c.recv().await;
    c.nack(&first.nonce, "cannot use it").await;
    server.wait_for_client("delta NACK", |c| c.nacks == 1).await;
    // Not resent: the next response is the answer to a new subscription.
    c.subscribe(&["team/b"], "").await;
    let second = c.recv().await;
    assert_eq!(DeltaClient::names(&second), ["team/b"]);
    assert_eq!(nonce(&second.nonce), nonce(&first.nonce) + 1);
    // The next content change of a is pushed.
    rotate(&server, "a", "a2").await;
    assert_eq!(DeltaClient::names(&c.recv().await), ["team/a"]);
    let nack = server.running.clients.list()[0].nack_message.clone();
    assert_eq!(nack.as_deref(), Some("cannot use it"));
}

#[tokio::test]
async fn delta_ads_serves_secrets() {
    let server = server_with(&["a"]).await;
    let mut ads = AggregatedDiscoveryServiceClient::connect(server.url())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut stream = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // A Delta ADS request must name its type: an empty one is ignored, the Secret one answered.
    tx.send(DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["team/a".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        resource_names_subscribe: vec!["team/a".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let r = tokio::time::timeout(support::sds::TIMEOUT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.nonce, "1");
    assert_eq!(r.resources[0].name, "team/a");
    assert_eq!(r.resources[0].version, server.version("team/a"));
}

/// A Delta stream whose first request names nothing is a wildcard (the legacy form): the
/// client registry shows it so, and the delivery report counts it as a subscriber of every
/// served resource, until it ACKs.
#[tokio::test]
async fn a_delta_wildcard_stream_is_shown_and_counted_as_one() {
    let server = server_with(&["a"]).await;
    let mut c = DeltaClient::open(&server).await;
    c.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    })
    .await;
    let first = c.recv().await;
    assert_eq!(first.resources[0].name, "team/a");
    server
        .wait_for_client("a Delta wildcard stream", |c| {
            c.api == "delta" && c.wildcard
        })
        .await;
    let version: std::sync::Arc<str> = first.resources[0].version.as_str().into();
    let delivery = server.running.clients.delivery_of("team/a", &version);
    assert_eq!((delivery.subscribers, delivery.pending), (1, 1));
}
