//! The pipeline: source events -> index -> translation -> published snapshot and statuses.
//!
//! One task owns the index and the translator. Events that arrive together are applied
//! together and translated once, so a burst of Secret updates costs one snapshot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::index::Index;
use crate::model::{Kind, Object, ObjectKey, ResourceName};
use crate::snapshot::{Snapshot, SourceHealth, StatusMap, publish_if_changed, same_resources};
use crate::status::StatusTarget;
use crate::translate::{TranslateConfig, Translator};

/// What a source tells the pipeline.
#[derive(Debug)]
pub enum SourceEvent {
    Apply(Object),
    Delete(Kind, ObjectKey),
    /// A complete list of one kind (initial list or re-list).
    Reset(Kind, Vec<Object>),
    /// A complete view of every kind (the manifests source after each scan).
    ResetAll(Vec<Object>),
    Health(SourceHealth),
    /// Answered once every earlier event is translated and published: lets a source (or a
    /// test) know its changes are visible.
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// Read side of the pipeline: what the SDS server, admin API and status writer consume.
#[derive(Clone, Debug)]
pub struct Published {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub statuses: watch::Receiver<Arc<StatusMap>>,
    pub health: watch::Receiver<Arc<SourceHealth>>,
    /// `UpstreamTrusted` conditions (`--verify-upstreams`; always empty without it).
    pub upstreams: watch::Receiver<Arc<StatusMap>>,
}

/// Write side, owned by the pipeline task.
pub struct Pipeline {
    index: Index,
    translator: Translator,
    /// What was last published, kept to update only what a translation touched.
    resources: std::collections::BTreeMap<Arc<str>, crate::bundle::TrustBundle>,
    conditions: StatusMap,
    snapshot: watch::Sender<Arc<Snapshot>>,
    statuses: watch::Sender<Arc<StatusMap>>,
    health: watch::Sender<Arc<SourceHealth>>,
    clock: fn() -> i64,
    /// Source lag and staleness, when the server exports metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Where each registration's upstream is, with `--verify-upstreams`.
    upstream_targets: Option<watch::Sender<Arc<crate::verify::UpstreamTargets>>>,
}

/// How often expiry warnings are re-evaluated when nothing else changes.
const EXPIRY_RECHECK: Duration = Duration::from_secs(300);

impl Pipeline {
    pub fn new(config: TranslateConfig) -> (Self, Published) {
        let (snapshot, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (statuses, statuses_rx) = watch::channel(Arc::new(StatusMap::new()));
        let (health, health_rx) = watch::channel(Arc::new(SourceHealth::default()));
        let pipeline = Self {
            index: Index::default(),
            translator: Translator::new(config),
            resources: Default::default(),
            conditions: StatusMap::new(),
            snapshot,
            statuses,
            health,
            clock: unix_now,
            metrics: None,
            upstream_targets: None,
        };
        let published = Published {
            snapshot: snapshot_rx,
            statuses: statuses_rx,
            health: health_rx,
            // Replaced by the verifier's channel when verification is on.
            upstreams: watch::channel(Arc::new(StatusMap::new())).1,
        };
        (pipeline, published)
    }

    /// Exports source lag and staleness to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Also publishes where each registration's upstream is (`--verify-upstreams`).
    pub fn with_upstream_targets(
        &mut self,
    ) -> watch::Receiver<Arc<crate::verify::UpstreamTargets>> {
        let (tx, rx) = watch::channel(Arc::new(crate::verify::UpstreamTargets::new()));
        self.upstream_targets = Some(tx);
        rx
    }

    /// Applies one event to the index (no translation yet). A `Sync` is returned to be
    /// answered after the next flush.
    pub fn handle(&mut self, event: SourceEvent) -> Option<tokio::sync::oneshot::Sender<()>> {
        match event {
            SourceEvent::Sync(done) => return Some(done),
            SourceEvent::Apply(object) => {
                self.index.apply(object);
            }
            SourceEvent::Delete(kind, key) => {
                self.index.delete(kind, &key);
            }
            SourceEvent::Reset(kind, objects) => {
                self.index.reset(kind, objects);
            }
            SourceEvent::ResetAll(objects) => {
                let mut by_kind: [Vec<Object>; 4] = Default::default();
                for o in objects {
                    by_kind[o.kind() as usize].push(o);
                }
                let kinds = [
                    Kind::Registration,
                    Kind::Extension,
                    Kind::Route,
                    Kind::Secret,
                ];
                for (kind, objects) in kinds.into_iter().zip(by_kind) {
                    self.index.reset(kind, objects);
                }
            }
            SourceEvent::Health(health) => {
                if let Some(m) = &self.metrics {
                    m.source_stale.set(i64::from(health.error.is_some()));
                }
                publish_if_changed(&self.health, health, |a, b| a == b);
            }
        }
        None
    }

    /// Translates pending work and publishes what changed; whether there was any.
    pub fn flush(&mut self) -> bool {
        let dirty = self.index.take_dirty();
        if dirty.is_empty() {
            return false;
        }
        let (resources_changed, statuses_changed) =
            match self.translator.update(&self.index, &dirty, (self.clock)()) {
                Some(keys) => self.apply_touched(&keys),
                None => self.rebuild(),
            };
        if resources_changed {
            let snapshot = Snapshot {
                resources: self.resources.clone(),
            };
            self.snapshot.send_replace(Arc::new(snapshot));
            tracing::debug!(resources = self.resources.len(), "snapshot published");
        }
        if statuses_changed {
            self.statuses
                .send_replace(Arc::new(self.conditions.clone()));
        }
        if let Some(targets) = &self.upstream_targets {
            // O(registrations), and only with verification on; subscribers wake on change.
            let current = crate::verify::targets(&self.index);
            targets.send_if_modified(|old| {
                let changed = **old != current;
                if changed {
                    *old = Arc::new(current);
                }
                changed
            });
        }
        true
    }

    /// Updates the published maps for the registrations a translation touched.
    fn apply_touched(&mut self, keys: &[ObjectKey]) -> (bool, bool) {
        let (mut resources_changed, mut statuses_changed) = (false, false);
        for key in keys {
            let name: Arc<str> = Arc::from(ResourceName::Registration(key.clone()).to_string());
            match self.translator.registration_bundle(key) {
                Some(b) if self.resources.get(&name).map(|o| o.version()) != Some(b.version()) => {
                    self.resources.insert(name, b.clone());
                    resources_changed = true;
                }
                Some(_) => {}
                None => resources_changed |= self.resources.remove(&name).is_some(),
            }
            let target = StatusTarget::Registration(key.clone());
            match self.translator.registration_condition(key) {
                Some(c) if self.conditions.get(&target).map(|o| &**o) != Some(c) => {
                    self.conditions.insert(target, Arc::new(c.clone()));
                    statuses_changed = true;
                }
                Some(_) => {}
                None => statuses_changed |= self.conditions.remove(&target).is_some(),
            }
        }
        (resources_changed, statuses_changed)
    }

    /// Rebuilds the published maps from every translation result.
    fn rebuild(&mut self) -> (bool, bool) {
        let resources: std::collections::BTreeMap<Arc<str>, crate::bundle::TrustBundle> = self
            .translator
            .resources()
            .map(|(name, bundle)| (Arc::from(name), bundle.clone()))
            .collect();
        let conditions: StatusMap = self
            .translator
            .statuses()
            .map(|(target, condition)| (target, Arc::new(condition.clone())))
            .collect();
        let resources_changed = !same_resources(&self.resources, &resources);
        self.resources = resources;
        let statuses_changed = conditions != self.conditions;
        self.conditions = conditions;
        (resources_changed, statuses_changed)
    }

    /// Runs until every sender of `events` is gone.
    pub async fn run(mut self, mut events: mpsc::Receiver<SourceEvent>) {
        let mut recheck = tokio::time::interval(EXPIRY_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut synced = Vec::new();
        // When the oldest event of the batch being translated arrived (source lag).
        let mut batch_started = None;
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    batch_started = Some(std::time::Instant::now());
                    synced.extend(self.handle(event));
                    // Take everything that is already queued before translating once.
                    while let Ok(event) = events.try_recv() {
                        synced.extend(self.handle(event));
                    }
                }
                _ = recheck.tick() => self.index.mark_all(),
            }
            let worked = self.flush();
            if let (true, Some(started), Some(m)) = (worked, batch_started.take(), &self.metrics) {
                m.source_lag.observe(started.elapsed().as_secs_f64());
            }
            for done in synced.drain(..) {
                let _ = done.send(());
            }
        }
        tracing::debug!("pipeline stopped: all sources closed");
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
