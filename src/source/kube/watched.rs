//! What the Kubernetes source watches, one watcher each: the id that health, recovery and
//! logs use, and, for the custom and Gateway API kinds, where they are served (for the
//! discovery and recovery requests, which list them as dynamic objects). An enum, so a
//! watcher the recovery probe does not know is a compile error, not a silent `false`.

use std::fmt;

use super::RegistrationVersion;
use crate::model::Kind;

const ROUTE_API: &str = "gateway.networking.k8s.io/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Watched {
    Registrations,
    Extensions,
    Routes,
    /// Labelled Secrets, in full.
    LabelledSecrets,
    /// Every Secret's metadata (never its data).
    SecretMetadata,
}

/// Where a dynamically read kind is served.
#[derive(Clone, Copy, Debug)]
pub(super) struct Served {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Watched {
    /// The kinds whose serving is discovered (the Secret watches are always there).
    pub const DYNAMIC: [Watched; 3] =
        [Watched::Registrations, Watched::Extensions, Watched::Routes];

    /// Where a dynamic kind is served (`None` for the Secret watches, which are typed).
    pub fn served(self, version: RegistrationVersion) -> Option<Served> {
        let (api_version, kind, plural) = match self {
            Watched::Registrations => (
                version.api_version(),
                "MCPServerRegistration",
                "mcpserverregistrations",
            ),
            Watched::Extensions => (
                version.api_version(),
                "MCPGatewayExtension",
                "mcpgatewayextensions",
            ),
            Watched::Routes => (ROUTE_API, "HTTPRoute", "httproutes"),
            Watched::LabelledSecrets | Watched::SecretMetadata => return None,
        };
        Some(Served {
            api_version,
            kind,
            plural,
        })
    }

    /// The model kind a dynamic watcher's objects become.
    pub fn object_kind(self) -> Kind {
        match self {
            Watched::Registrations => Kind::Registration,
            Watched::Extensions => Kind::Extension,
            Watched::Routes => Kind::Route,
            Watched::LabelledSecrets | Watched::SecretMetadata => Kind::Secret,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Watched::Registrations => "MCPServerRegistration",
            Watched::Extensions => "MCPGatewayExtension",
            Watched::Routes => "HTTPRoute",
            Watched::LabelledSecrets => "Secret (labelled)",
            Watched::SecretMetadata => "Secret (metadata)",
        }
    }
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}
