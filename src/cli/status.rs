//! `trust-sds status`: what a running server reports, through its gRPC admin API.

use std::process::ExitCode;

use crate::admin::proto::admin_client::AdminClient;
use crate::admin::proto::{Delivery, ListBundlesRequest, ListStatusesRequest};
use crate::translate::format_unix;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The server's gRPC address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:18000",
        env = "TRUST_SDS_SERVER"
    )]
    server: String,
    /// Also list every served bundle and its certificates.
    #[arg(long)]
    bundles: bool,
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = AdminClient::connect(args.server.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach trust-sds at {}: {e}", args.server))?;
    let statuses = client
        .list_statuses(ListStatusesRequest {})
        .await?
        .into_inner();
    if let Some(source) = &statuses.source {
        let state = match (source.synced, source.error.is_empty()) {
            (false, _) => "not synced".to_owned(),
            (true, true) => "synced".to_owned(),
            (true, false) => format!("stale: {}", source.error),
        };
        println!("source: {state}");
        for (location, reason) in &source.skipped {
            println!("  skipped {location}: {reason}");
        }
    }
    println!(
        "{:<24} {:<40} {:<6} {:<26} {:<12} MESSAGE",
        "KIND", "NAMESPACE/NAME", "READY", "REASON", "HELD"
    );
    let mut all_ready = true;
    for s in &statuses.statuses {
        all_ready &= s.ready;
        let ready = if s.ready { "True" } else { "False" };
        let object = format!("{}/{}", s.namespace, s.name);
        let held = s.delivery.as_ref().map_or("-".to_owned(), held);
        println!(
            "{:<24} {:<40} {:<6} {:<26} {:<12} {}",
            s.kind, object, ready, s.reason, held, s.message
        );
    }
    if !statuses.upstreams.is_empty() {
        println!();
        println!(
            "{:<40} {:<8} {:<18} MESSAGE",
            "UPSTREAM OF", "TRUSTED", "REASON"
        );
    }
    for u in &statuses.upstreams {
        // A trust failure fails the command; an unreachable upstream (Unknown) does not.
        all_ready &= u.status != "False";
        let object = format!("{}/{}", u.namespace, u.name);
        println!(
            "{:<40} {:<8} {:<18} {}",
            object, u.status, u.reason, u.message
        );
    }
    if args.bundles {
        let bundles = client
            .list_bundles(ListBundlesRequest {})
            .await?
            .into_inner();
        println!();
        for b in &bundles.bundles {
            println!("{} (version {})", b.name, b.version);
            if let Some(d) = &b.delivery {
                println!("  {}", delivery_line(d));
            }
            for c in &b.certificates {
                println!(
                    "  {}  sha256:{}  expires {}",
                    c.subject,
                    c.sha256,
                    format_unix(c.not_after)
                );
            }
        }
    }
    Ok(if all_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `acked/subscribers`, with the rejections: what the HELD column shows.
fn held(d: &Delivery) -> String {
    match d.rejected {
        0 => format!("{}/{}", d.acked, d.subscribers),
        n => format!("{}/{} {n}!", d.acked, d.subscribers),
    }
}

fn delivery_line(d: &Delivery) -> String {
    let mut line = format!(
        "subscribers: {}, hold it: {}, rejected it: {}, pending: {}",
        d.subscribers, d.acked, d.rejected, d.pending
    );
    if d.rejected > 0 {
        line.push_str(&format!(
            "; first rejected by node {:?}: {}",
            d.first_rejection_node, d.first_rejection_message
        ));
    }
    line
}
