//! Domain types: what the translation needs to know about the cluster, free of Kubernetes
//! API types so that the index, translation and SDS layers can be tested on their own.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The label that opts a Secret in to being read by trust-sds.
pub const SECRET_LABEL: &str = "mcp.kuadrant.io/secret";
/// The key used when a reference names none.
pub const DEFAULT_CA_KEY: &str = "ca.crt";

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The name of a served resource: a registration's bundle (`<namespace>/<registration>`)
/// or a gateway's base bundle alone (`gateway/<namespace>/<extension>`).
///
/// Kubernetes names never contain `/`, so the number of segments tells the two apart: a
/// registration in a namespace called `gateway` is `gateway/<name>`, never a gateway bundle.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceName {
    Registration(ObjectKey),
    Gateway(ObjectKey),
}

/// The first segment of a gateway bundle's resource name.
pub const GATEWAY_RESOURCE_SEGMENT: &str = "gateway";

impl ResourceName {
    /// The namespace of the object the resource comes from (what authorization grants).
    pub fn namespace(&self) -> &str {
        match self {
            ResourceName::Registration(k) | ResourceName::Gateway(k) => &k.namespace,
        }
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceName::Registration(k) => write!(f, "{k}"),
            ResourceName::Gateway(k) => write!(f, "{GATEWAY_RESOURCE_SEGMENT}/{k}"),
        }
    }
}

/// A string that is not a resource name; says what the forms are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a resource name: expected <namespace>/<registration> or gateway/<namespace>/<extension>"
)]
pub struct InvalidResourceName(pub String);

impl std::str::FromStr for ResourceName {
    type Err = InvalidResourceName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidResourceName(s.to_owned());
        let segments: Vec<&str> = s.split('/').collect();
        if segments.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        match segments.as_slice() {
            [ns, name] => Ok(ResourceName::Registration(ObjectKey::new(*ns, *name))),
            [GATEWAY_RESOURCE_SEGMENT, ns, name] => {
                Ok(ResourceName::Gateway(ObjectKey::new(*ns, *name)))
            }
            _ => Err(invalid()),
        }
    }
}

/// A reference to one key of a Secret in the referrer's namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl SecretKeyRef {
    pub fn new(name: impl Into<String>, key: Option<&str>) -> Self {
        let key = key.filter(|k| !k.is_empty()).unwrap_or(DEFAULT_CA_KEY);
        Self {
            name: name.into(),
            key: key.to_owned(),
        }
    }
}

/// An `MCPServerRegistration`, reduced to what trust-sds uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub ca_cert_secret_ref: Option<SecretKeyRef>,
    /// The HTTPRoute the registration targets (namespace defaulted to the registration's).
    pub target_route: Option<ObjectKey>,
    pub disabled: bool,
    /// What upstream verification needs beyond the route: `spec.path` and the
    /// `trust-sds.io/verify-*` annotations.
    pub upstream: UpstreamHints,
}

/// The parts of a registration that say where its upstream is, for `--verify-upstreams`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamHints {
    /// `spec.path` (the broker's default `/mcp` when absent).
    pub path: Option<String>,
    /// Annotation `trust-sds.io/verify-url`: the whole URL, instead of the derived one.
    pub verify_url: Option<String>,
    /// Annotation `trust-sds.io/verify-connect-to`: `IP:PORT` to connect to instead of the
    /// URL's host (which still sets SNI and the name check).
    pub verify_connect_to: Option<String>,
}

/// Annotation: the URL upstream verification uses, replacing the derived one.
pub const VERIFY_URL_ANNOTATION: &str = "trust-sds.io/verify-url";
/// Annotation: the address upstream verification connects to.
pub const VERIFY_CONNECT_TO_ANNOTATION: &str = "trust-sds.io/verify-connect-to";

/// An `MCPGatewayExtension`, reduced to what trust-sds uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayExtension {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub ca_cert_bundle_ref: Option<SecretKeyRef>,
    /// The Gateway the extension targets (namespace defaulted to the extension's).
    pub target_gateway: Option<ObjectKey>,
}

/// An HTTPRoute, reduced to the Gateways it attaches to and where it sends traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub key: ObjectKey,
    pub parent_gateways: Vec<ObjectKey>,
    /// The first `backendRef` of the first rule: the upstream the broker calls.
    pub first_backend: Option<Backend>,
}

/// A route's backend, as the broker resolves it to a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A Kubernetes Service (namespace defaulted to the route's).
    Service {
        namespace: String,
        name: String,
        port: Option<u16>,
    },
    /// An Istio `networking.istio.io/Hostname` backend: an external host name.
    Hostname { host: String, port: Option<u16> },
}

/// A Secret as trust-sds may see it.
///
/// The data of a Secret without the opt-in label is never kept: `data` is `None` and only the
/// fact that the Secret exists is known (so "missing label" can be told from "not found").
#[derive(Clone, PartialEq, Eq)]
pub struct SecretObject {
    pub key: ObjectKey,
    pub data: Option<BTreeMap<String, Arc<[u8]>>>,
}

impl SecretObject {
    /// A Secret whose label opted it in, with its data.
    pub fn labelled(key: ObjectKey, data: BTreeMap<String, Arc<[u8]>>) -> Self {
        Self {
            key,
            data: Some(data),
        }
    }

    /// A Secret that exists but did not opt in: no data is held.
    pub fn unlabelled(key: ObjectKey) -> Self {
        Self { key, data: None }
    }

    pub fn is_labelled(&self) -> bool {
        self.data.is_some()
    }
}

// Secret bytes must never reach logs: Debug shows key names and sizes only.
impl fmt::Debug for SecretObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Option<BTreeMap<&str, usize>> = self
            .data
            .as_ref()
            .map(|d| d.iter().map(|(k, v)| (k.as_str(), v.len())).collect());
        f.debug_struct("SecretObject")
            .field("key", &self.key)
            .field("data_sizes", &keys)
            .finish()
    }
}

/// Whether a label map opts a Secret in.
pub fn has_opt_in_label<'a>(mut labels: impl Iterator<Item = (&'a str, &'a str)>) -> bool {
    labels.any(|(k, v)| k == SECRET_LABEL && v == "true")
}

/// Every kind of object a source can deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Registration(Registration),
    Extension(GatewayExtension),
    Route(Route),
    Secret(SecretObject),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Registration(_) => Kind::Registration,
            Object::Extension(_) => Kind::Extension,
            Object::Route(_) => Kind::Route,
            Object::Secret(_) => Kind::Secret,
        }
    }

    pub fn key(&self) -> &ObjectKey {
        match self {
            Object::Registration(o) => &o.key,
            Object::Extension(o) => &o.key,
            Object::Route(o) => &o.key,
            Object::Secret(o) => &o.key,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Registration,
    Extension,
    Route,
    Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_round_trip_and_are_told_apart_by_segments() {
        for (text, name) in [
            (
                "team/weather",
                ResourceName::Registration(ObjectKey::new("team", "weather")),
            ),
            (
                "gateway/foo",
                ResourceName::Registration(ObjectKey::new("gateway", "foo")),
            ),
            (
                "gateway/team/mcp",
                ResourceName::Gateway(ObjectKey::new("team", "mcp")),
            ),
        ] {
            assert_eq!(text.parse::<ResourceName>(), Ok(name.clone()));
            assert_eq!(name.to_string(), text);
        }
        assert_eq!(
            "gateway/team/mcp"
                .parse::<ResourceName>()
                .unwrap()
                .namespace(),
            "team"
        );
        for bad in [
            "",
            "team",
            "/x",
            "team/",
            "a/b/c",
            "gateway//x",
            "gateway/a/b/c",
        ] {
            let err = bad.parse::<ResourceName>().unwrap_err();
            assert!(
                err.to_string().contains("is not a resource name"),
                "{bad}: {err}"
            );
        }
    }
}
