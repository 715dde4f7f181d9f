//! The manifests source against a real directory and real file watching (notify/inotify):
//! every edit pattern ends in the right snapshot, broken files lose nothing.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::pki::Ca;
use tokio::sync::{mpsc, watch};
use trust_sds::pipeline::Pipeline;
use trust_sds::snapshot::{Snapshot, SourceHealth};
use trust_sds::source::manifests::{ManifestsSource, parse_manifests};
use trust_sds::translate::TranslateConfig;

fn secret_yaml(name: &str, pem: &str) -> String {
    support::manifests::secret_yaml("team", name, pem)
}

fn registration_yaml(name: &str, secret: &str) -> String {
    support::manifests::registration_yaml("team", name, secret)
}

struct Running {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    health: watch::Receiver<Arc<SourceHealth>>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start(dir: &Path) -> Running {
    let (pipeline, published) = Pipeline::new(TranslateConfig::default());
    let (tx, rx) = mpsc::channel(64);
    let source = ManifestsSource::new(dir, "default");
    let tasks = vec![
        tokio::spawn(pipeline.run(rx)),
        tokio::spawn(async move {
            source.run(tx).await.expect("source");
        }),
    ];
    Running {
        snapshot: published.snapshot,
        health: published.health,
        _tasks: tasks,
    }
}

/// Waits (bounded) until the snapshot satisfies `pred`.
async fn wait_until(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| pred(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
        .expect("pipeline alive");
}

fn version(s: &Snapshot, name: &str) -> Option<String> {
    s.get(name).map(|b| b.version().to_owned())
}

fn served_cn(s: &Snapshot, name: &str) -> Option<String> {
    s.get(name)
        .map(|b| b.certificates().next().unwrap().display_name.clone())
}

#[tokio::test]
async fn edit_patterns_converge() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, c) = (Ca::root("CA A"), Ca::root("CA B"), Ca::root("CA C"));
    std::fs::write(
        d.join("reg.yaml"),
        registration_yaml("weather", "weather-ca"),
    )
    .unwrap();
    std::fs::write(d.join("secret.yaml"), secret_yaml("weather-ca", &a.pem())).unwrap();
    let mut run = start(d);
    wait_until(&mut run.snapshot, "initial load", |s| {
        served_cn(s, "team/weather").as_deref() == Some("CA A")
    })
    .await;

    // Edit in place.
    std::fs::write(d.join("secret.yaml"), secret_yaml("weather-ca", &b.pem())).unwrap();
    wait_until(&mut run.snapshot, "in-place edit", |s| {
        served_cn(s, "team/weather").as_deref() == Some("CA B")
    })
    .await;

    // Editor save: write a temp file, rename over the original.
    std::fs::write(d.join(".secret.yaml.swp"), "garbage: [").unwrap();
    std::fs::write(
        d.join("secret.yaml.tmp"),
        secret_yaml("weather-ca", &c.pem()),
    )
    .unwrap();
    std::fs::rename(d.join("secret.yaml.tmp"), d.join("secret.yaml")).unwrap();
    wait_until(&mut run.snapshot, "atomic rename", |s| {
        served_cn(s, "team/weather").as_deref() == Some("CA C")
    })
    .await;

    // Vim-style: move the original to a backup, write a new file.
    std::fs::rename(d.join("secret.yaml"), d.join("secret.yaml~")).unwrap();
    std::fs::write(d.join("secret.yaml"), secret_yaml("weather-ca", &a.pem())).unwrap();
    std::fs::remove_file(d.join("secret.yaml~")).unwrap();
    wait_until(&mut run.snapshot, "backup-and-write", |s| {
        served_cn(s, "team/weather").as_deref() == Some("CA A")
    })
    .await;

    // Rename to another manifest name: same content, still served.
    let before = version(&run.snapshot.borrow(), "team/weather");
    std::fs::rename(d.join("secret.yaml"), d.join("ca-secret.yml")).unwrap();
    // Create a new registration file to prove the rename was scanned.
    std::fs::write(
        d.join("news.yaml"),
        format!("{}---\n{}", registration_yaml("news", "weather-ca"), ""),
    )
    .unwrap();
    wait_until(&mut run.snapshot, "rename + create", |s| {
        s.get("team/news").is_some()
    })
    .await;
    assert_eq!(version(&run.snapshot.borrow(), "team/weather"), before);

    // Delete: the Secret is gone, the bundles are withdrawn.
    std::fs::remove_file(d.join("ca-secret.yml")).unwrap();
    wait_until(&mut run.snapshot, "delete", |s| s.resources.is_empty()).await;
}

#[tokio::test]
async fn broken_file_keeps_what_it_and_others_had() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (Ca::root("CA A"), Ca::root("CA B"));
    std::fs::write(
        d.join("one.yaml"),
        format!(
            "{}---\n{}",
            registration_yaml("one", "one-ca"),
            secret_yaml("one-ca", &a.pem())
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("two.yaml"),
        format!(
            "{}---\n{}",
            registration_yaml("two", "two-ca"),
            secret_yaml("two-ca", &a.pem())
        ),
    )
    .unwrap();
    let mut run = start(d);
    wait_until(&mut run.snapshot, "both served", |s| s.resources.len() == 2).await;

    std::fs::write(
        d.join("two.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: [unclosed\n",
    )
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        run.health
            .wait_for(|h| h.skipped.keys().any(|k| k.ends_with("two.yaml"))),
    )
    .await
    .expect("broken file reported")
    .unwrap();
    assert_eq!(run.snapshot.borrow().resources.len(), 2, "nothing lost");

    // A later good change elsewhere is still picked up.
    std::fs::write(
        d.join("one.yaml"),
        format!(
            "{}---\n{}",
            registration_yaml("one", "one-ca"),
            secret_yaml("one-ca", &b.pem())
        ),
    )
    .unwrap();
    wait_until(&mut run.snapshot, "other file still live", |s| {
        served_cn(s, "team/one").as_deref() == Some("CA B")
    })
    .await;
    assert_eq!(
        served_cn(&run.snapshot.borrow(), "team/two").as_deref(),
        Some("CA A")
    );
}

#[tokio::test]
async fn directory_removed_and_restored() {
    let parent = tempfile::tempdir().unwrap();
    let d = parent.path().join("manifests");
    std::fs::create_dir(&d).unwrap();
    let a = Ca::root("CA A");
    let content = format!(
        "{}---\n{}",
        registration_yaml("one", "one-ca"),
        secret_yaml("one-ca", &a.pem())
    );
    std::fs::write(d.join("one.yaml"), &content).unwrap();
    let mut run = start(&d);
    wait_until(&mut run.snapshot, "served", |s| s.resources.len() == 1).await;

    std::fs::remove_dir_all(&d).unwrap();
    tokio::time::timeout(
        Duration::from_secs(15),
        run.health.wait_for(|h| h.error.is_some()),
    )
    .await
    .expect("stale source reported")
    .unwrap();
    assert_eq!(run.snapshot.borrow().resources.len(), 1, "last state kept");

    std::fs::create_dir(&d).unwrap();
    std::fs::write(
        d.join("one.yaml"),
        content.replace("name: one\n", "name: uno\n"),
    )
    .unwrap();
    wait_until(&mut run.snapshot, "restored", |s| {
        s.get("team/uno").is_some()
    })
    .await;
    assert!(run.health.borrow().error.is_none());
}

#[test]
fn parser_handles_lists_string_data_and_unknown_kinds() {
    let pem = Ca::root("X").pem();
    let text = format!(
        "# comment\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {{name: x}}\n- apiVersion: v1\n  kind: Secret\n  metadata: {{name: plain, namespace: team}}\n  data: {{ca.crt: aGVsbG8=}}\n---\n{}---\nnot: [a, list]\n---\n- 1\n",
        secret_yaml("s", &pem)
    );
    let parsed = parse_manifests(&text, "f.yaml", "default").unwrap();
    assert_eq!(parsed.objects.len(), 2);
    let plain = parsed
        .objects
        .iter()
        .find(|o| o.key().name == "plain")
        .unwrap();
    let trust_sds::model::Object::Secret(plain) = plain else {
        panic!()
    };
    assert!(!plain.is_labelled(), "unlabelled Secret data is dropped");
    assert_eq!(parsed.skipped.len(), 1, "{:?}", parsed.skipped);
}

#[test]
fn secret_decode_errors_never_quote_data() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: leaky\n  labels: {mcp.kuadrant.io/secret: \"true\"}\ndata:\n  ca.crt: TOP-SECRET-NOT-BASE64\n";
    let parsed = parse_manifests(text, "f.yaml", "default").unwrap();
    assert!(parsed.objects.is_empty());
    let (_, reason) = &parsed.skipped[0];
    assert!(reason.contains("invalid Secret leaky"), "{reason}");
    assert!(!reason.contains("TOP-SECRET"), "{reason}");
}

#[test]
fn registration_round_trips_upstream_fields() {
    use trust_sds::crd::registration::v1::MCPServerRegistration;
    let yaml = "apiVersion: mcp.kuadrant.io/v1\nkind: MCPServerRegistration\nmetadata:\n  name: weather\n  namespace: team\nspec:\n  targetRef:\n    group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: weather-route\n  prefix: weather_\n  path: /v1/mcp\n  credentialRef:\n    name: weather-token\n    key: token\n  state: Enabled\n  caCertSecretRef:\n    name: weather-ca\n    key: ca.crt\n  tokenURLElicitation:\n    url: https://example.test/token\n  userSpecificList: Disabled\n  category:\n  - weather\n  hint: forecasts\n  tags:\n  - public\n";
    let parsed: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
    let typed: MCPServerRegistration = serde_json::from_value(parsed.clone()).unwrap();
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(back["spec"], parsed["spec"]);
}

/// A file that does not parse is reported once, and the source does not wake itself: the
/// scan reads every file, and a watcher that took those reads for changes rescanned (and
/// logged the broken file) about 45 times a second.
#[tokio::test]
async fn a_broken_file_is_reported_once_and_nothing_rescans_in_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("secret.yaml"),
        secret_yaml("a-ca", &Ca::root("A").pem()),
    )
    .unwrap();
    std::fs::write(d.join("broken.yaml"), "metadata: [broken").unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let source = ManifestsSource::new(d, "default");
    let _task = tokio::spawn(source.run(tx));
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await.expect("source alive") {
                trust_sds::pipeline::SourceEvent::Health(h) => return h,
                _ => continue,
            }
        }
    })
    .await
    .expect("a first scan");
    assert_eq!(first.skipped.len(), 1, "{:?}", first.skipped);
    assert!(first.skipped.keys().all(|k| k.ends_with("broken.yaml")));

    // Nothing changes for a second (the safety-net rescan is every 5 s): no scan at all.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut scans = 0;
    while let Ok(Some(event)) = tokio::time::timeout_at(quiet_until, rx.recv()).await {
        if matches!(event, trust_sds::pipeline::SourceEvent::Health(_)) {
            scans += 1;
        }
    }
    assert_eq!(scans, 0, "{scans} rescans in 1 s while no file changed");

    // A real change is still seen.
    std::fs::write(d.join("broken.yaml"), "").unwrap();
    let fixed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let trust_sds::pipeline::SourceEvent::Health(h) = rx.recv().await.unwrap()
                && h.skipped.is_empty()
            {
                return;
            }
        }
    })
    .await;
    assert!(fixed.is_ok(), "the fixed file is noticed");
}
