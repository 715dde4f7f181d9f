//! What to do about one target, decided from three facts: the condition trust-sds computed,
//! the condition the object carries (when the watch has seen it) and what this writer last
//! applied. Pure, so every case is a unit test.

use std::time::Duration;

use tokio::time::Instant;

use super::observed::Seen;
use crate::status::Condition;

/// What this writer last applied to a target.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    pub condition: Option<std::sync::Arc<Condition>>,
    pub last_transition: String,
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    /// The object already says it.
    Keep,
    /// Apply the computed condition with this `lastTransitionTime`.
    Write { last_transition: String },
    /// trust-sds no longer has a condition for it: apply none, releasing its entry.
    Release,
}

/// `seen`: `None` while the object has not been observed (then the last write stands in
/// for it), `Some(None)` when it carries no such condition.
pub fn decide(
    want: Option<&Condition>,
    seen: Option<&Option<Seen>>,
    written: Option<&Written>,
    now: &str,
) -> Decision {
    let Some(want) = want else {
        let ours_on_object = seen.is_some_and(|s| s.as_ref().is_some_and(|s| s.ours));
        let we_wrote_one = written.is_some_and(|w| w.condition.is_some());
        return if ours_on_object || we_wrote_one {
            Decision::Release
        } else {
            Decision::Keep
        };
    };
    let up_to_date = match seen {
        Some(seen) => seen.as_ref().is_some_and(|s| s.matches(want)),
        None => written.is_some_and(|w| w.condition.as_deref() == Some(want)),
    };
    if up_to_date {
        return Decision::Keep;
    }
    Decision::Write {
        last_transition: transition_time(want, seen, written, now),
    }
}

/// The `lastTransitionTime` to write with `want`. A transition is a change of `status`
/// only: a new message keeps the time, which comes from the object (so it survives
/// restarts and leader changes), else from our last write, else it is `now`.
pub fn transition_time(
    want: &Condition,
    seen: Option<&Option<Seen>>,
    written: Option<&Written>,
    now: &str,
) -> String {
    let from_object = seen
        .and_then(Option::as_ref)
        .filter(|s| s.status == want.status_str())
        .and_then(|s| s.last_transition_time.clone());
    let from_write = written
        .filter(|w| {
            w.condition
                .as_ref()
                .is_some_and(|c| c.status_str() == want.status_str())
        })
        .map(|w| w.last_transition.clone());
    from_object.or(from_write).unwrap_or_else(|| now.to_owned())
}

/// The other writer, if the object differs from what trust-sds wants because another field
/// manager wrote over the condition.
pub fn overwritten_by(want: Option<&Condition>, seen: Option<&Option<Seen>>) -> Option<String> {
    let want = want?;
    let seen = seen?.as_ref()?;
    (!seen.matches(want) && !seen.other_managers.is_empty()).then(|| seen.other_managers.join(", "))
}

/// The longest wait before restoring a condition another writer keeps changing.
pub const MAX_FIGHT_BACKOFF: Duration = Duration::from_secs(300);

/// One target's dispute with another writer: the first overwrite is corrected at once,
/// each further one waits twice as long (1 s, 2 s, ... capped at 5 minutes). An episode
/// ends after a quiet `MAX_FIGHT_BACKOFF` without overwrites.
#[derive(Debug, Default)]
pub struct Fight {
    overwrites: u32,
    last: Option<Instant>,
    /// Set while a detected overwrite waits for its correction.
    pending_until: Option<Instant>,
}

impl Fight {
    /// Notes an overwrite seen at `now` (once per overwrite: while one is pending, later
    /// passes only wait). Returns when to correct it, and whether this starts an episode
    /// (the moment to log).
    pub fn overwritten(&mut self, now: Instant) -> (Instant, bool) {
        if let Some(until) = self.pending_until {
            return (until, false);
        }
        let new_episode = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) > MAX_FIGHT_BACKOFF);
        if new_episode {
            self.overwrites = 0;
        }
        self.overwrites += 1;
        self.last = Some(now);
        let wait = match self.overwrites {
            1 => Duration::ZERO,
            n => Duration::from_secs(1 << (n - 2).min(16)).min(MAX_FIGHT_BACKOFF),
        };
        let until = now + wait;
        self.pending_until = Some(until);
        (until, new_episode)
    }

    /// Whether an overwrite waits for its correction.
    pub fn is_pending(&self) -> bool {
        self.pending_until.is_some()
    }

    /// The correction was written at `now` (the quiet spell counts from here).
    pub fn corrected(&mut self, now: Instant) {
        self.pending_until = None;
        self.last = Some(now);
    }

    /// Whether this holds nothing worth keeping.
    pub fn is_over(&self, now: Instant) -> bool {
        self.pending_until.is_none()
            && self
                .last
                .is_none_or(|last| now.saturating_duration_since(last) > MAX_FIGHT_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const NOW: &str = "2026-11-30T12:00:00Z";
    const EARLIER: &str = "2026-01-01T00:00:00Z";

    fn seen(c: &Condition, ltt: &str, others: &[&str]) -> Option<Seen> {
        Some(Seen {
            status: c.status_str().to_owned(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            observed_generation: c.observed_generation,
            last_transition_time: Some(ltt.to_owned()),
            other_managers: others.iter().map(|s| s.to_string()).collect(),
            ours: true,
        })
    }

    fn ready(msg: &str) -> Condition {
        Condition::ready("Valid", msg.to_owned(), Some(1))
    }

    fn written(c: &Condition, ltt: &str) -> Written {
        Written {
            condition: Some(Arc::new(c.clone())),
            last_transition: ltt.to_owned(),
        }
    }

    /// (what, want, seen, written, decision)
    type Case<'a> = (
        &'a str,
        Option<&'a Condition>,
        Option<Option<Seen>>,
        Option<Written>,
        Decision,
    );

    #[test]
    fn decisions() {
        let want = ready("2 certificates");
        let broken = Condition::not_ready("Broken", "x".into(), Some(1));
        let write = |ltt: &str| Decision::Write {
            last_transition: ltt.to_owned(),
        };
        let cases: Vec<Case> = vec![
            (
                "object says it already",
                Some(&want),
                Some(seen(&want, EARLIER, &[])),
                None,
                Decision::Keep,
            ),
            (
                "object without the condition",
                Some(&want),
                Some(None),
                None,
                write(NOW),
            ),
            (
                "a restart keeps the object's transition time for a new message",
                Some(&want),
                Some(seen(&ready("1 certificate"), EARLIER, &[])),
                None,
                write(EARLIER),
            ),
            (
                "a status flip is a transition",
                Some(&want),
                Some(seen(&broken, EARLIER, &[])),
                None,
                write(NOW),
            ),
            (
                "a foreign overwrite is written back, keeping our time",
                Some(&want),
                Some(seen(&broken, NOW, &["kubectl-patch"])),
                Some(written(&want, EARLIER)),
                write(EARLIER),
            ),
            (
                "object not seen yet, our last write stands",
                Some(&want),
                None,
                Some(written(&want, EARLIER)),
                Decision::Keep,
            ),
            (
                "object not seen yet, nothing written",
                Some(&want),
                None,
                None,
                write(NOW),
            ),
            (
                "the object is ahead of a stale last write",
                Some(&want),
                Some(seen(&want, EARLIER, &[])),
                Some(written(&ready("old"), NOW)),
                Decision::Keep,
            ),
            (
                "no condition wanted, ours on the object",
                None,
                Some(seen(&want, EARLIER, &[])),
                None,
                Decision::Release,
            ),
            (
                "no condition wanted, we wrote one",
                None,
                None,
                Some(written(&want, EARLIER)),
                Decision::Release,
            ),
            (
                "no condition wanted, none of ours",
                None,
                Some(None),
                None,
                Decision::Keep,
            ),
        ];
        for (what, want, seen, written, decision) in cases {
            assert_eq!(
                decide(want, seen.as_ref(), written.as_ref(), NOW),
                decision,
                "{what}"
            );
        }
    }

    #[test]
    fn overwrites_name_the_other_manager() {
        let want = ready("2 certificates");
        let broken = Condition::not_ready("Broken", "x".into(), Some(1));
        let by = |s: Option<Seen>| overwritten_by(Some(&want), Some(&s));
        assert_eq!(
            by(seen(&broken, NOW, &["kubectl-patch"])).as_deref(),
            Some("kubectl-patch")
        );
        assert_eq!(by(seen(&broken, NOW, &[])), None, "an old value of our own");
        assert_eq!(
            by(seen(&want, NOW, &["kubectl-patch"])),
            None,
            "they wrote what we want"
        );
        assert_eq!(overwritten_by(Some(&want), None), None);
    }

    #[test]
    fn a_fight_backs_off_to_five_minutes_and_ends_after_a_quiet_spell() {
        let start = Instant::now();
        let mut fight = Fight::default();
        let (first, new_episode) = fight.overwritten(start);
        assert_eq!(
            (first, new_episode),
            (start, true),
            "the first overwrite is corrected at once"
        );
        assert_eq!(
            fight.overwritten(start + Duration::from_millis(10)),
            (start, false),
            "still pending"
        );
        fight.corrected(start);
        let mut waits = Vec::new();
        let mut now = start;
        for _ in 0..12 {
            now += Duration::from_secs(1);
            let (until, new_episode) = fight.overwritten(now);
            assert!(!new_episode);
            waits.push((until - now).as_secs());
            now = until;
            fight.corrected(now);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert!(!fight.is_over(now));
        let later = now + MAX_FIGHT_BACKOFF + Duration::from_secs(1);
        assert!(fight.is_over(later));
        assert_eq!(
            fight.overwritten(later),
            (later, true),
            "a new episode starts over"
        );
    }
}
