//! The `--kube` source: kube-runtime watchers on the API server.
//!
//! Watches registrations (v1, or v1alpha1 where the cluster serves only that), gateway
//! extensions, Secrets labelled `mcp.kuadrant.io/secret=true` (full objects, with
//! `managedFields` and annotations dropped before anything else sees them) and, through a
//! metadata-only watch, the existence of every Secret, so that "not found" and "missing
//! required label" are told apart without ever reading an unlabelled Secret's data.
//!
//! Re-lists (a restarted watch, 410 Gone) arrive as `Reset`s of complete lists, which the
//! index diffs: an unchanged cluster causes no push. Watch errors keep the last snapshot
//! and are reported as a stale source.

mod health;
mod secrets;
mod typed;
mod watched;

use health::{Health, recovery_probe};
use secrets::secrets;
use typed::Watchable;
use watched::{Served, Watched};

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource};
use tokio::sync::mpsc;

use crate::crd::convert;
use crate::crd::route::HttpRoute;
use crate::crd::{extension, registration};
use crate::model::{Kind, ObjectKey};
use crate::pipeline::SourceEvent;
use crate::status::StatusTarget;
use crate::status_writer::observed::Observed;

/// Which `MCPServerRegistration` version the cluster serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationVersion {
    V1,
    V1alpha1,
}

impl RegistrationVersion {
    pub fn version(self) -> &'static str {
        match self {
            RegistrationVersion::V1 => "v1",
            RegistrationVersion::V1alpha1 => "v1alpha1",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            RegistrationVersion::V1 => "mcp.kuadrant.io/v1",
            RegistrationVersion::V1alpha1 => "mcp.kuadrant.io/v1alpha1",
        }
    }
}

pub struct KubeSource {
    client: Client,
    namespace: Option<String>,
    observed: Option<Arc<Observed>>,
}

/// Hands each registration or extension, as the watch sees it, to the status writer, which
/// compares the condition on the object with the one it computed.
#[derive(Clone)]
struct StatusTap {
    observed: Arc<Observed>,
    target: fn(ObjectKey) -> StatusTarget,
}

impl StatusTap {
    fn for_kind(observed: &Option<Arc<Observed>>, kind: Kind) -> Option<Self> {
        let target: fn(ObjectKey) -> StatusTarget = match kind {
            Kind::Registration => StatusTarget::Registration,
            Kind::Extension => StatusTarget::Extension,
            Kind::Route | Kind::Secret => return None,
        };
        observed.clone().map(|observed| Self { observed, target })
    }

    fn object(&self, meta: &kube::api::ObjectMeta, value: &serde_json::Value) {
        self.observed.object((self.target)(key_of(meta)), value);
    }

    fn deleted(&self, meta: &kube::api::ObjectMeta) {
        self.observed.forget(&(self.target)(key_of(meta)));
    }

    /// After a (re-)list: forgets this kind's objects the list no longer has.
    fn listed(&self, keys: &BTreeSet<ObjectKey>) {
        let probe = (self.target)(ObjectKey::new("", ""));
        self.observed.retain(|t| {
            std::mem::discriminant(t) != std::mem::discriminant(&probe) || keys.contains(t.key())
        });
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Finds the served registration version; a missing CRD is a clear start-up error.
pub async fn discover_registration_version(
    client: &Client,
    namespace: Option<&str>,
) -> anyhow::Result<RegistrationVersion> {
    let probe = ListParams::default().limit(1);
    match api::<registration::v1::MCPServerRegistration>(client, namespace)
        .list_metadata(&probe)
        .await
    {
        Ok(_) => return Ok(RegistrationVersion::V1),
        Err(e) if is_not_found(&e) => {}
        Err(e) => anyhow::bail!("cannot list MCPServerRegistrations: {e}"),
    }
    match api::<registration::v1alpha1::MCPServerRegistration>(client, namespace)
        .list_metadata(&probe)
        .await
    {
        Ok(_) => Ok(RegistrationVersion::V1alpha1),
        Err(e) if is_not_found(&e) => anyhow::bail!(
            "the MCPServerRegistration CRD (mcp.kuadrant.io, v1 or v1alpha1) is not installed: apply deploy/crds.yaml (or `trust-sds crd | kubectl apply -f -`)"
        ),
        Err(e) => anyhow::bail!("cannot list MCPServerRegistrations: {e}"),
    }
}

impl KubeSource {
    pub fn new(client: Client, namespace: Option<String>) -> Self {
        Self {
            client,
            namespace,
            observed: None,
        }
    }

    /// Reports every registration's and extension's conditions to the status writer.
    pub fn with_status_observer(mut self, observed: Arc<Observed>) -> Self {
        self.observed = Some(observed);
        self
    }

    /// Watches until `events` closes. `version` comes from [`discover_registration_version`].
    pub async fn run(
        self,
        version: RegistrationVersion,
        events: mpsc::Sender<SourceEvent>,
    ) -> anyhow::Result<()> {
        let ns = self.namespace.as_deref();
        tracing::info!(
            version = version.api_version(),
            namespace = ns.unwrap_or("<all>"),
            "watching the Kubernetes API"
        );
        let mut expected: BTreeSet<Watched> = [
            Watched::Registrations,
            Watched::LabelledSecrets,
            Watched::SecretMetadata,
        ]
        .into();
        for optional in [Watched::Extensions, Watched::Routes] {
            let at = optional.served(version).expect("a dynamic kind");
            if served(&self.client, ns, at).await {
                expected.insert(optional);
            } else if optional == Watched::Extensions {
                tracing::warn!(
                    "MCPGatewayExtension ({}) is not served or not readable: gateway-wide bundles are off; apply deploy/crds.yaml to enable them",
                    version.api_version()
                );
            } else {
                tracing::info!(
                    "HTTPRoutes (gateway.networking.k8s.io/v1) not served: gateway bundles apply by namespace"
                );
            }
        }
        let health = Health {
            state: Default::default(),
            tx: events.clone(),
            expected: Arc::new(expected.clone()),
        };
        // One watcher per kind, typed behind a guard: a malformed object is skipped and
        // logged instead of failing the whole list.
        let forwarding = |w: Watched| {
            let (events, health) = (events.clone(), health.clone());
            match (w, version) {
                (Watched::Registrations, RegistrationVersion::V1) => {
                    self.forward::<registration::v1::MCPServerRegistration>(w, events, health)
                }
                (Watched::Registrations, RegistrationVersion::V1alpha1) => {
                    self.forward::<registration::v1alpha1::MCPServerRegistration>(w, events, health)
                }
                (Watched::Extensions, RegistrationVersion::V1) => {
                    self.forward::<extension::v1::MCPGatewayExtension>(w, events, health)
                }
                (Watched::Extensions, RegistrationVersion::V1alpha1) => {
                    self.forward::<extension::v1alpha1::MCPGatewayExtension>(w, events, health)
                }
                (Watched::Routes, _) => self.forward::<HttpRoute>(w, events, health),
                // The Secret watches are merged by `secrets` below.
                (Watched::LabelledSecrets | Watched::SecretMetadata, _) => {
                    futures::future::ready(()).boxed()
                }
            }
        };
        let mut watchers: futures::stream::FuturesUnordered<_> = Watched::DYNAMIC
            .into_iter()
            .filter(|w| expected.contains(w))
            .map(forwarding)
            .collect();
        let secrets = secrets(
            self.client.clone(),
            self.namespace.clone(),
            events.clone(),
            health.clone(),
        );
        // A resumed watch is silent when nothing changed, so recovery is confirmed by a
        // cheap request rather than by waiting for the next object event.
        let recovery = recovery_probe(
            self.client.clone(),
            self.namespace.clone(),
            version,
            health.clone(),
        );
        tokio::select! {
            _ = recovery => {}
            _ = watchers.next() => {}
            _ = secrets => {}
            _ = events.closed() => {}
        }
        Ok(())
    }
}

impl KubeSource {
    /// Watches one kind, typed, and forwards its events (with its conditions to the status
    /// writer, for the kinds it writes).
    fn forward<K: Watchable>(
        &self,
        w: Watched,
        events: mpsc::Sender<SourceEvent>,
        health: Health,
    ) -> futures::future::BoxFuture<'static, ()> {
        let stream = watch_kind::<K>(&self.client, self.namespace.as_deref());
        let tap = StatusTap::for_kind(&self.observed, w.object_kind());
        forward(stream, w, tap, events, health).boxed()
    }
}

/// Whether a resource can be listed (served, and allowed by RBAC).
async fn served(client: &Client, namespace: Option<&str>, at: Served) -> bool {
    if !group_version_listed(client, at.api_version).await {
        return false;
    }
    let api = dynamic_api(client, namespace, at);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(e) if is_not_found(&e) => false,
        Err(e) => {
            tracing::warn!(kind = at.kind, error = %e, "cannot list");
            false
        }
    }
}

/// Whether discovery (`/apis`, readable by every authenticated client) lists `api_version`.
/// Asked first so that an absent API group (the Gateway API not installed) is found
/// quietly: a list of it answers `404 page not found` in plain text, which the client logs
/// as a warning it cannot parse.
async fn group_version_listed(client: &Client, api_version: &str) -> bool {
    let Some((group, version)) = api_version.split_once('/') else {
        return true; // the core group is always there
    };
    match client.list_api_groups().await {
        Ok(groups) => groups
            .groups
            .iter()
            .any(|g| g.name == group && g.versions.iter().any(|v| v.version == version)),
        // Discovery failing says nothing about this group: let the list decide.
        Err(_) => true,
    }
}

fn dynamic_api(client: &Client, namespace: Option<&str>, at: Served) -> Api<DynamicObject> {
    let Served {
        api_version,
        kind,
        plural,
    } = at;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    };
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Watches one kind, typed, in the namespace or cluster-wide.
fn watch_kind<K: Watchable>(
    client: &Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<Event<DeserializeGuard<K>>, watcher::Error>> + Send + use<K> {
    let api: Api<DeserializeGuard<K>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher(api, watcher::Config::default())
}

/// Forwards one watcher's events, buffering a (re-)list into one `Reset`; with a `tap`,
/// also each object's conditions to the status writer.
async fn forward<K, S>(
    stream: S,
    watcher_name: Watched,
    tap: Option<StatusTap>,
    events: mpsc::Sender<SourceEvent>,
    health: Health,
) where
    K: Watchable,
    S: Stream<Item = Result<Event<DeserializeGuard<K>>, watcher::Error>> + Send,
{
    let kind = watcher_name.object_kind();
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    let mut buffer = Vec::new();
    let mut listed = BTreeSet::new();
    let decode = |guarded: &DeserializeGuard<K>| {
        let decoded = match &guarded.0 {
            Ok(k) => {
                if let Some(tap) = &tap {
                    tap.object(k.meta(), &k.observed());
                }
                k.to_object()
            }
            Err(invalid) => Err(convert::DecodeError::Malformed {
                kind: watcher_name.to_string(),
                message: invalid.error.clone(),
            }),
        };
        match decoded {
            Ok(o) => Some(o),
            Err(e) => {
                // One bad object never breaks a watch.
                let object = key_of(guarded.meta());
                tracing::warn!(watcher = %watcher_name, %object, error = %e, "object skipped");
                None
            }
        }
    };
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                health.failed(watcher_name, &e).await;
                continue;
            }
        };
        let out = match event {
            Event::Init => {
                buffer.clear();
                listed.clear();
                None
            }
            Event::InitApply(k) => {
                listed.insert(key_of(k.meta()));
                buffer.extend(decode(&k));
                None
            }
            Event::InitDone => {
                if let Some(tap) = &tap {
                    tap.listed(&std::mem::take(&mut listed));
                }
                let list = std::mem::take(&mut buffer);
                if events.send(SourceEvent::Reset(kind, list)).await.is_err() {
                    return;
                }
                health.synced(watcher_name).await;
                None
            }
            Event::Apply(k) => decode(&k).map(SourceEvent::Apply),
            Event::Delete(k) => {
                if let Some(tap) = &tap {
                    tap.deleted(k.meta());
                }
                Some(SourceEvent::Delete(kind, key_of(k.meta())))
            }
        };
        health.healthy(watcher_name).await;
        if let Some(out) = out
            && events.send(out).await.is_err()
        {
            return;
        }
    }
}

fn key_of(meta: &kube::api::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}
