//! Leader election with a `coordination.k8s.io/v1` Lease, so that with several replicas all
//! serve SDS and only the Lease holder writes status.
//!
//! The holder renews every `renew_every`; another replica takes over once the Lease has not
//! been renewed for `lease_duration`. Every write uses the Lease's `resourceVersion`, so two
//! replicas can never both win a race (the API server answers the loser with 409).
//! When renewing fails, the replica steps down at once rather than risk two writers.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::chrono::Utc;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

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
    loop {
        let held = match try_acquire_or_renew(&api, &config).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = %config.name, error = %e, "lease renewal failed; not writing status");
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

async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = MicroTime(Utc::now());
    let duration_secs = config.lease_duration.as_secs() as i32;
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
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let ttl = spec.lease_duration_seconds.unwrap_or(duration_secs) as i64;
        Utc::now().signed_duration_since(t.0).num_milliseconds() > ttl * 1000
    });
    if !ours && !expired {
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
