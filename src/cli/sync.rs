//! `trust-sds sync`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::probe::parse_duration;
use crate::client::{ClientOptions, Protocol};
use crate::sync::{Hooks, NamedSignal, OutFile, SyncConfig, parse_signal};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The file is replaced atomically (temporary file in the same directory, fsync, rename; mode \
0644), only when the bundle changes: a reader never sees a partial or empty file. While \
trust-sds is unreachable the file is kept. When the server withdraws the trust, the file is \
removed (fail closed) and the command or signal runs. An existing --out is replaced only if \
it is empty or a PEM bundle of CA certificates (or with --force); a directory or symbolic \
link is never replaced.

Examples:
  trust-sds sync --sds http://trust-sds:18000 --registration mcp/weather --out /certs/ca.pem --once
  trust-sds sync --registration mcp/weather --out /certs/ca.pem --signal HUP --pid-file /run/nginx.pid
  trust-sds sync --registration mcp/weather --out /certs/ca.pem --exec nginx -s reload")]
pub struct SyncArgs {
    #[command(flatten)]
    subscription: super::SubscriptionArgs,
    /// The PEM file to keep up to date. Its directory must exist.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// After each change, run this program with its arguments, without a shell. Every
    /// word after --exec belongs to the command, up to a `;` word or the end: give it last.
    /// Env: TRUST_SDS_FILE, TRUST_SDS_VERSION, TRUST_SDS_EVENT (`written` or `removed`).
    #[arg(
        long,
        value_name = "CMD",
        num_args = 1..,
        allow_hyphen_values = true,
        value_terminator = ";"
    )]
    exec: Vec<String>,
    /// How long --exec may run before it is killed.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    exec_timeout: Duration,
    /// After each change, send this signal (HUP, USR1, ...) to the process in --pid-file.
    #[arg(long, value_name = "SIG", requires = "pid_file", value_parser = parse_signal)]
    signal: Option<NamedSignal>,
    /// File holding the pid to signal; read afresh for every signal.
    #[arg(long, value_name = "FILE", requires = "signal")]
    pid_file: Option<PathBuf>,
    /// Write the first bundle and exit (an init container): 0 once written, 1 on timeout,
    /// when the name is not served, or when a hook fails.
    #[arg(long)]
    once: bool,
    /// With --once: how long to wait for the bundle.
    #[arg(long, default_value = "30s", value_parser = parse_duration, requires = "once", value_name = "DURATION")]
    timeout: Duration,
    /// Serve /ready and /live over HTTP on this address (for a sidecar's probes).
    #[arg(long, value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
    /// Replace an existing --out file even if it is not a PEM bundle of CA certificates.
    #[arg(long)]
    force: bool,
    /// SDS variant. SotW cannot tell a withdrawal: the file is then kept.
    #[arg(long, value_enum, default_value_t = Protocol::Delta)]
    protocol: Protocol,
    /// The node id trust-sds shows for this subscriber in /clients.
    #[arg(long, default_value = "trust-sds-sync", env = "TRUST_SDS_NODE_ID")]
    node_id: String,
}

pub async fn run(
    args: SyncArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ExitCode> {
    let registration = args.subscription.registration.to_string();
    let mut client = ClientOptions::new(args.subscription.sds, vec![registration.clone()]);
    client.protocol = args.protocol;
    client.node_id = args.node_id;
    let config = SyncConfig {
        client,
        registration,
        out: OutFile::new(args.out, args.force),
        hooks: Hooks {
            exec: args.exec,
            exec_timeout: args.exec_timeout,
            signal: args.signal.zip(args.pid_file),
        },
        once: args.once.then_some(args.timeout),
        health_listen: args.health_listen,
    };
    crate::sync::run(config, shutdown).await
}
