//! Source health: synced once every watcher listed, stale while any watcher fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::ListParams;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::{ROUTE_API, RegistrationVersion, api, served};
use crate::model::SECRET_LABEL;
use crate::pipeline::SourceEvent;
use crate::snapshot::SourceHealth;

/// Shared health, published whenever it changes.
#[derive(Clone)]
pub(super) struct Health {
    pub(super) state: Arc<Mutex<HealthState>>,
    pub(super) tx: mpsc::Sender<SourceEvent>,
    pub(super) watchers: usize,
}

#[derive(Default)]
pub(super) struct HealthState {
    health: SourceHealth,
    synced: BTreeSet<&'static str>,
    /// Each failing watcher's last error: the source is stale while any remains.
    errors: BTreeMap<&'static str, String>,
}

impl Health {
    async fn update(&self, f: impl FnOnce(&mut HealthState)) {
        let health = {
            let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let before = guard.health.clone();
            f(&mut guard);
            let errors: Vec<&str> = guard.errors.values().map(String::as_str).collect();
            guard.health.error = (!errors.is_empty()).then(|| errors.join("; "));
            guard.health.synced = guard.synced.len() >= self.watchers;
            (guard.health != before).then(|| guard.health.clone())
        };
        if let Some(h) = health {
            let _ = self.tx.send(SourceEvent::Health(h)).await;
        }
    }

    pub(super) async fn synced(&self, watcher: &'static str) {
        self.update(|s| {
            s.synced.insert(watcher);
            s.errors.remove(watcher);
        })
        .await;
    }

    pub(super) async fn failed(&self, watcher: &'static str, e: &watcher::Error) {
        tracing::warn!(watcher, error = %e, "watch failed; serving the last snapshot and retrying");
        let message = format!("watch of {watcher} failed ({e}); serving the last snapshot");
        self.update(|s| {
            s.errors.insert(watcher, message);
        })
        .await;
    }

    pub(super) async fn healthy(&self, watcher: &'static str) {
        self.update(|s| {
            s.errors.remove(watcher);
        })
        .await;
    }

    fn failing(&self) -> Vec<&'static str> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .keys()
            .copied()
            .collect()
    }
}

/// While a watcher is failing, checks every few seconds whether its resource can be listed
/// again (a resumed watch is silent when nothing changed, so no event would say so).
pub(super) async fn recovery_probe(
    client: Client,
    namespace: Option<String>,
    version: RegistrationVersion,
    health: Health,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ns = namespace.as_deref();
    let one = ListParams::default().limit(1);
    loop {
        tick.tick().await;
        for watcher in health.failing() {
            let listed = match watcher {
                "MCPServerRegistration" => {
                    served(
                        &client,
                        ns,
                        version.api_version(),
                        "MCPServerRegistration",
                        "mcpserverregistrations",
                    )
                    .await
                }
                "MCPGatewayExtension" => {
                    served(
                        &client,
                        ns,
                        version.api_version(),
                        "MCPGatewayExtension",
                        "mcpgatewayextensions",
                    )
                    .await
                }
                "HTTPRoute" => served(&client, ns, ROUTE_API, "HTTPRoute", "httproutes").await,
                "Secret (labelled)" => {
                    let selector = format!("{SECRET_LABEL}=true");
                    api::<Secret>(&client, ns)
                        .list_metadata(&one.clone().labels(&selector))
                        .await
                        .is_ok()
                }
                "Secret (metadata)" => api::<Secret>(&client, ns).list_metadata(&one).await.is_ok(),
                _ => false,
            };
            if listed {
                health.healthy(watcher).await;
            }
        }
    }
}
