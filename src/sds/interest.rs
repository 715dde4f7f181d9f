//! Which streams want which names, so a publication wakes only the streams whose names
//! changed (and the wildcard streams), however many streams and resources there are.
//!
//! Each stream holds a [`Listener`]; the encoder calls [`Interest::notify`] with the names
//! a publication changed. A wakeup is a flag and a waker ([`Signal`]): one that arrives
//! while the stream is busy is not lost, several collapse into one, and raising it takes
//! no lock. Shutdown ([`Interest::stop`]) wakes every stream the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// A stream's wakeup: set, then wake; the stream clears it when it looks.
#[derive(Debug, Default)]
struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the first look and the registration: not lost.
        if self.raised.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[derive(Debug, Default)]
pub struct Interest {
    next_id: AtomicU64,
    /// Apart from `state`, which the encoder locks while streams read this on every poll.
    stopping: Arc<AtomicBool>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<u64, Wants>,
    /// Each name's streams, with their signals: a publication raises them without a
    /// lookup per stream.
    by_name: HashMap<Arc<str>, HashMap<u64, Arc<Signal>>>,
    wildcard: HashMap<u64, Arc<Signal>>,
    closed: bool,
}

#[derive(Debug)]
struct Wants {
    signal: Arc<Signal>,
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
        let signal = Arc::new(Signal::default());
        let mut state = self.state();
        if state.closed || self.is_stopping() {
            signal.raise();
        }
        state.streams.insert(
            id,
            Wants {
                signal: signal.clone(),
                names: Vec::new(),
                wildcard: false,
            },
        );
        Listener {
            interest: self.clone(),
            id,
            signal,
            stopping: self.stopping.clone(),
        }
    }

    /// Wakes every stream that wants one of `names`, and every wildcard stream.
    pub fn notify(&self, names: &[Arc<str>]) {
        let state = self.state();
        let wanting = names
            .iter()
            .filter_map(|n| state.by_name.get(n))
            .flat_map(HashMap::values);
        let wildcards = state.wildcard.values().filter(|_| !names.is_empty());
        // A stream two of whose names changed is raised twice and looks once.
        for signal in wanting.chain(wildcards) {
            signal.raise();
        }
    }

    /// The publisher is gone: wakes every stream (each then finds the channel closed).
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        for wants in state.streams.values() {
            wants.signal.raise();
        }
    }

    /// Shutdown: wakes every stream, which then finds [`Listener::is_stopping`].
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let state = self.state();
        for wants in state.streams.values() {
            wants.signal.raise();
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
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
    signal: Arc<Signal>,
    stopping: Arc<AtomicBool>,
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
            by_name
                .entry(name.clone())
                .or_default()
                .insert(self.id, self.signal.clone());
            wants.names.push(name);
        }
        wants.wildcard = wildcard;
        if wildcard {
            wildcards.insert(self.id, self.signal.clone());
        } else {
            wildcards.remove(&self.id);
        }
    }

    /// Ready at the next wakeup (at once if one came since the last look).
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.signal.poll(cx)
    }

    /// Resolves at the next wakeup (at once if one came since the last).
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await
    }

    /// Wakes this stream itself (it may have missed a publication while it re-subscribed).
    pub fn wake(&self) {
        self.signal.raise();
    }

    /// Whether the server is shutting down ([`Interest::stop`]).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
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

    #[tokio::test]
    async fn stopping_wakes_every_stream_and_every_later_one() {
        let interest = Arc::new(Interest::default());
        let a = interest.listen();
        a.want(&strings(&["team/a"]), false);
        assert!(!a.is_stopping());
        interest.stop();
        assert!(woken(&a).await && a.is_stopping());
        let late = interest.listen();
        assert!(woken(&late).await && late.is_stopping());
    }
}
