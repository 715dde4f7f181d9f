//! Which resource names a client may read.
//!
//! A policy maps client identities (URI or DNS SANs of the mTLS client certificate, or
//! `node:<id>` for clients on the Unix socket, where the node id cannot come from a remote
//! peer) to namespaces. `"*"` grants every namespace and is the only grant that allows a
//! wildcard subscription, so a wildcard never reaches another tenant's bundles. Without a
//! policy every client may read everything (the default for a single-tenant gateway).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context as _;

use crate::model::ResourceName;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Rule {
    pub identity: String,
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Authz {
    pub clients: Vec<Rule>,
}

/// The namespace a resource name belongs to; `None` for a string that is no resource name
/// (nothing is served under it, so no grant covers it).
pub fn namespace_of(name: &str) -> Option<String> {
    name.parse::<ResourceName>()
        .ok()
        .map(|n| n.namespace().to_owned())
}

impl Authz {
    pub fn from_yaml(text: &str) -> anyhow::Result<Self> {
        let policy: Authz = serde_yaml_ng::from_str(text).context(
            "invalid authorization policy (expected `clients: [{identity, namespaces}]`)",
        )?;
        Ok(policy)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_yaml(&text).with_context(|| path.display().to_string())
    }

    fn grants(&self, identities: &[String]) -> BTreeSet<&str> {
        self.clients
            .iter()
            .filter(|r| identities.contains(&r.identity))
            .flat_map(|r| r.namespaces.iter().map(String::as_str))
            .collect()
    }

    /// `Err` names what is refused and why, for PERMISSION_DENIED.
    pub fn check(
        &self,
        identities: &[String],
        names: &[&str],
        wildcard: bool,
    ) -> Result<(), String> {
        let grants = self.grants(identities);
        let who = if identities.is_empty() {
            "an unidentified client".to_owned()
        } else {
            identities.join(", ")
        };
        if grants.contains("*") {
            return Ok(());
        }
        if wildcard {
            return Err(format!(
                "{who} may not subscribe to every resource (wildcard); name the resources"
            ));
        }
        for name in names {
            let allowed = namespace_of(name).is_some_and(|ns| grants.contains(ns.as_str()));
            if !allowed {
                return Err(format!("{who} may not read {name}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Authz {
        Authz::from_yaml("clients:\n- identity: team-client\n  namespaces: [gateway, team]\n")
            .unwrap()
    }

    /// A registration in a namespace called `gateway` is `gateway/<name>`: the grant of
    /// `gateway` covers it, and it is never taken for a gateway bundle.
    #[test]
    fn a_namespace_called_gateway_is_an_ordinary_namespace() {
        let who = ["team-client".to_owned()];
        let authz = policy();
        assert_eq!(authz.check(&who, &["gateway/foo"], false), Ok(()));
        assert_eq!(authz.check(&who, &["gateway/team/mcp"], false), Ok(()));
        assert_eq!(
            authz.check(&who, &["gateway/other/mcp"], false),
            Err("team-client may not read gateway/other/mcp".to_owned())
        );
        assert!(
            authz.check(&who, &["team"], false).is_err(),
            "no resource name"
        );
        assert!(
            authz.check(&who, &["a/b/c"], false).is_err(),
            "no resource name"
        );
    }
}
