//! An in-process fake Kubernetes API server, over real HTTP on 127.0.0.1, for the `--kube`
//! source and the status writer. It is a FAKE: no API server can run here. It implements the
//! semantics trust-sds relies on, following the real API's conventions:
//!
//! - list and watch of `secrets` (core/v1) and of the `mcp.kuadrant.io` resources, with a
//!   global `resourceVersion`, replay of events after the requested version, `410 Gone`
//!   (an `ERROR` event with code 410) for versions older than the compacted history, and a
//!   `BOOKMARK` after the replay;
//! - `labelSelector` equality terms, including the real server's watch behaviour that an
//!   object leaving the selector is seen as `DELETED` and one entering it as `ADDED`;
//! - metadata-only requests (`Accept: ...;as=PartialObjectMetadata[List]`), which return no
//!   `data`;
//! - 404 for resource versions the test says are not served;
//! - server-side apply on the `status` subresource: `conditions` merged by `type`, each
//!   condition owned by the field manager that applied it, a manager's conditions that are
//!   absent from its next apply removed, other managers' conditions untouched; ownership
//!   shown in `metadata.managedFields` (one entry per manager, naming the condition keys it
//!   owns, as the real server writes them);
//! - another client's status update (`set_foreign_condition`): a write with its own
//!   `resourceVersion` and watch event, the condition then owned by that manager;
//! - injected latency on status writes (`set_status_latency`), with the most writes ever in
//!   flight at once counted (`max_status_writes_in_flight`).
//!
//! - a simulated outage: lists and watches answer 500 while it lasts;
//! - a simulated hang: new lists and watches get no answer, and open watches deliver
//!   nothing, until it ends (then everything held back arrives, as from a server that
//!   stalled and recovered).
//!
//! Not implemented: pagination (`limit` is ignored), field selectors, RBAC, admission.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

#[derive(Clone, Debug)]
struct Entry {
    rv: u64,
    resource: String,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Entry>,
    compacted: u64,
    /// (resource, ns, name) -> condition type -> manager.
    owners: HashMap<(String, String, String), BTreeMap<String, String>>,
    requests: Vec<String>,
    status_patches: usize,
    /// coordination.k8s.io Leases by (namespace, name).
    leases: BTreeMap<(String, String), Value>,
    /// Simulated outage: every list and watch answers 500.
    failing: bool,
    status_latency: std::time::Duration,
    status_in_flight: usize,
    max_status_in_flight: usize,
}

#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<Entry>,
    closer: Arc<watch::Sender<u64>>,
    /// While true, list and watch answer nothing.
    hang: Arc<watch::Sender<bool>>,
    served: Arc<Vec<String>>,
}

type AppState = FakeApiServer;

fn resource_of(kind: &str) -> &'static str {
    match kind {
        "Secret" => "secrets",
        "MCPServerRegistration" => "mcpserverregistrations",
        "MCPGatewayExtension" => "mcpgatewayextensions",
        "HTTPRoute" => "httproutes",
        other => panic!("fake API server: unknown kind {other}"),
    }
}

impl FakeApiServer {
    /// `served`: API versions of `mcp.kuadrant.io` the fake serves, e.g. `["v1"]`.
    pub async fn start(served: &[&str]) -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = FakeApiServer {
            addr: listener.local_addr().unwrap(),
            store: Default::default(),
            events: broadcast::channel(4096).0,
            closer: Arc::new(watch::channel(0).0),
            hang: Arc::new(watch::channel(false).0),
            served: Arc::new(served.iter().map(|s| s.to_string()).collect()),
        };
        let app = Router::new()
            .route("/apis", get(api_groups))
            .route("/api/v1/{resource}", get(core_list))
            .route("/apis/{group}/{version}/{resource}", get(group_list))
            .route("/api/v1/namespaces/{ns}/{resource}", get(core_ns_list))
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}/status",
                patch(apply_status),
            )
            // Leases (coordination.k8s.io/v1) are the only objects read or written one by one.
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{resource}",
                get(group_ns_list).post(create_lease),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}",
                get(get_lease).put(replace_lease),
            )
            .fallback(unmatched)
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    /// Creates or replaces an object (given with apiVersion, kind, metadata).
    pub fn apply(&self, mut object: Value) {
        let resource = resource_of(object["kind"].as_str().unwrap()).to_owned();
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let mut store = self.lock();
        store.rv += 1;
        let rv = store.rv;
        let key = (resource.clone(), ns.clone(), name);
        let old = store.objects.get(&key).cloned();
        let generation = match &old {
            Some(o) if o["spec"] == object["spec"] => {
                o["metadata"]["generation"].as_i64().unwrap_or(1)
            }
            Some(o) => o["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => 1,
        };
        object["metadata"]["namespace"] = json!(ns);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["generation"] = json!(generation);
        // Writes to the main resource keep the status (and who owns it), as the real API
        // server does.
        if let Some(status) = old.as_ref().and_then(|o| o.get("status"))
            && object.get("status").is_none()
        {
            object["status"] = status.clone();
            object["metadata"]["managedFields"] = managed_fields(&store, &key);
        }
        self.put(&mut store, key, object, rv, old);
    }

    pub fn delete(&self, kind: &str, ns: &str, name: &str) {
        let resource = resource_of(kind).to_owned();
        let mut store = self.lock();
        store.rv += 1;
        let rv = store.rv;
        if let Some(mut old) =
            store
                .objects
                .remove(&(resource.clone(), ns.to_owned(), name.to_owned()))
        {
            old["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.record(
                &mut store,
                Entry {
                    rv,
                    resource,
                    old: Some(old.clone()),
                    new: None,
                },
            );
        }
    }

    /// Stores a written object at `rv` and tells the watches.
    fn put(
        &self,
        store: &mut Store,
        key: (String, String, String),
        object: Value,
        rv: u64,
        old: Option<Value>,
    ) {
        let resource = key.0.clone();
        store.objects.insert(key, object.clone());
        self.record(
            store,
            Entry {
                rv,
                resource,
                old,
                new: Some(object),
            },
        );
    }

    fn record(&self, store: &mut Store, entry: Entry) {
        store.log.push(entry.clone());
        let _ = self.events.send(entry);
    }

    /// Forgets history: a watch from any version issued so far gets 410 Gone (as after an
    /// etcd compaction past the client's version), so clients must re-list.
    pub fn compact(&self) {
        let mut store = self.lock();
        // A write happened after the client's last version, and history up to it is gone;
        // a fresh list returns a version that is valid again.
        store.rv += 1;
        store.compacted = store.rv;
        store.log.clear();
    }

    /// Ends every open watch (clients reconnect from their last resourceVersion).
    pub fn close_watches(&self) {
        self.closer.send_modify(|g| *g += 1);
    }

    pub fn object(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(resource_of(kind).to_owned(), ns.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn conditions(&self, kind: &str, ns: &str, name: &str) -> Vec<Value> {
        self.object(kind, ns, name)
            .and_then(|o| o["status"]["conditions"].as_array().cloned())
            .unwrap_or_default()
    }

    pub fn ready(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.conditions(kind, ns, name)
            .into_iter()
            .find(|c| c["type"] == "Ready")
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Starts or ends a simulated hang of list and watch (no answer, no event).
    pub fn set_hanging(&self, hanging: bool) {
        self.hang.send_replace(hanging);
    }

    /// Starts or ends a simulated outage of list and watch (500 Internal Server Error).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    pub fn lease_holder(&self, ns: &str, name: &str) -> Option<String> {
        let store = self.lock();
        store.leases.get(&(ns.to_owned(), name.to_owned()))?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    }

    /// Stores a Lease as another replica would have written it (`spec` as JSON).
    pub fn put_lease(&self, ns: &str, name: &str, spec: Value) {
        let mut store = self.lock();
        store.rv += 1;
        let lease = lease_out(
            json!({"metadata": {"name": name}, "spec": spec}),
            ns,
            store.rv,
        );
        store.leases.insert((ns.to_owned(), name.to_owned()), lease);
    }

    pub fn status_patches(&self) -> usize {
        self.lock().status_patches
    }

    /// Sets a condition as another client's status update would (then owned by
    /// `manager`): a write with a new `resourceVersion` that watches see.
    pub fn set_foreign_condition(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        manager: &str,
        condition: Value,
    ) {
        let resource = resource_of(kind).to_owned();
        let mut store = self.lock();
        let ctype = condition["type"].as_str().unwrap().to_owned();
        let key = (resource.clone(), ns.to_owned(), name.to_owned());
        store
            .owners
            .entry(key.clone())
            .or_default()
            .insert(ctype, manager.to_owned());
        let old = store.objects.get(&key).cloned();
        let mut object = old.clone().unwrap();
        let list = object["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut list: Vec<Value> = list
            .into_iter()
            .filter(|c| c["type"] != condition["type"])
            .collect();
        list.push(condition);
        object["status"]["conditions"] = json!(list);
        object["metadata"]["managedFields"] = managed_fields(&store, &key);
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.put(&mut store, key, object, rv, old);
    }

    /// Every status write waits this long before it is carried out (a busy API server).
    pub fn set_status_latency(&self, latency: std::time::Duration) {
        self.lock().status_latency = latency;
    }

    /// The most status writes that were ever being handled at once.
    pub fn max_status_writes_in_flight(&self) -> usize {
        self.lock().max_status_in_flight
    }
}

/// `metadata.managedFields` of the status subresource as the real server shows it: per
/// manager, the `k:{"type":...}` keys of the conditions it owns.
fn managed_fields(store: &Store, key: &(String, String, String)) -> Value {
    let mut by_manager: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for (ctype, manager) in store.owners.get(key).into_iter().flatten() {
        by_manager.entry(manager).or_default().insert(
            format!("k:{}", json!({ "type": ctype })),
            json!({".": {}, "f:type": {}, "f:status": {}, "f:reason": {}, "f:message": {}}),
        );
    }
    by_manager
        .into_iter()
        .map(|(manager, conditions)| {
            json!({"manager": manager, "operation": "Apply", "subresource": "status",
                   "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:status": {"f:conditions": conditions}}})
        })
        .collect()
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    label_selector: Option<String>,
    watch: Option<String>,
    resource_version: Option<String>,
    allow_watch_bookmarks: Option<bool>,
}

fn selector_matches(selector: &Option<String>, object: &Value) -> bool {
    let Some(selector) = selector.as_deref().filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let (k, v) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .expect("equality selector");
        object["metadata"]["labels"][k.trim()].as_str() == Some(v.trim())
    })
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "secrets" => ("Secret", "v1"),
        "mcpserverregistrations" => ("MCPServerRegistration", "mcp.kuadrant.io/v1"),
        "mcpgatewayextensions" => ("MCPGatewayExtension", "mcp.kuadrant.io/v1"),
        "httproutes" => ("HTTPRoute", "gateway.networking.k8s.io/v1"),
        _ => ("Unknown", "v1"),
    }
}

fn metadata_only(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

/// The object as the client asked for it (metadata-only, or with the served apiVersion).
fn render(object: &Value, meta_only: bool, api_version: &str) -> Value {
    if meta_only {
        return json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"] });
    }
    let mut o = object.clone();
    if o["kind"] != "Secret" {
        o["apiVersion"] = json!(api_version);
    }
    o
}

async fn core_list(
    State(s): State<AppState>,
    Path(resource): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    list_or_watch(s, resource, None, "v1".into(), q, headers).await
}

async fn core_ns_list(
    State(s): State<AppState>,
    Path((ns, resource)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    list_or_watch(s, resource, Some(ns), "v1".into(), q, headers).await
}

async fn group_ns_list(
    State(s): State<AppState>,
    Path((group, version, ns, resource)): Path<(String, String, String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let gateway_api = group == "gateway.networking.k8s.io" && version == "v1";
    if !gateway_api && (group != "mcp.kuadrant.io" || !s.served.contains(&version)) {
        return status_error(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    }
    list_or_watch(
        s,
        resource,
        Some(ns),
        format!("{group}/{version}"),
        q,
        headers,
    )
    .await
}

/// Discovery of the API groups: what `group_list` serves (the Gateway API always).
async fn api_groups(State(s): State<AppState>) -> Response {
    let versions = |vs: Vec<String>| -> Vec<Value> {
        vs.into_iter()
            .map(|v| json!({"groupVersion": v, "version": v.rsplit('/').next()}))
            .collect()
    };
    let mcp: Vec<String> = s
        .served
        .iter()
        .map(|v| format!("mcp.kuadrant.io/{v}"))
        .collect();
    let mut groups = vec![json!({"name": "gateway.networking.k8s.io",
        "versions": versions(vec!["gateway.networking.k8s.io/v1".to_owned()])})];
    if !mcp.is_empty() {
        groups.push(json!({"name": "mcp.kuadrant.io", "versions": versions(mcp)}));
    }
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        .into_response()
}

async fn group_list(
    State(s): State<AppState>,
    Path((group, version, resource)): Path<(String, String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let gateway_api = group == "gateway.networking.k8s.io" && version == "v1";
    if !gateway_api && (group != "mcp.kuadrant.io" || !s.served.contains(&version)) {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"the server could not find the requested resource"}))).into_response();
    }
    list_or_watch(s, resource, None, format!("{group}/{version}"), q, headers).await
}

async fn list_or_watch(
    s: FakeApiServer,
    resource: String,
    namespace: Option<String>,
    api_version: String,
    q: ListQuery,
    headers: HeaderMap,
) -> Response {
    let mut hang = s.hang.subscribe();
    let _ = hang.wait_for(|h| !*h).await;
    if s.lock().failing {
        return status_error(500, "InternalError", "etcdserver: request timed out".into());
    }
    let meta = metadata_only(&headers);
    let watching = q.watch.as_deref().is_some_and(|w| w == "true" || w == "1");
    s.lock().requests.push(format!(
        "{} {resource} ns={} selector={} meta={meta}",
        if watching { "WATCH" } else { "LIST" },
        namespace.as_deref().unwrap_or("*"),
        q.label_selector.clone().unwrap_or_default()
    ));
    if !watching {
        let store = s.lock();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((r, ns, _), o)| {
                *r == resource
                    && namespace.as_ref().is_none_or(|want| want == ns)
                    && selector_matches(&q.label_selector, o)
            })
            .map(|(_, o)| render(o, meta, &api_version))
            .collect();
        let kind = if meta {
            "PartialObjectMetadataList".to_owned()
        } else {
            format!("{}List", kind_of(&resource).0)
        };
        let list_api = if meta {
            "meta.k8s.io/v1".to_owned()
        } else {
            api_version.clone()
        };
        return axum::Json(json!({"apiVersion": list_api, "kind": kind, "metadata": {"resourceVersion": store.rv.to_string()}, "items": items})).into_response();
    }
    let from: u64 = q
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (replay, mut live, current, gone) = {
        let store = s.lock();
        let gone = from != 0 && from < store.compacted;
        let replay: Vec<Entry> = store
            .log
            .iter()
            .filter(|e| e.rv > from && e.resource == resource)
            .cloned()
            .collect();
        (replay, s.events.subscribe(), store.rv, gone)
    };
    let mut closer = s.closer.subscribe();
    closer.mark_unchanged();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let (kind, _) = kind_of(&resource);
    let bookmarks = q.allow_watch_bookmarks.unwrap_or(false);
    tokio::spawn(async move {
        let line = |v: Value| Ok(Bytes::from(format!("{v}\n")));
        if gone {
            let status = json!({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Expired","code":410,"message":"too old resource version"}});
            let _ = tx.send(line(status)).await;
            return;
        }
        let event = |e: &Entry| -> Option<Value> {
            let was = e
                .old
                .as_ref()
                .is_some_and(|o| selector_matches(&q.label_selector, o));
            let is = e
                .new
                .as_ref()
                .is_some_and(|o| selector_matches(&q.label_selector, o));
            let (t, o) = match (was, is) {
                (false, true) => ("ADDED", e.new.as_ref()?),
                (true, true) => ("MODIFIED", e.new.as_ref()?),
                (true, false) => ("DELETED", e.new.as_ref().or(e.old.as_ref())?),
                (false, false) => return None,
            };
            let mut o = o.clone();
            o["metadata"]["resourceVersion"] = json!(e.rv.to_string());
            Some(json!({"type": t, "object": render(&o, meta, &api_version)}))
        };
        for e in &replay {
            if let Some(v) = event(e)
                && tx.send(line(v)).await.is_err()
            {
                return;
            }
        }
        if bookmarks {
            let bookmark = json!({"type":"BOOKMARK","object":{"kind": if meta {"PartialObjectMetadata"} else {kind}, "apiVersion": if meta {"meta.k8s.io/v1".to_owned()} else {api_version.clone()}, "metadata":{"resourceVersion": current.max(from).to_string()}}});
            if tx.send(line(bookmark)).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                e = live.recv() => {
                    let Ok(e) = e else { return };
                    if e.resource != resource || e.rv <= current.max(from) { continue; }
                    let _ = hang.wait_for(|h| !*h).await;
                    if let Some(v) = event(&e)
                        && tx.send(line(v)).await.is_err()
                    {
                        return;
                    }
                }
                _ = closer.changed() => return,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatchQuery {
    field_manager: Option<String>,
}

async fn apply_status(
    State(s): State<AppState>,
    Path((_group, version, ns, resource, name)): Path<(String, String, String, String, String)>,
    Query(q): Query<PatchQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(
        content_type, "application/apply-patch+yaml",
        "status must be written by server-side apply"
    );
    let manager = q.field_manager.expect("SSA needs a fieldManager");
    let patch: Value = serde_json::from_slice(&body).expect("JSON apply body");
    let latency = {
        let mut store = s.lock();
        store.status_in_flight += 1;
        store.max_status_in_flight = store.max_status_in_flight.max(store.status_in_flight);
        store.status_latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut store = s.lock();
    store.status_in_flight -= 1;
    store.requests.push(format!(
        "APPLY-STATUS {resource} {ns}/{name} manager={manager}"
    ));
    store.status_patches += 1;
    let key = (resource.clone(), ns.clone(), name.clone());
    let Some(mut object) = store.objects.get(&key).cloned() else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":format!("{resource} {name} not found")}))).into_response();
    };
    let applied: Vec<Value> = patch["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let existing: Vec<Value> = object["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let applied_types: Vec<String> = applied
        .iter()
        .map(|c| c["type"].as_str().unwrap().to_owned())
        .collect();
    let owners = store.owners.entry(key.clone()).or_default();
    let mut merged = Vec::new();
    for c in existing {
        let t = c["type"].as_str().unwrap_or_default().to_owned();
        let ours = owners.get(&t) == Some(&manager);
        if applied_types.contains(&t) || ours {
            continue; // replaced below, or released by its owner
        }
        merged.push(c);
    }
    owners.retain(|t, owner| *owner != manager || applied_types.contains(t));
    for c in applied {
        let t = c["type"].as_str().unwrap().to_owned();
        owners.insert(t, manager.clone());
        merged.push(c);
    }
    object["status"]["conditions"] = json!(merged);
    object["metadata"]["managedFields"] = managed_fields(&store, &key);
    store.rv += 1;
    let rv = store.rv;
    let old = store.objects.get(&key).cloned();
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    store.objects.insert(key, object.clone());
    let entry = Entry {
        rv,
        resource,
        old,
        new: Some(object.clone()),
    };
    store.log.push(entry.clone());
    drop(store);
    let _ = s.events.send(entry);
    let mut rendered = object;
    rendered["apiVersion"] = json!(format!("mcp.kuadrant.io/{version}"));
    axum::Json(rendered).into_response()
}

fn status_error(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":reason,"code":code,"message":message});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn lease_out(mut lease: Value, ns: &str, rv: u64) -> Value {
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["namespace"] = json!(ns);
    lease["metadata"]["resourceVersion"] = json!(rv.to_string());
    lease
}

type LeasePath = (String, String, String, String, String);

fn is_lease(group: &str, resource: &str) -> bool {
    group == "coordination.k8s.io" && resource == "leases"
}

async fn get_lease(
    State(s): State<AppState>,
    Path((group, _, ns, resource, name)): Path<LeasePath>,
) -> Response {
    if !is_lease(&group, &resource) {
        return status_error(404, "NotFound", format!("no route for {group}/{resource}"));
    }
    match s.lock().leases.get(&(ns, name.clone())) {
        Some(l) => axum::Json(l.clone()).into_response(),
        None => status_error(404, "NotFound", format!("leases \"{name}\" not found")),
    }
}

async fn create_lease(
    State(s): State<AppState>,
    Path((group, _, ns, resource)): Path<(String, String, String, String)>,
    axum::Json(lease): axum::Json<Value>,
) -> Response {
    if !is_lease(&group, &resource) {
        return status_error(404, "NotFound", format!("no route for {group}/{resource}"));
    }
    let name = lease["metadata"]["name"].as_str().unwrap().to_owned();
    let mut store = s.lock();
    if store.leases.contains_key(&(ns.clone(), name.clone())) {
        return status_error(
            409,
            "AlreadyExists",
            format!("leases \"{name}\" already exists"),
        );
    }
    store.rv += 1;
    let lease = lease_out(lease, &ns, store.rv);
    store.leases.insert((ns, name), lease.clone());
    (StatusCode::CREATED, axum::Json(lease)).into_response()
}

/// Optimistic concurrency: the request's resourceVersion must be the stored one.
async fn replace_lease(
    State(s): State<AppState>,
    Path((group, _, ns, resource, name)): Path<LeasePath>,
    axum::Json(lease): axum::Json<Value>,
) -> Response {
    if !is_lease(&group, &resource) {
        return status_error(404, "NotFound", format!("no route for {group}/{resource}"));
    }
    let mut store = s.lock();
    let key = (ns.clone(), name.clone());
    let Some(current) = store.leases.get(&key) else {
        return status_error(404, "NotFound", format!("leases \"{name}\" not found"));
    };
    if current["metadata"]["resourceVersion"] != lease["metadata"]["resourceVersion"] {
        return status_error(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on leases \"{name}\": the object has been modified"
            ),
        );
    }
    store.rv += 1;
    let lease = lease_out(lease, &ns, store.rv);
    store.leases.insert(key, lease.clone());
    axum::Json(lease).into_response()
}

async fn unmatched(
    State(s): State<AppState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    s.lock().requests.push(format!("UNMATCHED {method} {uri}"));
    eprintln!("fake API server: no route for {method} {uri}");
    status_error(404, "NotFound", format!("no route for {uri}"))
}
