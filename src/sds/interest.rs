//! Which streams want which names, so a publication wakes only the streams whose names
//! changed (and the wildcard streams), however many streams and resources there are.
//!
//! Each stream holds a [`Listener`]; the encoder calls [`Interest::notify`] with the names
//! a publication changed. A wakeup is a permit (`Notify::notify_one`), so one that arrives
//! while the stream is busy is not lost, and several collapse into one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Interest {
    next_id: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<u64, Wants>,
    by_name: HashMap<Arc<str>, HashSet<u64>>,
    wildcard: HashSet<u64>,
    closed: bool,
}

#[derive(Debug)]
struct Wants {
    notify: Arc<Notify>,
    names: Vec<Arc<str>>,
    wildcard: bool,
}

impl Interest {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream's registration, wanting nothing until [`Listener::want`].
    pub fn listen(self: &Arc<Self>) -> Listener {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let mut state = self.state();
        if state.closed {
            notify.notify_one();
        }
        state.streams.insert(
            id,
            Wants {
                notify: notify.clone(),
                names: Vec::new(),
                wildcard: false,
            },
        );
        Listener {
            interest: self.clone(),
            id,
            notify,
        }
    }

    /// Wakes every stream that wants one of `names`, and every wildcard stream.
    pub fn notify(&self, names: &[Arc<str>]) {
        let state = self.state();
        let mut ids: HashSet<u64> = names
            .iter()
            .filter_map(|n| state.by_name.get(n))
            .flatten()
            .copied()
            .collect();
        if !names.is_empty() {
            ids.extend(&state.wildcard);
        }
        for id in ids {
            if let Some(wants) = state.streams.get(&id) {
                wants.notify.notify_one();
            }
        }
    }

    /// The publisher is gone: wakes every stream (each then finds the channel closed).
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        for wants in state.streams.values() {
            wants.notify.notify_one();
        }
    }

    /// How many streams are registered (tests).
    pub fn listeners(&self) -> usize {
        self.state().streams.len()
    }
}

/// One stream's registration; dropping it unregisters the stream.
#[derive(Debug)]
pub struct Listener {
    interest: Arc<Interest>,
    id: u64,
    notify: Arc<Notify>,
}

impl Listener {
    /// Replaces the names this stream wants.
    pub fn want(&self, names: &[String], wildcard: bool) {
        let mut state = self.interest.state();
        let State {
            streams,
            by_name,
            wildcard: wildcards,
            ..
        } = &mut *state;
        let Some(wants) = streams.get_mut(&self.id) else {
            return;
        };
        for old in wants.names.drain(..) {
            if let Some(ids) = by_name.get_mut(&old) {
                ids.remove(&self.id);
                if ids.is_empty() {
                    by_name.remove(&old);
                }
            }
        }
        for name in names {
            let name: Arc<str> = match by_name.get_key_value(name.as_str()) {
                Some((shared, _)) => shared.clone(),
                None => Arc::from(name.as_str()),
            };
            by_name.entry(name.clone()).or_default().insert(self.id);
            wants.names.push(name);
        }
        wants.wildcard = wildcard;
        if wildcard {
            wildcards.insert(self.id);
        } else {
            wildcards.remove(&self.id);
        }
    }

    /// Resolves at the next wakeup (at once if one came since the last).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Wakes this stream itself (it may have missed a publication while it re-subscribed).
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.want(&[], false);
        self.interest.state().streams.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|n| Arc::from(*n)).collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    /// Whether a wakeup is pending (consumes it): a permit completes the first poll.
    async fn woken(listener: &Listener) -> bool {
        use futures::FutureExt;
        listener.notified().now_or_never().is_some()
    }

    #[tokio::test]
    async fn only_the_streams_that_want_a_changed_name_wake() {
        let interest = Arc::new(Interest::default());
        let a = interest.listen();
        let b = interest.listen();
        let all = interest.listen();
        a.want(&strings(&["team/a"]), false);
        b.want(&strings(&["team/b", "team/c"]), false);
        all.want(&[], true);

        interest.notify(&names(&["team/a"]));
        assert!(woken(&a).await);
        assert!(!woken(&b).await, "b wants other names");
        assert!(woken(&all).await, "a wildcard stream wants every name");

        // Several wakeups before the stream looks collapse into one.
        interest.notify(&names(&["team/b"]));
        interest.notify(&names(&["team/c"]));
        assert!(woken(&b).await);
        assert!(!woken(&b).await);

        // A changed subscription replaces the old names.
        b.want(&strings(&["team/a"]), false);
        interest.notify(&names(&["team/b"]));
        assert!(!woken(&b).await);
        interest.notify(&names(&["team/a"]));
        assert!(woken(&b).await);
        assert!(woken(&a).await);
    }

    #[tokio::test]
    async fn dropped_listeners_leave_nothing_behind() {
        let interest = Arc::new(Interest::default());
        let a = interest.listen();
        a.want(&strings(&["team/a"]), true);
        drop(a);
        let state = interest.state();
        assert!(state.streams.is_empty() && state.by_name.is_empty());
        assert!(state.wildcard.is_empty());
    }

    #[tokio::test]
    async fn closing_wakes_every_stream_even_those_that_want_nothing() {
        let interest = Arc::new(Interest::default());
        let a = interest.listen();
        interest.close();
        assert!(woken(&a).await);
        let late = interest.listen();
        assert!(woken(&late).await);
    }
}
