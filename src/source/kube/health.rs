//! Source health: synced once every watcher listed, stale while any watcher fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::ListParams;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::watched::Watched;
use super::{RegistrationVersion, api, served};
use crate::model::SECRET_LABEL;
use crate::pipeline::SourceEvent;
use crate::snapshot::SourceHealth;

/// Shared health, published whenever it changes.
#[derive(Clone)]
pub(super) struct Health {
    pub(super) state: Arc<Mutex<HealthState>>,
    pub(super) tx: mpsc::Sender<SourceEvent>,
    /// The watchers that must have listed before the source is synced.
    pub(super) expected: Arc<BTreeSet<Watched>>,
}

#[derive(Default)]
pub(super) struct HealthState {
    health: SourceHealth,
    synced: BTreeSet<Watched>,
    /// Each failing watcher's last error: the source is stale while any remains.
    errors: BTreeMap<Watched, String>,
}

impl Health {
    async fn update(&self, f: impl FnOnce(&mut HealthState)) {
        let health = {
            let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let before = guard.health.clone();
            f(&mut guard);
            let errors: Vec<&str> = guard.errors.values().map(String::as_str).collect();
            guard.health.error = (!errors.is_empty()).then(|| errors.join("; "));
            guard.health.synced = guard.synced.is_superset(&self.expected);
            (guard.health != before).then(|| guard.health.clone())
        };
        if let Some(h) = health {
            let _ = self.tx.send(SourceEvent::Health(h)).await;
        }
    }

    pub(super) async fn synced(&self, watcher: Watched) {
        self.update(|s| {
            s.synced.insert(watcher);
            s.errors.remove(&watcher);
        })
        .await;
    }

    pub(super) async fn failed(&self, watcher: Watched, e: &watcher::Error) {
        tracing::warn!(%watcher, error = %e, "watch failed; serving the last snapshot and retrying");
        let message = format!("watch of {watcher} failed ({e}); serving the last snapshot");
        self.update(|s| {
            s.errors.insert(watcher, message);
        })
        .await;
    }

    pub(super) async fn healthy(&self, watcher: Watched) {
        self.update(|s| {
            s.errors.remove(&watcher);
        })
        .await;
    }

    fn failing(&self) -> Vec<Watched> {
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
                Watched::Registrations | Watched::Extensions | Watched::Routes => {
                    match watcher.served(version) {
                        Some(at) => served(&client, ns, at).await,
                        None => false,
                    }
                }
                Watched::LabelledSecrets => {
                    let selector = format!("{SECRET_LABEL}=true");
                    api::<Secret>(&client, ns)
                        .list_metadata(&one.clone().labels(&selector))
                        .await
                        .is_ok()
                }
                Watched::SecretMetadata => {
                    api::<Secret>(&client, ns).list_metadata(&one).await.is_ok()
                }
            };
            if listed {
                health.healthy(watcher).await;
            }
        }
    }
}
