//! Pure translation: index -> served bundles and `Ready` conditions.
//!
//! Holds the little state translation needs beyond the index: the last valid bundle per
//! reference (fail static) and a cache of parsed Secret data keyed by content hash, so a
//! Secret event re-validates only what changed. Time is an argument, never read here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::bundle::TrustBundle;
use crate::index::{Dirty, Index};
use crate::model::{GatewayExtension, ObjectKey, Registration, ResourceName, SecretKeyRef};
use crate::snapshot::{Resources, StatusMap};
use crate::status::{Condition, StatusTarget};
use crate::validation::{self, Check, Failure, Subject};

/// Tunables of translation.
#[derive(Clone, Debug)]
pub struct TranslateConfig {
    /// Certificates expiring within this many seconds are reported.
    pub expiry_warning_secs: i64,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            expiry_warning_secs: 30 * 24 * 3600,
        }
    }
}

/// The result of translating one registration or extension, before it is committed.
#[derive(Clone, Debug, Default)]
struct Outcome {
    served: Option<TrustBundle>,
    condition: Option<Condition>,
    last_valid: LastValid,
}

/// The last bundle that passed validation, with the reference it came from (fail static).
type LastValid = Option<(SecretKeyRef, TrustBundle)>;

/// What is served and reported for one registration or extension.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Registration(&'a ObjectKey),
    Extension(&'a ObjectKey),
}

impl Owner<'_> {
    fn resource(self) -> Arc<str> {
        let name = match self {
            Owner::Registration(k) => ResourceName::Registration(k.clone()),
            Owner::Extension(k) => ResourceName::Gateway(k.clone()),
        };
        Arc::from(name.to_string())
    }

    fn target(self) -> StatusTarget {
        match self {
            Owner::Registration(k) => StatusTarget::Registration(k.clone()),
            Owner::Extension(k) => StatusTarget::Extension(k.clone()),
        }
    }
}

/// What one update changed: the resource names served differently (or no longer), and
/// the status targets whose condition changed (or went away).
#[derive(Debug, Default)]
pub struct Diff {
    pub resources: Vec<Arc<str>>,
    pub statuses: Vec<StatusTarget>,
}

/// What a validation result is judged against.
struct Judged<'a> {
    reference: &'a SecretKeyRef,
    previous: LastValid,
    generation: Option<i64>,
    now: i64,
}

/// The single owner of what is served and reported: every update changes the persistent
/// maps in place and says what it changed, so publishing costs what changed, not what is
/// loaded.
#[derive(Debug, Default)]
pub struct Translator {
    config: TranslateConfig,
    /// Every translated registration and extension, with its last valid bundle.
    registrations: BTreeMap<ObjectKey, LastValid>,
    extensions: BTreeMap<ObjectKey, LastValid>,
    resources: Resources,
    conditions: StatusMap,
    parsed: HashMap<(Subject, [u8; 32]), Result<TrustBundle, Check>>,
    /// Merged bases by the versions they merge (a registration under several gateways).
    merged_bases: HashMap<String, TrustBundle>,
}

/// Merged bases kept at most; beyond it the cache starts again (it only saves memory).
const MERGED_BASES_LIMIT: usize = 64;

/// Entries beyond which the parse cache is dropped and rebuilt (it only saves work).
const PARSE_CACHE_LIMIT: usize = 16_384;

impl Translator {
    pub fn new(config: TranslateConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Translates what `dirty` names again (extensions first: they are every bundle's
    /// base) and returns what changed.
    pub fn update(&mut self, index: &Index, dirty: &Dirty, now: i64) -> Diff {
        if self.parsed.len() > PARSE_CACHE_LIMIT {
            self.parsed.clear();
        }
        let mut diff = Diff::default();
        if dirty.all {
            let mut extensions = BTreeMap::new();
            for ext in index.extensions() {
                let previous = self.extensions.remove(&ext.key).flatten();
                let outcome = self.translate_extension(index, ext, previous, now);
                let kept = self.commit(Owner::Extension(&ext.key), outcome, &mut diff);
                extensions.insert(ext.key.clone(), kept);
            }
            for gone in std::mem::replace(&mut self.extensions, extensions).into_keys() {
                self.commit(Owner::Extension(&gone), Outcome::default(), &mut diff);
            }
            let mut registrations = BTreeMap::new();
            for reg in index.registrations() {
                let previous = self.registrations.remove(&reg.key).flatten();
                let outcome = self.translate_registration(index, reg, previous, now);
                let kept = self.commit(Owner::Registration(&reg.key), outcome, &mut diff);
                registrations.insert(reg.key.clone(), kept);
            }
            for gone in std::mem::replace(&mut self.registrations, registrations).into_keys() {
                self.commit(Owner::Registration(&gone), Outcome::default(), &mut diff);
            }
            return diff;
        }
        for key in &dirty.registrations {
            let previous = self.registrations.remove(key).flatten();
            let outcome = match index.registration(key) {
                Some(reg) => self.translate_registration(index, reg, previous, now),
                None => Outcome::default(),
            };
            let kept = self.commit(Owner::Registration(key), outcome, &mut diff);
            if index.registration(key).is_some() {
                self.registrations.insert(key.clone(), kept);
            }
        }
        diff
    }

    /// Makes `outcome` what is served and reported for `owner`, noting what changed, and
    /// returns the last valid bundle to keep.
    fn commit(&mut self, owner: Owner<'_>, outcome: Outcome, diff: &mut Diff) -> LastValid {
        let name = owner.resource();
        match outcome.served {
            Some(bundle) => {
                let same = self
                    .resources
                    .get(&name)
                    .is_some_and(|b| b.version() == bundle.version());
                if !same {
                    self.resources.insert(name.clone(), bundle);
                    diff.resources.push(name);
                }
            }
            None => {
                if self.resources.remove(&name).is_some() {
                    diff.resources.push(name);
                }
            }
        }
        let target = owner.target();
        match outcome.condition {
            Some(condition) => {
                if self.conditions.get(&target).map(|c| &**c) != Some(&condition) {
                    self.conditions.insert(target.clone(), Arc::new(condition));
                    diff.statuses.push(target);
                }
            }
            None => {
                if self.conditions.remove(&target).is_some() {
                    diff.statuses.push(target);
                }
            }
        }
        outcome.last_valid
    }

    /// Every served bundle by resource name.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Every condition trust-sds is responsible for.
    pub fn statuses(&self) -> &StatusMap {
        &self.conditions
    }

    /// The one base of several gateway bundles, held once for every registration that
    /// takes the same ones (a single base is shared as it is).
    fn shared_base(&mut self, bases: &[TrustBundle]) -> Option<TrustBundle> {
        match bases {
            [] => None,
            [one] => Some(one.clone()),
            many => {
                let key: Vec<&str> = many.iter().map(TrustBundle::version).collect();
                let key = key.join("+");
                if let Some(merged) = self.merged_bases.get(&key) {
                    return Some(merged.clone());
                }
                if self.merged_bases.len() >= MERGED_BASES_LIMIT {
                    self.merged_bases.clear();
                }
                let merged = TrustBundle::merge(many);
                self.merged_bases.insert(key, merged.clone());
                Some(merged)
            }
        }
    }

    /// The bundle served for a gateway's extension, if any.
    fn gateway_bundle(&self, key: &ObjectKey) -> Option<TrustBundle> {
        let name = ResourceName::Gateway(key.clone()).to_string();
        self.resources.get(name.as_str()).cloned()
    }

    fn translate_extension(
        &mut self,
        index: &Index,
        ext: &GatewayExtension,
        previous: LastValid,
        now: i64,
    ) -> Outcome {
        let Some(reference) = &ext.ca_cert_bundle_ref else {
            return Outcome::default();
        };
        let result = self.validate(index, Subject::GatewayBundle, &ext.key.namespace, reference);
        let ctx = Judged {
            reference,
            previous,
            generation: ext.generation,
            now,
        };
        self.judge(result, ctx, Clone::clone, |own, _| {
            format!(
                "CA bundle secret {} is valid: {} certificate(s) served as {} and added to every bundle of this gateway (version {})",
                reference.name,
                own.certificate_count(),
                ResourceName::Gateway(ext.key.clone()),
                own.version()
            )
        })
    }

    fn translate_registration(
        &mut self,
        index: &Index,
        reg: &Registration,
        previous: LastValid,
        now: i64,
    ) -> Outcome {
        if reg.disabled {
            return Outcome {
                condition: Some(Condition::not_ready(
                    "Disabled",
                    "registration is disabled (spec.state: Disabled): no CA bundle is served"
                        .to_owned(),
                    reg.generation,
                )),
                ..Outcome::default()
            };
        }
        let bases: Vec<TrustBundle> = self
            .extensions_for(index, reg)
            .filter_map(|k| self.gateway_bundle(k))
            .collect();
        let base = self.shared_base(&bases);
        let Some(reference) = &reg.ca_cert_secret_ref else {
            // Nothing of the registration's own to report; the gateway base alone is served.
            return Outcome {
                served: base,
                ..Outcome::default()
            };
        };
        let result = self.validate(index, Subject::ServerCa, &reg.key.namespace, reference);
        // Trust is additive: the gateway base, then the registration's own CA.
        let compose = |own: &TrustBundle| match &base {
            Some(base) => TrustBundle::layered(base, own),
            None => own.clone(),
        };
        let ctx = Judged {
            reference,
            previous,
            generation: reg.generation,
            now,
        };
        self.judge(result, ctx, compose, |own, served| {
            let from_gateway = served
                .certificate_count()
                .saturating_sub(own.certificate_count());
            let base_note = if from_gateway > 0 {
                format!(" with {from_gateway} from the gateway bundle")
            } else {
                String::new()
            };
            format!(
                "CA certificate secret {} is valid: {} certificate(s){base_note} served as {} (version {})",
                reference.name,
                own.certificate_count(),
                reg.key,
                served.version()
            )
        })
    }

    /// Applies the failure semantics to a validation result.
    fn judge(
        &self,
        result: Result<TrustBundle, Failure>,
        Judged {
            reference,
            previous,
            generation,
            now,
        }: Judged<'_>,
        compose: impl Fn(&TrustBundle) -> TrustBundle,
        ready_message: impl FnOnce(&TrustBundle, &TrustBundle) -> String,
    ) -> Outcome {
        match result {
            Ok(bundle) => {
                let served = compose(&bundle);
                let mut message = ready_message(&bundle, &served);
                if let Some(note) = expiry_note(&bundle, now, self.config.expiry_warning_secs) {
                    message.push_str("; ");
                    message.push_str(&note);
                }
                Outcome {
                    served: Some(served),
                    condition: Some(Condition::ready("Valid", message, generation)),
                    last_valid: Some((reference.clone(), bundle)),
                }
            }
            Err(failure) => {
                let mut message = failure.to_string();
                let retained = previous.filter(|(r, _)| !failure.withdraws() && r == reference);
                let served = retained.as_ref().map(|(_, own)| compose(own));
                if let Some(served) = &served {
                    message.push_str(&format!(
                        "; the last valid bundle (version {}) is still served",
                        served.version()
                    ));
                }
                Outcome {
                    served,
                    condition: Some(Condition::not_ready(failure.reason(), message, generation)),
                    last_valid: retained,
                }
            }
        }
    }

    fn validate(
        &mut self,
        index: &Index,
        subject: Subject,
        namespace: &str,
        reference: &SecretKeyRef,
    ) -> Result<TrustBundle, Failure> {
        let secret = index.secret(&ObjectKey::new(namespace, &reference.name));
        let data = match secret.and_then(|s| s.data.as_ref()?.get(&reference.key)) {
            Some(data) => data,
            // Existence, label and key checks are cheap: run them directly.
            None => return validation::validate_reference(subject, reference, secret),
        };
        let digest: [u8; 32] = Sha256::digest(data).into();
        let result = self
            .parsed
            .entry((subject, digest))
            .or_insert_with(|| validation::validate_data(subject, data))
            .clone();
        result.map_err(|check| Failure {
            subject,
            secret: reference.name.clone(),
            key: reference.key.clone(),
            check,
        })
    }

    /// The extensions whose base bundle applies to `reg`: through its HTTPRoute's parent
    /// Gateways when the route is known, else those in the registration's namespace.
    fn extensions_for<'a>(
        &self,
        index: &'a Index,
        reg: &'a Registration,
    ) -> impl Iterator<Item = &'a ObjectKey> + 'a {
        let route = reg.target_route.as_ref().and_then(|k| index.route(k));
        index
            .extensions()
            .filter(move |ext| match route {
                Some(route) => ext
                    .target_gateway
                    .as_ref()
                    .is_some_and(|gw| route.parent_gateways.contains(gw)),
                None => ext.key.namespace == reg.key.namespace,
            })
            .map(|ext| &ext.key)
    }
}

/// A warning for the certificate that expires first, if it is expired or close to it.
pub fn expiry_note(bundle: &TrustBundle, now: i64, window_secs: i64) -> Option<String> {
    let cert = bundle.earliest_expiry()?;
    let when = format_unix(cert.not_after);
    if cert.not_after <= now {
        Some(format!(
            "warning: certificate \"{}\" expired at {when}",
            cert.display_name
        ))
    } else if cert.not_after - now <= window_secs {
        let days = (cert.not_after - now) / 86_400;
        Some(format!(
            "warning: certificate \"{}\" expires at {when} (in {days} days)",
            cert.display_name
        ))
    } else {
        None
    }
}

/// RFC 3339 UTC time of a Unix timestamp.
pub fn format_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}
