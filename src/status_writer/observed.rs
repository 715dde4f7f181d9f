//! What the API server says each target's condition is, as the registration and extension
//! watches see it (and as each of our own applies answers). The status writer compares it
//! with the computed condition, so a condition another client overwrote is written again,
//! and `lastTransitionTime` is taken from the object rather than restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::Notify;

use super::FIELD_MANAGER;
use crate::status::{Condition, StatusTarget};

/// One condition as it is on the object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
    pub last_transition_time: Option<String>,
    /// Field managers other than trust-sds that own part of this condition (from
    /// `managedFields`): who wrote over it.
    pub other_managers: Vec<String>,
    /// Whether trust-sds owns part of it.
    pub ours: bool,
}

impl Seen {
    /// Whether the object already says what trust-sds would write.
    pub fn matches(&self, want: &Condition) -> bool {
        self.status == want.status_str()
            && self.reason == want.reason
            && self.message == want.message
            && self.observed_generation == want.observed_generation
    }
}

/// Reads the condition of type `condition_type` from an object (JSON, as the API sends
/// it). `None` when the object has no such condition.
pub fn seen_condition(object: &Value, condition_type: &str) -> Option<Seen> {
    let condition = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == condition_type)?;
    let text = |field: &str| condition[field].as_str().unwrap_or_default().to_owned();
    let (ours, other_managers) = owners(object, condition_type);
    Some(Seen {
        status: text("status"),
        reason: text("reason"),
        message: text("message"),
        observed_generation: condition["observedGeneration"].as_i64(),
        last_transition_time: condition["lastTransitionTime"].as_str().map(str::to_owned),
        other_managers,
        ours,
    })
}

/// Who owns fields of the condition, by the `managedFields` entries that name its list key.
fn owners(object: &Value, condition_type: &str) -> (bool, Vec<String>) {
    let key = format!("k:{}", serde_json::json!({ "type": condition_type }));
    let mut ours = false;
    let mut others = BTreeSet::new();
    for entry in object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let owns = entry["fieldsV1"]["f:status"]["f:conditions"]
            .get(&key)
            .is_some();
        match entry["manager"].as_str() {
            Some(FIELD_MANAGER) if owns => ours = true,
            Some(other) if owns => {
                others.insert(other.to_owned());
            }
            _ => {}
        }
    }
    (ours, others.into_iter().collect())
}

/// The latest observation per target, filled by the Kubernetes source and by the writer's
/// own applies; the writer is woken for the targets that changed.
///
/// Holds one slot per condition type trust-sds writes (`Ready`, and `UpstreamTrusted` with
/// `--verify-upstreams`), in the writer's order.
pub struct Observed {
    condition_types: Vec<String>,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    seen: BTreeMap<StatusTarget, Vec<Option<Seen>>>,
    /// The `resourceVersion` each observation came from, when it is a number.
    revisions: BTreeMap<StatusTarget, u64>,
    dirty: BTreeSet<StatusTarget>,
}

/// An object's `resourceVersion` as a number. The API server says to treat it as opaque;
/// here it only lets a watch event that is older than an apply's answer be told apart (the
/// watch may lag behind the answer), and anything that is not a number is taken as new.
fn revision(object: &Value) -> Option<u64> {
    object["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

impl Observed {
    /// Observes one condition type.
    pub fn new(condition_type: impl Into<String>) -> Self {
        Self::for_types(vec![condition_type.into()])
    }

    /// Observes these condition types (slot `i` is `condition_types[i]`).
    pub fn for_types(condition_types: Vec<String>) -> Self {
        Self {
            condition_types,
            state: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `object` (as JSON) as the current state of `target`.
    pub fn object(&self, target: StatusTarget, object: &Value) {
        let seen = self.seen_all(object);
        let revision = revision(object);
        let mut state = self.lock();
        // A watch event older than what an apply answered would undo what we know and
        // cause a needless write of the same condition.
        let stale = revision
            .zip(state.revisions.get(&target))
            .is_some_and(|(new, known)| new < *known);
        if stale {
            return;
        }
        match revision {
            Some(r) => state.revisions.insert(target.clone(), r),
            None => state.revisions.remove(&target),
        };
        if state.seen.get(&target) != Some(&seen) {
            state.seen.insert(target.clone(), seen);
            state.dirty.insert(target);
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Notes the object as our own apply answered it: the newest state, but no reason to
    /// look again.
    pub fn applied(&self, target: StatusTarget, object: &Value) {
        let seen = self.seen_all(object);
        let mut state = self.lock();
        match revision(object) {
            Some(r) => state.revisions.insert(target.clone(), r),
            None => state.revisions.remove(&target),
        };
        state.seen.insert(target, seen);
    }

    fn seen_all(&self, object: &Value) -> Vec<Option<Seen>> {
        self.condition_types
            .iter()
            .map(|t| seen_condition(object, t))
            .collect()
    }

    /// The object is gone.
    pub fn forget(&self, target: &StatusTarget) {
        let mut state = self.lock();
        state.seen.remove(target);
        state.revisions.remove(target);
    }

    /// After a (re-)list of one kind: drops the targets of that kind the list no longer has.
    pub fn retain(&self, keep: impl Fn(&StatusTarget) -> bool) {
        let mut state = self.lock();
        state.seen.retain(|t, _| keep(t));
        state.revisions.retain(|t, _| keep(t));
    }

    /// What the object says per slot, if the object has been seen (`Some([None])`: seen,
    /// without the condition).
    pub fn get(&self, target: &StatusTarget) -> Option<Vec<Option<Seen>>> {
        self.lock().seen.get(target).cloned()
    }

    /// The targets observed to change since the last call.
    pub fn take_dirty(&self) -> BTreeSet<StatusTarget> {
        std::mem::take(&mut self.lock().dirty)
    }

    /// Resolves once an observation changed (a change before the call counts too).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(managers: Value) -> Value {
        json!({
            "metadata": {"name": "weather", "managedFields": managers},
            "status": {"conditions": [
                {"type": "Other", "status": "True", "reason": "X", "message": "x"},
                {"type": "Ready", "status": "False", "reason": "Broken", "message": "someone else",
                 "observedGeneration": 3, "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}
        })
    }

    fn owns(manager: &str, ctype: &str, fields: Value) -> Value {
        let key = format!("k:{}", json!({ "type": ctype }));
        json!({"manager": manager, "operation": "Update", "subresource": "status",
               "fieldsType": "FieldsV1",
               "fieldsV1": {"f:status": {"f:conditions": { key: fields }}}})
    }

    #[test]
    fn reads_the_condition_of_its_type_and_who_wrote_it() {
        let o = object(json!([
            owns(
                FIELD_MANAGER,
                "Ready",
                json!({".": {}, "f:type": {}, "f:lastTransitionTime": {}})
            ),
            owns(
                "kubectl-patch",
                "Ready",
                json!({"f:status": {}, "f:message": {}})
            ),
            owns("other-controller", "Other", json!({"f:status": {}})),
        ]));
        let seen = seen_condition(&o, "Ready").unwrap();
        assert_eq!(seen.status, "False");
        assert_eq!(seen.reason, "Broken");
        assert_eq!(seen.observed_generation, Some(3));
        assert_eq!(
            seen.last_transition_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert!(seen.ours);
        assert_eq!(seen.other_managers, vec!["kubectl-patch".to_owned()]);
        let other = seen_condition(&o, "Other").unwrap();
        assert!(!other.ours);
        assert_eq!(other.other_managers, vec!["other-controller".to_owned()]);
        assert!(seen_condition(&o, "CACertificateReady").is_none());
        assert!(seen_condition(&json!({"metadata": {}}), "Ready").is_none());
    }

    #[test]
    fn matches_compares_what_trust_sds_writes() {
        let seen = seen_condition(&object(json!([])), "Ready").unwrap();
        let mut want = Condition::not_ready("Broken", "someone else".into(), Some(3));
        assert!(seen.matches(&want));
        want.observed_generation = Some(4);
        assert!(!seen.matches(&want));
        assert!(!seen.matches(&Condition::ready("Broken", "someone else".into(), Some(3))));
    }

    #[test]
    fn only_changes_mark_a_target_dirty() {
        let observed = Observed::new("Ready");
        let target = StatusTarget::Registration(crate::model::ObjectKey::new("team", "weather"));
        let o = object(json!([]));
        observed.object(target.clone(), &o);
        assert_eq!(observed.take_dirty().len(), 1);
        observed.object(target.clone(), &o);
        assert!(observed.take_dirty().is_empty(), "the same condition again");
        assert_eq!(
            observed.get(&target).unwrap()[0].as_ref().unwrap().reason,
            "Broken"
        );
        observed.forget(&target);
        assert!(observed.get(&target).is_none());
    }

    #[test]
    fn a_watch_event_older_than_an_applied_answer_is_ignored() {
        let observed = Observed::new("Ready");
        let target = StatusTarget::Registration(crate::model::ObjectKey::new("team", "a"));
        let at = |rv: &str, message: &str| {
            json!({"metadata": {"name": "a", "resourceVersion": rv},
                   "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Valid", "message": message}]}})
        };
        observed.applied(target.clone(), &at("12", "new"));
        observed.object(target.clone(), &at("11", "old"));
        let seen = observed.get(&target).unwrap();
        assert_eq!(seen[0].as_ref().unwrap().message, "new");
        assert!(observed.take_dirty().is_empty());
        observed.object(target.clone(), &at("13", "newer"));
        assert_eq!(
            observed.get(&target).unwrap()[0].as_ref().unwrap().message,
            "newer"
        );
        // Not a number: taken as new.
        observed.object(target.clone(), &at("x", "opaque"));
        assert_eq!(
            observed.get(&target).unwrap()[0].as_ref().unwrap().message,
            "opaque"
        );
    }
}
