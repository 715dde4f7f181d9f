//! Translation and failure semantics through the pipeline (index -> translator -> snapshot).

mod support;

use std::sync::Arc;

use support::objects::{ca_secret, extension, key, registration, secret_with, unlabelled_secret};
use support::pki::Ca;
use trust_sds::model::{Kind, Object, Registration};
use trust_sds::pipeline::{Pipeline, Published, SourceEvent};
use trust_sds::snapshot::Snapshot;
use trust_sds::status::{Condition, StatusTarget};
use trust_sds::translate::TranslateConfig;

struct Harness {
    pipeline: Pipeline,
    published: Published,
}

impl Harness {
    fn new() -> Self {
        let (pipeline, published) = Pipeline::new(TranslateConfig::default());
        Self {
            pipeline,
            published,
        }
    }

    fn apply(&mut self, objects: impl IntoIterator<Item = Object>) {
        for o in objects {
            let _ = self.pipeline.handle(SourceEvent::Apply(o));
        }
        self.pipeline.flush();
    }

    fn delete(&mut self, kind: Kind, ns: &str, name: &str) {
        self.pipeline
            .handle(SourceEvent::Delete(kind, key(ns, name)));
        self.pipeline.flush();
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.published.snapshot.borrow().clone()
    }

    fn version(&self, name: &str) -> Option<String> {
        self.snapshot().get(name).map(|b| b.version().to_owned())
    }

    fn condition(&self, ns: &str, name: &str) -> Condition {
        self.published.statuses.borrow()[&StatusTarget::Registration(key(ns, name))]
            .as_ref()
            .clone()
    }
}

#[test]
fn valid_secret_is_served_and_ready() {
    let mut h = Harness::new();
    let ca = Ca::root("Upstream Root");
    h.apply([
        registration("team", "weather", "weather-ca"),
        ca_secret("team", "weather-ca", &ca.pem()),
    ]);
    let snap = h.snapshot();
    let bundle = snap.get("team/weather").expect("served");
    assert_eq!(
        bundle.certificates().next().unwrap().display_name,
        "Upstream Root"
    );
    let c = h.condition("team", "weather");
    assert!(c.ready);
    assert_eq!(c.reason, "Valid");
    assert_eq!(c.observed_generation, Some(1));
    assert!(
        c.message.starts_with(
            "CA certificate secret weather-ca is valid: 1 certificate(s) served as team/weather"
        ),
        "{}",
        c.message
    );
}

#[test]
fn secret_in_another_namespace_is_not_found() {
    let mut h = Harness::new();
    h.apply([
        registration("team", "weather", "ca"),
        ca_secret("other", "ca", &Ca::root("X").pem()),
    ]);
    assert!(h.snapshot().resources.is_empty());
    assert_eq!(
        h.condition("team", "weather").message,
        "CA certificate secret ca not found"
    );
}

#[test]
fn invalid_update_keeps_last_valid_bundle() {
    let mut h = Harness::new();
    h.apply([
        registration("team", "weather", "ca"),
        ca_secret("team", "ca", &Ca::root("A").pem()),
    ]);
    let good = h.version("team/weather").unwrap();
    let mut snapshots = h.published.snapshot.clone();
    snapshots.mark_unchanged();
    h.apply([ca_secret("team", "ca", "garbage")]);
    assert_eq!(h.version("team/weather").unwrap(), good, "fail static");
    assert!(
        !snapshots.has_changed().unwrap(),
        "no push for a rejected update"
    );
    let c = h.condition("team", "weather");
    assert!(!c.ready);
    assert_eq!(c.reason, "CACertInvalid");
    assert_eq!(
        c.message,
        format!(
            "CA certificate in secret ca is invalid: no valid PEM certificate blocks found; the last valid bundle (version {good}) is still served"
        )
    );
    // Missing key is also a bad update of a Secret that still opts in.
    h.apply([secret_with("team", "ca", "other", b"x")]);
    assert_eq!(h.version("team/weather").unwrap(), good);
    assert_eq!(
        h.condition("team", "weather").reason,
        "CACertSecretMissingKey"
    );
}

#[test]
fn deletion_unlabel_and_unreference_withdraw() {
    let pem = Ca::root("A").pem();
    let mut h = Harness::new();
    h.apply([
        registration("team", "weather", "ca"),
        ca_secret("team", "ca", &pem),
    ]);
    h.delete(Kind::Secret, "team", "ca");
    assert_eq!(h.version("team/weather"), None);
    assert_eq!(
        h.condition("team", "weather").reason,
        "CACertSecretNotFound"
    );

    h.apply([ca_secret("team", "ca", &pem)]);
    assert!(h.version("team/weather").is_some());
    h.apply([unlabelled_secret("team", "ca")]);
    assert_eq!(h.version("team/weather"), None);
    assert_eq!(
        h.condition("team", "weather").reason,
        "CACertSecretMissingLabel"
    );

    // Withdrawal forgets the last valid bundle: a later bad update serves nothing.
    h.apply([ca_secret("team", "ca", "garbage")]);
    assert_eq!(h.version("team/weather"), None);

    h.apply([ca_secret("team", "ca", &pem)]);
    assert!(h.version("team/weather").is_some());
    let mut r = match registration("team", "weather", "ca") {
        Object::Registration(r) => r,
        _ => unreachable!(),
    };
    r.ca_cert_secret_ref = None;
    h.apply([Object::Registration(r)]);
    assert_eq!(h.version("team/weather"), None);
    assert!(
        h.published.statuses.borrow().is_empty(),
        "no condition without a reference"
    );
}

#[test]
fn last_valid_bundle_is_not_kept_across_a_reference_change() {
    let mut h = Harness::new();
    h.apply([
        registration("team", "weather", "ca"),
        ca_secret("team", "ca", &Ca::root("A").pem()),
    ]);
    h.apply([
        ca_secret("team", "other", "garbage"),
        registration("team", "weather", "other"),
    ]);
    assert_eq!(h.version("team/weather"), None);
}

#[test]
fn disabled_registration_serves_nothing() {
    let mut h = Harness::new();
    h.apply([
        registration("team", "weather", "ca"),
        ca_secret("team", "ca", &Ca::root("A").pem()),
    ]);
    let Object::Registration(mut r) = registration("team", "weather", "ca") else {
        unreachable!()
    };
    r.disabled = true;
    h.apply([Object::Registration(r)]);
    assert_eq!(h.version("team/weather"), None);
    assert_eq!(h.condition("team", "weather").reason, "Disabled");
}

#[test]
fn reformatted_secret_causes_no_push() {
    let pem = Ca::root("A").pem();
    let mut h = Harness::new();
    h.apply([
        registration("team", "weather", "ca"),
        ca_secret("team", "ca", &pem),
    ]);
    let mut rx = h.published.snapshot.clone();
    rx.mark_unchanged();
    h.apply([ca_secret(
        "team",
        "ca",
        &format!("# rotated comment\n\n{pem}{pem}"),
    )]);
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn gateway_bundle_is_the_base_of_every_bundle() {
    let (base, own) = (Ca::root("Gateway Base"), Ca::root("Own"));
    let mut h = Harness::new();
    h.apply([
        extension("team", "mcp", "base-ca"),
        ca_secret("team", "base-ca", &base.pem()),
        registration("team", "weather", "own-ca"),
        ca_secret("team", "own-ca", &own.pem()),
        registration("elsewhere", "news", "own-ca"),
        ca_secret("elsewhere", "own-ca", &own.pem()),
    ]);
    let snap = h.snapshot();
    let names = |n: &str| -> Vec<String> {
        snap.get(n)
            .unwrap()
            .certificates()
            .map(|c| c.display_name.clone())
            .collect()
    };
    let mut weather = names("team/weather");
    weather.sort();
    assert_eq!(weather, ["Gateway Base", "Own"]);
    assert_eq!(names("elsewhere/news"), ["Own"], "other namespace: no base");
    assert_eq!(names("gateway/team/mcp"), ["Gateway Base"]);

    // A broken base keeps the last valid one; the registration is unaffected.
    let before = h.version("team/weather");
    h.apply([ca_secret("team", "base-ca", "garbage")]);
    assert_eq!(h.version("team/weather"), before);
    let statuses = h.published.statuses.borrow().clone();
    let ext = &statuses[&StatusTarget::Extension(key("team", "mcp"))];
    assert_eq!(ext.reason, "CABundleInvalid");
    assert!(
        ext.message
            .starts_with("CA bundle data in secret base-ca is invalid: ")
    );

    // Deleting the base withdraws it: registrations keep their own CA.
    h.delete(Kind::Secret, "team", "base-ca");
    let snap = h.snapshot();
    assert!(snap.get("gateway/team/mcp").is_none());
    assert_eq!(snap.get("team/weather").unwrap().certificate_count(), 1);
}

/// A base and a registration's own CA that share a certificate: the served bundle is the
/// base's canonical bytes, then the registration's certificates the base lacks (canonical
/// too), the shared certificate once. Deterministic: another registration with the same
/// base and the same own certificates (in another order) gets the same bytes and version.
#[test]
fn layered_bundles_are_canonical_and_deduplicated() {
    let (base, shared, own) = (Ca::root("Base"), Ca::root("Shared"), Ca::root("Own"));
    let mut h = Harness::new();
    h.apply([
        extension("team", "mcp", "base-ca"),
        ca_secret(
            "team",
            "base-ca",
            &format!("{}{}", base.pem(), shared.pem()),
        ),
        registration("team", "weather", "own-ca"),
        ca_secret("team", "own-ca", &format!("{}{}", own.pem(), shared.pem())),
        registration("team", "news", "news-ca"),
        ca_secret("team", "news-ca", &format!("{}{}", shared.pem(), own.pem())),
        // The layers alone, for comparison.
        registration("elsewhere", "base", "base-ca"),
        ca_secret(
            "elsewhere",
            "base-ca",
            &format!("{}{}", shared.pem(), base.pem()),
        ),
        registration("elsewhere", "own", "own-ca"),
        ca_secret("elsewhere", "own-ca", &own.pem()),
    ]);
    let snap = h.snapshot();
    let layered = snap.get("team/weather").unwrap();
    assert_eq!(
        layered.certificate_count(),
        3,
        "the shared certificate once"
    );
    let base_layer = snap.get("elsewhere/base").unwrap().pem().into_owned();
    let own_layer = snap.get("elsewhere/own").unwrap().pem().into_owned();
    assert_eq!(layered.pem(), format!("{base_layer}{own_layer}"));
    let news = snap.get("team/news").unwrap();
    assert_eq!(layered.pem(), news.pem());
    assert_eq!(layered.version(), news.version());
}

#[test]
fn gateway_membership_follows_http_route_parents() {
    use trust_sds::model::Route;
    let mut h = Harness::new();
    let Object::Registration(mut r) = registration("apps", "weather", "own") else {
        unreachable!()
    };
    r.target_route = Some(key("apps", "weather-route"));
    h.apply([
        Object::Registration(r),
        ca_secret("apps", "own", &Ca::root("Own").pem()),
        extension("gw-system", "mcp", "base"),
        ca_secret("gw-system", "base", &Ca::root("Base").pem()),
        Object::Route(Route {
            key: key("apps", "weather-route"),
            parent_gateways: vec![key("gw-system", "gateway")],
            first_backend: None,
        }),
    ]);
    assert_eq!(
        h.snapshot()
            .get("apps/weather")
            .unwrap()
            .certificate_count(),
        2
    );
}

#[test]
fn expiring_certificates_are_served_with_a_warning() {
    let now = trust_sds::pipeline::unix_now();
    let mut h = Harness::new();
    h.apply([
        registration("team", "soon", "soon"),
        ca_secret(
            "team",
            "soon",
            &Ca::root_expiring("Soon Root", now + 5 * 86_400).pem(),
        ),
        registration("team", "old", "old"),
        ca_secret(
            "team",
            "old",
            &Ca::root_expiring("Old Root", now - 86_400).pem(),
        ),
    ]);
    assert!(h.version("team/soon").is_some() && h.version("team/old").is_some());
    let soon = h.condition("team", "soon");
    assert!(soon.ready);
    assert!(
        soon.message
            .contains("; warning: certificate \"Soon Root\" expires at "),
        "{}",
        soon.message
    );
    assert!(
        h.condition("team", "old")
            .message
            .contains("warning: certificate \"Old Root\" expired at ")
    );
}

#[test]
fn secret_event_touches_only_its_referrers() {
    let mut h = Harness::new();
    let (a, b) = (Ca::root("A").pem(), Ca::root("B").pem());
    h.apply([
        registration("t", "one", "s1"),
        registration("t", "two", "s2"),
        ca_secret("t", "s1", &a),
        ca_secret("t", "s2", &a),
    ]);
    let two = h.version("t/two");
    h.apply([ca_secret("t", "s1", &b)]);
    assert_ne!(h.version("t/one"), two);
    assert_eq!(h.version("t/two"), two);
    let _unused: Option<Registration> = None;
}
