//! Writes `Ready` conditions (and, with `--verify-upstreams`, `UpstreamTrusted`) to
//! Kubernetes by server-side apply on the status subresource, with field manager
//! `trust-sds`, so conditions other controllers own are untouched.
//!
//! Both condition types go into the same apply: with server-side apply, a manager's apply
//! that leaves out a condition it owns removes it, so every apply carries every condition
//! trust-sds wants on the object. Each type is compared and planned on its own (`plan`); an
//! object is written when any of them differs.
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

/// The condition type of upstream verification (`--verify-upstreams`).
pub const UPSTREAM_CONDITION_TYPE: &str = "UpstreamTrusted";

/// One condition of an apply: its type, value and `lastTransitionTime`.
pub type Applied<'a> = (&'a str, &'a Condition, &'a str);

/// The body of the apply patch (pure: tested without an API server). An empty list
/// releases every condition trust-sds owned on the object.
pub fn apply_body(api_version: &str, kind: &str, conditions: &[Applied<'_>]) -> serde_json::Value {
    let conditions: Vec<serde_json::Value> = conditions
        .iter()
        .map(|(condition_type, c, last_transition)| {
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
    /// With `--verify-upstreams`: the computed `UpstreamTrusted` conditions. `None`: that
    /// type is never written (and one written earlier is released by the next apply).
    pub upstream: Option<watch::Receiver<Arc<StatusMap>>>,
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
        mut upstream,
    } = inputs;
    // Before every watch has listed, a registration may be seen without its Secret: writing
    // then would flap Ready through a false "not found".
    if health.wait_for(|h| h.synced).await.is_err() {
        return;
    }
    let mut types = vec![config.condition_type.clone()];
    if upstream.is_some() {
        types.push(UPSTREAM_CONDITION_TYPE.to_owned());
    }
    let mut writer = Writer {
        client,
        config,
        types,
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
            // A change that arrived since the wake-up (which may have been for an observed
            // object only) is consumed by the borrow below, so it must make this pass full.
            full |= statuses.has_changed().unwrap_or(false)
                || rejections.has_changed().unwrap_or(false)
                || upstream
                    .as_ref()
                    .is_some_and(|u| u.has_changed().unwrap_or(false));
            let mut current = vec![with_rejections(
                statuses.borrow_and_update().clone(),
                &rejections.borrow_and_update(),
            )];
            current.extend(upstream.as_mut().map(|u| u.borrow_and_update().clone()));
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
                targets.extend(current.iter().flat_map(|m| m.keys().cloned()));
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
            () = changed_or_pending(&mut upstream) => full = true,
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
    let decorated: Vec<(StatusTarget, Arc<Condition>)> = statuses
        .iter()
        .filter_map(|(target, condition)| {
            let rejection = rejections.get(&target.resource_name().to_string())?;
            let names_it = condition.ready
                && condition
                    .message
                    .contains(&format!("(version {})", rejection.version));
            names_it.then(|| {
                let mut decorated = (**condition).clone();
                decorated.message = format!("{}; {}", decorated.message, rejection.summary);
                (target.clone(), Arc::new(decorated))
            })
        })
        .collect();
    for (target, condition) in decorated {
        out.insert(target, condition);
    }
    Arc::new(out)
}

/// Resolves when an optional input changes; never when it is absent or closed.
async fn changed_or_pending(rx: &mut Option<watch::Receiver<Arc<StatusMap>>>) {
    let open = match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !open {
        std::future::pending::<()>().await;
    }
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
    /// The condition types written, one slot each: the main type, then `UpstreamTrusted`.
    types: Vec<String>,
    observed: Arc<Observed>,
    metrics: Arc<Metrics>,
    /// Per target, what was last applied, one entry per slot.
    written: BTreeMap<StatusTarget, Vec<Written>>,
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
    /// Per slot: the wanted condition (`None`: not applied, so released) and its time.
    slots: Vec<Written>,
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
        current: &[Arc<StatusMap>],
        targets: BTreeSet<StatusTarget>,
        is_leader: &watch::Receiver<bool>,
    ) -> Pass {
        let now_text = crate::translate::format_unix(crate::pipeline::unix_now());
        let now = Instant::now();
        let mut jobs = Vec::new();
        for target in targets {
            let Some((slots, overwritten)) = self.plan_target(current, &target, &now_text) else {
                self.deferred.remove(&target);
                continue;
            };
            if let Some(by) = overwritten {
                let fight = self.fights.entry(target.clone()).or_default();
                if !fight.is_pending() {
                    self.metrics.status_conflicts.inc();
                }
                let (due, new_episode) = fight.overwritten(now);
                if new_episode {
                    tracing::warn!(
                        ?target,
                        condition = %self.types.join(", "),
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
            jobs.push(Job { target, slots });
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
                    self.written.insert(job.target, job.slots);
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
        self.written.retain(|t, slots| {
            current.iter().any(|m| m.contains_key(t)) || slots.iter().any(|w| w.condition.is_some())
        });
        self.fights.retain(|_, f| !f.is_over(now));
        pass
    }

    /// What to apply to `target`, one slot per condition type, or `None` when the object
    /// already says everything; with the other writer's name when one overwrote a condition.
    fn plan_target(
        &self,
        current: &[Arc<StatusMap>],
        target: &StatusTarget,
        now_text: &str,
    ) -> Option<(Vec<Written>, Option<String>)> {
        let seen_all = self.observed.get(target);
        let written_all = self.written.get(target);
        let mut act = false;
        let mut overwritten = None;
        let mut slots = Vec::with_capacity(current.len());
        for (i, map) in current.iter().enumerate() {
            let want = map.get(target).cloned();
            let seen = seen_all.as_ref().map(|s| s.get(i).cloned().flatten());
            let written = written_all.and_then(|w| w.get(i));
            let last_transition =
                match plan::decide(want.as_deref(), seen.as_ref(), written, now_text) {
                    Decision::Keep => want
                        .as_deref()
                        .map(|w| plan::transition_time(w, seen.as_ref(), written, now_text))
                        .unwrap_or_default(),
                    Decision::Release => {
                        act = true;
                        String::new()
                    }
                    Decision::Write { last_transition } => {
                        act = true;
                        last_transition
                    }
                };
            if overwritten.is_none() {
                overwritten = plan::overwritten_by(want.as_deref(), seen.as_ref());
            }
            slots.push(Written {
                condition: want,
                last_transition,
            });
        }
        act.then_some((slots, overwritten))
    }

    async fn apply(&self, job: &Job) -> Outcome {
        let (api, api_version, kind) = api_for(&self.client, &self.config, &job.target);
        let name = match &job.target {
            StatusTarget::Registration(k) | StatusTarget::Extension(k) => &k.name,
        };
        let conditions: Vec<Applied<'_>> = self
            .types
            .iter()
            .zip(&job.slots)
            .filter_map(|(t, w)| {
                let c = w.condition.as_deref()?;
                Some((t.as_str(), c, w.last_transition.as_str()))
            })
            .collect();
        let body = apply_body(&api_version, kind, &conditions);
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
