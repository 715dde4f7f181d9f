//! Who is connected: one entry per open stream, for the admin view and for logs. Updated on
//! requests (never on pushes), so it costs nothing on the fan-out path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
}

/// One stream's entry. Each stream updates its own entry (an uncontended lock); the
/// registry's map is locked only when streams open and close.
pub type ClientEntry = Arc<Mutex<ClientInfo>>;

#[derive(Debug, Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    streams: Mutex<BTreeMap<u64, ClientEntry>>,
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
