//! Wiring for `trust-sds serve`: source -> pipeline -> encoder -> gRPC (SDS, ADS, health,
//! admin) on TCP and optionally a Unix socket, plus the admin HTTP endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Published, SourceEvent};
use crate::sds::SdsOptions;
use crate::sds::clients::ClientRegistry;
use crate::sds::encode::spawn_encoder;
use crate::sds::grpc::{AdsGrpc, SdsGrpc};
use crate::sds::service::SdsServer;
use crate::sds::transport::{Transport, listen};
use crate::source::manifests::ManifestsSource;
use crate::translate::TranslateConfig;

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub sds_addr: SocketAddr,
    pub uds_path: Option<PathBuf>,
    pub admin_addr: SocketAddr,
    /// The SDS protocol settings: unknown names, limits, the `--authz` policy.
    pub sds: SdsOptions,
    /// TLS (mTLS with a client CA) on the TCP listener.
    pub tls: Option<crate::tls::TlsFiles>,
    pub translate: TranslateConfig,
    /// With the Kubernetes source: the type of the condition written (`--condition-type`).
    pub condition_type: String,
    /// `--verify-upstreams`: TLS handshakes with every registration's upstream, reported
    /// as `UpstreamTrusted`.
    pub verify: Option<crate::verify::VerifyConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            sds_addr: ([127, 0, 0, 1], 0).into(),
            uds_path: None,
            admin_addr: ([127, 0, 0, 1], 0).into(),
            sds: SdsOptions::default(),
            tls: None,
            translate: TranslateConfig::default(),
            condition_type: crate::status_writer::DEFAULT_CONDITION_TYPE.to_owned(),
            verify: None,
        }
    }
}

/// A started server.
pub struct Running {
    pub sds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub published: Published,
    /// The encoded view every SDS stream reads.
    pub sds_snapshot: watch::Receiver<Arc<crate::sds::encode::SdsSnapshot>>,
    pub metrics: Arc<Metrics>,
    pub clients: Arc<ClientRegistry>,
    /// Whether this replica writes status (always true without leader election).
    pub is_leader: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    /// Listeners: awaited on shutdown so streams drain.
    tasks: Vec<JoinHandle<()>>,
    /// Source and pipeline: stopped on shutdown (they end only when their inputs do).
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Asks every stream to end and waits for the servers to stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        for t in self.background {
            t.abort();
        }
    }

    /// Resolves when shutdown was requested (e.g. by a signal).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Starts the server fed by the manifests directory `dir`.
pub async fn start_manifests(
    config: ServeConfig,
    dir: PathBuf,
    namespace: String,
) -> anyhow::Result<Running> {
    anyhow::ensure!(
        dir.is_dir(),
        "manifests directory {} does not exist or is not a directory",
        dir.display()
    );
    let (tx, rx) = mpsc::channel(1024);
    let mut running = start(config, rx).await?;
    running.background.push(tokio::spawn(async move {
        if let Err(e) = ManifestsSource::new(dir, namespace).run(tx).await {
            tracing::error!(error = %e, "manifests source stopped");
        }
    }));
    Ok(running)
}

/// Starts the server fed by the Kubernetes API (`client`), writing `Ready` conditions.
/// `lease`: with several replicas, only the holder of this Lease writes status.
pub async fn start_kube(
    config: ServeConfig,
    client: kube::Client,
    namespace: Option<String>,
    lease: Option<crate::leader::LeaseConfig>,
) -> anyhow::Result<Running> {
    use crate::source::kube::{KubeSource, discover_registration_version};
    use crate::status_writer::{self, StatusWriterConfig};
    let version = discover_registration_version(&client, namespace.as_deref()).await?;
    let (tx, rx) = mpsc::channel(1024);
    let condition_type = config.condition_type.clone();
    let verify = config.verify.is_some();
    let mut running = start(config, rx).await?;
    let mut types = vec![condition_type.clone()];
    if verify {
        types.push(status_writer::UPSTREAM_CONDITION_TYPE.to_owned());
    }
    let observed = Arc::new(status_writer::observed::Observed::for_types(types));
    let source = KubeSource::new(client.clone(), namespace).with_status_observer(observed.clone());
    running.background.push(tokio::spawn(async move {
        if let Err(e) = source.run(version, tx).await {
            tracing::error!(error = %e, "Kubernetes source stopped");
        }
    }));
    let writer_config = StatusWriterConfig::new(version.version(), &condition_type);
    // One replica, or the Lease holder when several run, writes status.
    let (leader_tx, leader_rx) = watch::channel(lease.is_none());
    match lease {
        Some(lease) => {
            let client = client.clone();
            let stop = running.shutdown.subscribe();
            // Awaited on shutdown (not aborted), so the Lease is released for the next replica.
            running.tasks.push(tokio::spawn(crate::leader::run(
                client, lease, leader_tx, stop,
            )));
        }
        None => drop(leader_tx),
    }
    running.is_leader = leader_rx.clone();
    let inputs = status_writer::Inputs {
        statuses: running.published.statuses.clone(),
        is_leader: leader_rx,
        health: running.published.health.clone(),
        observed,
        metrics: running.metrics.clone(),
        rejections: running.clients.rejections(),
        upstream: verify.then(|| running.published.upstreams.clone()),
    };
    running.background.push(tokio::spawn(status_writer::run(
        client,
        writer_config,
        inputs,
    )));
    Ok(running)
}

/// Starts the server fed by `events` (any source, or a test).
pub async fn start(
    config: ServeConfig,
    events: mpsc::Receiver<SourceEvent>,
) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let (pipeline, mut published) = Pipeline::new(config.translate.clone());
    let mut pipeline = pipeline.with_metrics(metrics.clone());
    let clients = Arc::new(ClientRegistry::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut background = Vec::new();
    if let Some(verify) = config.verify.clone() {
        let (results, upstreams) = watch::channel(Arc::new(crate::snapshot::StatusMap::new()));
        published.upstreams = upstreams;
        let inputs = crate::verify::Inputs {
            targets: pipeline.with_upstream_targets(),
            snapshot: published.snapshot.clone(),
            results,
            metrics: metrics.clone(),
            system_roots: Arc::new(crate::client::load_system_roots()),
        };
        background.push(tokio::spawn(crate::verify::run(verify, inputs)));
    }
    background.push(tokio::spawn(pipeline.run(events)));
    let mut tasks = Vec::new();

    let encoded = spawn_encoder(published.snapshot.clone(), metrics.clone());
    let sds = SdsServer::new(
        encoded.clone(),
        config.sds.clone(),
        metrics.clone(),
        clients.clone(),
        shutdown_rx.clone(),
    );
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<SdsGrpc>().await;
    let max = config.sds.max_request_bytes;
    // Everything but the discovery streams, which the transport serves itself.
    let others = tonic::service::Routes::new(SdsGrpc::new(sds.clone(), max))
        .add_service(AdsGrpc::new(sds.clone(), max))
        .add_service(health_service)
        .add_service(
            admin::grpc::AdminService::new(
                published.clone(),
                clients.clone(),
                config.sds.authz.clone(),
            )
            .into_server(),
        )
        .prepare();
    // A transport backstop above the per-connection stream limit, which is enforced per
    // SDS stream with a clear error; this one also bounds unary calls (health, fetch).
    let transport = Transport::new(
        sds,
        others,
        max,
        transport_stream_cap(config.sds.streams.per_connection),
        config.sds.keepalive,
    );

    let listener = TcpListener::bind(config.sds_addr)
        .await
        .with_context(|| format!("cannot listen for SDS on {}", config.sds_addr))?;
    let sds_addr = listener.local_addr()?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen for admin HTTP on {}", config.admin_addr))?;
    let admin_addr = admin_listener.local_addr()?;

    if let Some(path) = config.uds_path.clone() {
        let socket = crate::uds::bind(&path)?;
        let (transport, stop) = (transport.clone(), shutdown_rx.clone());
        tasks.push(tokio::spawn(async move {
            listen::unix(socket.listener, transport, stop).await;
            socket.owner.remove();
        }));
    }
    let tls = config
        .tls
        .clone()
        .map(crate::tls::ReloadingTls::load)
        .transpose()?;
    tasks.push(tokio::spawn(listen::tcp(
        listener,
        tls,
        transport,
        shutdown_rx.clone(),
    )));
    let app = admin::http::router(published.clone(), metrics.clone(), clients.clone());
    let stop = wait_for_stop(shutdown_rx);
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    }));
    tracing::info!(%sds_addr, %admin_addr, "trust-sds serving");
    Ok(Running {
        sds_addr,
        admin_addr,
        published,
        sds_snapshot: encoded.snapshots,
        metrics,
        clients,
        is_leader: watch::channel(true).1,
        shutdown,
        tasks,
        background,
    })
}

/// HTTP/2 streams one connection may have open: the SDS limit plus room for unary calls.
fn transport_stream_cap(per_connection: usize) -> Option<u32> {
    (per_connection > 0)
        .then(|| u32::try_from(per_connection.saturating_add(64)).unwrap_or(u32::MAX))
}

async fn wait_for_stop(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
