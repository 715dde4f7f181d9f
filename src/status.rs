//! Status results of translation: one `Ready` condition per registration or extension that
//! trust-sds is responsible for. Written to Kubernetes by the status writer, shown by the
//! admin API and `trust-sds status` in every mode.

use crate::model::ObjectKey;

/// Whose status a condition belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(tag = "kind", content = "object")]
pub enum StatusTarget {
    #[serde(rename = "MCPServerRegistration")]
    Registration(ObjectKey),
    #[serde(rename = "MCPGatewayExtension")]
    Extension(ObjectKey),
}

impl StatusTarget {
    /// The resource the object's bundle is served as.
    pub fn resource_name(&self) -> crate::model::ResourceName {
        match self {
            StatusTarget::Registration(k) => crate::model::ResourceName::Registration(k.clone()),
            StatusTarget::Extension(k) => crate::model::ResourceName::Gateway(k.clone()),
        }
    }
}

impl StatusTarget {
    pub fn key(&self) -> &ObjectKey {
        match self {
            StatusTarget::Registration(k) | StatusTarget::Extension(k) => k,
        }
    }
}

/// A `Ready` condition (lastTransitionTime is the writer's business).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub ready: bool,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
    /// Status `Unknown` (then `ready` is false): used by `UpstreamTrusted` when the
    /// upstream gave no TLS answer. `Ready` conditions are never unknown.
    #[serde(skip)]
    pub unknown: bool,
}

impl Condition {
    pub fn ready(reason: &str, message: String, generation: Option<i64>) -> Self {
        Self {
            ready: true,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            unknown: false,
        }
    }

    pub fn not_ready(reason: &str, message: String, generation: Option<i64>) -> Self {
        Self {
            ready: false,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            unknown: false,
        }
    }

    /// Status `Unknown`: the question could not be answered (e.g. no TLS answer).
    pub fn unknown(reason: &str, message: String, generation: Option<i64>) -> Self {
        Self {
            unknown: true,
            ..Self::not_ready(reason, message, generation)
        }
    }

    /// "True", "False" or "Unknown", as Kubernetes writes it.
    pub fn status_str(&self) -> &'static str {
        match (self.ready, self.unknown) {
            (true, _) => "True",
            (false, false) => "False",
            (false, true) => "Unknown",
        }
    }
}

impl serde::Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
