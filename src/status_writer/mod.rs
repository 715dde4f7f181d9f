//! Writes `Ready` conditions to Kubernetes by server-side apply on the status subresource,
//! with field manager `trust-sds`, so conditions other controllers own are untouched.
//!
//! Level-triggered: it compares the computed condition (the published status map, a watch
//! channel: always the newest state, never a growing queue) with the condition the object
//! carries (`observed`, fed by the registration and extension watches) and applies where
//! they differ, so a condition another client overwrote is written back. It keeps
//! `lastTransitionTime` from the object unless `status` flips (so restarts and leader
//! changes keep it), backs off from a writer that keeps overwriting (`plan::Fight`),
//! writes with bounded concurrency, and retries failures with capped backoff. A target
//! whose condition disappeared gets an apply without conditions, which releases
//! trust-sds's entry.

pub mod observed;
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use self::observed::Observed;
use self::plan::{Decision, Fight, Written};
use crate::metrics::Metrics;
use crate::sds::delivery::Rejections;
use crate::snapshot::StatusMap;
use crate::status::{Condition, StatusTarget};

pub const FIELD_MANAGER: &str = "trust-sds";

/// The condition type written unless `--condition-type` says otherwise.
pub const DEFAULT_CONDITION_TYPE: &str = "Ready";

/// Where conditions go: the served versions of both kinds, and the condition's type.
#[derive(Clone, Debug)]
pub struct StatusWriterConfig {
    /// e.g. `v1` or `v1alpha1`.
    pub registration_version: String,
    pub extension_version: String,
    /// `Ready`, or another type when a controller beside trust-sds owns `Ready`.
    pub condition_type: String,
    /// Status applies in flight at once.
    pub concurrency: usize,
}

/// Applies in flight at once unless configured: enough to write 10,000 conditions in
/// seconds against an API server that answers in ~5 ms, few enough to stay well inside
/// its default priority-and-fairness share.
pub const DEFAULT_WRITE_CONCURRENCY: usize = 32;

impl StatusWriterConfig {
    /// Both kinds served at `version` (e.g. `v1`), writing `condition_type`.
    pub fn new(version: &str, condition_type: &str) -> Self {
        Self {
            registration_version: version.to_owned(),
            extension_version: version.to_owned(),
            condition_type: condition_type.to_owned(),
            concurrency: DEFAULT_WRITE_CONCURRENCY,
        }
    }
}

/// Checks a condition type as the API server's validation of `metav1.Condition` would
/// (an optional DNS-subdomain prefix and `/`, then a name of letters, digits, `-`, `_`,
/// `.`, starting and ending alphanumeric; at most 316 characters), so a typo fails at
/// start-up rather than on every status write.
pub fn parse_condition_type(value: &str) -> Result<String, String> {
    let (prefix, name) = match value.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    let alnum_ends = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let name_ok = alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|prefix| {
        prefix.split('.').all(|label| {
            alnum_ends(label)
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
    });
    if value.len() <= 316 && name_ok && prefix_ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a valid condition type: use letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit (e.g. CACertificateReady), optionally \
             after a DNS prefix and '/'"
        ))
    }
}

/// The body of the apply patch (pure: tested without an API server).
pub fn apply_body(
    api_version: &str,
    kind: &str,
    condition_type: &str,
    condition: Option<&Condition>,
    last_transition: &str,
) -> serde_json::Value {
    let conditions: Vec<serde_json::Value> = condition
        .map(|c| {
            let mut v = json!({
                "type": condition_type,
                "status": c.status_str(),
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": last_transition,
            });
            if let Some(g) = c.observed_generation {
                v["observedGeneration"] = json!(g);
            }
            v
        })
        .into_iter()
        .collect();
    json!({ "apiVersion": api_version, "kind": kind, "status": { "conditions": conditions } })
}

fn api_for(
    client: &Client,
    config: &StatusWriterConfig,
    target: &StatusTarget,
) -> (Api<DynamicObject>, String, &'static str) {
    let (kind, version, key) = match target {
        StatusTarget::Registration(k) => ("MCPServerRegistration", &config.registration_version, k),
        StatusTarget::Extension(k) => ("MCPGatewayExtension", &config.extension_version, k),
    };
    let gvk = GroupVersionKind::gvk("mcp.kuadrant.io", version, kind);
    let resource = ApiResource::from_gvk(&gvk);
    let api = Api::namespaced_with(client.clone(), &key.namespace, &resource);
    (api, format!("mcp.kuadrant.io/{version}"), kind)
}

/// What the writer reads: the computed conditions, whether it leads, the source's health
/// (nothing is written before every watch has listed) and the observed conditions.
pub struct Inputs {
    pub statuses: watch::Receiver<Arc<StatusMap>>,
    pub is_leader: watch::Receiver<bool>,
    pub health: watch::Receiver<Arc<crate::snapshot::SourceHealth>>,
    pub observed: Arc<Observed>,
    pub metrics: Arc<Metrics>,
    /// Rejected current versions (NACKs), added to the conditions of their objects.
    pub rejections: watch::Receiver<Arc<Rejections>>,
}

/// Runs until the status channel closes. `is_leader` gates writing (several replicas).
pub async fn run(client: Client, config: StatusWriterConfig, inputs: Inputs) {
    let Inputs {
        mut statuses,
        mut is_leader,
        mut health,
        observed,
        metrics,
        mut rejections,
    } = inputs;
    // Before every watch has listed, a registration may be seen without its Secret: writing
    // then would flap Ready through a false "not found".
    if health.wait_for(|h| h.synced).await.is_err() {
        return;
    }
    let mut writer = Writer {
        client,
        config,
        observed,
        metrics,
        written: BTreeMap::new(),
        fights: BTreeMap::new(),
        deferred: BTreeMap::new(),
    };
    let mut backoff = Duration::from_millis(200);
    // A full pass looks at every target: after the computed conditions changed, a failure
    // or a change of leader. Otherwise only at the objects observed to change and the
    // corrections that fell due.
    let mut full = true;
    loop {
        if *is_leader.borrow_and_update() {
            // Woken by something else (an observed object, a due correction), the computed
            // conditions may have changed too: taking them marks the change seen, so the
            // pass must then look at every target, or the ones that changed are missed
            // until the next full pass (seen on a real API server: an extension created
            // with its registration's new condition in one batch).
            if statuses.has_changed().unwrap_or(false) || rejections.has_changed().unwrap_or(false)
            {
                full = true;
            }
            let current = with_rejections(
                statuses.borrow_and_update().clone(),
                &rejections.borrow_and_update(),
            );
            let mut targets = writer.observed.take_dirty();
            let now = Instant::now();
            targets.extend(
                writer
                    .deferred
                    .iter()
                    .filter(|(_, due)| **due <= now)
                    .map(|(t, _)| t.clone()),
            );
            if full {
                targets.extend(current.keys().cloned());
                targets.extend(writer.written.keys().cloned());
            }
            match writer.pass(&current, targets, &is_leader).await {
                Pass::Failed => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    full = true;
                    continue;
                }
                Pass::LostLeadership | Pass::Done => backoff = Duration::from_millis(200),
            }
            full = false;
        } else {
            // A new leader compares everything, once.
            writer.written.clear();
            writer.deferred.clear();
            full = true;
        }
        let next_due = writer.deferred.values().min().copied();
        tokio::select! {
            changed = statuses.changed() => {
                if changed.is_err() { return }
                full = true;
            }
            // Without leader election the sender is gone and leadership never changes.
            Ok(()) = is_leader.changed() => full = true,
            Ok(()) = rejections.changed() => full = true,
            () = writer.observed.changed() => {}
            () = sleep_until(next_due) => {}
        }
    }
}

/// The computed conditions with each rejected current version said in its object's
/// condition: `...; 1 of 3 subscribers rejected version <v>: <reason>`. A rejection counts
/// only while the condition still names its version (a new version clears it).
pub fn with_rejections(statuses: Arc<StatusMap>, rejections: &Rejections) -> Arc<StatusMap> {
    if rejections.is_empty() {
        return statuses;
    }
    let mut out = (*statuses).clone();
    for (target, condition) in out.iter_mut() {
        let Some(rejection) = rejections.get(&target.resource_name().to_string()) else {
            continue;
        };
        if condition.ready
            && condition
                .message
                .contains(&format!("(version {})", rejection.version))
        {
            let mut decorated = (**condition).clone();
            decorated.message = format!("{}; {}", decorated.message, rejection.summary);
            *condition = Arc::new(decorated);
        }
    }
    Arc::new(out)
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

struct Writer {
    client: Client,
    config: StatusWriterConfig,
    observed: Arc<Observed>,
    metrics: Arc<Metrics>,
    written: BTreeMap<StatusTarget, Written>,
    fights: BTreeMap<StatusTarget, Fight>,
    /// Overwritten conditions waiting for their correction (a fight's backoff).
    deferred: BTreeMap<StatusTarget, Instant>,
}

enum Pass {
    Done,
    /// Some write failed: retry after a backoff.
    Failed,
    LostLeadership,
}

struct Job {
    target: StatusTarget,
    condition: Option<Arc<Condition>>,
    last_transition: String,
}

enum Outcome {
    Applied(serde_json::Value),
    Gone,
    Failed(kube::Error),
    NotLeader,
}

impl Writer {
    /// Decides for each target, then applies what differs, `concurrency` at a time. Stops
    /// starting writes as soon as this replica is no longer the leader: a pass over
    /// thousands of targets outlives a Lease (writes already in flight finish).
    async fn pass(
        &mut self,
        current: &StatusMap,
        targets: BTreeSet<StatusTarget>,
        is_leader: &watch::Receiver<bool>,
    ) -> Pass {
        let now_text = crate::translate::format_unix(crate::pipeline::unix_now());
        let now = Instant::now();
        let mut jobs = Vec::new();
        for target in targets {
            let want = current.get(&target).cloned();
            let seen = self.observed.get(&target);
            let decision = plan::decide(
                want.as_deref(),
                seen.as_ref(),
                self.written.get(&target),
                &now_text,
            );
            tracing::trace!(?target, ?decision, "status decision");
            let last_transition = match decision {
                Decision::Keep => {
                    self.deferred.remove(&target);
                    continue;
                }
                Decision::Release => now_text.clone(),
                Decision::Write { last_transition } => last_transition,
            };
            if let Some(by) = plan::overwritten_by(want.as_deref(), seen.as_ref()) {
                let fight = self.fights.entry(target.clone()).or_default();
                if !fight.is_pending() {
                    self.metrics.status_conflicts.inc();
                }
                let (due, new_episode) = fight.overwritten(now);
                if new_episode {
                    tracing::warn!(
                        ?target,
                        condition = %self.config.condition_type,
                        field_manager = %by,
                        "another writer changed trust-sds's condition; restoring it, and backing off (up to 5m) while that goes on"
                    );
                }
                if due > now {
                    self.deferred.insert(target, due);
                    continue;
                }
            }
            self.deferred.remove(&target);
            jobs.push(Job {
                target,
                condition: want,
                last_transition,
            });
        }
        let concurrency = self.config.concurrency.max(1);
        let this = &*self;
        let results: Vec<(Job, Outcome)> = futures::stream::iter(jobs)
            .map(|job| async move {
                if !*is_leader.borrow() {
                    return (job, Outcome::NotLeader);
                }
                let outcome = this.apply(&job).await;
                (job, outcome)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut pass = Pass::Done;
        let now = Instant::now();
        for (job, outcome) in results {
            match outcome {
                Outcome::Applied(object) => {
                    tracing::debug!(target = ?job.target, "status written");
                    // The answer is the newest state of the object: compared with, until the
                    // watch reports a newer one.
                    self.observed.applied(job.target.clone(), &object);
                    if let Some(fight) = self.fights.get_mut(&job.target) {
                        fight.corrected(now);
                    }
                    self.written.insert(
                        job.target,
                        Written {
                            condition: job.condition,
                            last_transition: job.last_transition,
                        },
                    );
                }
                // The object is gone: nothing to write, nothing to remember.
                Outcome::Gone => {
                    self.written.remove(&job.target);
                    self.observed.forget(&job.target);
                }
                Outcome::Failed(e) => {
                    tracing::warn!(target = ?job.target, error = %e, "status write failed; will retry");
                    pass = Pass::Failed;
                }
                Outcome::NotLeader => {
                    if !matches!(pass, Pass::LostLeadership) {
                        tracing::info!("leadership lost; status writes stop");
                    }
                    pass = Pass::LostLeadership;
                }
            }
        }
        self.written
            .retain(|t, w| current.contains_key(t) || w.condition.is_some());
        self.fights.retain(|_, f| !f.is_over(now));
        pass
    }

    async fn apply(&self, job: &Job) -> Outcome {
        let (api, api_version, kind) = api_for(&self.client, &self.config, &job.target);
        let name = match &job.target {
            StatusTarget::Registration(k) | StatusTarget::Extension(k) => &k.name,
        };
        let body = apply_body(
            &api_version,
            kind,
            &self.config.condition_type,
            job.condition.as_deref(),
            &job.last_transition,
        );
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(name, &params, &Patch::Apply(&body)).await {
            Ok(object) => Outcome::Applied(serde_json::to_value(object).unwrap_or_default()),
            Err(kube::Error::Api(e)) if e.code == 404 => Outcome::Gone,
            Err(e) => Outcome::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_types_are_checked_like_the_api_server_does() {
        for good in [
            "Ready",
            "CACertificateReady",
            "trust-sds.io/CACertificate",
            "a.b_c-d",
        ] {
            assert_eq!(parse_condition_type(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "Ready!",
            "-Ready",
            "Ready.",
            "Has Space",
            "UPPER.io/Ready",
            "/Ready",
        ] {
            let err = parse_condition_type(bad).unwrap_err();
            assert!(
                err.contains("is not a valid condition type"),
                "{bad}: {err}"
            );
        }
    }
}
