//! Who is connected: one entry per open stream, for the admin view and for logs. Updated on
//! requests (never on pushes), so it costs nothing on the fan-out path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::delivery::{Delivery, Rejections};

#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    pub api: &'static str,
    pub node: String,
    pub peer: String,
    /// Client certificate SANs (mTLS).
    pub identities: Vec<String>,
    pub names: Vec<String>,
    pub wildcard: bool,
    pub acked: Option<String>,
    pub nacked: Option<String>,
    pub nack_message: Option<String>,
    pub nacks: u64,
    /// Per resource name: what this stream holds and what it rejected (the delivery
    /// report; summed per resource in `/bundles` and `/statuses`).
    #[serde(skip)]
    pub delivery: Deliveries,
}

/// A stream's [`Delivered`] per resource name, in a vector sorted by name: most streams
/// hold one name, and a hash map's first allocation would reserve room for several on
/// every idle stream.
#[derive(Clone, Debug, Default)]
pub struct Deliveries(Vec<(Arc<str>, Delivered)>);

impl Deliveries {
    pub fn get(&self, name: &str) -> Option<&Delivered> {
        let i = self.0.binary_search_by(|(n, _)| (**n).cmp(name)).ok()?;
        Some(&self.0[i].1)
    }

    /// Applies `f` to the entry of each named resource (added empty where there is none),
    /// in one pass: new names are appended and the vector sorted once, so a reply that
    /// answers thousands of names in any order costs O(n log n), not O(n^2).
    pub fn update<T>(
        &mut self,
        items: impl IntoIterator<Item = (Arc<str>, T)>,
        mut f: impl FnMut(&Arc<str>, &mut Delivered, T),
    ) {
        let sorted = self.0.len();
        for (name, item) in items {
            match self.0[..sorted].binary_search_by(|(n, _)| n.cmp(&name)) {
                Ok(i) => f(&name, &mut self.0[i].1, item),
                Err(_) => {
                    let mut delivered = Delivered::default();
                    f(&name, &mut delivered, item);
                    self.0.push((name, delivered));
                }
            }
        }
        if self.0.len() > sorted {
            // Stable: of a name given twice, the first entry stays.
            self.0.sort_by(|a, b| a.0.cmp(&b.0));
            self.0.dedup_by(|later, first| later.0 == first.0);
        }
    }

    pub fn insert(&mut self, name: Arc<str>, delivered: Delivered) {
        self.update([(name, delivered)], |_, d, new| *d = new);
    }

    /// Keeps the entries of the names in `names` (sorted).
    pub fn retain_sorted(&mut self, names: &[String]) {
        self.0
            .retain(|(n, _)| names.binary_search_by(|m| m.as_str().cmp(n)).is_ok());
    }
}

/// What one stream did with one resource.
#[derive(Clone, Debug, Default)]
pub struct Delivered {
    /// The version the client holds: ACKed, or claimed when it reconnected.
    pub held: Option<Arc<str>>,
    /// The last version it rejected.
    pub rejected: Option<Rejected>,
}

#[derive(Clone, Debug)]
pub struct Rejected {
    pub version: Arc<str>,
    /// The client's `error_detail` message.
    pub message: String,
    /// Registry-wide order of NACKs, so a version's first rejection can be named.
    pub seq: u64,
}

/// One stream's entry. Each stream updates its own entry (an uncontended lock); the
/// registry's map is locked only when streams open and close.
pub type ClientEntry = Arc<Mutex<ClientInfo>>;

#[derive(Debug)]
pub struct ClientRegistry {
    next: AtomicU64,
    nacks: AtomicU64,
    streams: Mutex<BTreeMap<u64, ClientEntry>>,
    /// Rejected current versions, changed only by NACKs (and the versions they make
    /// stale): what the status writer adds to conditions.
    rejections: watch::Sender<Arc<Rejections>>,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            streams: Mutex::default(),
            rejections: watch::Sender::new(Arc::default()),
        }
    }
}

impl ClientRegistry {
    pub fn open(&self, info: ClientInfo) -> (u64, ClientEntry) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Mutex::new(info));
        self.lock().insert(id, entry.clone());
        (id, entry)
    }

    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn list(&self) -> Vec<ClientInfo> {
        let entries: Vec<ClientEntry> = self.lock().values().cloned().collect();
        entries
            .iter()
            .map(|e| e.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    /// The order of a NACK among all NACKs.
    pub fn next_nack(&self) -> u64 {
        self.nacks.fetch_add(1, Ordering::Relaxed)
    }

    /// How `name` at `version` is delivered, read from every stream in place (no copies):
    /// for a NACK event, which is rare.
    pub fn delivery_of(&self, name: &str, version: &Arc<str>) -> Delivery {
        let entries: Vec<ClientEntry> = self.lock().values().cloned().collect();
        let mut delivery = Delivery::new(version);
        for entry in &entries {
            let info = entry.lock().unwrap_or_else(|p| p.into_inner());
            if info.wildcard || info.names.iter().any(|n| n == name) {
                delivery.count(&info, name);
            }
        }
        delivery
    }

    /// The rejected current versions, for the status writer.
    pub fn rejections(&self) -> watch::Receiver<Arc<Rejections>> {
        self.rejections.subscribe()
    }

    /// Records that `name`'s `version` is rejected as `delivery` says, and drops what
    /// `is_current` says is stale.
    pub fn set_rejection(
        &self,
        name: &str,
        delivery: &Delivery,
        is_current: impl Fn(&str, &str) -> bool,
    ) {
        self.rejections.send_if_modified(|map| {
            let summary = delivery.summary();
            let mut next: Rejections = (**map).clone();
            next.retain(|n, r| is_current(n, &r.version));
            match summary {
                Some(text) => {
                    next.insert(
                        name.to_owned(),
                        super::delivery::Rejection {
                            version: delivery.version.clone(),
                            summary: text,
                        },
                    );
                }
                None => {
                    next.remove(name);
                }
            }
            if next == **map {
                return false;
            }
            *map = Arc::new(next);
            true
        });
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientEntry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod deliveries_tests {
    use super::*;

    #[test]
    fn updates_in_any_order_keep_one_sorted_entry_per_name() {
        let mut d = Deliveries::default();
        let held = |v: &str| Some(Arc::<str>::from(v));
        d.update(
            [("ns/c", "1"), ("ns/a", "1"), ("ns/b", "1"), ("ns/a", "2")]
                .map(|(n, v)| (Arc::<str>::from(n), Arc::<str>::from(v))),
            |_, e, v| e.held = Some(v),
        );
        let names: Vec<&str> = d.0.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["ns/a", "ns/b", "ns/c"]);
        assert_eq!(
            d.get("ns/a").unwrap().held,
            held("1"),
            "the first of a repeated name stays"
        );
        d.update(
            [(Arc::<str>::from("ns/b"), Arc::<str>::from("3"))],
            |_, e, v| e.held = Some(v),
        );
        assert_eq!(d.get("ns/b").unwrap().held, held("3"));
        assert_eq!(d.0.len(), 3);
        d.retain_sorted(&["ns/a".to_owned(), "ns/c".to_owned()]);
        assert!(d.get("ns/b").is_none() && d.get("ns/c").is_some());
    }
}
