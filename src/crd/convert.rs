//! Kubernetes objects -> domain objects.
//!
//! Secrets are reduced here, at the edge: the data of a Secret without the opt-in label is
//! dropped before it reaches anything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::extension;
use super::registration;
use super::route::BackendReference;
use super::route::HttpRoute;
use super::shared::{RouteReference, Toggle};
use crate::model::{
    Backend, GatewayExtension, Object, ObjectKey, Registration, Route, SecretKeyRef, SecretObject,
    UpstreamHints, VERIFY_CONNECT_TO_ANNOTATION, VERIFY_URL_ANNOTATION, has_opt_in_label,
};

/// Why a document could not become an object.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{kind} has no metadata.name")]
    MissingName { kind: String },
    /// Serde's text could quote secret bytes, so a Secret's error names only what to check.
    #[error(
        "invalid Secret {name}: every data value must be base64 and every stringData value a string"
    )]
    InvalidSecret { name: String },
    #[error("invalid {kind}: {source}")]
    Invalid {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    /// An object a watch could not decode (kube's `DeserializeGuard` keeps serde's text).
    #[error("invalid {kind}: {message}")]
    Malformed { kind: String, message: String },
}

fn object_key(
    meta: &ObjectMeta,
    default_namespace: &str,
    kind: &str,
) -> Result<ObjectKey, DecodeError> {
    let name = meta.name.clone().ok_or_else(|| DecodeError::MissingName {
        kind: kind.to_owned(),
    })?;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| default_namespace.to_owned());
    Ok(ObjectKey::new(namespace, name))
}

fn route_key(r: &RouteReference, namespace: &str) -> Option<ObjectKey> {
    let kind_ok = r.kind.as_deref().is_none_or(|k| k == "HTTPRoute");
    kind_ok.then(|| ObjectKey::new(r.namespace.as_deref().unwrap_or(namespace), &r.name))
}

fn upstream_hints(meta: &ObjectMeta, path: Option<&str>) -> UpstreamHints {
    let annotation = |name: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(name))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    UpstreamHints {
        path: path.map(str::to_owned),
        verify_url: annotation(VERIFY_URL_ANNOTATION),
        verify_connect_to: annotation(VERIFY_CONNECT_TO_ANNOTATION),
    }
}

/// A `backendRef` as the broker reads it: a core Service, or Istio's `Hostname` kind.
fn backend(b: &BackendReference, route_namespace: &str) -> Option<Backend> {
    let (b, port) = (&b.object, b.port);
    let group = b.group.as_deref().unwrap_or_default();
    let kind = b.kind.as_deref().unwrap_or("Service");
    match (group, kind) {
        ("", "Service") => Some(Backend::Service {
            namespace: b.namespace.as_deref().unwrap_or(route_namespace).to_owned(),
            name: b.name.clone(),
            port,
        }),
        ("networking.istio.io", "Hostname") => Some(Backend::Hostname {
            host: b.name.clone(),
            port,
        }),
        _ => None,
    }
}

macro_rules! registration_from {
    ($fn_name:ident, $module:path) => {
        pub fn $fn_name(
            obj: &$module,
            default_namespace: &str,
        ) -> Result<Registration, DecodeError> {
            let key = object_key(&obj.metadata, default_namespace, "MCPServerRegistration")?;
            let spec = &obj.spec;
            Ok(Registration {
                target_route: route_key(&spec.target_ref, &key.namespace),
                ca_cert_secret_ref: spec
                    .ca_cert_secret_ref
                    .as_ref()
                    .map(|r| SecretKeyRef::new(&r.name, r.key.as_deref())),
                disabled: spec.state == Some(Toggle::Disabled),
                generation: obj.metadata.generation,
                upstream: upstream_hints(&obj.metadata, spec.path.as_deref()),
                key,
            })
        }
    };
}

registration_from!(registration_v1, registration::v1::MCPServerRegistration);
registration_from!(
    registration_v1alpha1,
    registration::v1alpha1::MCPServerRegistration
);

macro_rules! extension_from {
    ($fn_name:ident, $module:path) => {
        pub fn $fn_name(
            obj: &$module,
            default_namespace: &str,
        ) -> Result<GatewayExtension, DecodeError> {
            let key = object_key(&obj.metadata, default_namespace, "MCPGatewayExtension")?;
            let t = &obj.spec.target_ref;
            let gateway_kind = t.kind.as_deref().is_none_or(|k| k == "Gateway");
            Ok(GatewayExtension {
                ca_cert_bundle_ref: obj
                    .spec
                    .ca_cert_bundle_ref
                    .as_ref()
                    .map(|r| SecretKeyRef::new(&r.name, r.key.as_deref())),
                target_gateway: gateway_kind.then(|| {
                    ObjectKey::new(t.namespace.as_deref().unwrap_or(&key.namespace), &t.name)
                }),
                generation: obj.metadata.generation,
                key,
            })
        }
    };
}

extension_from!(extension_v1, extension::v1::MCPGatewayExtension);
extension_from!(extension_v1alpha1, extension::v1alpha1::MCPGatewayExtension);

pub fn route(obj: &HttpRoute, default_namespace: &str) -> Result<Route, DecodeError> {
    let key = object_key(&obj.metadata, default_namespace, "HTTPRoute")?;
    let parent_gateways = obj
        .spec
        .parent_refs
        .iter()
        .filter(|p| p.kind.as_deref().is_none_or(|k| k == "Gateway"))
        .map(|p| ObjectKey::new(p.namespace.as_deref().unwrap_or(&key.namespace), &p.name))
        .collect();
    let first_backend = obj
        .spec
        .rules
        .iter()
        .flat_map(|r| r.backend_refs.first())
        .next()
        .and_then(|b| backend(b, &key.namespace));
    Ok(Route {
        key,
        parent_gateways,
        first_backend,
    })
}

/// Reduces a Secret; `data` and `stringData` are merged (`stringData` wins, as the API
/// server does on write), and only kept when the opt-in label is present.
pub fn secret(obj: Secret, default_namespace: &str) -> Result<SecretObject, DecodeError> {
    let key = object_key(&obj.metadata, default_namespace, "Secret")?;
    let labelled = obj
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| has_opt_in_label(l.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    if !labelled {
        return Ok(SecretObject::unlabelled(key));
    }
    let mut data: BTreeMap<String, Arc<[u8]>> = obj
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, Arc::from(v.0)))
        .collect();
    for (k, v) in obj.string_data.unwrap_or_default() {
        data.insert(k, Arc::from(v.into_bytes()));
    }
    Ok(SecretObject::labelled(key, data))
}

/// Decodes one manifest document by its `apiVersion` and `kind`. Documents of other kinds
/// give `Ok(None)`: a manifests directory may hold anything.
pub fn decode_document(
    value: serde_json::Value,
    default_namespace: &str,
) -> Result<Option<Object>, DecodeError> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let invalid = |source| DecodeError::Invalid {
        kind: kind.clone(),
        source,
    };
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => {
            let name = value
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or("<unnamed>")
                .to_owned();
            let s: Secret =
                serde_json::from_value(value).map_err(|_| DecodeError::InvalidSecret { name })?;
            Object::Secret(secret(s, default_namespace)?)
        }
        ("mcp.kuadrant.io/v1", "MCPServerRegistration") => {
            let r = serde_json::from_value(value).map_err(invalid)?;
            Object::Registration(registration_v1(&r, default_namespace)?)
        }
        ("mcp.kuadrant.io/v1alpha1", "MCPServerRegistration") => {
            let r = serde_json::from_value(value).map_err(invalid)?;
            Object::Registration(registration_v1alpha1(&r, default_namespace)?)
        }
        ("mcp.kuadrant.io/v1", "MCPGatewayExtension") => {
            let e = serde_json::from_value(value).map_err(invalid)?;
            Object::Extension(extension_v1(&e, default_namespace)?)
        }
        ("mcp.kuadrant.io/v1alpha1", "MCPGatewayExtension") => {
            let e = serde_json::from_value(value).map_err(invalid)?;
            Object::Extension(extension_v1alpha1(&e, default_namespace)?)
        }
        (v, "HTTPRoute") if v.starts_with("gateway.networking.k8s.io/") => {
            let r = serde_json::from_value(value).map_err(invalid)?;
            Object::Route(route(&r, default_namespace)?)
        }
        _ => return Ok(None),
    };
    Ok(Some(object))
}
