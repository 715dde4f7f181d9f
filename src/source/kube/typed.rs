//! The kinds the Kubernetes source watches as typed objects, each behind kube's
//! `DeserializeGuard`: an object that does not decode arrives as an error with its metadata
//! instead of failing the whole list or watch, and is skipped and logged. No object goes
//! through JSON again on its way to the model.

use kube::Resource;
use kube::core::NamespaceResourceScope;
use serde::de::DeserializeOwned;

use crate::crd::convert::{self, DecodeError};
use crate::crd::route::HttpRoute;
use crate::crd::{extension, registration};
use crate::model::Object;

/// A watched kind: how one object becomes a model object, and what of it the status writer
/// compares (its metadata and status, for the kinds trust-sds writes status on).
pub(super) trait Watchable:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn to_object(&self) -> Result<Object, DecodeError>;

    /// `metadata` and `status` as the status writer reads them (`Null` for kinds it does
    /// not write).
    fn observed(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Registrations and extensions: converted like manifests, observed by the status writer.
macro_rules! watchable {
    ($type:ty, $convert:path, $variant:ident) => {
        impl Watchable for $type {
            fn to_object(&self) -> Result<Object, DecodeError> {
                // The API server always sets the namespace of a namespaced object.
                Ok(Object::$variant($convert(self, "default")?))
            }

            fn observed(&self) -> serde_json::Value {
                serde_json::json!({ "metadata": self.metadata, "status": self.status })
            }
        }
    };
}

watchable!(
    registration::v1::MCPServerRegistration,
    convert::registration_v1,
    Registration
);
watchable!(
    registration::v1alpha1::MCPServerRegistration,
    convert::registration_v1alpha1,
    Registration
);
watchable!(
    extension::v1::MCPGatewayExtension,
    convert::extension_v1,
    Extension
);
watchable!(
    extension::v1alpha1::MCPGatewayExtension,
    convert::extension_v1alpha1,
    Extension
);

impl Watchable for HttpRoute {
    fn to_object(&self) -> Result<Object, DecodeError> {
        Ok(Object::Route(convert::route(self, "default")?))
    }
}

/// Gateway API owns `HTTPRoute`; trust-sds reads the fields it needs from `v1`.
impl Resource for HttpRoute {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "HTTPRoute".into()
    }

    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "gateway.networking.k8s.io".into()
    }

    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "httproutes".into()
    }

    fn meta(&self) -> &kube::api::ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
        &mut self.metadata
    }
}
