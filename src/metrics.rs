//! Prometheus metrics. One [`Metrics`] value is shared by the SDS server, the pipeline
//! views and the admin endpoint that renders it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which discovery API a stream uses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceDeliveryLabels {
    pub resource: String,
    /// `acked`, `rejected` or `pending`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `acked`, `rejected` or `pending`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: &'static str,
}

/// The reason of an upstream verification (`Verified`, `UnknownIssuer`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NackLabels {
    pub api: &'static str,
    /// The gRPC code of the client's `error_detail`, e.g. `InvalidArgument`.
    pub reason: String,
}

pub struct Metrics {
    pub streams: Family<ApiLabels, Gauge>,
    pub responses: Family<ApiLabels, Counter>,
    pub resources_sent: Family<ApiLabels, Counter>,
    pub acks: Family<ApiLabels, Counter>,
    pub nacks: Family<ApiLabels, Counter>,
    pub nacks_by_reason: Family<NackLabels, Counter>,
    /// Seconds from a source event reaching the pipeline to the snapshot with it published.
    pub source_lag: Histogram,
    /// 1 while the source reports an error (serving its last state), else 0.
    pub source_stale: Gauge,
    pub rejected_requests: Family<ApiLabels, Counter>,
    /// Streams refused or ended because a client broke a limit.
    pub limit_rejections: Family<LimitLabels, Counter>,
    /// SDS connections closed because the client left a keepalive ping unanswered.
    pub keepalive_timeouts: Counter,
    /// Seconds from a snapshot's publication to a stream writing its response.
    pub push_latency: Histogram,
    pub snapshots: Counter,
    pub bundle_expiry: Family<ResourceLabels, Gauge>,
    pub statuses: Family<ReadyLabels, Gauge>,
    /// Times another writer changed trust-sds's condition on an object (each one is
    /// restored, after a backoff while it keeps happening).
    pub status_conflicts: Counter,
    /// (subscriber, resource) pairs by what the subscriber did with the current version.
    pub deliveries: Family<DeliveryLabels, Gauge>,
    /// The same per served resource.
    pub resource_deliveries: Family<ResourceDeliveryLabels, Gauge>,
    /// Upstream TLS handshakes done by `--verify-upstreams`, by result.
    pub upstream_verifications: Family<ResultLabels, Counter>,
    /// Registrations per current `UpstreamTrusted` reason (refreshed at scrape time).
    pub upstreams: Family<ResultLabels, Gauge>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trust_sds");
        let m = Self {
            streams: Family::default(),
            responses: Family::default(),
            resources_sent: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            nacks_by_reason: Family::default(),
            source_lag: Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            source_stale: Gauge::default(),
            rejected_requests: Family::default(),
            limit_rejections: Family::default(),
            keepalive_timeouts: Counter::default(),
            push_latency: Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            snapshots: Counter::default(),
            bundle_expiry: Family::default(),
            statuses: Family::default(),
            status_conflicts: Counter::default(),
            deliveries: Family::default(),
            resource_deliveries: Family::default(),
            upstream_verifications: Family::default(),
            upstreams: Family::default(),
            registry: Registry::default(),
        };
        registry.register("sds_streams", "Open SDS streams", m.streams.clone());
        registry.register(
            "sds_responses",
            "Discovery responses sent",
            m.responses.clone(),
        );
        registry.register(
            "sds_resources_sent",
            "Resources sent in responses",
            m.resources_sent.clone(),
        );
        registry.register(
            "sds_acks",
            "Responses acknowledged by clients",
            m.acks.clone(),
        );
        registry.register(
            "sds_nacks",
            "Responses rejected by clients (NACK)",
            m.nacks.clone(),
        );
        registry.register(
            "sds_nacks_by_reason",
            "Responses rejected by clients (NACK), by the gRPC code of their error_detail",
            m.nacks_by_reason.clone(),
        );
        registry.register(
            "source_lag_seconds",
            "Source event reaching the pipeline to the snapshot with it published",
            m.source_lag.clone(),
        );
        registry.register(
            "source_stale",
            "1 while the source reports an error and its last state is served",
            m.source_stale.clone(),
        );
        registry.register(
            "sds_rejected_requests",
            "Requests refused: unsupported type URL, or too many names (stream closed)",
            m.rejected_requests.clone(),
        );
        registry.register(
            "sds_limit_rejections",
            "Streams refused or closed because the client broke a limit, by limit",
            m.limit_rejections.clone(),
        );
        registry.register(
            "sds_keepalive_timeouts",
            "SDS connections closed because the client left a keepalive ping unanswered",
            m.keepalive_timeouts.clone(),
        );
        registry.register(
            "sds_push_latency_seconds",
            "Snapshot publication to response written",
            m.push_latency.clone(),
        );
        registry.register("snapshots", "Snapshots published", m.snapshots.clone());
        registry.register(
            "bundle_expiry_timestamp_seconds",
            "Earliest certificate expiry of each served bundle (Unix seconds)",
            m.bundle_expiry.clone(),
        );
        registry.register("statuses", "Ready conditions by value", m.statuses.clone());
        registry.register(
            "status_conflicts",
            "Times another field manager overwrote trust-sds's condition on an object",
            m.status_conflicts.clone(),
        );
        registry.register(
            "sds_deliveries",
            "Subscriptions to served resources by what the subscriber did with the current version: acked (holds it), rejected (NACK), pending",
            m.deliveries.clone(),
        );
        registry.register(
            "sds_resource_deliveries",
            "Subscribers of each served resource by what they did with its current version: acked, rejected (NACK), pending",
            m.resource_deliveries.clone(),
        );
        registry.register(
            "upstream_verifications",
            "Upstream TLS handshakes by --verify-upstreams, by result (the UpstreamTrusted reason)",
            m.upstream_verifications.clone(),
        );
        registry.register(
            "upstreams",
            "Registrations by the reason of their current UpstreamTrusted condition",
            m.upstreams.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one upstream verification by its result.
    pub fn upstream_verified(&self, result: &str) {
        self.upstream_verifications
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a NACK by the gRPC code the client gave.
    pub fn nacked(&self, api: &'static str, code: i32) {
        let reason = format!("{:?}", tonic::Code::from_i32(code));
        self.nacks_by_reason
            .get_or_create(&NackLabels { api, reason })
            .inc();
    }

    /// Counts a stream refused or closed by `limit`.
    pub fn limit_refused(&self, limit: crate::sds::limits::Limit) {
        self.limit_rejections
            .get_or_create(&LimitLabels {
                limit: limit.label(),
            })
            .inc();
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
