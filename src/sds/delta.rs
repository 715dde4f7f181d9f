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
use super::sotw::Ack;
use super::{SECRET_TYPE_URL, UnknownNamePolicy, accepts_type};

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
    started: bool,
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

    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snap: &SdsSnapshot,
    ) -> (Ack, Option<DeltaResponse>) {
        if !accepts_type(&req.type_url, self.allow_empty_type) {
            return (Ack::UnsupportedType(req.type_url.clone()), None);
        }
        let ack = match (&req.error_detail, req.response_nonce.as_str()) {
            (_, "") => Ack::None,
            (Some(status), nonce) => Ack::Nack {
                version: nonce.to_owned(),
                message: status.message.clone(),
                code: status.code,
            },
            (None, nonce) => Ack::Ack {
                version: nonce.to_owned(),
            },
        };
        if !self.started {
            self.started = true;
            for (name, version) in &req.initial_resource_versions {
                self.known.insert(name.clone(), Arc::from(version.as_str()));
            }
            // Legacy wildcard: a first request that names nothing.
            if req.resource_names_subscribe.is_empty() {
                self.wildcard = true;
            }
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
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

    pub fn on_snapshot(&mut self, snap: &SdsSnapshot) -> Option<DeltaResponse> {
        if !self.started {
            return None;
        }
        self.respond(snap)
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
}
