//! The pipeline: source events -> index -> translation -> published snapshot and statuses.
//!
//! One task owns the index and the translator. Events that arrive together are applied
//! together and translated once, so a burst of Secret updates costs one snapshot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::index::Index;
use crate::model::{Kind, Object, ObjectKey};
use crate::snapshot::{Changes, Snapshot, SourceHealth, StatusMap, publish_if_changed};
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
    /// Owns what is served and reported; publishing shares its persistent maps.
    translator: Translator,
    /// The newest publication's changes, which the next one is linked after.
    changes: Arc<Changes>,
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
        let first = Snapshot::default();
        let changes = first.changes.clone();
        let (snapshot, snapshot_rx) = watch::channel(Arc::new(first));
        let (statuses, statuses_rx) = watch::channel(Arc::new(StatusMap::new()));
        let (health, health_rx) = watch::channel(Arc::new(SourceHealth::default()));
        let pipeline = Self {
            index: Index::default(),
            translator: Translator::new(config),
            changes,
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
        let diff = self.translator.update(&self.index, &dirty, (self.clock)());
        if !diff.resources.is_empty() {
            let changed = diff.resources.len();
            self.changes = self.changes.append(diff.resources);
            let snapshot = Snapshot {
                resources: self.translator.resources().clone(),
                changes: self.changes.clone(),
            };
            self.snapshot.send_replace(Arc::new(snapshot));
            tracing::debug!(changed, "snapshot published");
        }
        if !diff.statuses.is_empty() {
            self.statuses
                .send_replace(Arc::new(self.translator.statuses().clone()));
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
