//! State-of-the-World stream state (StreamSecrets and SotW ADS).
//!
//! Each response carries every subscribed resource that exists (the state of the world of
//! the subscription), and is sent only when that set's content differs from the last
//! response: ACKs get no reply, byte-identical content is never pushed, a NACKed version is
//! never resent. Requests with a stale nonce are ignored, as the xDS protocol prescribes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::encode::{EncodedResource, SdsSnapshot, WireResponse};
use super::{SECRET_TYPE_URL, accepts_type};
use crate::bundle::content_version;

/// A SotW response: this stream's fields and the shared resources.
pub type SotwResponse = WireResponse<DiscoveryResponse>;

/// What a request meant, for logs, metrics and the client registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    None,
    Ack {
        version: String,
    },
    /// `code`: the gRPC status code in the client's `error_detail`.
    Nack {
        version: String,
        message: String,
        code: i32,
    },
    Stale,
    UnsupportedType(String),
}

#[derive(Debug, Default)]
pub struct SotwStream {
    names: BTreeSet<String>,
    wildcard: bool,
    /// name -> version in the last response.
    sent: BTreeMap<Arc<str>, Arc<str>>,
    /// The nonce of the last response (`0`: none sent yet).
    nonce: u64,
    started: bool,
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

    /// Applies a request: ACK/NACK bookkeeping and subscription changes. Returns what the
    /// request meant and, when the subscription grew onto existing content, a response.
    pub fn on_request(
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
                },
                None => Ack::Ack {
                    version: req.version_info.clone(),
                },
            },
            _ => return (Ack::Stale, None),
        };
        let first = !self.started;
        self.started = true;
        // The common request is an ACK on a one-name stream (Envoy opens a stream per secret)
        // repeating its subscription: nothing to rebuild.
        let unchanged = !first
            && !self.wildcard
            && self.names.len() == 1
            && matches!(req.resource_names.as_slice(), [n] if self.names.contains(n));
        if unchanged {
            return (ack, self.respond(snap));
        }
        let requested: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        self.wildcard = requested.contains("*")
            || (first && requested.is_empty())
            || (self.wildcard && requested.is_empty());
        self.names = requested.into_iter().filter(|n| n != "*").collect();
        // Names no longer subscribed are forgotten, so a later re-subscription is answered.
        let (names, wildcard) = (&self.names, self.wildcard);
        self.sent.retain(|n, _| wildcard || names.contains(&**n));
        (ack, self.respond(snap))
    }

    /// Whether `nonce` is the one of the last response, compared without allocating.
    fn is_last_nonce(&self, nonce: &str) -> bool {
        self.nonce > 0 && !nonce.starts_with('0') && nonce.parse::<u64>() == Ok(self.nonce)
    }

    /// A new snapshot: a response if the subscribed content changed.
    pub fn on_snapshot(&mut self, snap: &SdsSnapshot) -> Option<SotwResponse> {
        if !self.started {
            return None;
        }
        self.respond(snap)
    }

    fn respond(&mut self, snap: &SdsSnapshot) -> Option<SotwResponse> {
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
                .all(|(n, r)| self.sent.get(*n).is_some_and(|v| *v == r.version));
        if unchanged {
            return None;
        }
        let changed = view
            .iter()
            .any(|(n, r)| self.sent.get(*n).is_none_or(|v| *v != r.version));
        // Withdrawn names cannot be expressed in SotW for Secrets; forget them (so their
        // return is pushed) without a response of their own.
        self.sent.retain(|n, _| {
            view.binary_search_by(|(v, _)| v.as_ref().cmp(n.as_ref()))
                .is_ok()
        });
        if !changed {
            return None;
        }
        for (n, r) in &view {
            match self.sent.get_mut(*n) {
                Some(v) => v.clone_from(&r.version),
                None => {
                    self.sent.insert((*n).clone(), r.version.clone());
                }
            }
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
        if self.sent.len() == 1 {
            return self
                .sent
                .values()
                .next()
                .map(|v| v.to_string())
                .unwrap_or_default();
        }
        let mut joined = String::new();
        for (n, v) in &self.sent {
            joined.push_str(n);
            joined.push('=');
            joined.push_str(v);
            joined.push('\n');
        }
        content_version(joined.as_bytes())
    }
}
