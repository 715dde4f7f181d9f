//! Delta (incremental) stream state (DeltaSecrets and Delta ADS).
//!
//! The server tracks, per name, the version the client holds (from
//! `initial_resource_versions` on reconnect and from what it was sent). Responses carry only
//! resources whose version differs and names that went away (`removed_resources`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};

use super::encode::{SdsSnapshot, WireResponse};
use super::{Ack, Answered, SECRET_TYPE_URL, Subscription, UnknownNamePolicy, accepts_type};

/// A Delta response: this stream's fields (nonce, removed names) and the shared resources.
pub type DeltaResponse = WireResponse<DeltaDiscoveryResponse>;

#[derive(Debug, Default)]
pub struct DeltaStream {
    names: BTreeSet<String>,
    wildcard: bool,
    /// name -> version the client holds.
    known: HashMap<String, Arc<str>>,
    /// Names already answered as not found (so the answer is given once).
    answered_missing: BTreeSet<String>,
    nonce: u64,
    /// Resources sent since the last reply to the newest response: what that reply answers.
    /// Keyed by name (the newest version sent), so a client that never replies costs at
    /// most one entry per subscribed name.
    unanswered: HashMap<Arc<str>, Arc<str>>,
    started: bool,
    /// Moves when a request subscribes or unsubscribes ([`Subscription::subscription_seq`]).
    subscription_seq: u64,
    policy: UnknownNamePolicy,
    allow_empty_type: bool,
}

impl DeltaStream {
    pub fn new(policy: UnknownNamePolicy, allow_empty_type: bool) -> Self {
        Self {
            policy,
            allow_empty_type,
            ..Self::default()
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    fn respond(&mut self, snap: &SdsSnapshot) -> Option<DeltaResponse> {
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut consider = |name: &str, this: &mut Self| match snap.resources.get(name) {
            Some(r) => {
                let known = this.known.get_mut(name);
                if known.as_ref().is_none_or(|v| **v != r.version) {
                    match known {
                        Some(v) => v.clone_from(&r.version),
                        None => {
                            this.known.insert(name.to_owned(), r.version.clone());
                        }
                    }
                    this.answered_missing.remove(name);
                    this.unanswered.insert(r.name.clone(), r.version.clone());
                    resources.push(r.clone());
                }
            }
            None => {
                // Withdrawn from the client, or (policy not-found) answered once as absent.
                let held = this.known.remove(name).is_some();
                if held
                    || (this.policy == UnknownNamePolicy::NotFound
                        && !this.wildcard
                        && this.answered_missing.insert(name.to_owned()))
                {
                    removed.push(name.to_owned());
                }
            }
        };
        if self.wildcard {
            let mut all: BTreeSet<String> = snap.resources.keys().map(|n| n.to_string()).collect();
            all.extend(self.known.keys().cloned());
            all.extend(self.names.iter().cloned());
            for name in &all {
                consider(name, self);
            }
        } else {
            // Borrowed out and back rather than cloned: this runs for every stream on every
            // snapshot change.
            let names = std::mem::take(&mut self.names);
            for name in &names {
                consider(name, self);
            }
            self.names = names;
        }
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        self.nonce += 1;
        Some(WireResponse {
            head: DeltaDiscoveryResponse {
                type_url: SECRET_TYPE_URL.to_owned(),
                removed_resources: removed,
                nonce: self.nonce.to_string(),
                ..Default::default()
            },
            resources,
        })
    }

    /// Whether a request asks for everything: `*` subscribed, or the legacy wildcard, a
    /// first request that subscribes to nothing. (Unsubscribing `*` ends it; see
    /// `on_request`.)
    fn wants_wildcard(&self, req: &DeltaDiscoveryRequest) -> bool {
        req.resource_names_subscribe.iter().any(|n| n == "*")
            || (!self.started && req.resource_names_subscribe.is_empty())
    }
}

impl Subscription for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaResponse;

    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snap: &SdsSnapshot,
    ) -> (Ack, Option<DeltaResponse>) {
        if !accepts_type(&req.type_url, self.allow_empty_type) {
            return (Ack::UnsupportedType(req.type_url.clone()), None);
        }
        // A reply to the newest response answers everything sent since the last such reply
        // (clients reply in order); a reply to an older one is left to the newer reply.
        let mut answers = || {
            if req.response_nonce.parse::<u64>() == Ok(self.nonce) {
                std::mem::take(&mut self.unanswered).into_iter().collect()
            } else {
                Answered::default()
            }
        };
        let ack = match (&req.error_detail, req.response_nonce.as_str()) {
            (_, "") => Ack::None,
            (Some(status), nonce) => Ack::Nack {
                version: nonce.to_owned(),
                message: status.message.clone(),
                code: status.code,
                answers: answers(),
            },
            (None, nonce) => Ack::Ack {
                version: nonce.to_owned(),
                answers: answers(),
            },
        };
        if !self.started
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty()
        {
            self.subscription_seq += 1;
        }
        // The rule authorization asks too (`requested`): one place says what a wildcard is.
        if self.wants_wildcard(req) {
            self.wildcard = true;
        }
        if !self.started {
            self.started = true;
            for (name, version) in &req.initial_resource_versions {
                self.known.insert(name.clone(), Arc::from(version.as_str()));
            }
        }
        for name in req.resource_names_subscribe.iter().filter(|n| *n != "*") {
            self.names.insert(name.clone());
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(name);
            }
        }
        let (names, wildcard) = (&self.names, self.wildcard);
        self.known.retain(|n, _| wildcard || names.contains(n));
        self.answered_missing.retain(|n| names.contains(n));
        (ack, self.respond(snap))
    }

    fn on_snapshot(&mut self, snap: &SdsSnapshot) -> Option<DeltaResponse> {
        if !self.started {
            return None;
        }
        self.respond(snap)
    }

    /// The names a request adds (`initial_resource_versions` included) and whether it asks
    /// for everything: `*`, or the legacy wildcard, a first request that subscribes to
    /// nothing. Unlike SotW, a Delta wildcard (legacy or explicit) lasts until `*` is
    /// unsubscribed: the xDS protocol reads a later subscription to "A" as "the wildcard
    /// and A".
    fn requested<'a>(&self, req: &'a DeltaDiscoveryRequest) -> (Vec<&'a str>, bool) {
        let mut names: Vec<&str> = req
            .resource_names_subscribe
            .iter()
            .map(String::as_str)
            .collect();
        if !self.started {
            names.extend(req.initial_resource_versions.keys().map(String::as_str));
        }
        (names, self.wants_wildcard(req))
    }

    /// Whether a request only answers a response (ACK or NACK) and changes nothing.
    fn is_reply(&self, req: &DeltaDiscoveryRequest) -> bool {
        self.started
            && !req.response_nonce.is_empty()
            && req.resource_names_subscribe.is_empty()
            && req.resource_names_unsubscribe.is_empty()
    }

    /// The versions a first request says the client already holds
    /// (`initial_resource_versions`): held without a response to answer.
    fn claimed(&self, req: &DeltaDiscoveryRequest) -> Answered {
        req.initial_resource_versions
            .iter()
            .map(|(n, v)| (Arc::from(n.as_str()), Arc::from(v.as_str())))
            .collect()
    }

    fn node(req: &DeltaDiscoveryRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn name_count(req: &DeltaDiscoveryRequest) -> usize {
        req.resource_names_subscribe.len() + req.initial_resource_versions.len()
    }

    fn subscription_seq(&self) -> u64 {
        self.subscription_seq
    }

    fn subscription(&self) -> (Vec<String>, bool) {
        (
            self.names().map(str::to_owned).collect(),
            self.is_wildcard(),
        )
    }

    fn resource_count(resp: &DeltaResponse) -> usize {
        resp.resources.len() + resp.head.removed_resources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: SECRET_TYPE_URL.into(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(response: &DeltaResponse) -> Vec<String> {
        let mut v: Vec<String> = response
            .resources
            .iter()
            .map(|r| r.name.to_string())
            .collect();
        v.sort();
        v
    }

    /// The xDS legacy wildcard in Delta: a first request that subscribes to nothing is a
    /// wildcard, and (unlike SotW) a later subscription to "a/1" means "the wildcard and
    /// a/1"; only unsubscribing `*` ends it.
    #[test]
    fn the_legacy_wildcard_lasts_until_star_is_unsubscribed() {
        let snap = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v1")]);
        let mut s = DeltaStream::new(UnknownNamePolicy::Hold, true);
        let (_, r) = s.on_request(&request(&[], &[], ""), &snap);
        assert_eq!(names(&r.unwrap()), ["a/1", "b/1"]);
        s.on_request(&request(&["a/1"], &[], "1"), &snap);
        assert!(s.is_wildcard(), "subscribing a name keeps the wildcard");
        let rotated = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v2")]);
        let pushed = s.on_snapshot(&rotated).expect("b/1 still pushed");
        assert_eq!(names(&pushed), ["b/1"]);
        s.on_request(&request(&[], &["*"], "2"), &rotated);
        assert!(!s.is_wildcard());
        let again = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v3")]);
        assert!(
            s.on_snapshot(&again).is_none(),
            "b/1 is no longer subscribed"
        );
    }

    /// A first request that names resources is no wildcard; nor is a later empty one.
    #[test]
    fn a_stream_that_named_resources_is_not_a_wildcard() {
        let snap = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v1")]);
        let mut s = DeltaStream::new(UnknownNamePolicy::Hold, true);
        s.on_request(&request(&["a/1"], &[], ""), &snap);
        s.on_request(&request(&[], &[], "1"), &snap);
        assert!(!s.is_wildcard());
        assert!(s.is_reply(&request(&[], &[], "1")));
        assert!(!s.is_reply(&request(&["b/1"], &[], "1")));
        assert!(!s.is_reply(&request(&[], &["a/1"], "1")));
    }

    /// Under `hold` an unknown name gets no answer; under `not-found`, one removal.
    #[test]
    fn unknown_names_are_held_or_answered_once() {
        let snap = SdsSnapshot::of(&[("a/1", "v1")]);
        let mut held = DeltaStream::new(UnknownNamePolicy::Hold, true);
        assert!(
            held.on_request(&request(&["x/1"], &[], ""), &snap)
                .1
                .is_none()
        );
        let mut not_found = DeltaStream::new(UnknownNamePolicy::NotFound, true);
        let (_, r) = not_found.on_request(&request(&["x/1"], &[], ""), &snap);
        assert_eq!(r.unwrap().head.removed_resources, ["x/1"]);
        assert!(
            not_found
                .on_snapshot(&SdsSnapshot::of(&[("a/1", "v2")]))
                .is_none()
        );
    }

    /// A reply to the newest response answers everything sent since the last such reply;
    /// a reply to an older one answers nothing (the newer reply will).
    #[test]
    fn a_reply_to_the_newest_response_answers_what_was_sent() {
        let mut s = DeltaStream::new(UnknownNamePolicy::Hold, true);
        s.on_request(
            &request(&["a/1", "b/1"], &[], ""),
            &SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v1")]),
        );
        let now = SdsSnapshot::of(&[("a/1", "v2"), ("b/1", "v1")]);
        s.on_snapshot(&now).expect("a/1 pushed");
        let (ack, _) = s.on_request(&request(&[], &[], "1"), &now);
        assert!(
            matches!(ack, Ack::Ack { ref answers, .. } if answers.is_empty()),
            "{ack:?}"
        );
        let (ack, _) = s.on_request(&request(&[], &[], "2"), &now);
        let Ack::Ack { answers, .. } = ack else {
            panic!("{ack:?}")
        };
        let mut answers = answers.to_vec();
        answers.sort();
        let want = vec![("a/1".into(), "v2".into()), ("b/1".into(), "v1".into())];
        assert_eq!(answers, want, "the newest version of each name sent");
    }

    /// A step of a protocol case: a request (subscribe, unsubscribe, nonce, a NACK's
    /// message, initial versions) or a new snapshot.
    enum Step {
        Req {
            sub: &'static [&'static str],
            unsub: &'static [&'static str],
            nonce: &'static str,
            nack: Option<&'static str>,
            initial: &'static [(&'static str, &'static str)],
        },
        Snap(&'static [(&'static str, &'static str)]),
    }

    const fn req(sub: &'static [&'static str], nonce: &'static str) -> Step {
        Step::Req {
            sub,
            unsub: &[],
            nonce,
            nack: None,
            initial: &[],
        }
    }

    /// The protocol cases of DESIGN.md, Delta: each step, what the request meant (`ack`,
    /// `nack`, `none`; `-` for a snapshot), the resources of the response and its removed
    /// names (`None`: nothing sent).
    #[test]
    fn protocol_cases() {
        use Step::*;
        type Sent = (&'static [&'static str], &'static [&'static str]);
        type Want = (&'static str, Option<Sent>);
        let cases: &[(&str, &[(Step, Want)])] = &[
            (
                "ACK: no reply",
                &[
                    (req(&["a/1"], ""), ("none", Some((&["a/1"], &[])))),
                    (req(&[], "1"), ("ack", None)),
                ],
            ),
            (
                "NACK: the version is not resent, the next one is",
                &[
                    (req(&["a/1"], ""), ("none", Some((&["a/1"], &[])))),
                    (
                        Req {
                            sub: &[],
                            unsub: &[],
                            nonce: "1",
                            nack: Some("bad"),
                            initial: &[],
                        },
                        ("nack", None),
                    ),
                    (Snap(&[("a/1", "v1"), ("b/1", "v2")]), ("-", None)),
                    (
                        Snap(&[("a/1", "v2"), ("b/1", "v2")]),
                        ("-", Some((&["a/1"], &[]))),
                    ),
                ],
            ),
            (
                "an older nonce: an ACK that answers nothing, nothing resent",
                &[
                    (req(&["a/1"], ""), ("none", Some((&["a/1"], &[])))),
                    (
                        Snap(&[("a/1", "v2"), ("b/1", "v1")]),
                        ("-", Some((&["a/1"], &[]))),
                    ),
                    (req(&[], "1"), ("ack", None)),
                ],
            ),
            (
                "growth: only the added name",
                &[
                    (req(&["a/1"], ""), ("none", Some((&["a/1"], &[])))),
                    (req(&["b/1"], "1"), ("ack", Some((&["b/1"], &[])))),
                ],
            ),
            (
                "shrink: nothing sent, the dropped name no longer pushed",
                &[
                    (
                        req(&["a/1", "b/1"], ""),
                        ("none", Some((&["a/1", "b/1"], &[]))),
                    ),
                    (
                        Req {
                            sub: &[],
                            unsub: &["b/1"],
                            nonce: "1",
                            nack: None,
                            initial: &[],
                        },
                        ("ack", None),
                    ),
                    (Snap(&[("a/1", "v1"), ("b/1", "v2")]), ("-", None)),
                ],
            ),
            (
                "wildcard: everything, then only what changes, and withdrawals",
                &[
                    (req(&[], ""), ("none", Some((&["a/1", "b/1"], &[])))),
                    (
                        Snap(&[("a/1", "v1"), ("c/1", "v1")]),
                        ("-", Some((&["c/1"], &["b/1"]))),
                    ),
                ],
            ),
            (
                "unknown name (hold): nothing until it appears",
                &[
                    (req(&["x/1"], ""), ("none", None)),
                    (
                        Snap(&[("a/1", "v1"), ("x/1", "v1")]),
                        ("-", Some((&["x/1"], &[]))),
                    ),
                ],
            ),
            (
                "initial versions: what the client holds is not resent",
                &[
                    (
                        Req {
                            sub: &["a/1", "b/1"],
                            unsub: &[],
                            nonce: "",
                            nack: None,
                            initial: &[("a/1", "v1"), ("b/1", "old")],
                        },
                        ("none", Some((&["b/1"], &[]))),
                    ),
                    (
                        Snap(&[("a/1", "v2"), ("b/1", "v1")]),
                        ("-", Some((&["a/1"], &[]))),
                    ),
                ],
            ),
            (
                "withdrawal of a held name",
                &[
                    (req(&["a/1"], ""), ("none", Some((&["a/1"], &[])))),
                    (Snap(&[("b/1", "v1")]), ("-", Some((&[], &["a/1"])))),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut s = DeltaStream::new(UnknownNamePolicy::Hold, true);
            let mut snap = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v1")]);
            for (i, (step, (want_ack, want_sent))) in steps.iter().enumerate() {
                let (ack, response) = match step {
                    Req {
                        sub,
                        unsub,
                        nonce,
                        nack,
                        initial,
                    } => {
                        let mut r = request(sub, unsub, nonce);
                        r.error_detail = nack.map(crate::sds::nack_detail);
                        r.initial_resource_versions = initial
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_string()))
                            .collect();
                        let (ack, resp) = s.on_request(&r, &snap);
                        (ack.kind(), resp)
                    }
                    Snap(resources) => {
                        snap = SdsSnapshot::of(resources);
                        ("-", s.on_snapshot(&snap))
                    }
                };
                assert_eq!(ack, *want_ack, "{name}, step {i}");
                let have = response
                    .as_ref()
                    .map(|r| (names(r), r.head.removed_resources.clone()));
                let want = want_sent.map(|(n, rm)| {
                    (
                        n.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                        rm.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    )
                });
                assert_eq!(have, want, "{name}, step {i}");
            }
        }
    }
}
