//! `MCPGatewayExtension` (group `mcp.kuadrant.io`), versions `v1` (stored) and `v1alpha1`.
//! trust-sds reads `caCertBundleRef` and `targetRef`; the other upstream fields are modelled
//! so a CRD generated from these types keeps them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared::{CaSecretReference, GatewayReference, Toggle};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedHeadersKey {
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Toggle>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStore {
    pub secret_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OauthProtectedResource {
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_methods_supported: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_supported: Option<Vec<String>>,
}

macro_rules! extension_version {
    ($version:literal) => {
        /// Configures the MCP gateway attached to a Gateway listener.
        #[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[kube(
            group = "mcp.kuadrant.io",
            version = $version,
            kind = "MCPGatewayExtension",
            plural = "mcpgatewayextensions",
            shortname = "mcpge",
            namespaced,
            status = "MCPGatewayExtensionStatus",
            printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
        )]
        #[serde(rename_all = "camelCase")]
        pub struct MCPGatewayExtensionSpec {
            pub target_ref: GatewayReference,
            /// Gateway-wide CA bundle: the base of every bundle this gateway serves.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub ca_cert_bundle_ref: Option<CaSecretReference>,
            #[serde(default, rename = "gatewayCACertSecretRef", skip_serializing_if = "Option::is_none")]
            pub gateway_ca_cert_secret_ref: Option<CaSecretReference>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub public_host: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub private_host: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 10, max = 7200))]
            pub backend_ping_interval_seconds: Option<i32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub trusted_headers_key: Option<TrustedHeadersKey>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub http_route_management: Option<Toggle>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub log_level: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub session_store: Option<SessionStore>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub url_elicitation: Option<Toggle>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub oauth_protected_resource: Option<OauthProtectedResource>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub protocol_mode: Option<String>,
        }

        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct MCPGatewayExtensionStatus {
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
            pub conditions: Vec<Condition>,
        }
    };
}

pub mod v1 {
    use super::*;
    extension_version!("v1");
}

pub mod v1alpha1 {
    use super::*;
    extension_version!("v1alpha1");
}
