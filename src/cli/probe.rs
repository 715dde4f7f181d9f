//! `trust-sds probe`.

use std::process::ExitCode;
use std::time::Duration;

use crate::client::{ClientOptions, Protocol, TrustClient, TrustEvent};
use crate::probe::mcp_initialize;

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    subscription: super::SubscriptionArgs,
    /// SDS variant.
    #[arg(long, value_enum, default_value_t = Protocol::Delta)]
    protocol: Protocol,
    /// Also trust the system roots.
    #[arg(long)]
    system_roots: bool,
    /// Dial this address instead of resolving the URL's host (TLS name stays the host's).
    #[arg(long, value_name = "IP:PORT")]
    connect_to: Option<std::net::SocketAddr>,
    /// Keep running: probe again on every trust change.
    #[arg(long)]
    watch: bool,
    /// How long to wait for the first bundle.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// The upstream MCP endpoint, e.g. https://weather.mcp.test:8443/mcp
    url: String,
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 10s, 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?} (ms, s, m)")),
    }
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let name = args.subscription.registration.to_string();
    let subscribed = name.clone();
    let mut options = ClientOptions::new(args.subscription.sds.clone(), vec![name.clone()]);
    options.protocol = args.protocol;
    options.system_roots = args.system_roots;
    options.node_id = "trust-sds-probe".to_owned();
    let client = TrustClient::start(options)?;
    client.wait_ready(args.timeout).await?;
    // Subscribed after the first bundle, so --watch reports changes only.
    let mut events = client.events();
    let trust = client.trust(&name);
    let version = trust
        .as_ref()
        .map(|t| t.version.clone())
        .unwrap_or_default();
    println!("trust for {name}: version {version}");
    let tls = client.client_config(&name);
    let ok = report(mcp_initialize(&args.url, tls.clone(), args.connect_to).await);
    if !args.watch {
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    loop {
        match events.recv().await {
            Ok(TrustEvent::Updated { name, version, at }) if *name == *subscribed => {
                let result = mcp_initialize(&args.url, tls.clone(), args.connect_to).await;
                println!(
                    "trust changed to version {version}; probe {:?} after the push",
                    at.elapsed()
                );
                report(result);
            }
            Ok(TrustEvent::Removed { name }) if *name == *subscribed => {
                println!("trust for {name} withdrawn: connections now fail closed");
                report(mcp_initialize(&args.url, tls.clone(), args.connect_to).await);
            }
            Ok(TrustEvent::Disconnected { reason }) => {
                println!("trust-sds unreachable ({reason}); keeping trust {version}")
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return Ok(ExitCode::FAILURE),
        }
    }
}

fn report(result: anyhow::Result<crate::probe::ProbeOutcome>) -> bool {
    match result {
        Ok(o) => {
            println!(
                "initialize: HTTP {} from {} (protocol {}) in {:?}",
                o.status,
                o.server_name.as_deref().unwrap_or("<unnamed server>"),
                o.protocol_version.as_deref().unwrap_or("?"),
                o.elapsed
            );
            (200..300).contains(&o.status)
        }
        Err(e) => {
            println!("initialize failed: {e:#}");
            false
        }
    }
}
