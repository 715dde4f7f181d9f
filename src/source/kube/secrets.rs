//! The two Secret watches — labelled Secrets in full, every Secret's metadata — merged per
//! key, so "not found" and "missing required label" are told apart without ever reading an
//! unlabelled Secret's data.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::mpsc;

use super::health::Health;
use super::watched::Watched;
use super::{api, key_of};
use crate::crd::convert;
use crate::model::{Kind, Object, ObjectKey, SECRET_LABEL, SecretObject, has_opt_in_label};
use crate::pipeline::SourceEvent;

/// Labelled Secrets (full) and every Secret's metadata, merged per key.
pub(super) async fn secrets(
    client: Client,
    namespace: Option<String>,
    events: mpsc::Sender<SourceEvent>,
    health: Health,
) {
    let ns = namespace.as_deref();
    let selector = format!("{SECRET_LABEL}=true");
    let full = watcher(
        api::<Secret>(&client, ns),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff()
    .map_ok(|e| e.modify(strip_secret))
    .map(|r| (true, r.map(|e| e.map(Either::Full))));
    // An `Api` of `PartialObjectMeta` asks for metadata only: unlabelled Secrets' data is
    // never sent to us.
    let meta = watcher(
        api::<PartialObjectMeta<Secret>>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|r| (false, r.map(|e| e.map(Either::Meta))));
    let merged = futures::stream::select(full, meta);
    futures::pin_mut!(merged);
    let mut state = SecretMerge::default();
    while let Some((is_full, item)) = merged.next().await {
        let name = if is_full {
            Watched::LabelledSecrets
        } else {
            Watched::SecretMetadata
        };
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                health.failed(name, &e).await;
                continue;
            }
        };
        health.healthy(name).await;
        for out in state.handle(is_full, event) {
            if events.send(out).await.is_err() {
                return;
            }
        }
        // Each watch counts as listed only once both have: a Secret is judged from both.
        if state.full_synced && state.meta_synced {
            health.synced(Watched::LabelledSecrets).await;
            health.synced(Watched::SecretMetadata).await;
        }
    }
}

enum Either {
    Full(Secret),
    Meta(PartialObjectMeta<Secret>),
}

/// Helper so both watchers' events share one type.
trait EventMap<K> {
    fn map<T>(self, f: impl Fn(K) -> T) -> Event<T>;
}

impl<K> EventMap<K> for Event<K> {
    fn map<T>(self, f: impl Fn(K) -> T) -> Event<T> {
        match self {
            Event::Apply(k) => Event::Apply(f(k)),
            Event::Delete(k) => Event::Delete(f(k)),
            Event::Init => Event::Init,
            Event::InitApply(k) => Event::InitApply(f(k)),
            Event::InitDone => Event::InitDone,
        }
    }
}

/// Cached Secrets keep no managedFields or annotations (they can be large and are unused).
fn strip_secret(s: &mut Secret) {
    s.metadata.managed_fields = None;
    s.metadata.annotations = None;
}

/// The merge of both Secret views.
#[derive(Default)]
struct SecretMerge {
    /// Labelled Secrets, reduced (data kept).
    labelled: BTreeMap<ObjectKey, SecretObject>,
    /// Every Secret that exists (from metadata).
    exists: BTreeSet<ObjectKey>,
    full_buffer: Option<BTreeMap<ObjectKey, SecretObject>>,
    meta_buffer: Option<BTreeSet<ObjectKey>>,
    full_synced: bool,
    meta_synced: bool,
}

impl SecretMerge {
    fn handle(&mut self, is_full: bool, event: Event<Either>) -> Vec<SourceEvent> {
        let mut touched = Vec::new();
        match event {
            Event::Init if is_full => self.full_buffer = Some(BTreeMap::new()),
            Event::Init => self.meta_buffer = Some(BTreeSet::new()),
            Event::InitApply(Either::Full(s)) => {
                if let Some(o) = reduce(s) {
                    self.full_buffer
                        .get_or_insert_with(Default::default)
                        .insert(o.key.clone(), o);
                }
            }
            Event::InitApply(Either::Meta(m)) => {
                self.meta_buffer
                    .get_or_insert_with(Default::default)
                    .insert(key_of(&m.metadata));
            }
            Event::InitDone if is_full => {
                self.labelled = self.full_buffer.take().unwrap_or_default();
                self.full_synced = true;
                return self.reset();
            }
            Event::InitDone => {
                self.exists = self.meta_buffer.take().unwrap_or_default();
                self.meta_synced = true;
                return self.reset();
            }
            Event::Apply(Either::Full(s)) => {
                if let Some(o) = reduce(s) {
                    touched.push(o.key.clone());
                    self.exists.insert(o.key.clone());
                    self.labelled.insert(o.key.clone(), o);
                }
            }
            Event::Delete(Either::Full(s)) => {
                let key = key_of(&s.metadata);
                self.labelled.remove(&key);
                touched.push(key);
            }
            Event::Apply(Either::Meta(m)) => {
                let key = key_of(&m.metadata);
                let labelled = m
                    .labels()
                    .iter()
                    .any(|(k, v)| k == SECRET_LABEL && v == "true");
                self.exists.insert(key.clone());
                if !labelled {
                    // Unlabelled now: whatever the full watch held is no longer readable.
                    self.labelled.remove(&key);
                }
                touched.push(key);
            }
            Event::Delete(Either::Meta(m)) => {
                let key = key_of(&m.metadata);
                self.exists.remove(&key);
                self.labelled.remove(&key);
                touched.push(key);
            }
        }
        if !(self.full_synced && self.meta_synced) {
            return Vec::new();
        }
        touched
            .into_iter()
            .map(|key| match self.resolve(&key) {
                Some(o) => SourceEvent::Apply(Object::Secret(o)),
                None => SourceEvent::Delete(Kind::Secret, key),
            })
            .collect()
    }

    fn resolve(&self, key: &ObjectKey) -> Option<SecretObject> {
        self.labelled.get(key).cloned().or_else(|| {
            self.exists
                .contains(key)
                .then(|| SecretObject::unlabelled(key.clone()))
        })
    }

    fn reset(&self) -> Vec<SourceEvent> {
        if !(self.full_synced && self.meta_synced) {
            return Vec::new();
        }
        let keys: BTreeSet<&ObjectKey> = self.exists.iter().chain(self.labelled.keys()).collect();
        let all = keys
            .into_iter()
            .filter_map(|k| self.resolve(k))
            .map(Object::Secret)
            .collect();
        vec![SourceEvent::Reset(Kind::Secret, all)]
    }
}

/// A labelled Secret as the domain sees it (the label is re-checked: never trust a filter).
fn reduce(s: Secret) -> Option<SecretObject> {
    let labelled = s
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| has_opt_in_label(l.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    if !labelled {
        return None;
    }
    match convert::secret(s, "default") {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(error = %e, "Secret skipped");
            None
        }
    }
}
