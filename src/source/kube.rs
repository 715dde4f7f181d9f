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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, metadata_watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::crd::convert;
use crate::crd::registration;
use crate::model::{Kind, Object, ObjectKey, SECRET_LABEL, SecretObject, has_opt_in_label};
use crate::pipeline::SourceEvent;
use crate::snapshot::SourceHealth;

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

/// Shared health, published whenever it changes.
#[derive(Clone)]
struct Health {
    state: Arc<Mutex<HealthState>>,
    tx: mpsc::Sender<SourceEvent>,
    watchers: usize,
}

#[derive(Default)]
struct HealthState {
    health: SourceHealth,
    synced: BTreeSet<&'static str>,
    /// Each failing watcher's last error: the source is stale while any remains.
    errors: BTreeMap<&'static str, String>,
}

impl Health {
    async fn update(&self, f: impl FnOnce(&mut HealthState)) {
        let health = {
            let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let before = guard.health.clone();
            f(&mut guard);
            let errors: Vec<&str> = guard.errors.values().map(String::as_str).collect();
            guard.health.error = (!errors.is_empty()).then(|| errors.join("; "));
            guard.health.synced = guard.synced.len() >= self.watchers;
            (guard.health != before).then(|| guard.health.clone())
        };
        if let Some(h) = health {
            let _ = self.tx.send(SourceEvent::Health(h)).await;
        }
    }

    async fn synced(&self, watcher: &'static str) {
        self.update(|s| {
            s.synced.insert(watcher);
            s.errors.remove(watcher);
        })
        .await;
    }

    async fn failed(&self, watcher: &'static str, e: &watcher::Error) {
        tracing::warn!(watcher, error = %e, "watch failed; serving the last snapshot and retrying");
        let message = format!("watch of {watcher} failed ({e}); serving the last snapshot");
        self.update(|s| {
            s.errors.insert(watcher, message);
        })
        .await;
    }

    async fn healthy(&self, watcher: &'static str) {
        self.update(|s| {
            s.errors.remove(watcher);
        })
        .await;
    }

    fn failing(&self) -> Vec<&'static str> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .keys()
            .copied()
            .collect()
    }
}

impl KubeSource {
    pub fn new(client: Client, namespace: Option<String>) -> Self {
        Self { client, namespace }
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
        let routes_served = served(&self.client, ns, ROUTE_API, "HTTPRoute", "httproutes").await;
        let extensions_served = served(
            &self.client,
            ns,
            version.api_version(),
            "MCPGatewayExtension",
            "mcpgatewayextensions",
        )
        .await;
        if !extensions_served {
            tracing::warn!(
                "MCPGatewayExtension ({}) is not served or not readable: gateway-wide bundles are off; apply deploy/crds.yaml to enable them",
                version.api_version()
            );
        }
        if !routes_served {
            tracing::info!(
                "HTTPRoutes (gateway.networking.k8s.io/v1) not served: gateway bundles apply by namespace"
            );
        }
        let health = Health {
            state: Default::default(),
            tx: events.clone(),
            watchers: 2 + usize::from(routes_served) + usize::from(extensions_served),
        };
        let config = watcher::Config::default();
        // Decoded one object at a time from dynamic objects: a malformed object is skipped
        // and logged instead of failing the whole list.
        let group_version = version.api_version();
        let registrations = forward(
            watcher(
                dynamic_api(
                    &self.client,
                    ns,
                    group_version,
                    "MCPServerRegistration",
                    "mcpserverregistrations",
                ),
                config.clone(),
            ),
            "MCPServerRegistration",
            Kind::Registration,
            move |o| decode_dynamic(o, group_version, "MCPServerRegistration"),
            events.clone(),
            health.clone(),
        );
        let extensions = async {
            if !extensions_served {
                return futures::future::pending().await;
            }
            forward(
                watcher(
                    dynamic_api(
                        &self.client,
                        ns,
                        group_version,
                        "MCPGatewayExtension",
                        "mcpgatewayextensions",
                    ),
                    config.clone(),
                ),
                "MCPGatewayExtension",
                Kind::Extension,
                move |o| decode_dynamic(o, group_version, "MCPGatewayExtension"),
                events.clone(),
                health.clone(),
            )
            .await
        };
        let secrets = secrets(
            self.client.clone(),
            self.namespace.clone(),
            events.clone(),
            health.clone(),
        );
        let routes = async {
            if !routes_served {
                return futures::future::pending().await;
            }
            forward(
                watcher(
                    dynamic_api(&self.client, ns, ROUTE_API, "HTTPRoute", "httproutes"),
                    config.clone(),
                ),
                "HTTPRoute",
                Kind::Route,
                |o| decode_dynamic(o, ROUTE_API, "HTTPRoute"),
                events.clone(),
                health.clone(),
            )
            .await
        };
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
            _ = routes => {}
            _ = registrations => {}
            _ = extensions => {}
            _ = secrets => {}
            _ = events.closed() => {}
        }
        Ok(())
    }
}

const ROUTE_API: &str = "gateway.networking.k8s.io/v1";

/// Whether a resource can be listed (served, and allowed by RBAC).
async fn served(
    client: &Client,
    namespace: Option<&str>,
    api_version: &str,
    kind: &str,
    plural: &str,
) -> bool {
    let api = dynamic_api(client, namespace, api_version, kind, plural);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(e) if is_not_found(&e) => false,
        Err(e) => {
            tracing::warn!(kind, error = %e, "cannot list");
            false
        }
    }
}

fn dynamic_api(
    client: &Client,
    namespace: Option<&str>,
    api_version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
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

/// A watched object as the manifests parser would see it (same conversion, same errors).
fn decode_dynamic(
    object: &DynamicObject,
    api_version: &str,
    kind: &str,
) -> Result<Object, convert::DecodeError> {
    let invalid = |source| convert::DecodeError::Invalid {
        kind: kind.to_owned(),
        source,
    };
    let mut value = serde_json::to_value(object).map_err(invalid)?;
    value["apiVersion"] = serde_json::Value::from(api_version);
    value["kind"] = serde_json::Value::from(kind);
    convert::decode_document(value, "default")?.ok_or_else(|| convert::DecodeError::MissingName {
        kind: kind.to_owned(),
    })
}

/// While a watcher is failing, checks every few seconds whether its resource can be listed
/// again (a resumed watch is silent when nothing changed, so no event would say so).
async fn recovery_probe(
    client: Client,
    namespace: Option<String>,
    version: RegistrationVersion,
    health: Health,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ns = namespace.as_deref();
    let one = ListParams::default().limit(1);
    loop {
        tick.tick().await;
        for watcher in health.failing() {
            let listed = match watcher {
                "MCPServerRegistration" => {
                    served(
                        &client,
                        ns,
                        version.api_version(),
                        "MCPServerRegistration",
                        "mcpserverregistrations",
                    )
                    .await
                }
                "MCPGatewayExtension" => {
                    served(
                        &client,
                        ns,
                        version.api_version(),
                        "MCPGatewayExtension",
                        "mcpgatewayextensions",
                    )
                    .await
                }
                "HTTPRoute" => served(&client, ns, ROUTE_API, "HTTPRoute", "httproutes").await,
                "Secret (labelled)" => {
                    let selector = format!("{SECRET_LABEL}=true");
                    api::<Secret>(&client, ns)
                        .list_metadata(&one.clone().labels(&selector))
                        .await
                        .is_ok()
                }
                "Secret (metadata)" => api::<Secret>(&client, ns).list_metadata(&one).await.is_ok(),
                _ => false,
            };
            if listed {
                health.healthy(watcher).await;
            }
        }
    }
}

/// Forwards one watcher's events, buffering a (re-)list into one `Reset`.
async fn forward<K, S>(
    stream: S,
    watcher_name: &'static str,
    kind: Kind,
    convert: impl Fn(&K) -> Result<Object, convert::DecodeError> + Send,
    events: mpsc::Sender<SourceEvent>,
    health: Health,
) where
    K: Resource + Clone + std::fmt::Debug + Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    let mut buffer = Vec::new();
    let decode = |k: &K| match convert(k) {
        Ok(o) => Some(o),
        Err(e) => {
            // One bad object never breaks a watch.
            tracing::warn!(watcher = watcher_name, error = %e, "object skipped");
            None
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
                None
            }
            Event::InitApply(k) => {
                buffer.extend(decode(&k));
                None
            }
            Event::InitDone => {
                let list = std::mem::take(&mut buffer);
                if events.send(SourceEvent::Reset(kind, list)).await.is_err() {
                    return;
                }
                health.synced(watcher_name).await;
                None
            }
            Event::Apply(k) => decode(&k).map(SourceEvent::Apply),
            Event::Delete(k) => Some(SourceEvent::Delete(kind, key_of(k.meta()))),
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

/// Labelled Secrets (full) and every Secret's metadata, merged per key.
async fn secrets(
    client: Client,
    namespace: Option<String>,
    events: mpsc::Sender<SourceEvent>,
    health: Health,
) {
    let ns = namespace.as_deref();
    let selector = format!("{SECRET_LABEL}=true");
    let full = watcher(
        api::<Secret>(&client, ns),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff()
    .map_ok(|e| e.modify(strip_secret))
    .map(|r| (true, r.map(|e| e.map(Either::Full))));
    let meta = metadata_watcher(api::<Secret>(&client, ns), watcher::Config::default())
        .default_backoff()
        .map(|r| (false, r.map(|e| e.map(Either::Meta))));
    let merged = futures::stream::select(full, meta);
    futures::pin_mut!(merged);
    let mut state = SecretMerge::default();
    while let Some((is_full, item)) = merged.next().await {
        let name = if is_full {
            "Secret (labelled)"
        } else {
            "Secret (metadata)"
        };
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                health.failed(name, &e).await;
                continue;
            }
        };
        health.healthy(name).await;
        for out in state.handle(is_full, event) {
            if events.send(out).await.is_err() {
                return;
            }
        }
        if state.full_synced && state.meta_synced {
            health.synced("Secret").await;
        }
    }
}

enum Either {
    Full(Secret),
    Meta(PartialObjectMeta<Secret>),
}

/// Helper so both watchers' events share one type.
trait EventMap<K> {
    fn map<T>(self, f: impl Fn(K) -> T) -> Event<T>;
}

impl<K> EventMap<K> for Event<K> {
    fn map<T>(self, f: impl Fn(K) -> T) -> Event<T> {
        match self {
            Event::Apply(k) => Event::Apply(f(k)),
            Event::Delete(k) => Event::Delete(f(k)),
            Event::Init => Event::Init,
            Event::InitApply(k) => Event::InitApply(f(k)),
            Event::InitDone => Event::InitDone,
        }
    }
}

/// Cached Secrets keep no managedFields or annotations (they can be large and are unused).
fn strip_secret(s: &mut Secret) {
    s.metadata.managed_fields = None;
    s.metadata.annotations = None;
}

/// The merge of both Secret views.
#[derive(Default)]
struct SecretMerge {
    /// Labelled Secrets, reduced (data kept).
    labelled: BTreeMap<ObjectKey, SecretObject>,
    /// Every Secret that exists (from metadata).
    exists: BTreeSet<ObjectKey>,
    full_buffer: Option<BTreeMap<ObjectKey, SecretObject>>,
    meta_buffer: Option<BTreeSet<ObjectKey>>,
    full_synced: bool,
    meta_synced: bool,
}

impl SecretMerge {
    fn handle(&mut self, is_full: bool, event: Event<Either>) -> Vec<SourceEvent> {
        let mut touched = Vec::new();
        match event {
            Event::Init if is_full => self.full_buffer = Some(BTreeMap::new()),
            Event::Init => self.meta_buffer = Some(BTreeSet::new()),
            Event::InitApply(Either::Full(s)) => {
                if let Some(o) = reduce(s) {
                    self.full_buffer
                        .get_or_insert_with(Default::default)
                        .insert(o.key.clone(), o);
                }
            }
            Event::InitApply(Either::Meta(m)) => {
                self.meta_buffer
                    .get_or_insert_with(Default::default)
                    .insert(key_of(&m.metadata));
            }
            Event::InitDone if is_full => {
                self.labelled = self.full_buffer.take().unwrap_or_default();
                self.full_synced = true;
                return self.reset();
            }
            Event::InitDone => {
                self.exists = self.meta_buffer.take().unwrap_or_default();
                self.meta_synced = true;
                return self.reset();
            }
            Event::Apply(Either::Full(s)) => {
                if let Some(o) = reduce(s) {
                    touched.push(o.key.clone());
                    self.exists.insert(o.key.clone());
                    self.labelled.insert(o.key.clone(), o);
                }
            }
            Event::Delete(Either::Full(s)) => {
                let key = key_of(&s.metadata);
                self.labelled.remove(&key);
                touched.push(key);
            }
            Event::Apply(Either::Meta(m)) => {
                let key = key_of(&m.metadata);
                let labelled = m
                    .labels()
                    .iter()
                    .any(|(k, v)| k == SECRET_LABEL && v == "true");
                self.exists.insert(key.clone());
                if !labelled {
                    // Unlabelled now: whatever the full watch held is no longer readable.
                    self.labelled.remove(&key);
                }
                touched.push(key);
            }
            Event::Delete(Either::Meta(m)) => {
                let key = key_of(&m.metadata);
                self.exists.remove(&key);
                self.labelled.remove(&key);
                touched.push(key);
            }
        }
        if !(self.full_synced && self.meta_synced) {
            return Vec::new();
        }
        touched
            .into_iter()
            .map(|key| match self.resolve(&key) {
                Some(o) => SourceEvent::Apply(Object::Secret(o)),
                None => SourceEvent::Delete(Kind::Secret, key),
            })
            .collect()
    }

    fn resolve(&self, key: &ObjectKey) -> Option<SecretObject> {
        self.labelled.get(key).cloned().or_else(|| {
            self.exists
                .contains(key)
                .then(|| SecretObject::unlabelled(key.clone()))
        })
    }

    fn reset(&self) -> Vec<SourceEvent> {
        if !(self.full_synced && self.meta_synced) {
            return Vec::new();
        }
        let keys: BTreeSet<&ObjectKey> = self.exists.iter().chain(self.labelled.keys()).collect();
        let all = keys
            .into_iter()
            .filter_map(|k| self.resolve(k))
            .map(Object::Secret)
            .collect();
        vec![SourceEvent::Reset(Kind::Secret, all)]
    }
}

/// A labelled Secret as the domain sees it (the label is re-checked: never trust a filter).
fn reduce(s: Secret) -> Option<SecretObject> {
    let labelled = s
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| has_opt_in_label(l.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    if !labelled {
        return None;
    }
    match convert::secret(s, "default") {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(error = %e, "Secret skipped");
            None
        }
    }
}
