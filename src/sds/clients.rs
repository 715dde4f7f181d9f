//! Who is connected: one entry per open stream, for the admin view and for logs. Updated on
//! requests (never on pushes), so it costs nothing on the fan-out path.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ClientInfo {
    pub api: &'static str,
    pub node: String,
    pub peer: String,
    pub names: Vec<String>,
    pub wildcard: bool,
    pub acked: Option<String>,
    pub nacked: Option<String>,
    pub nack_message: Option<String>,
    pub nacks: u64,
}

#[derive(Debug, Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    streams: Mutex<BTreeMap<u64, ClientInfo>>,
}

impl ClientRegistry {
    pub fn open(&self, info: ClientInfo) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, info);
        id
    }

    pub fn update(&self, id: u64, f: impl FnOnce(&mut ClientInfo)) {
        if let Some(info) = self.lock().get_mut(&id) {
            f(info);
        }
    }

    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn list(&self) -> Vec<ClientInfo> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientInfo>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}
