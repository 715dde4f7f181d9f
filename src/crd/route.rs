//! The part of a Gateway API `HTTPRoute` trust-sds reads: which Gateways it attaches to,
//! and (for `--verify-upstreams`) the backends of its rules.
//! Gateway API owns this type; it is only deserialized, never generated as a CRD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct HttpRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ObjectReference>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default)]
    pub backend_refs: Vec<BackendReference>,
}

/// A backend: an object (group `""` and kind `Service` when absent) and a port.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct BackendReference {
    #[serde(flatten)]
    pub object: ObjectReference,
    #[serde(default)]
    pub port: Option<u16>,
}

/// A reference by group, kind, name and namespace (parents and backends alike).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}
