//! State-of-the-World stream state (StreamSecrets and SotW ADS).
//!
//! Each response carries every subscribed resource that exists (the state of the world of
//! the subscription), and is sent only when that set's content differs from the last
//! response: ACKs get no reply, byte-identical content is never pushed, a NACKed version is
//! never resent. Requests with a stale nonce are ignored, as the xDS protocol prescribes.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::encode::{EncodedResource, SdsSnapshot, WireResponse};
use super::{Ack, Answered, SECRET_TYPE_URL, Subscription, accepts_type};
use crate::bundle::content_version;

/// A SotW response: this stream's fields and the shared resources.
pub type SotwResponse = WireResponse<DiscoveryResponse>;

/// Sorted vectors rather than B-trees: most streams hold one name (Envoy opens a stream per
/// secret), and a B-tree's first node costs a few hundred bytes for it, on every idle stream.
#[derive(Debug, Default)]
pub struct SotwStream {
    /// Sorted, each once.
    names: Vec<String>,
    wildcard: bool,
    /// (name, version) in the last response, sorted by name; shared with the reply that
    /// answers it.
    sent: Answered,
    /// The generation of the newest snapshot `sent` was found current against (`0`: none
    /// since the subscription last changed): an ACK then needs no lookup at all.
    current_at: u64,
    /// Moves when the subscription is set ([`Subscription::subscription_seq`]).
    subscription_seq: u64,
    /// The nonce of the last response (`0`: none sent yet).
    nonce: u64,
    started: bool,
    /// Some request named a resource (or `*`): from then on an empty list means "no
    /// resources", no longer the legacy wildcard.
    named: bool,
    allow_empty_type: bool,
}

impl SotwStream {
    /// `allow_empty_type`: the SDS endpoint accepts requests without a type URL; ADS does not.
    pub fn new(allow_empty_type: bool) -> Self {
        Self {
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

    /// The subscription a request asks for (names without `*`, and whether it is a
    /// wildcard), by the xDS rules: `*` is the wildcard; a stream whose requests have all
    /// named nothing is a legacy wildcard; once a request named something, the wildcard
    /// holds only while `*` is listed, and an empty list means no resources.
    pub fn wanted(&self, req: &DiscoveryRequest) -> (Vec<String>, bool) {
        let mut names: Vec<String> = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        names.sort_unstable();
        names.dedup();
        (names, self.wants_wildcard(req))
    }

    fn subscribes(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// The version of `name` in the last response.
    fn sent_version(&self, name: &str) -> Option<&Arc<str>> {
        let i = self
            .sent
            .binary_search_by(|(n, _)| n.as_ref().cmp(name))
            .ok()?;
        Some(&self.sent[i].1)
    }

    /// The wildcard half of [`Self::wanted`], without building the name set (what
    /// authorization asks on every request).
    pub fn wants_wildcard(&self, req: &DiscoveryRequest) -> bool {
        req.resource_names.iter().any(|n| n == "*")
            || (req.resource_names.is_empty() && !self.named)
    }

    /// Whether a request leaves the subscription as it is (an ACK or NACK, not a change).
    pub fn is_same_subscription(&self, req: &DiscoveryRequest) -> bool {
        if !self.started {
            return false;
        }
        // The common request is an ACK on a one-name stream (Envoy opens a stream per
        // secret) repeating its subscription: decided without building a set.
        if !self.wildcard
            && self.names.len() == 1
            && matches!(req.resource_names.as_slice(), [n] if self.subscribes(n))
        {
            return true;
        }
        let (names, wildcard) = self.wanted(req);
        wildcard == self.wildcard && names == self.names
    }

    /// What a reply to the last response answers: every resource it carried.
    fn answered(&self) -> Answered {
        self.sent.clone()
    }

    /// Whether `nonce` is the one of the last response, compared without allocating.
    fn is_last_nonce(&self, nonce: &str) -> bool {
        self.nonce > 0 && !nonce.starts_with('0') && nonce.parse::<u64>() == Ok(self.nonce)
    }

    /// Whether the subscribed names that exist are exactly those last sent, at the versions
    /// sent: the answer to most ACKs and to publications of other names, found without
    /// building the view (the versions are shared, so equal ones are the same pointer).
    fn sent_is_current(&self, snap: &SdsSnapshot) -> bool {
        let mut sent = self.sent.iter();
        for name in &self.names {
            if let Some((name, resource)) = snap.resources.get_key_value(name.as_str()) {
                let same = |(m, v): &(Arc<str>, Arc<str>)| {
                    (Arc::ptr_eq(m, name) || m == name)
                        && (Arc::ptr_eq(v, &resource.version) || *v == resource.version)
                };
                if !sent.next().is_some_and(same) {
                    return false;
                }
            }
        }
        sent.next().is_none()
    }

    fn respond(&mut self, snap: &SdsSnapshot) -> Option<SotwResponse> {
        if !self.wildcard && (self.current_at == snap.generation || self.sent_is_current(snap)) {
            self.current_at = snap.generation;
            return None;
        }
        // The subscribed resources that exist, in name order. `names` is sorted already; the
        // wildcard view comes from a hash map and is sorted here.
        let view: Vec<(&Arc<str>, &Arc<EncodedResource>)> = if self.wildcard {
            let mut all: Vec<_> = snap.resources.iter().collect();
            all.sort_unstable_by(|a, b| a.0.cmp(b.0));
            all
        } else {
            self.names
                .iter()
                .filter_map(|n| snap.resources.get_key_value(n.as_str()))
                .collect()
        };
        let unchanged = view.len() == self.sent.len()
            && view
                .iter()
                .zip(self.sent.iter())
                .all(|((n, r), (m, v))| n == &m && r.version == *v);
        if unchanged {
            return None;
        }
        let changed = view
            .iter()
            .any(|(n, r)| self.sent_version(n).is_none_or(|v| *v != r.version));
        // What is sent (or, for names withdrawn, forgotten so that their return is pushed:
        // SotW cannot express a withdrawn Secret, so that alone gets no response).
        self.sent = view
            .iter()
            .map(|(n, r)| ((*n).clone(), r.version.clone()))
            .collect();
        self.current_at = snap.generation;
        if !changed {
            return None;
        }
        self.nonce += 1;
        Some(WireResponse {
            head: DiscoveryResponse {
                version_info: self.version_info(),
                type_url: SECRET_TYPE_URL.to_owned(),
                nonce: self.nonce.to_string(),
                ..Default::default()
            },
            resources: view.into_iter().map(|(_, r)| r.clone()).collect(),
        })
    }

    /// The response version: the resource's own content hash for a single resource, else a
    /// hash of every (name, version) pair. Content-derived, so stable across restarts.
    fn version_info(&self) -> String {
        if let [(_, version)] = &*self.sent {
            return version.to_string();
        }
        let mut joined = String::new();
        for (n, v) in self.sent.iter() {
            joined.push_str(n);
            joined.push('=');
            joined.push_str(v);
            joined.push('\n');
        }
        content_version(joined.as_bytes())
    }
}

impl Subscription for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = SotwResponse;

    /// Applies a request: ACK/NACK bookkeeping and subscription changes. Returns what the
    /// request meant and, when the subscription grew onto existing content, a response.
    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snap: &SdsSnapshot,
    ) -> (Ack, Option<SotwResponse>) {
        if !accepts_type(&req.type_url, self.allow_empty_type) {
            return (Ack::UnsupportedType(req.type_url.clone()), None);
        }
        let ack = match req.response_nonce.as_str() {
            "" => Ack::None,
            nonce if self.is_last_nonce(nonce) => match &req.error_detail {
                Some(status) => Ack::Nack {
                    version: req.version_info.clone(),
                    message: status.message.clone(),
                    code: status.code,
                    answers: self.answered(),
                },
                None => Ack::Ack {
                    version: req.version_info.clone(),
                    answers: self.answered(),
                },
            },
            _ => return (Ack::Stale, None),
        };
        let first = !self.started;
        self.started = true;
        if !first && self.is_same_subscription(req) {
            return (ack, self.respond(snap));
        }
        let (names, wildcard) = self.wanted(req);
        self.named |= !req.resource_names.is_empty();
        self.wildcard = wildcard;
        self.names = names;
        self.subscription_seq += 1;
        self.current_at = 0;
        // Names no longer subscribed are forgotten, so a later re-subscription is answered.
        if !self.wildcard {
            let names = &self.names;
            self.sent = self
                .sent
                .iter()
                .filter(|(n, _)| names.binary_search_by(|m| m.as_str().cmp(n)).is_ok())
                .cloned()
                .collect();
        }
        (ack, self.respond(snap))
    }

    /// A new snapshot: a response if the subscribed content changed.
    fn on_snapshot(&mut self, snap: &SdsSnapshot) -> Option<SotwResponse> {
        if !self.started {
            return None;
        }
        self.respond(snap)
    }

    fn node(req: &DiscoveryRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn name_count(req: &DiscoveryRequest) -> usize {
        req.resource_names.len()
    }

    fn requested<'a>(&self, req: &'a DiscoveryRequest) -> (Vec<&'a str>, bool) {
        let names: Vec<&str> = req
            .resource_names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "*")
            .collect();
        (names, self.wants_wildcard(req))
    }

    fn is_reply(&self, req: &DiscoveryRequest) -> bool {
        !req.response_nonce.is_empty() && self.is_same_subscription(req)
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

    fn resource_count(resp: &SotwResponse) -> usize {
        resp.resources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: SECRET_TYPE_URL.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(response: &SotwResponse) -> Vec<String> {
        response
            .resources
            .iter()
            .map(|r| r.name.to_string())
            .collect()
    }

    /// The xDS legacy wildcard in SotW: requests that name nothing are a wildcard until a
    /// request names something; then the wildcard holds only while `*` is listed, and an
    /// empty list means no resources (not the wildcard again).
    #[test]
    fn the_legacy_wildcard_ends_once_a_request_names_resources() {
        let snap = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v1")]);
        let mut s = SotwStream::new(true);
        let (_, r) = s.on_request(&request(&[], ""), &snap);
        assert_eq!(names(&r.unwrap()), ["a/1", "b/1"], "legacy wildcard");
        // An ACK that still names nothing keeps the legacy wildcard.
        let (_, r) = s.on_request(&request(&[], "1"), &snap);
        assert!(r.is_none() && s.is_wildcard());
        // Naming a resource ends it (a/1 is unchanged: no response, the nonce stays 1).
        let (_, r) = s.on_request(&request(&["a/1"], "1"), &snap);
        assert!(r.is_none() && !s.is_wildcard());
        let rotated = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v2")]);
        assert!(
            s.on_snapshot(&rotated).is_none(),
            "b/1 is no longer subscribed"
        );
        // An explicit `*` brings everything back; then an empty list unsubscribes it all.
        let (_, r) = s.on_request(&request(&["*"], "1"), &rotated);
        assert_eq!(names(&r.unwrap()), ["a/1", "b/1"]);
        assert!(s.is_wildcard());
        s.on_request(&request(&[], "2"), &rotated);
        assert!(
            !s.is_wildcard(),
            "an empty list after naming is no wildcard"
        );
        assert_eq!(s.names().count(), 0);
    }

    #[test]
    fn a_reply_is_a_request_that_keeps_the_subscription() {
        let snap = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v1")]);
        let mut s = SotwStream::new(true);
        assert!(
            !s.is_same_subscription(&request(&["a/1"], "")),
            "not started"
        );
        s.on_request(&request(&["a/1"], ""), &snap);
        assert!(s.is_same_subscription(&request(&["a/1"], "1")));
        assert!(!s.is_same_subscription(&request(&["b/1"], "1")));
        assert!(!s.is_same_subscription(&request(&["a/1", "b/1"], "1")));
        assert!(!s.is_same_subscription(&request(&["*"], "1")));
    }

    /// What a step of a protocol case does: a client request (names, nonce, and a NACK's
    /// message) or a new snapshot (name, version pairs).
    enum Step {
        Req(&'static [&'static str], &'static str, Option<&'static str>),
        Snap(&'static [(&'static str, &'static str)]),
    }

    /// The protocol cases of DESIGN.md, State of the World: each step, what the request
    /// meant (`ack`, `nack`, `stale`, `none`; `-` for a snapshot) and the names of the
    /// response it leads to (`None`: nothing sent).
    #[test]
    fn protocol_cases() {
        use Step::*;
        type Want = (&'static str, Option<&'static [&'static str]>);
        let cases: &[(&str, &[(Step, Want)])] = &[
            (
                "ACK: no reply",
                &[
                    (Req(&["a/1"], "", None), ("none", Some(&["a/1"]))),
                    (Req(&["a/1"], "1", None), ("ack", None)),
                ],
            ),
            (
                "NACK: the version is not resent, the next one is",
                &[
                    (Req(&["a/1"], "", None), ("none", Some(&["a/1"]))),
                    (Req(&["a/1"], "1", Some("bad bundle")), ("nack", None)),
                    (Snap(&[("a/1", "v1"), ("b/1", "v1")]), ("-", None)),
                    (Snap(&[("a/1", "v2"), ("b/1", "v1")]), ("-", Some(&["a/1"]))),
                ],
            ),
            (
                "stale nonce: ignored",
                &[
                    (Req(&["a/1"], "", None), ("none", Some(&["a/1"]))),
                    (Snap(&[("a/1", "v2"), ("b/1", "v1")]), ("-", Some(&["a/1"]))),
                    (Req(&["a/1", "b/1"], "1", None), ("stale", None)),
                ],
            ),
            (
                "growth: the whole new state",
                &[
                    (Req(&["a/1"], "", None), ("none", Some(&["a/1"]))),
                    (
                        Req(&["a/1", "b/1"], "1", None),
                        ("ack", Some(&["a/1", "b/1"])),
                    ),
                ],
            ),
            (
                "shrink: nothing sent, the dropped name no longer pushed",
                &[
                    (
                        Req(&["a/1", "b/1"], "", None),
                        ("none", Some(&["a/1", "b/1"])),
                    ),
                    (Req(&["a/1"], "1", None), ("ack", None)),
                    (Snap(&[("a/1", "v1"), ("b/1", "v2")]), ("-", None)),
                ],
            ),
            (
                "wildcard: everything, and what appears later",
                &[
                    (Req(&[], "", None), ("none", Some(&["a/1", "b/1"]))),
                    (
                        Snap(&[("a/1", "v1"), ("b/1", "v1"), ("c/1", "v1")]),
                        ("-", Some(&["a/1", "b/1", "c/1"])),
                    ),
                ],
            ),
            (
                "unknown name: held until it appears",
                &[
                    (Req(&["x/1"], "", None), ("none", None)),
                    (Snap(&[("a/1", "v1"), ("x/1", "v1")]), ("-", Some(&["x/1"]))),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut s = SotwStream::new(true);
            let mut snap = SdsSnapshot::of(&[("a/1", "v1"), ("b/1", "v1")]);
            for (i, (step, (want_ack, want_names))) in steps.iter().enumerate() {
                let (ack, response) = match step {
                    Req(names, nonce, nack) => {
                        let mut req = request(names, nonce);
                        req.error_detail = nack.map(crate::sds::nack_detail);
                        let (ack, r) = s.on_request(&req, &snap);
                        (ack.kind(), r)
                    }
                    Snap(resources) => {
                        snap = SdsSnapshot::of(resources);
                        ("-", s.on_snapshot(&snap))
                    }
                };
                assert_eq!(ack, *want_ack, "{name}, step {i}");
                assert_eq!(
                    response.as_ref().map(names),
                    want_names.map(|n| n.iter().map(|s| s.to_string()).collect()),
                    "{name}, step {i}"
                );
            }
        }
    }
}
