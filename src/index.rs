//! The index: the objects a source has delivered, kept per kind, plus a reverse map from
//! Secrets to the registrations that reference them so that a Secret event only marks those
//! registrations for translation. Plain data, no I/O: testable without any API server.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{GatewayExtension, Kind, Object, ObjectKey, Registration, Route, SecretObject};

/// What needs translating again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Registrations to translate again.
    pub registrations: BTreeSet<ObjectKey>,
    /// Extensions, routes or their Secrets changed: everything is translated again.
    pub all: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        !self.all && self.registrations.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Index {
    registrations: BTreeMap<ObjectKey, Registration>,
    extensions: BTreeMap<ObjectKey, GatewayExtension>,
    routes: BTreeMap<ObjectKey, Route>,
    secrets: BTreeMap<ObjectKey, SecretObject>,
    /// Secret key -> registrations whose `caCertSecretRef` names it.
    referrers: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    dirty: Dirty,
}

impl Index {
    /// Adds or replaces an object. Returns whether anything changed (no-ops mark nothing).
    pub fn apply(&mut self, object: Object) -> bool {
        match object {
            Object::Registration(r) => {
                if self.registrations.get(&r.key) == Some(&r) {
                    return false;
                }
                self.unlink(&r.key);
                self.link(&r);
                self.dirty.registrations.insert(r.key.clone());
                self.registrations.insert(r.key.clone(), r);
            }
            Object::Extension(e) => {
                if self.extensions.get(&e.key) == Some(&e) {
                    return false;
                }
                self.dirty.all = true;
                self.extensions.insert(e.key.clone(), e);
            }
            Object::Route(r) => {
                if self.routes.get(&r.key) == Some(&r) {
                    return false;
                }
                self.dirty.all = true;
                self.routes.insert(r.key.clone(), r);
            }
            Object::Secret(s) => {
                if self.secrets.get(&s.key) == Some(&s) {
                    return false;
                }
                self.mark_secret(&s.key);
                self.secrets.insert(s.key.clone(), s);
            }
        }
        true
    }

    /// Removes an object. Returns whether it was there.
    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        let removed = match kind {
            Kind::Registration => {
                self.unlink(key);
                self.registrations.remove(key).is_some()
            }
            Kind::Extension => self.extensions.remove(key).is_some(),
            Kind::Route => self.routes.remove(key).is_some(),
            Kind::Secret => self.secrets.remove(key).is_some(),
        };
        if removed {
            match kind {
                Kind::Registration => {
                    self.dirty.registrations.insert(key.clone());
                }
                Kind::Secret => self.mark_secret(key),
                Kind::Extension | Kind::Route => self.dirty.all = true,
            }
        }
        removed
    }

    /// Replaces every object of `kind` (a re-list): only real differences mark work.
    pub fn reset(&mut self, kind: Kind, objects: Vec<Object>) -> bool {
        let incoming: BTreeSet<ObjectKey> = objects
            .iter()
            .filter(|o| o.kind() == kind)
            .map(|o| o.key().clone())
            .collect();
        let stale: Vec<ObjectKey> = self
            .keys(kind)
            .filter(|k| !incoming.contains(*k))
            .cloned()
            .collect();
        let mut changed = false;
        for key in stale {
            changed |= self.delete(kind, &key);
        }
        for object in objects.into_iter().filter(|o| o.kind() == kind) {
            changed |= self.apply(object);
        }
        changed
    }

    fn keys(&self, kind: Kind) -> Box<dyn Iterator<Item = &ObjectKey> + '_> {
        match kind {
            Kind::Registration => Box::new(self.registrations.keys()),
            Kind::Extension => Box::new(self.extensions.keys()),
            Kind::Route => Box::new(self.routes.keys()),
            Kind::Secret => Box::new(self.secrets.keys()),
        }
    }

    /// Takes the accumulated work, leaving none.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Marks everything for translation (e.g. a periodic expiry re-check).
    pub fn mark_all(&mut self) {
        self.dirty.all = true;
    }

    fn mark_secret(&mut self, secret: &ObjectKey) {
        if let Some(regs) = self.referrers.get(secret) {
            self.dirty.registrations.extend(regs.iter().cloned());
        }
        let used_by_extension = self.extensions.values().any(|e| {
            e.key.namespace == secret.namespace
                && e.ca_cert_bundle_ref
                    .as_ref()
                    .is_some_and(|r| r.name == secret.name)
        });
        if used_by_extension {
            self.dirty.all = true;
        }
    }

    fn link(&mut self, reg: &Registration) {
        if let Some(r) = &reg.ca_cert_secret_ref {
            let secret = ObjectKey::new(&reg.key.namespace, &r.name);
            self.referrers
                .entry(secret)
                .or_default()
                .insert(reg.key.clone());
        }
    }

    fn unlink(&mut self, key: &ObjectKey) {
        let Some(old) = self.registrations.get(key) else {
            return;
        };
        if let Some(r) = &old.ca_cert_secret_ref {
            let secret = ObjectKey::new(&key.namespace, &r.name);
            if let Some(set) = self.referrers.get_mut(&secret) {
                set.remove(key);
                if set.is_empty() {
                    self.referrers.remove(&secret);
                }
            }
        }
    }

    pub fn registration(&self, key: &ObjectKey) -> Option<&Registration> {
        self.registrations.get(key)
    }

    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.registrations.values()
    }

    pub fn extensions(&self) -> impl Iterator<Item = &GatewayExtension> {
        self.extensions.values()
    }

    pub fn route(&self, key: &ObjectKey) -> Option<&Route> {
        self.routes.get(key)
    }

    pub fn secret(&self, key: &ObjectKey) -> Option<&SecretObject> {
        self.secrets.get(key)
    }

    pub fn len(&self) -> usize {
        self.registrations.len() + self.extensions.len() + self.routes.len() + self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
