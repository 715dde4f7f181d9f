//! Admin HTTP: `/healthz`, `/readyz`, `/metrics` and JSON views (`/bundles`, `/statuses`
//! with the `UpstreamTrusted` results under `upstreams`, `/clients`).
//!
//! JSON keys are camelCase, as in the Kubernetes API (`observedGeneration`, `notAfter`), so
//! the views read like the objects they describe and pipe into the same tools; the keys are
//! part of the interface and stay stable.
//!
//! Readiness stays up while the source is stale: replicas keep serving the last snapshot
//! (fail static) and the body says why it may be stale. Only a source that has never
//! delivered a complete view makes a replica unready.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use crate::metrics::{
    DeliveryLabels, Metrics, ReadyLabels, ResourceDeliveryLabels, ResourceLabels, ResultLabels,
};
use crate::pipeline::Published;
use crate::sds::clients::ClientRegistry;
use crate::sds::delivery::Delivery;

#[derive(Clone)]
struct AdminState {
    published: Published,
    metrics: Arc<Metrics>,
    clients: Arc<ClientRegistry>,
}

pub fn router(published: Published, metrics: Arc<Metrics>, clients: Arc<ClientRegistry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/bundles", get(bundles))
        .route("/statuses", get(statuses))
        .route("/clients", get(list_clients))
        .with_state(AdminState {
            published,
            metrics,
            clients,
        })
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let health = s.published.health.borrow().clone();
    match (&health.synced, &health.error) {
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: source has not synced yet\n".to_owned(),
        ),
        (true, Some(e)) => (StatusCode::OK, format!("ready (source stale: {e})\n")),
        (true, None) => (StatusCode::OK, "ready\n".to_owned()),
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    // Gauges derived from the published state are refreshed at scrape time.
    let snapshot = s.published.snapshot.borrow().clone();
    s.metrics.bundle_expiry.clear();
    for (name, bundle) in &snapshot.resources {
        if let Some(first) = bundle.earliest_expiry() {
            let labels = ResourceLabels {
                resource: name.to_string(),
            };
            s.metrics
                .bundle_expiry
                .get_or_create(&labels)
                .set(first.not_after);
        }
    }
    let mut states = [0i64; 3];
    s.metrics.resource_deliveries.clear();
    for (name, d) in &super::deliveries(&s.clients, &snapshot) {
        let counts = [d.acked as i64, d.rejected as i64, d.pending as i64];
        for (i, (state, n)) in ["acked", "rejected", "pending"]
            .into_iter()
            .zip(counts)
            .enumerate()
        {
            states[i] += n;
            s.metrics
                .resource_deliveries
                .get_or_create(&ResourceDeliveryLabels {
                    resource: name.to_string(),
                    state,
                })
                .set(n);
        }
    }
    for (state, n) in ["acked", "rejected", "pending"].into_iter().zip(states) {
        s.metrics
            .deliveries
            .get_or_create(&DeliveryLabels { state })
            .set(n);
    }
    let statuses = s.published.statuses.borrow().clone();
    let ready = statuses.values().filter(|c| c.ready).count() as i64;
    s.metrics
        .statuses
        .get_or_create(&ReadyLabels { ready: "true" })
        .set(ready);
    s.metrics
        .statuses
        .get_or_create(&ReadyLabels { ready: "false" })
        .set(statuses.len() as i64 - ready);
    let upstreams = s.published.upstreams.borrow().clone();
    s.metrics.upstreams.clear();
    for c in upstreams.values() {
        s.metrics
            .upstreams
            .get_or_create(&ResultLabels {
                result: c.reason.clone(),
            })
            .inc();
    }
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

#[derive(serde::Serialize)]
struct BundleView<'a> {
    name: &'a str,
    version: &'a str,
    certificates: Vec<&'a crate::bundle::CertSummary>,
    /// Who holds, rejected or has not answered the current version.
    delivery: Option<&'a Delivery>,
}

async fn bundles(State(s): State<AdminState>) -> impl IntoResponse {
    let snapshot = s.published.snapshot.borrow().clone();
    let deliveries = super::deliveries(&s.clients, &snapshot);
    let views: Vec<BundleView<'_>> = snapshot
        .resources
        .iter()
        .map(|(name, b)| BundleView {
            name,
            version: b.version(),
            certificates: b.certificates().collect(),
            delivery: deliveries.get(name),
        })
        .collect();
    Json(serde_json::to_value(views).unwrap_or_default())
}

#[derive(serde::Serialize)]
struct StatusView<'a> {
    target: &'a crate::status::StatusTarget,
    #[serde(flatten)]
    condition: &'a crate::status::Condition,
    /// The delivery of the resource the object's bundle is served as, while served.
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery: Option<&'a Delivery>,
}

/// An `UpstreamTrusted` result: `status` is `True`, `False` or `Unknown`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamView<'a> {
    target: &'a crate::status::StatusTarget,
    status: &'static str,
    reason: &'a str,
    message: &'a str,
    observed_generation: Option<i64>,
}

async fn statuses(State(s): State<AdminState>) -> impl IntoResponse {
    let statuses = s.published.statuses.borrow().clone();
    let upstreams = s.published.upstreams.borrow().clone();
    let health = s.published.health.borrow().clone();
    let snapshot = s.published.snapshot.borrow().clone();
    let deliveries = super::deliveries(&s.clients, &snapshot);
    let views: Vec<StatusView<'_>> = statuses
        .iter()
        .map(|(target, condition)| StatusView {
            target,
            condition,
            delivery: deliveries.get(target.resource_name().to_string().as_str()),
        })
        .collect();
    let upstream_views: Vec<UpstreamView<'_>> = upstreams
        .iter()
        .map(|(target, c)| UpstreamView {
            target,
            status: c.status_str(),
            reason: &c.reason,
            message: &c.message,
            observed_generation: c.observed_generation,
        })
        .collect();
    Json(serde_json::json!({ "source": *health, "statuses": views, "upstreams": upstream_views }))
}

async fn list_clients(State(s): State<AdminState>) -> impl IntoResponse {
    Json(serde_json::to_value(s.clients.list()).unwrap_or_default())
}
