//! `MCPServerRegistration` (group `mcp.kuadrant.io`), versions `v1` (stored) and `v1alpha1`.
//!
//! Every upstream spec field is modelled, so that a CRD generated from these types never
//! prunes fields other controllers use. trust-sds reads only `caCertSecretRef`,
//! `targetRef` and `state`, and writes only the `Ready` condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::shared::{Toggle, TokenUrlElicitation};

/// Fields shared by both served versions (DESIGN.md: same schema).
macro_rules! registration_version {
    ($version:literal) => {
        /// Registers an upstream MCP server with the gateway.
        #[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[kube(
            group = "mcp.kuadrant.io",
            version = $version,
            kind = "MCPServerRegistration",
            plural = "mcpserverregistrations",
            shortname = "mcpsr",
            namespaced,
            status = "MCPServerRegistrationStatus",
            printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".spec.prefix"}"#,
            printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
            printcolumn = r#"{"name":"Path","type":"string","jsonPath":".spec.path"}"#,
            printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
        )]
        #[serde(rename_all = "camelCase")]
        pub struct MCPServerRegistrationSpec {
            /// The HTTPRoute that routes to the upstream MCP server.
            pub target_ref: crate::crd::shared::RouteReference,
            /// Prefix added to the names of the server's tools.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_]*$"))]
            pub prefix: Option<String>,
            /// Path of the MCP endpoint on the upstream (default `/mcp`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub path: Option<String>,
            /// Secret with a credential the broker sends upstream.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub credential_ref: Option<crate::crd::shared::CredentialReference>,
            /// `Disabled` stops serving the registration (and its CA bundle).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub state: Option<Toggle>,
            /// Secret (labelled `mcp.kuadrant.io/secret=true`) with the upstream's CA bundle.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub ca_cert_secret_ref: Option<crate::crd::shared::CaSecretReference>,
            #[serde(default, rename = "tokenURLElicitation", skip_serializing_if = "Option::is_none")]
            pub token_url_elicitation: Option<TokenUrlElicitation>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub user_specific_list: Option<Toggle>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(max = 3))]
            pub category: Option<Vec<String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(max = 256))]
            pub hint: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(max = 10))]
            pub tags: Option<Vec<String>>,
        }

        /// Status written by the gateway's controllers; trust-sds owns the `Ready` condition.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct MCPServerRegistrationStatus {
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
            pub conditions: Vec<Condition>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub discovered_tools: Option<i32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub discovered_resources: Option<i32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub last_validated_generation: Option<i64>,
        }
    };
}

pub mod v1 {
    use super::*;
    registration_version!("v1");
}

pub mod v1alpha1 {
    use super::*;
    registration_version!("v1alpha1");
}
