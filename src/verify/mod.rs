//! Upstream verification (`serve --verify-upstreams`): a real TLS handshake with each
//! registration's upstream, trusting exactly what the broker would (the served bundle plus
//! system roots), reported as the `UpstreamTrusted` condition.
//!
//! The pipeline publishes where each registration's upstream is ([`targets`], derived by
//! the pure rules of [`url`]); the worker ([`run`]) joins that with the served bundles and
//! verifies a registration when its upstream or bundle version changes and every interval
//! (jittered, so thousands of registrations do not all dial at once), a bounded number at a
//! time. Results are published as a `StatusMap` only when they change: a periodic check
//! that finds the same answer writes nothing.
//!
//! A registration with no served bundle gets no `UpstreamTrusted` (its `Ready` condition
//! says why); one whose upstream URL cannot be derived gets `Unknown`/`NoUpstreamURL`,
//! saying what to set.

pub mod handshake;
pub mod url;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::handshake::Outcome;
use self::url::{NoUpstreamUrl, UpstreamTarget};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::model::{ObjectKey, ResourceName};
use crate::snapshot::{Snapshot, StatusMap};
use crate::status::{Condition, StatusTarget};

/// Reason of the condition for a registration whose upstream URL cannot be derived.
pub const NO_UPSTREAM_URL: &str = "NoUpstreamURL";

/// How verification runs.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    /// Time between checks of an unchanged registration (jittered by ±10%).
    pub interval: Duration,
    /// Limit for connect plus handshake.
    pub timeout: Duration,
    /// Handshakes in flight at once.
    pub concurrency: usize,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
            concurrency: 16,
        }
    }
}

/// One registration's upstream, as the pipeline derived it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    pub generation: Option<i64>,
    pub upstream: Result<UpstreamTarget, NoUpstreamUrl>,
}

/// Every enabled registration's upstream.
pub type UpstreamTargets = BTreeMap<ObjectKey, Registered>;

/// Derives every enabled registration's upstream from the index (pure).
pub fn targets(index: &Index) -> UpstreamTargets {
    index
        .registrations()
        .filter(|r| !r.disabled)
        .map(|r| {
            let route = r.target_route.as_ref().and_then(|k| index.route(k));
            let registered = Registered {
                generation: r.generation,
                upstream: url::derive(r, route),
            };
            (r.key.clone(), registered)
        })
        .collect()
}

/// What the worker reads and where it publishes.
pub struct Inputs {
    pub targets: watch::Receiver<Arc<UpstreamTargets>>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub results: watch::Sender<Arc<StatusMap>>,
    pub metrics: Arc<Metrics>,
    /// Trusted beside every served bundle, as the client library does.
    pub system_roots: Arc<Vec<CertificateDer<'static>>>,
}

/// What one check is about: the upstream and the bundle version it trusts. A result whose
/// subject no longer matches is stale and dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Subject {
    target: UpstreamTarget,
    generation: Option<i64>,
    version: String,
    pem: Arc<str>,
}

struct Entry {
    subject: Subject,
    due: Instant,
    in_flight: bool,
}

/// Runs until the target channel closes.
pub async fn run(config: VerifyConfig, inputs: Inputs) {
    let Inputs {
        mut targets,
        mut snapshot,
        results,
        metrics,
        system_roots,
    } = inputs;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut entries: BTreeMap<ObjectKey, Entry> = BTreeMap::new();
    let mut conditions = StatusMap::new();
    let mut jobs: JoinSet<(ObjectKey, Subject, Outcome)> = JoinSet::new();
    let mut jitter = Jitter::new();
    // Task -> registration, so a task that panics still frees its registration's slot.
    let mut running: std::collections::HashMap<tokio::task::Id, ObjectKey> =
        std::collections::HashMap::new();
    loop {
        let current_targets = targets.borrow_and_update().clone();
        let current_snapshot = snapshot.borrow_and_update().clone();
        let changed = reconcile(
            &mut entries,
            &mut conditions,
            &current_targets,
            &current_snapshot,
        );
        if changed {
            results.send_replace(Arc::new(conditions.clone()));
        }
        let now = Instant::now();
        let free = config.concurrency.max(1).saturating_sub(jobs.len());
        let due: Vec<ObjectKey> = entries
            .iter()
            .filter(|(_, e)| !e.in_flight && e.due <= now)
            .map(|(k, _)| k.clone())
            .take(free)
            .collect();
        for key in due {
            let Some(entry) = entries.get_mut(&key) else {
                continue;
            };
            entry.in_flight = true;
            let subject = entry.subject.clone();
            let (roots, provider, timeout) =
                (system_roots.clone(), provider.clone(), config.timeout);
            let owner = key.clone();
            let task = jobs.spawn(async move {
                let outcome = verify(&subject, &roots, provider, timeout).await;
                (key, subject, outcome)
            });
            running.insert(task.id(), owner);
        }
        let next_due = entries
            .values()
            .filter(|e| !e.in_flight)
            .map(|e| e.due)
            .min();
        tokio::select! {
            r = targets.changed() => if r.is_err() { break },
            r = snapshot.changed() => if r.is_err() { break },
            Some(joined) = jobs.join_next_with_id() => {
                let (key, subject, outcome) = match joined {
                    Ok((id, done)) => {
                        running.remove(&id);
                        done
                    }
                    Err(e) => {
                        // Not expected (the handshake code does not panic on input), but a
                        // lost task must not stop its registration from being checked again.
                        if let Some(key) = running.remove(&e.id())
                            && let Some(entry) = entries.get_mut(&key)
                        {
                            tracing::error!(registration = %key, error = %e, "upstream verification task failed; retrying at the next interval");
                            entry.in_flight = false;
                            entry.due = Instant::now() + jitter.around(config.interval);
                        }
                        continue;
                    }
                };
                metrics.upstream_verified(outcome.reason());
                if let Some(entry) = entries.get_mut(&key) {
                    entry.in_flight = false;
                    // A result for an older upstream or bundle is dropped: the entry is due
                    // again already.
                    if entry.subject == subject {
                        entry.due = Instant::now() + jitter.around(config.interval);
                        log_outcome(&key, &subject, &outcome);
                        let condition = outcome.condition(&subject.target, &subject.version, subject.generation);
                        if set(&mut conditions, &key, condition) {
                            results.send_replace(Arc::new(conditions.clone()));
                        }
                    }
                }
            }
            () = sleep_until(next_due) => {}
        }
    }
}

/// Brings the entries in line with the targets and served bundles: new or changed subjects
/// are due now; registrations without a bundle lose their entry and condition. Whether the
/// conditions changed.
fn reconcile(
    entries: &mut BTreeMap<ObjectKey, Entry>,
    conditions: &mut StatusMap,
    targets: &UpstreamTargets,
    snapshot: &Snapshot,
) -> bool {
    let mut changed = false;
    let now = Instant::now();
    let mut keep = std::collections::BTreeSet::new();
    for (key, registered) in targets {
        let name = ResourceName::Registration(key.clone()).to_string();
        let Some(bundle) = snapshot.get(&name) else {
            continue;
        };
        keep.insert(key.clone());
        let target = match &registered.upstream {
            Ok(target) => target.clone(),
            Err(why) => {
                entries.remove(key);
                let condition =
                    Condition::unknown(NO_UPSTREAM_URL, why.to_string(), registered.generation);
                changed |= set(conditions, key, condition);
                continue;
            }
        };
        let subject = Subject {
            target,
            generation: registered.generation,
            version: bundle.version().to_owned(),
            pem: bundle.pem().into(),
        };
        match entries.get_mut(key) {
            Some(entry) if entry.subject == subject => {}
            Some(entry) => {
                entry.subject = subject;
                entry.due = now;
            }
            None => {
                entries.insert(
                    key.clone(),
                    Entry {
                        subject,
                        due: now,
                        in_flight: false,
                    },
                );
            }
        }
    }
    entries.retain(|k, _| keep.contains(k));
    let before = conditions.len();
    let gone: Vec<StatusTarget> = conditions
        .keys()
        .filter(|t| !keep.contains(t.key()))
        .cloned()
        .collect();
    for target in gone {
        conditions.remove(&target);
    }
    changed || conditions.len() != before
}

fn set(conditions: &mut StatusMap, key: &ObjectKey, condition: Condition) -> bool {
    let target = StatusTarget::Registration(key.clone());
    if conditions.get(&target).map(|c| &**c) == Some(&condition) {
        return false;
    }
    conditions.insert(target, Arc::new(condition));
    true
}

async fn verify(
    subject: &Subject,
    system_roots: &[CertificateDer<'static>],
    provider: Arc<CryptoProvider>,
    timeout: Duration,
) -> Outcome {
    // The served bundle is canonical and was validated by the translator.
    let verifier = crate::cert::parse_ca_bundle(subject.pem.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|served| crate::client::verifier_for(&provider, system_roots, &served));
    match verifier {
        Ok(verifier) => handshake::check(&subject.target, verifier, provider, timeout).await,
        Err(why) => Outcome::Invalid {
            why: format!("the served bundle cannot be used: {why}"),
        },
    }
}

fn log_outcome(key: &ObjectKey, subject: &Subject, outcome: &Outcome) {
    let upstream = subject.target.authority();
    match outcome {
        Outcome::Verified => {
            tracing::debug!(registration = %key, %upstream, version = %subject.version, "upstream verified")
        }
        _ => {
            tracing::info!(registration = %key, %upstream, reason = outcome.reason(), "upstream not verified")
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// ±10% jitter from a small xorshift generator seeded by the process's random hasher keys:
/// spreading checks needs no cryptographic randomness.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Self(seed | 1)
    }

    fn around(&mut self, interval: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // A factor in [0.9, 1.1].
        let factor = 0.9 + (self.0 % 2001) as f64 / 10_000.0;
        interval.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut jitter = Jitter::new();
        let interval = Duration::from_secs(300);
        let waits: Vec<Duration> = (0..1000).map(|_| jitter.around(interval)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_secs(270) && *w <= Duration::from_secs(330))
        );
        assert!(waits.iter().any(|w| *w != waits[0]), "it varies");
    }
}
