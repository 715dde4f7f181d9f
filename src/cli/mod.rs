//! The `trust-sds` command line.

mod check;
mod envoy_config;
mod probe;
mod status;
mod sync;
mod value_enums;

use crate::sds::limits::{RateLimit, StreamLimits};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::sds::UnknownNamePolicy;
use crate::server::{self, ServeConfig};
use crate::translate::TranslateConfig;

/// Which server and which bundle: the subscription `probe` and `sync` share.
#[derive(clap::Args, Debug)]
pub struct SubscriptionArgs {
    /// trust-sds gRPC address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:18000",
        env = "TRUST_SDS_SERVER"
    )]
    sds: String,
    /// The registration whose bundle to use (`<namespace>/<name>`; or a gateway's base
    /// bundle, `gateway/<namespace>/<extension>`).
    #[arg(long, value_name = "NS/NAME", value_parser = clap::value_parser!(crate::model::ResourceName))]
    registration: crate::model::ResourceName,
}

#[derive(Parser, Debug)]
#[command(
    name = "trust-sds",
    version,
    about = "Envoy SDS server for MCP gateway upstream CA trust bundles"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TRUST_SDS_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve trust bundles over SDS (gRPC) with an admin HTTP endpoint.
    Serve(Box<ServeArgs>),
    /// Validate Secret manifests or PEM files offline, with the same messages as the server.
    Check(check::CheckArgs),
    /// Show the Ready conditions and served bundles of a running server.
    Status(status::StatusArgs),
    /// Do an MCP `initialize` over HTTPS against an upstream, trusting what trust-sds serves
    /// for a registration (as the broker does).
    Probe(probe::ProbeArgs),
    /// Keep a registration's trust bundle in a PEM file (for consumers that read files:
    /// SSL_CERT_FILE, Python or Node MCP clients, nginx), as a sidecar or, with --once, an
    /// init container.
    Sync(Box<sync::SyncArgs>),
    /// Print the CustomResourceDefinitions generated from the Rust types.
    Crd,
    /// Print Envoy clusters (or a bootstrap) that verify an upstream with a served bundle.
    EnvoyConfig(envoy_config::EnvoyConfigArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Directory of YAML manifests (Secrets, MCPServerRegistrations, MCPGatewayExtensions,
    /// HTTPRoutes), watched for changes. No cluster needed.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API (in-cluster config, or $KUBECONFIG / ~/.kube/config) and
    /// write Ready conditions.
    #[arg(long)]
    kube: bool,
    /// With --kube: watch one namespace only (default: all namespaces).
    #[arg(long, requires = "kube")]
    namespace: Option<String>,
    /// With --kube: elect a status writer through a Lease in this namespace (for several
    /// replicas; usually the pod's namespace). Without it, this replica always writes.
    #[arg(
        long,
        requires = "kube",
        value_name = "NAMESPACE",
        env = "TRUST_SDS_LEASE_NAMESPACE"
    )]
    leader_elect: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name). Two
    /// replicas must never share one.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Namespace for manifests that name none.
    #[arg(long, default_value = "default")]
    default_namespace: String,
    /// SDS/ADS gRPC listen address (also serves gRPC health and the admin API).
    #[arg(long, default_value = "127.0.0.1:18000", env = "TRUST_SDS_LISTEN")]
    listen: SocketAddr,
    /// Also serve gRPC on this Unix socket.
    #[arg(long, value_name = "PATH")]
    uds: Option<PathBuf>,
    /// Admin HTTP listen address (/healthz, /readyz, /metrics, /bundles, /statuses, /clients).
    #[arg(
        long,
        default_value = "127.0.0.1:18001",
        env = "TRUST_SDS_ADMIN_LISTEN"
    )]
    admin_listen: SocketAddr,
    /// Subscriptions to names that are not served: hold them, or answer not-found (Delta).
    #[arg(long, value_enum, default_value_t = UnknownNamePolicy::Hold)]
    unknown_names: UnknownNamePolicy,
    /// Report certificates that expire within this many days.
    #[arg(long, default_value_t = 30)]
    expiry_warning_days: i64,
    /// Serve TLS on --listen with this certificate chain (PEM); reloaded when it changes.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key for --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (mTLS); identities are their SANs.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
    /// Authorization policy: which client identities may read which namespaces (YAML:
    /// `clients: [{identity, namespaces}]`). Default: every client may read everything.
    #[arg(long, value_name = "FILE")]
    authz: Option<PathBuf>,
    /// Resource names one request may carry; more ends the stream (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = crate::sds::SdsOptions::DEFAULT_MAX_NAMES_PER_REQUEST)]
    max_names_per_request: usize,
    /// SDS streams one connection may hold open (0: no limit). Envoy opens one stream per
    /// secret name, all on one connection.
    #[arg(long, default_value_t = StreamLimits::DEFAULT_PER_CONNECTION)]
    max_streams_per_connection: usize,
    /// SDS streams one client may hold open over all its connections (0: no limit). A client
    /// is its certificate identity (mTLS), else its IP address (or process on the Unix socket).
    #[arg(long, default_value_t = StreamLimits::DEFAULT_PER_CLIENT)]
    max_streams_per_client: usize,
    /// Requests per second a stream may send besides its replies (ACK/NACK) to responses
    /// (0: no limit); bursts of twice this are allowed. More ends the stream.
    #[arg(long, default_value_t = RateLimit::DEFAULT_PER_SECOND)]
    max_request_rate: u32,
    /// Largest request message accepted, in bytes; a larger one ends its stream.
    #[arg(long, default_value_t = crate::sds::SdsOptions::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// How often each SDS connection is sent an HTTP/2 PING (0s: never). A client that
    /// leaves one unanswered for --keepalive-timeout is disconnected, which frees its
    /// streams (and its share of --max-streams-per-client).
    #[arg(long, default_value = "30s", value_parser = probe::parse_duration, value_name = "DURATION")]
    keepalive_interval: std::time::Duration,
    /// How long a client may take to answer a keepalive PING.
    #[arg(long, default_value = "10s", value_parser = probe::parse_duration, value_name = "DURATION")]
    keepalive_timeout: std::time::Duration,
    /// With --kube: the type of the condition trust-sds writes. `Ready` (the default, what
    /// the MCP gateway's operator guide expects) unless another controller already owns
    /// `Ready` on these objects; then e.g. `CACertificateReady`.
    #[arg(
        long,
        default_value = crate::status_writer::DEFAULT_CONDITION_TYPE,
        value_parser = crate::status_writer::parse_condition_type,
        env = "TRUST_SDS_CONDITION_TYPE"
    )]
    condition_type: String,
    /// Verify each registration's upstream with a TLS handshake that trusts what the broker
    /// would (served bundle + system roots); report it as the `UpstreamTrusted` condition,
    /// in /statuses, `trust-sds status` and metrics.
    #[arg(long, env = "TRUST_SDS_VERIFY_UPSTREAMS")]
    verify_upstreams: bool,
    /// With --verify-upstreams: how often an unchanged upstream is checked again (±10%).
    #[arg(long, default_value = "5m", value_parser = probe::parse_duration, value_name = "DURATION", requires = "verify_upstreams")]
    verify_interval: std::time::Duration,
    /// With --verify-upstreams: limit for one connect and TLS handshake.
    #[arg(long, default_value = "5s", value_parser = probe::parse_duration, value_name = "DURATION", requires = "verify_upstreams")]
    verify_timeout: std::time::Duration,
    /// With --verify-upstreams: handshakes in flight at once.
    #[arg(long, default_value_t = 16, requires = "verify_upstreams")]
    verify_concurrency: usize,
}

pub fn run() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // One crypto provider for every rustls user (kube client, probe, client library).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(serve(*args))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Check(args) => check::run(&args),
        Command::Status(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(status::run(&args))
        }
        Command::Probe(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(probe::run(args))
        }
        Command::Sync(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(sync::run(*args, shutdown_signal()))
        }
        Command::EnvoyConfig(args) => envoy_config::run(&args),
        Command::Crd => {
            print!("{}", crate::crd::crds_yaml()?);
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Every flag is named here: one added to ServeArgs and not used is a compile error.
    let ServeArgs {
        manifests,
        kube: _, // clap makes --manifests and --kube exclusive, and one of them required
        namespace,
        leader_elect,
        identity,
        default_namespace,
        listen,
        uds,
        admin_listen,
        unknown_names,
        expiry_warning_days,
        tls_cert,
        tls_key,
        tls_client_ca,
        authz,
        max_names_per_request,
        max_streams_per_connection,
        max_streams_per_client,
        max_request_rate,
        max_request_bytes,
        keepalive_interval,
        keepalive_timeout,
        condition_type,
        verify_upstreams,
        verify_interval,
        verify_timeout,
        verify_concurrency,
    } = args;
    let config = ServeConfig {
        sds_addr: listen,
        uds_path: uds,
        admin_addr: admin_listen,
        sds: crate::sds::SdsOptions {
            unknown_names,
            max_names_per_request,
            authz: authz
                .map(|p| crate::sds::authz::Authz::load(&p).map(std::sync::Arc::new))
                .transpose()?,
            streams: StreamLimits {
                per_connection: max_streams_per_connection,
                per_client: max_streams_per_client,
            },
            request_rate: RateLimit::per_second(max_request_rate),
            max_request_bytes,
            keepalive: (!keepalive_interval.is_zero()).then_some(
                crate::sds::transport::keepalive::Keepalive {
                    interval: keepalive_interval,
                    // An answer cannot arrive in no time.
                    timeout: keepalive_timeout.max(std::time::Duration::from_millis(100)),
                },
            ),
        },
        tls: match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca: tls_client_ca,
            }),
            _ => None,
        },
        translate: TranslateConfig {
            expiry_warning_secs: expiry_warning_days * 86_400,
        },
        condition_type,
        verify: verify_upstreams.then(|| crate::verify::VerifyConfig {
            interval: verify_interval.max(std::time::Duration::from_secs(1)),
            timeout: verify_timeout,
            concurrency: verify_concurrency.max(1),
        }),
    };
    let running = match manifests {
        Some(dir) => server::start_manifests(config, dir, default_namespace).await?,
        None => {
            let client = kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot configure a Kubernetes client (in-cluster or kubeconfig): {e}"
                )
            })?;
            let identity = identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("trust-sds-{}", std::process::id()));
            let lease = leader_elect.map(|ns| crate::leader::LeaseConfig::new(ns, identity));
            server::start_kube(config, client, namespace, lease).await?
        }
    };
    log_statuses(running.published.statuses.clone(), "status");
    log_statuses(running.published.upstreams.clone(), "upstream");
    shutdown_signal().await;
    tracing::info!(
        streams = running.clients.len(),
        "shutting down: draining streams"
    );
    running.shutdown().await;
    Ok(())
}

/// Logs every change of the conditions, in both modes: with `--manifests` the log (and the
/// admin API) is where status shows; with `--kube` it records what the writer applies.
fn log_statuses(
    mut statuses: tokio::sync::watch::Receiver<std::sync::Arc<crate::snapshot::StatusMap>>,
    what: &'static str,
) {
    tokio::spawn(async move {
        let mut last = crate::snapshot::StatusMap::new();
        loop {
            let current = statuses.borrow_and_update().clone();
            for (target, c) in current.iter() {
                if last.get(target) != Some(c) {
                    let object = match target {
                        crate::status::StatusTarget::Registration(k) => {
                            format!("MCPServerRegistration {k}")
                        }
                        crate::status::StatusTarget::Extension(k) => {
                            format!("MCPGatewayExtension {k}")
                        }
                    };
                    if c.ready {
                        tracing::info!(%object, ready = c.status_str(), reason = %c.reason, "{what}: {}", c.message);
                    } else {
                        tracing::warn!(%object, ready = c.status_str(), reason = %c.reason, "{what}: {}", c.message);
                    }
                }
            }
            last = (*current).clone();
            if statuses.changed().await.is_err() {
                break;
            }
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colour only on a terminal: logs collected from files and pods stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
