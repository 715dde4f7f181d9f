//! Leader election with a `coordination.k8s.io/v1` Lease, so that with several replicas all
//! serve SDS and only the Lease holder writes status.
//!
//! The holder renews every `renew_every`; another replica takes over once it has seen the
//! Lease record unchanged for `lease_duration` by its own clock, as client-go does: the
//! holder's `renewTime` is never compared with the local wall clock, so clock skew between
//! nodes cannot make two writers. Every write uses the Lease's `resourceVersion`, so two
//! replicas can never both win a race (the API server answers the loser with 409).
//! When renewing fails or does not finish within `renew_every`, the replica steps down at
//! once rather than risk two writers.
//!
//! Why not `kube-lease-manager` (0.13.1, which the project would rather use): it judges
//! expiry as `renewTime + duration < local now`, tolerating skew only up to its `grace`.
//! Against a real kube-apiserver, a holder whose clock runs an hour behind and renews every
//! 200 ms had its Lease force-released within 200 ms and taken within a second (14 of 15
//! checks), so two replicas wrote status at once. `tests/kube_source.rs`
//! (`a_skewed_holder_that_renews_keeps_the_lease`) holds this module to the safe rule.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (usually the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: "trust-sds-status-writer".to_owned(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// Keeps `leader` true exactly while this replica holds the Lease. Runs until `stop`
/// turns true (then a held Lease is released, so the next replica takes over at once) or
/// `leader`'s receivers are all gone.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observed = Observed::default();
    loop {
        // A renewal that hangs must not leave a stale leader: give up before another
        // replica may judge the Lease expired (client-go's RenewDeadline: 10 s of 15).
        let deadline = config
            .lease_duration
            .saturating_sub(config.renew_every)
            .max(config.renew_every);
        let attempt = try_acquire_or_renew(&api, &config, &mut observed);
        let held = match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(lease = %config.name, error = %e, "lease renewal failed; not writing status");
                false
            }
            Err(_) => {
                tracing::warn!(lease = %config.name, "lease renewal timed out; not writing status");
                false
            }
        };
        let changed = leader.send_if_modified(|current| std::mem::replace(current, held) != held);
        if changed {
            tracing::info!(identity = %config.identity, leader = held, "status writer leadership changed");
        }
        if leader.is_closed() {
            return;
        }
        let stopping = tokio::select! {
            _ = tokio::time::sleep(config.renew_every) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            if leader.send_replace(false)
                && let Err(e) = release(&api, &config).await
            {
                tracing::warn!(error = %e, "could not release the lease; it expires by itself");
            }
            return;
        }
    }
}

/// Gives the Lease up (empty holder), as client-go's ReleaseOnCancel does.
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    api.replace(&config.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The parts of a Lease that change when its holder renews or hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    acquire_time: Option<MicroTime>,
    transitions: Option<i32>,
    duration_secs: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            acquire_time: spec.acquire_time.clone(),
            transitions: spec.lease_transitions,
            duration_secs: spec.lease_duration_seconds,
        }
    }
}

/// The Lease record as this replica last saw it, and when (its own monotonic clock).
#[derive(Debug, Default)]
struct Observed {
    record: Option<Record>,
    since: Option<Instant>,
}

impl Observed {
    /// Notes the record read at `now`; the clock restarts whenever the record changed.
    fn observe(&mut self, record: Record, now: Instant) {
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.since = Some(now);
        }
    }

    /// Whether the holder has let the Lease lapse: nothing changed for `ttl` here.
    fn expired(&self, now: Instant, ttl: Duration) -> bool {
        self.since
            .is_none_or(|since| now.saturating_duration_since(since) > ttl)
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration_secs = config.lease_duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    observed.observe(Record::of(spec), Instant::now());
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    let ttl = spec
        .lease_duration_seconds
        .map_or(config.lease_duration, |s| {
            Duration::from_secs(s.max(0) as u64)
        });
    if !ours && !vacant && !observed.expired(Instant::now(), ttl) {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(duration_secs);
    // `replace` carries the resourceVersion we read: a concurrent writer makes this a 409.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed_secs: i64) -> Record {
        let at = Timestamp::from_second(renewed_secs).unwrap();
        Record {
            holder: Some(holder.to_owned()),
            renew_time: Some(MicroTime(at)),
            acquire_time: None,
            transitions: Some(0),
            duration_secs: Some(15),
        }
    }

    /// A holder whose clock runs an hour behind renews with `renewTime`s an hour in the
    /// past: still alive, because its record keeps changing. Only a record left unchanged
    /// for the lease duration, by the observer's clock, is expired.
    #[test]
    fn expiry_is_judged_by_local_observation_not_by_renew_time() {
        let ttl = Duration::from_secs(15);
        let start = Instant::now();
        let skewed = 1_000_000 - 3_600;
        let mut observed = Observed::default();
        assert!(observed.expired(start, ttl), "never seen: free to take");
        observed.observe(record("peer", skewed), start);
        assert!(
            !observed.expired(start, ttl),
            "an hour-old renewTime is not expiry"
        );
        for i in 1..10 {
            let now = start + Duration::from_secs(5 * i);
            observed.observe(record("peer", skewed + 5 * i as i64), now);
            assert!(!observed.expired(now, ttl), "renewing every 5 s: alive");
        }
        let last = start + Duration::from_secs(45);
        observed.observe(record("peer", skewed + 45), last);
        observed.observe(record("peer", skewed + 45), last + Duration::from_secs(10));
        assert!(!observed.expired(last + Duration::from_secs(10), ttl));
        assert!(
            observed.expired(last + Duration::from_secs(16), ttl),
            "unchanged for longer than the lease duration"
        );
    }
}
