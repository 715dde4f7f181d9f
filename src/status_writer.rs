//! Writes `Ready` conditions to Kubernetes by server-side apply on the status subresource,
//! with field manager `trust-sds`, so conditions other controllers own are untouched.
//!
//! Reads the published status map (a watch channel: always the newest state, never a
//! growing queue), writes only what changed since the last successful write, keeps
//! `lastTransitionTime` unless `status` flips, and retries failures with capped backoff.
//! A target whose condition disappeared gets an apply without conditions, which releases
//! trust-sds's `Ready` entry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use tokio::sync::watch;

use crate::snapshot::StatusMap;
use crate::status::{Condition, StatusTarget};

pub const FIELD_MANAGER: &str = "trust-sds";

/// The condition type written unless `--condition-type` says otherwise.
pub const DEFAULT_CONDITION_TYPE: &str = "Ready";

/// Where conditions go: the served versions of both kinds, and the condition's type.
#[derive(Clone, Debug)]
pub struct StatusWriterConfig {
    /// e.g. `v1` or `v1alpha1`.
    pub registration_version: String,
    pub extension_version: String,
    /// `Ready`, or another type when a controller beside trust-sds owns `Ready`.
    pub condition_type: String,
}

/// Checks a condition type as the API server's validation of `metav1.Condition` would
/// (an optional DNS-subdomain prefix and `/`, then a name of letters, digits, `-`, `_`,
/// `.`, starting and ending alphanumeric; at most 316 characters), so a typo fails at
/// start-up rather than on every status write.
pub fn parse_condition_type(value: &str) -> Result<String, String> {
    let (prefix, name) = match value.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    let alnum_ends = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let name_ok = alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|prefix| {
        prefix.split('.').all(|label| {
            alnum_ends(label)
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
    });
    if value.len() <= 316 && name_ok && prefix_ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a valid condition type: use letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit (e.g. CACertificateReady), optionally \
             after a DNS prefix and '/'"
        ))
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Written {
    condition: Option<Arc<Condition>>,
    last_transition: String,
}

/// The body of the apply patch (pure: tested without an API server).
pub fn apply_body(
    api_version: &str,
    kind: &str,
    condition_type: &str,
    condition: Option<&Condition>,
    last_transition: &str,
) -> serde_json::Value {
    let conditions: Vec<serde_json::Value> = condition
        .map(|c| {
            let mut v = json!({
                "type": condition_type,
                "status": c.status_str(),
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": last_transition,
            });
            if let Some(g) = c.observed_generation {
                v["observedGeneration"] = json!(g);
            }
            v
        })
        .into_iter()
        .collect();
    json!({ "apiVersion": api_version, "kind": kind, "status": { "conditions": conditions } })
}

fn api_for(
    client: &Client,
    config: &StatusWriterConfig,
    target: &StatusTarget,
) -> (Api<DynamicObject>, String, &'static str) {
    let (kind, version, key) = match target {
        StatusTarget::Registration(k) => ("MCPServerRegistration", &config.registration_version, k),
        StatusTarget::Extension(k) => ("MCPGatewayExtension", &config.extension_version, k),
    };
    let gvk = GroupVersionKind::gvk("mcp.kuadrant.io", version, kind);
    let resource = ApiResource::from_gvk(&gvk);
    let api = Api::namespaced_with(client.clone(), &key.namespace, &resource);
    (api, format!("mcp.kuadrant.io/{version}"), kind)
}

/// Runs until the status channel closes. `is_leader` gates writing (several replicas).
pub async fn run(
    client: Client,
    config: StatusWriterConfig,
    mut statuses: watch::Receiver<Arc<StatusMap>>,
    mut is_leader: watch::Receiver<bool>,
    mut health: watch::Receiver<Arc<crate::snapshot::SourceHealth>>,
) {
    // Before every watch has listed, a registration may be seen without its Secret: writing
    // then would flap Ready through a false "not found".
    if health.wait_for(|h| h.synced).await.is_err() {
        return;
    }
    let mut written: BTreeMap<StatusTarget, Written> = BTreeMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        if *is_leader.borrow_and_update() {
            let current = statuses.borrow_and_update().clone();
            let failed = write_changes(&client, &config, &current, &mut written, &is_leader).await;
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            backoff = Duration::from_millis(200);
        } else {
            // A new leader writes everything it believes, once.
            written.clear();
        }
        tokio::select! {
            changed = statuses.changed() => if changed.is_err() { return },
            // Without leader election the sender is gone and leadership never changes.
            Ok(()) = is_leader.changed() => {}
        }
    }
}

/// Writes every difference; returns whether some write failed (to retry later). Stops
/// before the next write as soon as this replica is no longer the leader: a pass over
/// thousands of targets outlives a Lease.
async fn write_changes(
    client: &Client,
    config: &StatusWriterConfig,
    current: &StatusMap,
    written: &mut BTreeMap<StatusTarget, Written>,
    is_leader: &watch::Receiver<bool>,
) -> bool {
    let now = crate::translate::format_unix(crate::pipeline::unix_now());
    let mut failed = false;
    let targets: Vec<StatusTarget> = current
        .keys()
        .chain(written.keys())
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for target in targets {
        if !*is_leader.borrow() {
            tracing::info!("leadership lost; status writes stop");
            return false;
        }
        let want = current.get(&target).cloned();
        let previous = written.get(&target);
        if previous.map(|p| &p.condition) == Some(&want) {
            continue;
        }
        let last_transition = match (previous, &want) {
            (Some(p), Some(w)) if p.condition.as_ref().is_some_and(|c| c.ready == w.ready) => {
                p.last_transition.clone()
            }
            _ => now.clone(),
        };
        let (api, api_version, kind) = api_for(client, config, &target);
        let name = match &target {
            StatusTarget::Registration(k) | StatusTarget::Extension(k) => k.name.clone(),
        };
        let body = apply_body(
            &api_version,
            kind,
            &config.condition_type,
            want.as_deref(),
            &last_transition,
        );
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                tracing::debug!(?target, "status written");
                written.insert(
                    target,
                    Written {
                        condition: want,
                        last_transition,
                    },
                );
            }
            // The object is gone: nothing to write, nothing to remember.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                written.remove(&target);
            }
            Err(e) => {
                tracing::warn!(?target, error = %e, "status write failed; will retry");
                failed = true;
            }
        }
    }
    written.retain(|t, w| current.contains_key(t) || w.condition.is_some());
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_types_are_checked_like_the_api_server_does() {
        for good in [
            "Ready",
            "CACertificateReady",
            "trust-sds.io/CACertificate",
            "a.b_c-d",
        ] {
            assert_eq!(parse_condition_type(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "Ready!",
            "-Ready",
            "Ready.",
            "Has Space",
            "UPPER.io/Ready",
            "/Ready",
        ] {
            let err = parse_condition_type(bad).unwrap_err();
            assert!(
                err.contains("is not a valid condition type"),
                "{bad}: {err}"
            );
        }
    }
}
