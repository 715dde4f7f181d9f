//! The pipeline: source events -> index -> translation -> published snapshot and statuses.
//!
//! One task owns the index and the translator. Events that arrive together are applied
//! together and translated once, so a burst of Secret updates costs one snapshot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::index::Index;
use crate::model::{Kind, Object, ObjectKey};
use crate::snapshot::{Snapshot, SourceHealth, StatusMap, publish_if_changed};
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
}

/// Write side, owned by the pipeline task.
pub struct Pipeline {
    index: Index,
    translator: Translator,
    snapshot: watch::Sender<Arc<Snapshot>>,
    statuses: watch::Sender<Arc<StatusMap>>,
    health: watch::Sender<Arc<SourceHealth>>,
    clock: fn() -> i64,
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
            snapshot,
            statuses,
            health,
            clock: unix_now,
        };
        let published = Published {
            snapshot: snapshot_rx,
            statuses: statuses_rx,
            health: health_rx,
        };
        (pipeline, published)
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
                publish_if_changed(&self.health, health, |a, b| a == b);
            }
        }
        None
    }

    /// Translates pending work and publishes what changed.
    pub fn flush(&mut self) {
        let dirty = self.index.take_dirty();
        if dirty.is_empty() {
            return;
        }
        self.translator.update(&self.index, &dirty, (self.clock)());
        let snapshot = Snapshot {
            resources: self
                .translator
                .resources()
                .map(|(name, bundle)| (Arc::from(name), bundle.clone()))
                .collect(),
        };
        if publish_if_changed(&self.snapshot, snapshot, Snapshot::same_content) {
            tracing::debug!(
                resources = self.snapshot.borrow().resources.len(),
                "snapshot published"
            );
        }
        let statuses: StatusMap = self
            .translator
            .statuses()
            .map(|(target, condition)| (target, condition.clone()))
            .collect();
        publish_if_changed(&self.statuses, statuses, |a, b| a == b);
    }

    /// Runs until every sender of `events` is gone.
    pub async fn run(mut self, mut events: mpsc::Receiver<SourceEvent>) {
        let mut recheck = tokio::time::interval(EXPIRY_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut synced = Vec::new();
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    synced.extend(self.handle(event));
                    // Take everything that is already queued before translating once.
                    while let Ok(event) = events.try_recv() {
                        synced.extend(self.handle(event));
                    }
                }
                _ = recheck.tick() => self.index.mark_all(),
            }
            self.flush();
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
