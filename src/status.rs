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
}

impl Condition {
    pub fn ready(reason: &str, message: String, generation: Option<i64>) -> Self {
        Self {
            ready: true,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
        }
    }

    pub fn not_ready(reason: &str, message: String, generation: Option<i64>) -> Self {
        Self {
            ready: false,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
        }
    }

    /// "True" or "False", as Kubernetes writes it.
    pub fn status_str(&self) -> &'static str {
        if self.ready { "True" } else { "False" }
    }
}

impl serde::Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
