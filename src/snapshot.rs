//! Versioned snapshots of everything served, published through `tokio::sync::watch` so a
//! slow reader only ever sees the newest value and no-op updates reach nobody.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use crate::bundle::TrustBundle;
use crate::status::{Condition, StatusTarget};

/// Every served bundle by resource name (`<namespace>/<registration>` or
/// `gateway/<ns>/<ext>`). Persistent: publishing a copy costs nothing, and a change copies
/// only the path to what changed.
pub type Resources = imbl::OrdMap<Arc<str>, TrustBundle>;

/// What is served, as of one publication.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub resources: Resources,
    /// The names this publication changed, linked to the next publication's.
    pub changes: Arc<Changes>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<&TrustBundle> {
        self.resources.get(name)
    }
}

/// The names one publication added, changed or removed, linked to the next publication's.
///
/// A `watch` channel keeps only the newest snapshot, so a reader that skipped some (the
/// SDS encoder during a burst) walks the links from the last one it saw and still learns
/// every name that changed, at a cost proportional to the changes, not to what is served.
/// Links point forward only: a node no reader holds any more is freed.
#[derive(Debug, Default)]
pub struct Changes {
    names: Vec<Arc<str>>,
    next: OnceLock<Arc<Changes>>,
}

impl Changes {
    /// Links the next publication's changes after this one, which must be the newest (the
    /// publisher owns the tail).
    pub fn append(self: &Arc<Self>, names: Vec<Arc<str>>) -> Arc<Changes> {
        let next = Arc::new(Changes {
            names,
            next: OnceLock::new(),
        });
        if self.next.set(next.clone()).is_err() {
            debug_assert!(false, "changes appended twice to the same publication");
        }
        next
    }

    /// Every name changed after this publication, up to and including `until` (sorted,
    /// each once).
    pub fn since(self: &Arc<Self>, until: &Arc<Changes>) -> Vec<Arc<str>> {
        let mut names = Vec::new();
        let mut node = self;
        while !Arc::ptr_eq(node, until) {
            let Some(next) = node.next.get() else { break };
            names.extend(next.names.iter().cloned());
            node = next;
        }
        names.sort();
        names.dedup();
        names
    }
}

impl Drop for Changes {
    /// Unlinks iteratively: a long chain dropped at once must not recurse once per link.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(node) = next {
            next = match Arc::try_unwrap(node) {
                Ok(mut node) => node.next.take(),
                Err(_) => None,
            };
        }
    }
}

/// Every `Ready` condition trust-sds owns.
/// Conditions are shared, so publishing a map of thousands copies no strings.
/// Persistent, like [`Resources`].
pub type StatusMap = imbl::OrdMap<StatusTarget, Arc<Condition>>;

/// How the source of objects is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceHealth {
    /// The source delivered a complete view at least once.
    pub synced: bool,
    /// The current problem, if any: the snapshot is kept but may be stale.
    pub error: Option<String>,
    /// Problems with single inputs (a broken file, an undecodable object), by location.
    pub skipped: BTreeMap<String, String>,
}

/// Publishes `value` only when it differs from the current one.
pub fn publish_if_changed<T>(
    tx: &tokio::sync::watch::Sender<Arc<T>>,
    value: T,
    same: impl Fn(&T, &T) -> bool,
) -> bool {
    tx.send_if_modified(|current| {
        if same(current, &value) {
            false
        } else {
            *current = Arc::new(value);
            true
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn a_reader_that_skipped_publications_learns_every_changed_name() {
        let first = Arc::new(Changes::default());
        let second = first.append(names(&["a/1", "b/1"]));
        let third = second.append(names(&["a/1"]));
        let fourth = third.append(names(&["c/1"]));
        assert_eq!(first.since(&fourth), names(&["a/1", "b/1", "c/1"]));
        assert_eq!(third.since(&fourth), names(&["c/1"]));
        assert!(fourth.since(&fourth).is_empty());
    }

    #[test]
    fn a_long_chain_is_freed_without_recursion() {
        let first = Arc::new(Changes::default());
        let mut tail = first.clone();
        for _ in 0..1_000_000 {
            tail = tail.append(names(&["a/1"]));
        }
        drop(tail);
        // Dropping the head frees a million links; a recursive drop would overflow.
        drop(first);
    }
}
