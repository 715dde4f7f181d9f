//! Fan-out benchmark: one CA rotation delivered to N SDS streams over M connections.
//!
//! `cargo bench --bench fanout [-- --quick]`. The server runs in a child process (this
//! binary re-executed with `--child trust-sds|baseline`) so its CPU time and resident memory
//! are measured alone, from /proc. The parent holds the N streams (SotW, one name each, all
//! subscribed to the rotated registration), ACKs every response, and times each rotation
//! from the command to the server until the last stream has the new version.
//!
//! The baseline child is a minimal tonic server on the same envoy-types messages that pushes
//! the same pre-encoded Secret to the same streams with no logic: the floor of this stack.
//!
//! The peer is go-control-plane (`benches/gcp`: its snapshot cache behind its xDS server,
//! as Istio, Envoy Gateway and most Go control planes serve xDS), built here with `go
//! build` from pinned modules and given the same bundles (as files), the same number of
//! registrations and the same rotations. Every case prints a row per server and the ratios
//! of trust-sds to each.
//!
//! Envoy puts its whole node (516 extensions, about 61 KB) into every request, ACKs
//! included; the 1,000-stream, 2 KiB case runs again with clients that do the same
//! (resident memory then mostly shows what the allocator kept of the requests).
//!
//! The h2-floor row is trust-sds's transport with no xDS logic (see `floor`): what is left
//! of trust-sds's cost once its logic is taken away, and so the bound on its ratios.
//!
//! "clients cpu" is this process's CPU per update while the rotations run: the clients
//! share the machine's cores with the server, so change-to-last-stream latency includes
//! their work, whatever the server's.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use prost::Message;
use support::objects::{ca_secret, registration};
use support::pki::Ca;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use trust_sds::pipeline::SourceEvent;
use trust_sds::sds::SECRET_TYPE_URL;
use trust_sds::server::ServeConfig;

const NAME: &str = "bench/rotated";

/// Bundles of roughly `bytes` of PEM, each differing from the previous by one certificate.
fn bundles(bytes: usize, count: usize) -> Vec<String> {
    let per_cert = Ca::root("size probe").pem().len();
    let certs = bytes.div_ceil(per_cert).max(1);
    let mut pool: Vec<String> = (0..certs)
        .map(|i| Ca::root(&format!("Base {i}")).pem())
        .collect();
    (0..count)
        .map(|i| {
            pool[i % certs] = Ca::root(&format!("Rotation {i}")).pem();
            pool.concat()
        })
        .collect()
}

// ---------------------------------------------------------------- child: servers

fn child(kind: &str, bundle_bytes: usize, rotations: usize, registrations: usize) {
    // Every server runs with a subscriber, as `trust-sds serve` does: without one, each of
    // h2's disabled trace spans falls back to the `log` crate, a cost no deployment pays.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let bundles = bundles(bundle_bytes, rotations + 1);
        let stdin = spawn_stdin();
        match kind {
            "trust-sds" => trust_sds_child(bundles, registrations, stdin).await,
            FLOOR => floor::child(bundles, stdin).await,
            _ => baseline_child(bundles, stdin).await,
        }
    });
}

fn spawn_stdin() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next `rotate <i>` command from the parent; `None` when stdin closes or says else.
async fn next_rotation(stdin: &mut mpsc::Receiver<String>) -> Option<usize> {
    let line = stdin.recv().await?;
    line.strip_prefix("rotate ")?.parse().ok()
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn trust_sds_child(
    bundles: Vec<String>,
    registrations: usize,
    mut stdin: mpsc::Receiver<String>,
) {
    let (events, rx) = mpsc::channel(registrations * 2 + 16);
    let running = trust_sds::server::start(ServeConfig::default(), rx)
        .await
        .unwrap();
    // Cold start: many registrations (each with its own small CA) plus the rotated one.
    let filler = Ca::root("Filler").pem();
    let start = Instant::now();
    for i in 0..registrations {
        events
            .send(SourceEvent::Apply(registration(
                "bench",
                &format!("r{i}"),
                "filler-ca",
            )))
            .await
            .unwrap();
    }
    events
        .send(SourceEvent::Apply(ca_secret("bench", "filler-ca", &filler)))
        .await
        .unwrap();
    events
        .send(SourceEvent::Apply(registration(
            "bench",
            "rotated",
            "rotated-ca",
        )))
        .await
        .unwrap();
    events
        .send(SourceEvent::Apply(ca_secret(
            "bench",
            "rotated-ca",
            &bundles[0],
        )))
        .await
        .unwrap();
    let mut snapshot = running.sds_snapshot.clone();
    snapshot
        .wait_for(|s| s.resources.len() > registrations)
        .await
        .unwrap();
    say(format!(
        "cold_start_us {} {}",
        start.elapsed().as_micros(),
        registrations + 1
    ));
    say(format!("ready {}", running.sds_addr));
    while let Some(i) = next_rotation(&mut stdin).await {
        events
            .send(SourceEvent::Apply(ca_secret(
                "bench",
                "rotated-ca",
                &bundles[i],
            )))
            .await
            .unwrap();
    }
}

struct Baseline {
    current: watch::Receiver<Arc<(String, Any)>>,
}

type Resp<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Baseline {
    type DeltaSecretsStream = Resp<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Resp<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaSecretsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline: SotW only"))
    }

    async fn stream_secrets(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamSecretsStream>, tonic::Status> {
        let mut requests = request.into_inner();
        let mut current = self.current.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            // First request, then push on every change; ACKs are read and dropped.
            if !matches!(requests.message().await, Ok(Some(_))) {
                return;
            }
            let mut nonce = 0u64;
            loop {
                let (version, any) = (*current.borrow_and_update().clone()).clone();
                nonce += 1;
                let resp = DiscoveryResponse {
                    version_info: version,
                    resources: vec![any],
                    type_url: SECRET_TYPE_URL.into(),
                    nonce: nonce.to_string(),
                    ..Default::default()
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = current.changed() => if changed.is_err() { return },
                    _ = async { while let Ok(Some(_)) = requests.message().await {} } => return,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        _: tonic::Request<DiscoveryRequest>,
    ) -> Result<tonic::Response<DiscoveryResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
}

/// Rotation `i`'s bundle as the Secret the servers without xDS logic send, pre-encoded.
fn secret_any(bundles: &[String], i: usize) -> Any {
    let secret = trust_sds::sds::encode::to_secret(
        NAME,
        &trust_sds::validation::validate_data(
            trust_sds::validation::Subject::GatewayBundle,
            bundles[i].as_bytes(),
        )
        .unwrap(),
    );
    Any {
        type_url: SECRET_TYPE_URL.into(),
        value: secret.encode_to_vec(),
    }
}

async fn baseline_child(bundles: Vec<String>, mut stdin: mpsc::Receiver<String>) {
    let encode = |i: usize| Arc::new((format!("v{i}"), secret_any(&bundles, i)));
    let (tx, rx) = watch::channel(encode(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SecretDiscoveryServiceServer::new(Baseline { current: rx }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    say("cold_start_us 0 0".into());
    say(format!("ready {addr}"));
    while let Some(i) = next_rotation(&mut stdin).await {
        tx.send_replace(encode(i));
    }
}

/// The transport floor: trust-sds's way of serving HTTP/2 (one task per connection with
/// its streams polled inside it, corked writes, the same h2 settings, the same wakeups)
/// with no xDS at all.
/// Every stream is sent the same pre-encoded message on each rotation, and its requests are
/// read (their window returned) but never decoded. What trust-sds costs above this row is
/// what its logic costs: decoding requests, ACK and NACK bookkeeping, the per-stream view,
/// encoding, limits and metrics.
mod floor {
    use std::future::poll_fn;
    use std::task::Poll;

    use bytes::Bytes;
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;
    use trust_sds::sds::interest::Interest;
    use trust_sds::sds::transport::{self, cork};

    use super::*;

    /// The whole gRPC message of rotation `i`: prefix and `DiscoveryResponse`.
    fn message(bundles: &[String], i: usize) -> Bytes {
        let response = DiscoveryResponse {
            version_info: format!("v{i}"),
            resources: vec![secret_any(bundles, i)],
            type_url: SECRET_TYPE_URL.into(),
            nonce: "1".into(),
            ..Default::default()
        };
        let body = response.encode_to_vec();
        let mut framed = Vec::with_capacity(5 + body.len());
        framed.push(0);
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        Bytes::from(framed)
    }

    pub async fn child(bundles: Vec<String>, mut stdin: mpsc::Receiver<String>) {
        let (tx, rx) = watch::channel(message(&bundles, 0));
        let interest = Arc::new(Interest::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = interest.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(tcp, rx.clone(), streams.clone()));
            }
        });
        say("cold_start_us 0 0".into());
        say(format!("ready {addr}"));
        let changed = [Arc::from(NAME)];
        while let Some(i) = next_rotation(&mut stdin).await {
            tx.send_replace(message(&bundles, i));
            interest.notify(&changed);
        }
    }

    type Task = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

    async fn connection(
        tcp: tokio::net::TcpStream,
        current: watch::Receiver<Bytes>,
        interest: Arc<Interest>,
    ) {
        let (corked, cork) = cork::wrap(tcp);
        let Ok(mut conn) = transport::h2_settings().handshake::<_, Bytes>(corked).await else {
            return;
        };
        let mut streams = FuturesUnordered::<Task>::new();
        let mut done = false;
        let accept = |conn: &mut h2::server::Connection<_, Bytes>,
                      cx: &mut std::task::Context<'_>,
                      streams: &mut FuturesUnordered<Task>,
                      done: &mut bool| {
            let mut accepted = false;
            while !*done {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        streams.push(Box::pin(stream(
                            request.into_body(),
                            respond,
                            current.clone(),
                            interest.clone(),
                        )));
                        accepted = true;
                    }
                    Poll::Ready(_) => *done = true,
                    Poll::Pending => break,
                }
            }
            accepted
        };
        poll_fn(|cx| {
            cork.cork();
            accept(&mut conn, cx, &mut streams, &mut done);
            while !done {
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
                if !accept(&mut conn, cx, &mut streams, &mut done) {
                    break;
                }
            }
            cork.uncork();
            if let Poll::Ready(Err(_)) = cork.poll_flush(cx) {
                return Poll::Ready(());
            }
            if done { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
    }

    async fn stream(
        mut body: h2::RecvStream,
        mut respond: h2::server::SendResponse<Bytes>,
        current: watch::Receiver<Bytes>,
        interest: Arc<Interest>,
    ) {
        // The first request, then a push per rotation; requests are read and dropped.
        match body.data().await {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
            }
            _ => return,
        }
        let mut response = http::Response::new(());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        let Ok(mut send) = respond.send_response(response, false) else {
            return;
        };
        // Woken as trust-sds's streams are: by the name's signal.
        let wakeups = interest.listen();
        wakeups.want(&[NAME.to_owned()], false);
        loop {
            let message = current.borrow().clone();
            if send.send_data(message, false).is_err() {
                return;
            }
            let open = poll_fn(|cx| {
                loop {
                    match body.poll_data(cx) {
                        Poll::Ready(Some(Ok(data))) => {
                            let _ = body.flow_control().release_capacity(data.len());
                        }
                        Poll::Ready(_) => return Poll::Ready(false),
                        Poll::Pending => break,
                    }
                }
                wakeups.poll_notified(cx).map(|()| true)
            })
            .await;
            if !open {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------- parent: clients

struct Progress {
    /// Streams that hold each rotation's version.
    counts: Vec<AtomicUsize>,
    done: Notify,
}

async fn open_streams(
    addr: &str,
    streams: usize,
    connections: usize,
    progress: Arc<Progress>,
    node: Option<Arc<Node>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut channels = Vec::new();
    for _ in 0..connections {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(ch);
    }
    let mut tasks = Vec::with_capacity(streams);
    let opened = Arc::new(AtomicUsize::new(0));
    let all_open = Arc::new(Notify::new());
    for s in 0..streams {
        let mut client = SecretDiscoveryServiceClient::new(channels[s % connections].clone());
        let progress = progress.clone();
        let (opened, all_open) = (opened.clone(), all_open.clone());
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            // Like Envoy, the node goes into every request.
            let node = || node.as_deref().cloned();
            tx.send(DiscoveryRequest {
                node: node(),
                resource_names: vec![NAME.into()],
                type_url: SECRET_TYPE_URL.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            let mut responses = client
                .stream_secrets(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut first = true;
            while let Ok(Some(r)) = responses.message().await {
                let _ = tx
                    .send(DiscoveryRequest {
                        node: node(),
                        version_info: r.version_info.clone(),
                        resource_names: vec![NAME.into()],
                        type_url: SECRET_TYPE_URL.into(),
                        response_nonce: r.nonce.clone(),
                        ..Default::default()
                    })
                    .await;
                if first {
                    first = false;
                    if opened.fetch_add(1, Ordering::SeqCst) + 1 == streams {
                        all_open.notify_one();
                    }
                    continue;
                }
                // Rotations are sequential (each waits for every stream), so a response after
                // the first belongs to the rotation in progress.
                let slot = SLOT.load(Ordering::SeqCst);
                if progress.counts[slot].fetch_add(1, Ordering::SeqCst) + 1 == streams {
                    progress.done.notify_one();
                }
            }
        }));
    }
    if opened.load(Ordering::SeqCst) < streams {
        tokio::time::timeout(Duration::from_secs(120), all_open.notified())
            .await
            .expect("streams opened");
    }
    tasks
}

static SLOT: AtomicUsize = AtomicUsize::new(0);

fn proc_cpu(pid: u32) -> Duration {
    support::procfs::cpu(&pid.to_string())
}

fn proc_rss_kib(pid: u32) -> u64 {
    support::procfs::status_kib(&pid.to_string(), "VmRSS:")
}

struct Figures {
    median: Duration,
    p99: Duration,
    cpu_per_update: Duration,
    /// The bench's own CPU (the clients) per update: it shares the 2 cores with the server.
    client_cpu_per_update: Duration,
    rss_per_stream: f64,
    cold_start: Duration,
    cold_start_registrations: usize,
}

async fn run_case(
    kind: &str,
    streams: usize,
    connections: usize,
    bundle_bytes: usize,
    rotations: usize,
    registrations: usize,
    node: Option<Arc<Node>>,
) -> Figures {
    let exe = std::env::current_exe().unwrap();
    // The Go peer's inputs: the bundles as files (made here, the same sizes as the Rust
    // children make; the directory lives until the case ends).
    let peer_dir = tempfile::tempdir().unwrap();
    if kind == PEER {
        std::fs::write(peer_dir.path().join("filler.pem"), Ca::root("Filler").pem()).unwrap();
        for (i, pem) in bundles(bundle_bytes, rotations + 1).iter().enumerate() {
            std::fs::write(peer_dir.path().join(format!("bundle-{i}.pem")), pem).unwrap();
        }
    }
    // FANOUT_SERVER_WRAPPER="perf record -e cpu-clock -g -o perf.data --" (or valgrind ...)
    // runs the server child under a profiler.
    let wrapper: Vec<String> = std::env::var("FANOUT_SERVER_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    if kind == PEER {
        command = std::process::Command::new(peer_binary());
        command.arg(peer_dir.path()).arg(registrations.to_string());
    } else {
        command.args([
            "--child",
            kind,
            &bundle_bytes.to_string(),
            &rotations.to_string(),
            &registrations.to_string(),
        ]);
    }
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let cold: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("ready ").unwrap().to_owned();

    let rss_before = proc_rss_kib(pid);
    let progress = Arc::new(Progress {
        counts: (0..=rotations).map(|_| AtomicUsize::new(0)).collect(),
        done: Notify::new(),
    });
    let tasks = open_streams(&addr, streams, connections, progress.clone(), node).await;
    // Let the server settle (ACKs of the first responses) before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = proc_rss_kib(pid);

    let cpu_before = proc_cpu(pid);
    let client_before = support::procfs::cpu("self");
    let mut samples = Vec::with_capacity(rotations);
    for i in 1..=rotations {
        SLOT.store(i, Ordering::SeqCst);
        let notified = progress.done.notified();
        let start = Instant::now();
        writeln!(stdin, "rotate {i}").unwrap();
        stdin.flush().unwrap();
        tokio::time::timeout(Duration::from_secs(60), notified)
            .await
            .expect("rotation delivered to every stream");
        samples.push(start.elapsed());
    }
    // ACKs of the last rotation are part of its cost: give them a moment to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = proc_cpu(pid) - cpu_before;
    let client_cpu = support::procfs::cpu("self") - client_before;
    drop(stdin);
    if wrapper.is_empty() {
        let _ = child.kill();
    }
    // Closing stdin ends the child; a profiler wrapping it then writes its data.
    let _ = child.wait();
    for t in tasks {
        t.abort();
    }
    samples.sort();
    Figures {
        median: samples[samples.len() / 2],
        p99: samples[((samples.len() - 1) as f64 * 0.99).round() as usize],
        cpu_per_update: cpu / (streams * rotations) as u32,
        client_cpu_per_update: client_cpu / (streams * rotations) as u32,
        rss_per_stream: (rss_after.saturating_sub(rss_before)) as f64 / streams as f64,
        cold_start: Duration::from_micros(cold[0]),
        cold_start_registrations: cold[1] as usize,
    }
}

/// The go-control-plane peer's row name.
const PEER: &str = "gcp";
/// The transport floor's row name (see [`floor`]).
const FLOOR: &str = "h2-floor";

/// Builds the go-control-plane peer (`benches/gcp`) once per run; Go's build cache makes
/// later runs quick.
fn peer_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = repo.join("target/gcp-sds-bench");
            let status = std::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(repo.join("benches/gcp"))
                .status()
                .expect("go (the go-control-plane peer is built with it)");
            assert!(status.success(), "go build of benches/gcp failed");
            out
        })
        .clone()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let n = |i: usize| args[pos + i].parse().unwrap();
        child(&args[pos + 1], n(2), n(3), n(4));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // FANOUT_ROTATIONS overrides the count (e.g. many rotations so a profile is mostly fan-out).
    let rotations = std::env::var("FANOUT_ROTATIONS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 10 } else { 30 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "fanout: {rotations} rotations per case; server CPU and RSS read from /proc of the server process"
    );
    println!(
        "{:<10} {:>7} {:>5} {:>7} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "server",
        "streams",
        "conns",
        "bundle",
        "median",
        "p99",
        "cpu/update",
        "KiB/stream",
        "cold start",
        "clients cpu"
    );
    let cases: &[(usize, usize)] = if quick {
        &[(1_000, 10)]
    } else {
        &[(1_000, 10), (10_000, 100)]
    };
    // FANOUT_ONLY="10000,100,2048,trust-sds" runs one case of one server (for profiling);
    // "all" in the last place runs the case for every server.
    let only: Option<Vec<String>> = std::env::var("FANOUT_ONLY")
        .ok()
        .map(|o| o.split(',').map(str::to_owned).collect());
    let scaling_only = only.as_ref().is_some_and(|o| o[0] == "scaling");
    let selected = |streams: usize, connections: usize, bundle: usize, kind: &str| {
        only.as_ref().is_none_or(|o| {
            o.len() == 4
                && o[0] == streams.to_string()
                && o[1] == connections.to_string()
                && o[2] == bundle.to_string()
                && (o[3] == kind || o[3] == "all")
        })
    };
    for &(streams, connections) in cases {
        for bundle in [2 * 1024, 16 * 1024] {
            let kinds: Vec<&str> = KINDS
                .into_iter()
                .filter(|kind| selected(streams, connections, bundle, kind))
                .collect();
            compare(&rt, &kinds, (streams, connections, bundle), rotations, None);
        }
    }
    // Envoy repeats its whole node in every request, ACKs included: the first case again
    // with clients that do the same (FANOUT_ONLY=envoy-node runs only this,
    // FANOUT_ONLY=envoy-node,trust-sds only its trust-sds row).
    if !quick && only.as_ref().is_none_or(|o| o[0] == "envoy-node") {
        let node = trust_sds::fuzzing::envoy_like_node(
            "router~10.0.0.1~mcp-gateway-envoy.mcp-system~mcp-system.svc.cluster.local",
            516,
        );
        println!(
            "clients that send a node like Envoy's ({} extensions, {} bytes) in every request:",
            node.extensions.len(),
            node.encoded_len()
        );
        let case = (1_000, 10, 2 * 1024);
        let kinds: Vec<&str> = ["trust-sds", "baseline", PEER]
            .into_iter()
            .filter(|kind| {
                only.as_ref()
                    .and_then(|o| o.get(1))
                    .is_none_or(|k| k == kind)
            })
            .collect();
        compare(&rt, &kinds, case, rotations, Some(Arc::new(node)));
    }
    if only.is_none() || scaling_only {
        registrations_scaling(&rt, rotations);
    }
}

const KINDS: [&str; 4] = ["trust-sds", "baseline", PEER, FLOOR];

/// Runs one case (streams, connections, bundle bytes) for each of `kinds`: a row each, then
/// the ratios of trust-sds to the others.
fn compare(
    rt: &tokio::runtime::Runtime,
    kinds: &[&str],
    (streams, connections, bundle): (usize, usize, usize),
    rotations: usize,
    node: Option<Arc<Node>>,
) {
    let mut row = Vec::new();
    for &kind in kinds {
        let f = rt.block_on(run_case(
            kind,
            streams,
            connections,
            bundle,
            rotations,
            10_000,
            node.clone(),
        ));
        println!(
            "{kind:<10} {streams:>7} {connections:>5} {:>6}K {:>10.2?} {:>10.2?} {:>12.2?} {:>12.2} {:>12} {:>12.2?}",
            bundle / 1024,
            f.median,
            f.p99,
            f.cpu_per_update,
            f.rss_per_stream,
            if f.cold_start_registrations > 0 {
                format!("{:.0?} ({})", f.cold_start, f.cold_start_registrations)
            } else {
                "-".into()
            },
            f.client_cpu_per_update
        );
        row.push((kind, f));
    }
    let Some((_, ours)) = row.iter().find(|(kind, _)| *kind == "trust-sds") else {
        return;
    };
    // The clients do the same work against every server, so the server's CPU per unit of
    // the clients' CPU cancels out the drift in this machine's speed between two rows.
    let per_client = |f: &Figures| {
        f.cpu_per_update.as_secs_f64() / f.client_cpu_per_update.as_secs_f64().max(1e-9)
    };
    let ratio = |name: &str, ours: &Figures, other: &Figures, to: &str| {
        println!(
            "{:<10} ratio {name}/{to}: median {:.2}x, cpu/update {:.2}x ({:.2}x per clients' cpu), memory/stream {:.2}x",
            "",
            ours.median.as_secs_f64() / other.median.as_secs_f64(),
            ours.cpu_per_update.as_secs_f64() / other.cpu_per_update.as_secs_f64().max(1e-9),
            per_client(ours) / per_client(other).max(1e-9),
            ours.rss_per_stream / other.rss_per_stream.max(1e-9)
        );
    };
    for (kind, other) in row.iter().filter(|(kind, _)| *kind != "trust-sds") {
        ratio("trust-sds", ours, other, kind);
    }
    // How far below the baseline the transport alone goes: the bound on trust-sds's ratios.
    let find = |name: &str| row.iter().find(|(kind, _)| *kind == name).map(|(_, f)| f);
    if let (Some(floor), Some(baseline)) = (find(FLOOR), find("baseline")) {
        ratio(FLOOR, floor, baseline, "baseline");
    }
}

/// What else is loaded must not make a rotation dearer: one rotated registration pushed
/// to 1,000 streams with 1,000 and with 10,000 registrations loaded, alternated over two
/// rounds (this machine is noisy), and the ratio of the sums.
fn registrations_scaling(rt: &tokio::runtime::Runtime, rotations: usize) {
    println!("registrations loaded: trust-sds, 1000 streams, 10 conns, 2K, the same rotation");
    let (mut small, mut large) = (Vec::new(), Vec::new());
    for _round in 0..2 {
        for (registrations, out) in [(1_000, &mut small), (10_000, &mut large)] {
            let f = rt.block_on(run_case(
                "trust-sds",
                1_000,
                10,
                2 * 1024,
                rotations,
                registrations,
                None,
            ));
            println!(
                "{:<10} {:>7} registrations: median {:>10.2?}, cpu/update {:>10.2?}",
                "", registrations, f.median, f.cpu_per_update
            );
            out.push(f);
        }
    }
    let sum = |fs: &[Figures], pick: fn(&Figures) -> Duration| {
        fs.iter().map(pick).sum::<Duration>().as_secs_f64()
    };
    println!(
        "{:<10} ratio 10000/1000 registrations: cpu/update {:.2}x, median {:.2}x",
        "",
        sum(&large, |f| f.cpu_per_update) / sum(&small, |f| f.cpu_per_update).max(1e-9),
        sum(&large, |f| f.median) / sum(&small, |f| f.median).max(1e-9),
    );
}
