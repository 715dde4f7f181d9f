//! Versioned snapshots of everything served, published through `tokio::sync::watch` so a
//! slow reader only ever sees the newest value and no-op updates reach nobody.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::bundle::TrustBundle;
use crate::status::{Condition, StatusTarget};

/// Every served resource by name (`<namespace>/<registration>` or `gateway/<ns>/<ext>`).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub resources: BTreeMap<Arc<str>, TrustBundle>,
}

impl Snapshot {
    /// Whether two snapshots serve the same names at the same versions.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        same_resources(&self.resources, &other.resources)
    }

    pub fn get(&self, name: &str) -> Option<&TrustBundle> {
        self.resources.get(name)
    }
}

/// Whether two resource maps hold the same names at the same versions.
pub fn same_resources(
    a: &BTreeMap<Arc<str>, TrustBundle>,
    b: &BTreeMap<Arc<str>, TrustBundle>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((n1, b1), (n2, b2))| n1 == n2 && b1.version() == b2.version())
}

/// Every `Ready` condition trust-sds owns.
/// Conditions are shared, so publishing a map of thousands copies no strings.
pub type StatusMap = BTreeMap<StatusTarget, Arc<Condition>>;

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
