//! The `--kube` source and the status writer against the in-process fake API server
//! (tests/support/fake_apiserver.rs documents which API semantics it implements).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;
use support::pki::Ca;
use support::sds::{DeltaClient, SotwClient, TestServer};
use trust_sds::server::{self, ServeConfig};

const REG: &str = "MCPServerRegistration";

fn secret(ns: &str, name: &str, labelled: bool, data: &[(&str, &str)]) -> Value {
    use base64::Engine as _;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    let labels = if labelled {
        json!({"mcp.kuadrant.io/secret": "true"})
    } else {
        json!({"app": "other"})
    };
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns, "labels": labels}, "data": data})
}

fn registration(ns: &str, name: &str, secret: &str, key: Option<&str>) -> Value {
    let mut ca = json!({"name": secret});
    if let Some(k) = key {
        ca["key"] = json!(k);
    }
    json!({
        "apiVersion": "mcp.kuadrant.io/v1", "kind": REG,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": format!("{name}-route")}, "prefix": format!("{name}_"), "caCertSecretRef": ca}
    })
}

/// `team/weather` referencing a labelled `weather-ca` holding a new root named `cn`.
fn seed_weather(fake: &FakeApiServer, cn: &str) {
    fake.apply(registration("team", "weather", "weather-ca", None));
    rotate_weather(fake, cn);
}

fn rotate_weather(fake: &FakeApiServer, cn: &str) {
    fake.apply(secret(
        "team",
        "weather-ca",
        true,
        &[("ca.crt", &Ca::root(cn).pem())],
    ));
}

fn serves(running: &server::Running, name: &str) -> bool {
    running.published.snapshot.borrow().get(name).is_some()
}

/// Waits (bounded) until `check` holds, polling the fake's state.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !check() {
            tick.tick().await;
        }
    })
    .await;
    assert!(found.is_ok(), "timed out waiting for {what}");
}

fn ready_message(fake: &FakeApiServer, name: &str) -> Option<String> {
    fake.ready(REG, "team", name)
        .and_then(|c| c["message"].as_str().map(str::to_owned))
}

/// A fake API server with registration team/weather and its labelled Secret holding a
/// root CA named `ca`.
async fn weather_fake(ca: &str) -> FakeApiServer {
    let fake = FakeApiServer::start(&["v1"]).await;
    fake.apply(registration("team", "weather", "weather-ca", None));
    fake.apply(secret(
        "team",
        "weather-ca",
        true,
        &[("ca.crt", &Ca::root(ca).pem())],
    ));
    fake
}

async fn start(fake: &FakeApiServer) -> server::Running {
    server::start_kube(ServeConfig::default(), fake.client(), None, None)
        .await
        .expect("kube source starts")
}

#[tokio::test]
async fn every_validation_message_becomes_the_ready_condition() {
    let fake = FakeApiServer::start(&["v1"]).await;
    let good = Ca::root("Good").pem();
    let big = format!("{good}{}", "#".repeat(70_000));
    for (reg, sec, key) in [
        ("valid", "valid-ca", None),
        ("gone", "no-such", None),
        ("plain", "plain-ca", None),
        ("nokey", "nokey-ca", Some("bundle.pem")),
        ("big", "big-ca", None),
        ("bad", "bad-ca", None),
    ] {
        fake.apply(registration("team", reg, sec, key));
    }
    fake.apply(secret("team", "valid-ca", true, &[("ca.crt", &good)]));
    fake.apply(secret("team", "plain-ca", false, &[("ca.crt", &good)]));
    fake.apply(secret("team", "nokey-ca", true, &[("ca.crt", &good)]));
    fake.apply(secret("team", "big-ca", true, &[("ca.crt", &big)]));
    fake.apply(secret(
        "team",
        "bad-ca",
        true,
        &[(
            "ca.crt",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )],
    ));
    let running = start(&fake).await;

    let expected = [
        (
            "gone",
            "CA certificate secret no-such not found",
            "CACertSecretNotFound",
        ),
        (
            "plain",
            "CA certificate secret plain-ca is missing required label mcp.kuadrant.io/secret=true",
            "CACertSecretMissingLabel",
        ),
        (
            "nokey",
            "CA certificate secret nokey-ca missing key bundle.pem",
            "CACertSecretMissingKey",
        ),
        (
            "big",
            "CA certificate data in secret big-ca exceeds maximum size (65536 bytes)",
            "CACertTooLarge",
        ),
        (
            "bad",
            "CA certificate in secret bad-ca is invalid: unexpected PEM block type \"PRIVATE KEY\", expected CERTIFICATE",
            "CACertInvalid",
        ),
    ];
    for (name, message, reason) in expected {
        eventually(name, || {
            ready_message(&fake, name).as_deref() == Some(message)
        })
        .await;
        let c = fake.ready(REG, "team", name).unwrap();
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], reason);
        assert_eq!(c["observedGeneration"], 1);
        assert!(c["lastTransitionTime"].as_str().is_some());
    }
    eventually("valid", || {
        fake.ready(REG, "team", "valid")
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert!(
        running
            .published
            .snapshot
            .borrow()
            .get("team/valid")
            .is_some()
    );

    // Unlabelled Secret data is never requested: every Secret read without the label
    // selector is metadata-only.
    for r in fake.requests().iter().filter(|r| r.contains(" secrets ")) {
        assert!(
            r.contains("selector=mcp.kuadrant.io/secret=true") || r.ends_with("meta=true"),
            "unlabelled data read: {r}"
        );
    }
}

#[tokio::test]
async fn rotation_reaches_the_stream_and_the_status_and_unlabel_withdraws() {
    let fake = FakeApiServer::start(&["v1"]).await;
    seed_weather(&fake, "A");
    let running = start(&fake).await;
    let server = TestServer::attach(running);
    eventually("first status", || {
        fake.ready(REG, "team", "weather").is_some()
    })
    .await;
    let mut delta = DeltaClient::open(&server).await;
    delta.subscribe(&["team/weather"], "").await;
    let first = delta.recv().await;

    rotate_weather(&fake, "B");
    let pushed = delta.recv().await;
    assert_ne!(pushed.resources[0].version, first.resources[0].version);
    let version = pushed.resources[0].version.clone();
    eventually("status names the new version", || {
        ready_message(&fake, "weather").is_some_and(|m| m.contains(&version))
    })
    .await;
    let transition = fake.ready(REG, "team", "weather").unwrap()["lastTransitionTime"].clone();

    fake.apply(secret(
        "team",
        "weather-ca",
        false,
        &[("ca.crt", &Ca::root("B").pem())],
    ));
    let removed = delta.recv().await;
    assert_eq!(removed.removed_resources, ["team/weather"]);
    eventually("missing label", || {
        fake.ready(REG, "team", "weather")
            .is_some_and(|c| c["reason"] == "CACertSecretMissingLabel")
    })
    .await;
    let c = fake.ready(REG, "team", "weather").unwrap();
    assert_eq!(c["status"], "False");
    let _ = transition;
}

#[tokio::test]
async fn watch_reset_and_410_cause_no_push() {
    let fake = FakeApiServer::start(&["v1"]).await;
    seed_weather(&fake, "A");
    let server = TestServer::attach(start(&fake).await);
    eventually("served", || serves(&server.running, "team/weather")).await;
    let mut c = SotwClient::open(&server).await;
    c.request(&["team/weather"]).await;
    let first = c.recv(&["team/weather"]).await;
    c.ack(&["team/weather"]).await;

    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("LIST"))
        .count();
    fake.compact();
    fake.close_watches();
    // Every watcher re-lists after its 410.
    eventually("re-lists", || {
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("LIST"))
            .count()
            >= lists_before + 4
    })
    .await;
    rotate_weather(&fake, "B");
    let next = c.recv(&["team/weather"]).await;
    assert_eq!(
        next.nonce.parse::<u64>().unwrap(),
        first.nonce.parse::<u64>().unwrap() + 1,
        "the re-list pushed nothing"
    );
    assert_ne!(next.version_info, first.version_info);
}

#[tokio::test]
async fn other_controllers_conditions_are_untouched_and_writes_happen_on_change_only() {
    let fake = FakeApiServer::start(&["v1"]).await;
    fake.apply(registration("team", "weather", "weather-ca", None));
    fake.set_foreign_condition(REG, "team", "weather", "mcp-controller", json!({"type": "Accepted", "status": "True", "reason": "Accepted", "message": "route attached", "lastTransitionTime": "2026-01-01T00:00:00Z"}));
    fake.apply(secret(
        "team",
        "weather-ca",
        true,
        &[("ca.crt", &Ca::root("A").pem())],
    ));
    let running = start(&fake).await;
    eventually("ready", || fake.ready(REG, "team", "weather").is_some()).await;
    let types: Vec<String> = fake
        .conditions(REG, "team", "weather")
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        types.contains(&"Accepted".to_owned()) && types.contains(&"Ready".to_owned()),
        "{types:?}"
    );

    // An unrelated Secret changes nothing we report: no further write.
    let writes = fake.status_patches();
    fake.apply(secret(
        "team",
        "unrelated",
        true,
        &[("ca.crt", &Ca::root("X").pem())],
    ));
    let mut statuses = running.published.statuses.clone();
    statuses.mark_unchanged();
    fake.apply(registration("team", "news", "news-ca", None));
    tokio::time::timeout(Duration::from_secs(10), statuses.changed())
        .await
        .unwrap()
        .unwrap();
    eventually("news status", || fake.ready(REG, "team", "news").is_some()).await;
    // Barrier: the writer handles changes one pass at a time, each in target order, and
    // `zz/barrier` sorts after every other target. Once its status is there, every write
    // the earlier changes caused has landed, redundant ones included.
    fake.apply(registration("zz", "barrier", "barrier-ca", None));
    eventually("barrier status", || {
        fake.ready(REG, "zz", "barrier").is_some()
    })
    .await;
    assert_eq!(
        fake.status_patches(),
        writes + 2,
        "only the new registrations' statuses were written"
    );

    // Removing the reference releases our Ready condition; Accepted stays.
    let mut reg = registration("team", "weather", "weather-ca", None);
    reg["spec"]
        .as_object_mut()
        .unwrap()
        .remove("caCertSecretRef");
    fake.apply(reg);
    eventually("Ready released", || {
        fake.ready(REG, "team", "weather").is_none()
    })
    .await;
    assert_eq!(
        fake.conditions(REG, "team", "weather")[0]["type"],
        "Accepted"
    );
}

#[tokio::test]
async fn v1alpha1_only_clusters_and_missing_crds() {
    let fake = FakeApiServer::start(&[]).await;
    let err = server::start_kube(ServeConfig::default(), fake.client(), None, None)
        .await
        .err()
        .expect("no CRD");
    assert!(
        err.to_string().contains(
            "MCPServerRegistration CRD (mcp.kuadrant.io, v1 or v1alpha1) is not installed"
        ),
        "{err}"
    );

    let fake = FakeApiServer::start(&["v1alpha1"]).await;
    let mut reg = registration("team", "weather", "weather-ca", None);
    reg["apiVersion"] = json!("mcp.kuadrant.io/v1alpha1");
    fake.apply(reg);
    fake.apply(secret(
        "team",
        "weather-ca",
        true,
        &[("ca.crt", &Ca::root("A").pem())],
    ));
    let running = start(&fake).await;
    eventually("served from v1alpha1", || {
        running
            .published
            .snapshot
            .borrow()
            .get("team/weather")
            .is_some()
    })
    .await;
    eventually("status via v1alpha1", || {
        fake.ready(REG, "team", "weather").is_some()
    })
    .await;
}

#[tokio::test]
async fn only_the_lease_holder_writes_status() {
    use trust_sds::leader::LeaseConfig;
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let fake = FakeApiServer::start(&["v1"]).await;
    seed_weather(&fake, "A");
    let lease = |id: &str| LeaseConfig {
        lease_duration: Duration::from_millis(1500),
        renew_every: Duration::from_millis(100),
        ..LeaseConfig::new("trust-sds-system", id)
    };
    let a = server::start_kube(
        ServeConfig::default(),
        fake.client(),
        None,
        Some(lease("replica-a")),
    )
    .await
    .unwrap();
    eventually("a leads", || *a.is_leader.borrow()).await;
    eventually("a wrote", || fake.ready(REG, "team", "weather").is_some()).await;
    let b = server::start_kube(
        ServeConfig::default(),
        fake.client(),
        None,
        Some(lease("replica-b")),
    )
    .await
    .unwrap();
    eventually("b serves", || serves(&b, "team/weather")).await;

    // A new registration: both replicas translate it, only the leader writes it.
    let before = fake.status_patches();
    fake.apply(registration("team", "news", "weather-ca", None));
    eventually("b translated news", || {
        b.published
            .statuses
            .borrow()
            .keys()
            .any(|t| format!("{t:?}").contains("news"))
    })
    .await;
    eventually("news written", || fake.ready(REG, "team", "news").is_some()).await;
    assert!(!*b.is_leader.borrow(), "b must not lead while a renews");
    assert_eq!(
        fake.status_patches(),
        before + 1,
        "one write, by the leader"
    );
    assert_eq!(
        fake.lease_holder("trust-sds-system", "trust-sds-status-writer")
            .as_deref(),
        Some("replica-a")
    );

    // A shuts down and releases the lease: B takes over, compares what it believes with the
    // objects (both already right: no write), and writes the next change.
    a.shutdown().await;
    let holder = fake.lease_holder("trust-sds-system", "trust-sds-status-writer");
    assert!(
        holder.as_deref() != Some("replica-a"),
        "released on shutdown: {holder:?}"
    );
    eventually("b leads", || *b.is_leader.borrow()).await;
    assert_eq!(
        fake.lease_holder("trust-sds-system", "trust-sds-status-writer")
            .as_deref(),
        Some("replica-b")
    );
    fake.apply(registration("team", "sports", "weather-ca", None));
    eventually("b wrote", || fake.ready(REG, "team", "sports").is_some()).await;
    assert_eq!(
        fake.status_patches(),
        before + 2,
        "the new leader rewrote conditions that were already right"
    );
}

#[tokio::test]
async fn malformed_objects_are_skipped_and_outages_keep_the_snapshot() {
    let fake = FakeApiServer::start(&["v1"]).await;
    fake.apply(registration("team", "weather", "weather-ca", None));
    let mut broken = registration("team", "broken", "weather-ca", None);
    broken["spec"]["state"] = json!("Sideways");
    fake.apply(broken);
    fake.apply(secret(
        "team",
        "weather-ca",
        true,
        &[("ca.crt", &Ca::root("A").pem())],
    ));
    let server = TestServer::attach(start(&fake).await);
    eventually("good one served", || {
        serves(&server.running, "team/weather")
    })
    .await;
    assert!(
        server
            .running
            .published
            .snapshot
            .borrow()
            .get("team/broken")
            .is_none(),
        "malformed object skipped"
    );
    let mut c = SotwClient::open(&server).await;
    c.request(&["team/weather"]).await;
    let first = c.recv(&["team/weather"]).await;
    c.ack(&["team/weather"]).await;

    // Outage: watches fail; the snapshot stays, health says stale.
    fake.set_failing(true);
    fake.close_watches();
    let mut health = server.running.published.health.clone();
    tokio::time::timeout(
        Duration::from_secs(15),
        health.wait_for(|h| h.error.is_some()),
    )
    .await
    .expect("stale reported")
    .unwrap();
    assert!(
        server
            .running
            .published
            .snapshot
            .borrow()
            .get("team/weather")
            .is_some()
    );

    // Recovery: re-list, the error clears, nothing is pushed for the unchanged bundle.
    fake.set_failing(false);
    tokio::time::timeout(
        Duration::from_secs(30),
        health.wait_for(|h| h.error.is_none()),
    )
    .await
    .expect("recovered")
    .unwrap();
    rotate_weather(&fake, "B");
    let next = c.recv(&["team/weather"]).await;
    assert_eq!(
        next.nonce.parse::<u64>().unwrap(),
        first.nonce.parse::<u64>().unwrap() + 1,
        "no push for the outage"
    );
}

/// A hung API server (requests unanswered, watches silent) takes nothing away: the last
/// snapshot keeps being served to existing and new streams, and when it answers again the
/// change made meanwhile reaches the stream and the status.
#[tokio::test]
async fn a_hung_api_server_keeps_serving_and_catches_up() {
    let fake = weather_fake("A").await;
    let server = TestServer::attach(start(&fake).await);
    eventually("served", || serves(&server.running, "team/weather")).await;
    let mut c = SotwClient::open(&server).await;
    c.request(&["team/weather"]).await;
    let first = c.recv(&["team/weather"]).await;
    c.ack(&["team/weather"]).await;
    eventually("Ready written", || {
        fake.ready("MCPServerRegistration", "team", "weather")
            .is_some_and(|r| r["status"] == "True")
    })
    .await;

    fake.set_hanging(true);
    rotate_weather(&fake, "B");
    // A new stream during the hang gets the last known bundle at once.
    let mut late = SotwClient::open(&server).await;
    late.request(&["team/weather"]).await;
    assert_eq!(
        late.recv(&["team/weather"]).await.version_info,
        first.version_info,
        "the last snapshot is served during the hang"
    );

    fake.set_hanging(false);
    let pushed = c.recv(&["team/weather"]).await;
    assert_ne!(
        pushed.version_info, first.version_info,
        "the held change arrives"
    );
    assert_eq!(
        late.recv(&["team/weather"]).await.version_info,
        pushed.version_info
    );
    eventually("Ready still true after the rotation", || {
        fake.ready("MCPServerRegistration", "team", "weather")
            .is_some_and(|r| {
                r["status"] == "True"
                    && r["message"]
                        .as_str()
                        .is_some_and(|m| !m.contains("still served"))
            })
    })
    .await;
}

#[tokio::test]
async fn gateway_bundle_follows_http_route_parents() {
    let fake = FakeApiServer::start(&["v1"]).await;
    // The registration lives in `apps`; its route attaches to the Gateway in `gw`, whose
    // extension carries the base bundle.
    let mut reg = registration("apps", "weather", "own-ca", None);
    reg["spec"]["targetRef"]["name"] = json!("weather-route");
    fake.apply(reg);
    fake.apply(secret(
        "apps",
        "own-ca",
        true,
        &[("ca.crt", &Ca::root("Own").pem())],
    ));
    fake.apply(json!({"apiVersion": "mcp.kuadrant.io/v1", "kind": "MCPGatewayExtension", "metadata": {"name": "mcp", "namespace": "gw"},
        "spec": {"targetRef": {"name": "gateway", "sectionName": "mcp"}, "caCertBundleRef": {"name": "base-ca"}}}));
    fake.apply(secret(
        "gw",
        "base-ca",
        true,
        &[("ca.crt", &Ca::root("Base").pem())],
    ));
    fake.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "weather-route", "namespace": "apps"},
        "spec": {"parentRefs": [{"name": "gateway", "namespace": "gw"}]}}));
    let running = start(&fake).await;
    eventually("base + own", || {
        running
            .published
            .snapshot
            .borrow()
            .get("apps/weather")
            .is_some_and(|b| b.certificate_count() == 2)
    })
    .await;
    assert!(
        running
            .published
            .snapshot
            .borrow()
            .get("gateway/gw/mcp")
            .is_some()
    );
    let c = fake.ready("MCPGatewayExtension", "gw", "mcp");
    eventually("extension status", || {
        fake.ready("MCPGatewayExtension", "gw", "mcp").is_some()
    })
    .await;
    let _ = c;
}

#[tokio::test]
async fn one_namespace_only() {
    let fake = FakeApiServer::start(&["v1"]).await;
    seed_weather(&fake, "A");
    fake.apply(registration("other", "news", "news-ca", None));
    fake.apply(secret(
        "other",
        "news-ca",
        true,
        &[("ca.crt", &Ca::root("N").pem())],
    ));
    let running = server::start_kube(
        ServeConfig::default(),
        fake.client(),
        Some("team".into()),
        None,
    )
    .await
    .unwrap();
    eventually("team served", || serves(&running, "team/weather")).await;
    assert!(
        !serves(&running, "other/news"),
        "other namespaces are not watched"
    );
    assert!(
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("LIST"))
            .all(|r| !r.contains("other"))
    );
    eventually("status", || fake.ready(REG, "team", "weather").is_some()).await;
    assert!(fake.ready(REG, "other", "news").is_none());
}

/// A Lease holder whose clock runs an hour behind keeps renewing with old `renewTime`s: it
/// is alive, and another replica must not take over. Once it stops renewing, the record
/// stays unchanged and the other replica takes over after the lease duration.
#[tokio::test]
async fn a_skewed_holder_that_renews_keeps_the_lease() {
    use trust_sds::leader::{self, LeaseConfig};
    let fake = FakeApiServer::start(&["v1"]).await;
    let (ns, name) = ("trust-sds-system", "trust-sds-status-writer");
    let hour_ago = || {
        let t =
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
        format!("{t:.6}")
    };
    let peer_lease = |renewed: String| {
        json!({"holderIdentity": "skewed-peer", "leaseDurationSeconds": 3,
               "renewTime": renewed, "acquireTime": renewed, "leaseTransitions": 0})
    };
    fake.put_lease(ns, name, peer_lease(hour_ago()));
    let config = LeaseConfig {
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(50),
        ..LeaseConfig::new(ns, "replica-a")
    };
    let (leader_tx, mut leader_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(leader::run(fake.client(), config, leader_tx, stop_rx));

    // The peer renews every 200 ms for 3 s (60 checks by replica-a, a whole lease
    // duration of 3 s, which leaves room for a busy machine): replica-a must never lead.
    for _ in 0..15 {
        fake.put_lease(ns, name, peer_lease(hour_ago()));
        let took =
            tokio::time::timeout(Duration::from_millis(200), leader_rx.wait_for(|l| *l)).await;
        assert!(took.is_err(), "took the Lease of a holder that renews");
    }
    assert_eq!(fake.lease_holder(ns, name).as_deref(), Some("skewed-peer"));

    // The peer stops: its record no longer changes, and replica-a takes over.
    tokio::time::timeout(Duration::from_secs(10), leader_rx.wait_for(|l| *l))
        .await
        .expect("takes over a lapsed Lease")
        .unwrap();
    assert_eq!(fake.lease_holder(ns, name).as_deref(), Some("replica-a"));
    stop_tx.send_replace(true);
    task.await.unwrap();
}

/// `targets` registrations in the fake, each with a computed `Ready=True`, and a status
/// writer's inputs over them (synced source); the statuses' sender closes the writer.
fn writer_over(
    fake: &FakeApiServer,
    targets: usize,
    is_leader: tokio::sync::watch::Receiver<bool>,
) -> (
    tokio::sync::watch::Sender<std::sync::Arc<trust_sds::snapshot::StatusMap>>,
    trust_sds::status_writer::Inputs,
) {
    use std::sync::Arc;
    use trust_sds::model::ObjectKey;
    use trust_sds::snapshot::{SourceHealth, StatusMap};
    use trust_sds::status::{Condition, StatusTarget};
    let mut statuses = StatusMap::new();
    for i in 0..targets {
        let name = format!("r{i:05}");
        fake.apply(registration("team", &name, "ca", None));
        let ready = Condition::ready("Valid", format!("{name} is fine"), Some(1));
        statuses.insert(
            StatusTarget::Registration(ObjectKey::new("team", &name)),
            Arc::new(ready),
        );
    }
    let (statuses_tx, statuses) = tokio::sync::watch::channel(Arc::new(statuses));
    let health = SourceHealth {
        synced: true,
        ..Default::default()
    };
    let inputs = trust_sds::status_writer::Inputs {
        statuses,
        is_leader,
        health: tokio::sync::watch::channel(Arc::new(health)).1,
        observed: Arc::new(trust_sds::status_writer::observed::Observed::new("Ready")),
        metrics: Arc::new(trust_sds::metrics::Metrics::new()),
        rejections: tokio::sync::watch::channel(Arc::default()).1,
        upstream: None,
    };
    (statuses_tx, inputs)
}

/// A writer that loses leadership in the middle of a pass stops before its next write
/// (the writes in flight finish), instead of writing every difference it had planned.
#[tokio::test]
async fn a_writer_that_loses_the_lease_stops_before_its_next_write() {
    use trust_sds::status_writer::{self, StatusWriterConfig};
    let fake = FakeApiServer::start(&["v1"]).await;
    // A busy API server: writes take 20 ms, four in flight, so the pass lasts ~1.5 s.
    fake.set_status_latency(Duration::from_millis(20));
    let targets = 300;
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (statuses_tx, inputs) = writer_over(&fake, targets, leader_rx);
    let config = StatusWriterConfig {
        concurrency: 4,
        ..StatusWriterConfig::new("v1", "Ready")
    };
    let writer = tokio::spawn(status_writer::run(fake.client(), config, inputs));
    eventually("the first writes", || fake.status_patches() >= 5).await;
    leader_tx.send_replace(false);
    let at_loss = fake.status_patches();
    assert!(
        at_loss < targets / 2,
        "the pass must still be under way ({at_loss} written)"
    );
    // Closing the status channel ends the writer once its pass is over: then every write
    // it was going to make has been made.
    drop(statuses_tx);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer ends")
        .unwrap();
    let total = fake.status_patches();
    assert!(
        total <= at_loss + 4,
        "{} writes after leadership was lost (of {targets} planned; 4 may be in flight)",
        total - at_loss
    );
    assert!(fake.max_status_writes_in_flight() <= 4);
    drop(leader_tx);
}

/// Next to a controller that owns `Ready`, `--condition-type CACertificateReady` writes
/// trust-sds's result under that type and leaves the other controller's `Ready` alone.
#[tokio::test]
async fn a_custom_condition_type_leaves_another_controllers_ready_alone() {
    let fake = FakeApiServer::start(&["v1"]).await;
    fake.apply(registration("team", "weather", "weather-ca", None));
    let theirs = json!({"type": "Ready", "status": "False", "reason": "RouteNotAccepted",
        "message": "waiting for the route", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    fake.set_foreign_condition(REG, "team", "weather", "mcp-controller", theirs.clone());
    fake.apply(secret(
        "team",
        "weather-ca",
        true,
        &[("ca.crt", &Ca::root("A").pem())],
    ));
    let config = ServeConfig {
        condition_type: "CACertificateReady".into(),
        ..ServeConfig::default()
    };
    let _running = server::start_kube(config, fake.client(), None, None)
        .await
        .unwrap();
    let ours = |fake: &FakeApiServer| {
        fake.conditions(REG, "team", "weather")
            .into_iter()
            .find(|c| c["type"] == "CACertificateReady")
    };
    eventually("CACertificateReady written", || ours(&fake).is_some()).await;
    let condition = ours(&fake).unwrap();
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "Valid");
    assert_eq!(
        fake.ready(REG, "team", "weather"),
        Some(theirs),
        "their Ready is untouched"
    );
}

/// Another client overwrites trust-sds's `Ready` (as `kubectl patch --subresource=status`
/// or a second controller would): trust-sds writes it back within seconds, keeping its
/// `lastTransitionTime`; while the other writer keeps at it, each correction waits twice
/// as long as the one before (the first at once, then 1 s, 2 s), and every overwrite is
/// counted in `trust_sds_status_conflicts_total`.
#[tokio::test]
async fn a_foreign_write_is_corrected_and_a_fight_backs_off() {
    let fake = FakeApiServer::start(&["v1"]).await;
    seed_weather(&fake, "A");
    let running = start(&fake).await;
    eventually("Ready=True", || {
        fake.ready(REG, "team", "weather")
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    let ours = fake.ready(REG, "team", "weather").unwrap();
    let mut gaps = Vec::new();
    for round in 0..4 {
        let theirs = json!({"type": "Ready", "status": "False", "reason": "Overwritten",
            "message": format!("round {round}"), "lastTransitionTime": "2026-01-01T00:00:00Z"});
        let at = tokio::time::Instant::now();
        fake.set_foreign_condition(REG, "team", "weather", "kubectl-patch", theirs);
        let restored = tokio::time::timeout(Duration::from_secs(30), async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while fake.ready(REG, "team", "weather").as_ref() != Some(&ours) {
                tick.tick().await;
            }
        })
        .await;
        assert!(restored.is_ok(), "round {round}: the overwrite stayed");
        gaps.push(at.elapsed());
    }
    // Lower bounds only: a slow machine makes gaps longer, never shorter.
    for (round, min) in [(1, 1), (2, 2), (3, 4)] {
        assert!(
            gaps[round] >= Duration::from_secs(min),
            "correction {round} came after {:?}, before its {min} s backoff ({gaps:?})",
            gaps[round]
        );
    }
    assert_eq!(running.metrics.status_conflicts.get(), 4);
    let text = running.metrics.render();
    assert!(
        text.contains("trust_sds_status_conflicts_total 4"),
        "{text}"
    );
}

/// `lastTransitionTime` comes from the object when `status` did not change, so a restart
/// (or a new leader) that writes a new message keeps the time of the real transition.
#[tokio::test]
async fn last_transition_time_survives_a_restart() {
    let fake = FakeApiServer::start(&["v1"]).await;
    seed_weather(&fake, "A");
    // What an earlier run of trust-sds left on the object.
    let earlier = json!({"type": "Ready", "status": "True", "reason": "Valid",
        "message": "an older message", "observedGeneration": 1,
        "lastTransitionTime": "2026-01-01T00:00:00Z"});
    fake.set_foreign_condition(REG, "team", "weather", "trust-sds", earlier);
    let running = start(&fake).await;
    eventually("the message brought up to date", || {
        ready_message(&fake, "weather").is_some_and(|m| m != "an older message")
    })
    .await;
    let ready = fake.ready(REG, "team", "weather").unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert_eq!(
        running.metrics.status_conflicts.get(),
        0,
        "our own earlier write is no conflict"
    );
    running.shutdown().await;

    // A second run finds the object as it should be: no write at all. Barriers: each is
    // written by a later pass than the one before it, and a pass ends only when all its
    // writes have landed, so once the second is there, every earlier write is too.
    let writes = fake.status_patches();
    let _running = start(&fake).await;
    for barrier in ["barrier-1", "barrier-2"] {
        fake.apply(registration("zz", barrier, "barrier-ca", None));
        eventually("barrier status", || {
            fake.ready(REG, "zz", barrier).is_some()
        })
        .await;
    }
    assert_eq!(
        fake.status_patches(),
        writes + 2,
        "only the barriers were written"
    );
    assert_eq!(
        fake.ready(REG, "team", "weather").unwrap()["lastTransitionTime"],
        "2026-01-01T00:00:00Z"
    );
}

/// Status writes at scale: 10,000 changed conditions against an API server that takes 5 ms
/// per write. The writer keeps `concurrency` applies in flight (never more); a serial
/// writer over 500 of them, in the same run, is the baseline. Prints both rates (run with
/// `--no-capture` to see them); asserts only that everything lands within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_conditions_are_written_with_bounded_concurrency() {
    use trust_sds::status_writer::{self, StatusWriterConfig};

    async fn write_all(targets: usize, concurrency: usize) -> (Duration, usize) {
        let fake = FakeApiServer::start(&["v1"]).await;
        fake.set_status_latency(Duration::from_millis(5));
        let (statuses_tx, inputs) =
            writer_over(&fake, targets, tokio::sync::watch::channel(true).1);
        let config = StatusWriterConfig {
            concurrency,
            ..StatusWriterConfig::new("v1", "Ready")
        };
        let started = tokio::time::Instant::now();
        let writer = tokio::spawn(status_writer::run(fake.client(), config, inputs));
        // Closing the channel ends the writer after its pass: then every write has landed.
        drop(statuses_tx);
        tokio::time::timeout(Duration::from_secs(120), writer)
            .await
            .expect("the writer finishes its pass")
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(fake.status_patches(), targets);
        (elapsed, fake.max_status_writes_in_flight())
    }

    let (serial, serial_in_flight) = write_all(500, 1).await;
    assert_eq!(serial_in_flight, 1);
    let concurrency = status_writer::DEFAULT_WRITE_CONCURRENCY;
    let (parallel, in_flight) = write_all(10_000, concurrency).await;
    assert!(in_flight <= concurrency, "{in_flight} writes in flight");
    assert!(in_flight > 1, "the writes were not concurrent");
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    eprintln!(
        "status writes, 5 ms per write: serial {:.0}/s (500 in {serial:?}); concurrency {concurrency}: \
         {:.0}/s (10,000 in {parallel:?}, at most {in_flight} in flight); ratio {:.1}x",
        rate(500, serial),
        rate(10_000, parallel),
        rate(10_000, parallel) / rate(500, serial)
    );
}

/// The delivery report and the condition: a subscriber that rejects the current version
/// (a Delta NACK) shows in `/statuses` and `/bundles` with its node and reason, and in the
/// object's condition; ACKs and connects never cause a status write; a new version clears
/// the rejection from the condition.
#[tokio::test]
async fn a_nacking_subscriber_shows_in_the_delivery_report_and_the_condition() {
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;

    let fake = weather_fake("Delivery A").await;
    let running = start(&fake).await;
    let valid = |fake: &FakeApiServer| {
        ready_message(fake, "weather")
            .filter(|m| m.starts_with("CA certificate secret weather-ca is valid"))
    };
    eventually("Ready", || valid(&fake).is_some()).await;
    let plain = valid(&fake).unwrap();
    let version = running.sds_snapshot.borrow().resources["team/weather"]
        .version
        .to_string();

    let sds = SecretDiscoveryServiceClient::connect(format!("http://{}", running.sds_addr))
        .await
        .unwrap();
    // One subscriber takes the bundle (SotW, ACK) ...
    let mut taker = SotwClient::open_with(sds.clone()).await;
    taker.request(&["team/weather"]).await;
    taker.recv(&["team/weather"]).await;
    taker.ack(&["team/weather"]).await;
    // (Streams are independent: the ACK is waited for, or it may land after the rest.)
    eventually("the ACK recorded", || {
        running.clients.list().iter().any(|c| c.acked.is_some())
    })
    .await;
    // ... one refuses it (Delta, NACK with an error_detail) ...
    let mut refuser = DeltaClient::open_with(sds.clone()).await;
    refuser.subscribe(&["team/weather"], "").await;
    let pushed = refuser.recv().await;
    refuser
        .nack(&pushed.nonce, "test broker: cannot parse the bundle")
        .await;
    // Counted when the NACK came: 1 of 2.
    let want = format!(
        "{plain}; 1 of 2 subscribers rejected version {version}: test broker: cannot parse the bundle"
    );
    eventually("the rejection in the condition", || {
        ready_message(&fake, "weather").as_deref() == Some(want.as_str())
    })
    .await;
    // ... and one, connected after the NACK, has not answered yet (a connect is no event:
    // the condition stays "1 of 2").
    let mut silent = DeltaClient::open_with(sds.clone()).await;
    silent.subscribe(&["team/weather"], "").await;
    let silent_push = silent.recv().await;
    let report = || async {
        let (_, body) = support::envoy::http_get(running.admin_addr.port(), "/statuses")
            .await
            .unwrap();
        let statuses: Value = serde_json::from_str(&body).unwrap();
        statuses["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["target"]["object"] == "team/weather")
            .map(|s| s["delivery"].clone())
            .unwrap_or_else(|| panic!("no delivery in {statuses}"))
    };
    let delivery = report().await;
    assert_eq!(
        delivery,
        json!({
            "version": version,
            "subscribers": 3, "acked": 1, "rejected": 1, "pending": 1,
            "firstRejection": {"node": "test-node", "message": "test broker: cannot parse the bundle"}
        }),
        "/statuses"
    );
    let (_, bundles) = support::envoy::http_get(running.admin_addr.port(), "/bundles")
        .await
        .unwrap();
    let bundles: Value = serde_json::from_str(&bundles).unwrap();
    assert_eq!(bundles[0]["delivery"], delivery, "/bundles");
    let (_, metrics) = support::envoy::http_get(running.admin_addr.port(), "/metrics")
        .await
        .unwrap();
    for line in [
        "trust_sds_sds_resource_deliveries{resource=\"team/weather\",state=\"rejected\"} 1",
        "trust_sds_sds_deliveries{state=\"pending\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }

    // Connects and ACKs are no events: the condition keeps saying "1 of 2" and nothing is
    // written, though a fourth subscriber takes the bundle and the silent one answers.
    let writes = fake.status_patches();
    let mut late = SotwClient::open_with(sds.clone()).await;
    late.request(&["team/weather"]).await;
    late.recv(&["team/weather"]).await;
    late.ack(&["team/weather"]).await;
    silent.subscribe(&[], &silent_push.nonce).await;
    eventually("the late ACKs counted", || {
        running
            .clients
            .list()
            .iter()
            .filter(|c| c.acked.is_some())
            .count()
            == 3
    })
    .await;
    let delivery = report().await;
    assert_eq!(
        (
            &delivery["subscribers"],
            &delivery["acked"],
            &delivery["rejected"],
            &delivery["pending"]
        ),
        (&json!(4), &json!(3), &json!(1), &json!(0))
    );
    // The status writer would have had every chance to write by now: it writes on the
    // change of a watch channel, which an ACK never sends.
    let rejections = running.clients.rejections();
    assert_eq!(rejections.borrow().len(), 1);
    assert_eq!(
        fake.status_patches(),
        writes,
        "an ACK or a connect wrote status"
    );
    assert_eq!(
        ready_message(&fake, "weather").as_deref(),
        Some(want.as_str())
    );

    // A new version is a new question: the condition drops the old rejection.
    fake.apply(secret(
        "team",
        "weather-ca",
        true,
        &[("ca.crt", &Ca::root("Delivery B").pem())],
    ));
    eventually("the rejection cleared", || {
        valid(&fake).is_some_and(|m| !m.contains("rejected") && m != plain)
    })
    .await;
    running.shutdown().await;
}

/// `--verify-upstreams` with the Kubernetes source: `UpstreamTrusted` lands on the object
/// beside `Ready` (one field manager, one apply), and follows a rotation of the Secret.
#[tokio::test]
async fn upstream_trusted_is_written_beside_ready() {
    use support::upstream::Upstream;
    let fake = FakeApiServer::start(&["v1"]).await;
    let ca = Ca::root("Weather CA");
    let upstream = Upstream::start(&ca.leaf("weather.example"), &[]).await;
    let mut reg = registration("team", "weather", "weather-ca", None);
    reg["metadata"]["annotations"] = json!({
        "trust-sds.io/verify-url": "https://weather.example/mcp",
        "trust-sds.io/verify-connect-to": upstream.addr.to_string(),
    });
    fake.apply(reg);
    fake.apply(secret("team", "weather-ca", true, &[("ca.crt", &ca.pem())]));
    let config = ServeConfig {
        verify: Some(trust_sds::verify::VerifyConfig {
            interval: Duration::from_secs(3600),
            ..Default::default()
        }),
        ..ServeConfig::default()
    };
    let _running = server::start_kube(config, fake.client(), None, None)
        .await
        .unwrap();
    let trusted = |fake: &FakeApiServer| {
        fake.conditions(REG, "team", "weather")
            .into_iter()
            .find(|c| c["type"] == "UpstreamTrusted")
    };
    let reason = |fake: &FakeApiServer| trusted(fake).map(|c| c["reason"].clone());
    eventually("UpstreamTrusted=Verified", || {
        reason(&fake) == Some(json!("Verified"))
    })
    .await;
    let condition = trusted(&fake).unwrap();
    assert_eq!(condition["status"], "True");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .starts_with("upstream weather.example:443 verified with bundle version "),
        "{condition}"
    );
    assert_eq!(
        fake.ready(REG, "team", "weather").unwrap()["status"],
        "True"
    );

    // A rotation to a CA the upstream's certificate does not chain to.
    rotate_weather(&fake, "Unrelated CA");
    eventually("UpstreamTrusted=UnknownIssuer", || {
        reason(&fake) == Some(json!("UnknownIssuer"))
    })
    .await;
    let condition = trusted(&fake).unwrap();
    assert_eq!(condition["status"], "False");
    assert_eq!(
        condition["message"],
        "upstream weather.example:443 presents a certificate issued by \"CN=Weather CA\" that the served bundle does not trust"
    );
    assert_eq!(
        fake.ready(REG, "team", "weather").unwrap()["status"],
        "True",
        "the bundle itself is valid"
    );
}

/// Without `--verify-upstreams`, trust-sds writes no `UpstreamTrusted` and leaves one that
/// another manager wrote alone.
#[tokio::test]
async fn without_verification_upstream_trusted_is_not_touched() {
    let fake = FakeApiServer::start(&["v1"]).await;
    fake.apply(registration("team", "weather", "weather-ca", None));
    let theirs = json!({"type": "UpstreamTrusted", "status": "Unknown", "reason": "Theirs",
        "message": "another tool", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    fake.set_foreign_condition(REG, "team", "weather", "other-tool", theirs.clone());
    rotate_weather(&fake, "A");
    let _running = start(&fake).await;
    eventually("Ready written", || {
        fake.ready(REG, "team", "weather").is_some()
    })
    .await;
    let upstream: Vec<Value> = fake
        .conditions(REG, "team", "weather")
        .into_iter()
        .filter(|c| c["type"] == "UpstreamTrusted")
        .collect();
    assert_eq!(upstream, [theirs]);
}
