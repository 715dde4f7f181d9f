//! trust-sds as it is deployed, on the real control plane (`control_plane`): the kustomize
//! base applied as it is, TokenRequest tokens of its ServiceAccount, `serve --kube` replicas
//! with leader election run as that ServiceAccount, and the objects the tests write.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::control_plane::{ControlPlane, free_port, trust_sds_release};

/// The namespace of the kustomize base (its Lease lives there).
pub const NS: &str = "trust-sds-system";
pub const LABEL: &str = "mcp.kuadrant.io/secret";

/// A running `trust-sds serve --kube`, killed on drop.
pub struct Replica {
    pub child: Child,
    pub sds_port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Replica {
    pub async fn start(plane: &ControlPlane, kubeconfig: &Path, identity: &str) -> Replica {
        Self::start_in(plane, kubeconfig, NS, identity).await
    }

    /// A replica whose Lease lives in `lease_ns` (its own namespace in a cluster).
    pub async fn start_in(
        plane: &ControlPlane,
        kubeconfig: &Path,
        lease_ns: &str,
        identity: &str,
    ) -> Replica {
        let (sds_port, admin_port) = (free_port(), free_port());
        let log = plane.dir.path().join(format!("trust-sds-{identity}.log"));
        let child = Command::new(trust_sds_release())
            .args([
                "serve",
                "--kube",
                "--leader-elect",
                lease_ns,
                "--identity",
                identity,
                "--listen",
                &format!("127.0.0.1:{sds_port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,trust_sds::status_writer=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start trust-sds");
        let replica = Replica {
            child,
            sds_port,
            admin_port,
            log,
        };
        replica.wait_ready().await;
        replica
    }

    pub async fn wait_ready(&self) {
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let answer = super::envoy::http_get(self.admin_port, "/readyz").await;
                if answer.is_some_and(|(code, _)| code == 200) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "trust-sds not ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The deploy applied as it is, and a TokenRequest token of its ServiceAccount.
pub async fn deployed(plane: &ControlPlane) -> PathBuf {
    let repo = env!("CARGO_MANIFEST_DIR");
    let (ok, out, err) = plane
        .kubectl(&["apply", "-k", &format!("{repo}/deploy/kustomize")])
        .await;
    assert!(ok, "kubectl apply -k deploy/kustomize: {err}\n{out}");
    let (ok, _, err) = plane
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/mcpserverregistrations.mcp.kuadrant.io",
            "crd/mcpgatewayextensions.mcp.kuadrant.io",
        ])
        .await;
    assert!(ok, "{err}");
    service_account_kubeconfig(plane, NS).await
}

/// A kubeconfig with a TokenRequest token of the ServiceAccount `trust-sds` in `ns`.
pub async fn service_account_kubeconfig(plane: &ControlPlane, ns: &str) -> PathBuf {
    let (ok, token, err) = plane
        .kubectl(&["create", "token", "trust-sds", "-n", ns])
        .await;
    assert!(ok, "TokenRequest: {err}");
    plane.token_kubeconfig(&format!("trust-sds-{ns}"), token.trim())
}

/// What the ServiceAccount may do with Secrets: list and watch (every Secret's metadata,
/// labelled ones whole), never get.
pub async fn assert_secret_verbs(plane: &ControlPlane, kubeconfig: &Path) {
    for (verb, want) in [("get", "no"), ("list", "yes"), ("watch", "yes")] {
        let (_, out, _) = plane
            .kubectl_as(kubeconfig, &["auth", "can-i", verb, "secrets", "-A"], None)
            .await;
        assert_eq!(out.trim(), want, "can-i {verb} secrets");
    }
}

/// A registration (`apiVersion` as given) naming `secret`.
pub fn registration(api_version: &str, ns: &str, name: &str, secret: &str) -> String {
    format!(
        "apiVersion: {api_version}\nkind: MCPServerRegistration\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\nspec:\n  prefix: {name}_\n  path: /mcp\n  targetRef:\n    group: \
         gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: {name}-route\n  \
         caCertSecretRef:\n    name: {secret}\n"
    )
}

/// A Secret with `data` (key -> text), labelled or not.
pub fn secret(ns: &str, name: &str, labelled: bool, data: &[(&str, &str)]) -> String {
    use base64::Engine as _;
    let mut yaml =
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\n");
    if labelled {
        yaml.push_str(&format!("  labels:\n    {LABEL}: \"true\"\n"));
    }
    yaml.push_str("data:\n");
    for (key, value) in data {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        yaml.push_str(&format!("  {key}: {encoded}\n"));
    }
    yaml
}

/// The `Ready` condition on a registration, as JSON.
pub async fn ready_condition(
    plane: &ControlPlane,
    ns: &str,
    name: &str,
) -> Option<serde_json::Value> {
    let (ok, out, _) = plane
        .kubectl(&[
            "get",
            "mcpserverregistrations.mcp.kuadrant.io",
            name,
            "-n",
            ns,
            "-o",
            "json",
        ])
        .await;
    if !ok {
        return None;
    }
    let object: serde_json::Value = serde_json::from_str(&out).ok()?;
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
}

/// Waits until the registration's `Ready` message is `message` (or starts with it).
pub async fn expect_message(
    plane: &ControlPlane,
    ns: &str,
    name: &str,
    status: &str,
    message: &str,
) {
    let started = Instant::now();
    loop {
        let condition = ready_condition(plane, ns, name).await;
        if let Some(c) = &condition
            && c["status"] == status
            && c["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{ns}/{name}: wanted Ready={status} {message:?}, the object says {condition:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stand-in for the Gateway API's HTTPRoute CRD (written here, unvalidated: trust-sds reads
/// only `spec.parentRefs`), so HTTPRoutes are served as in a cluster with the Gateway API.
const HTTPROUTE_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: httproutes.gateway.networking.k8s.io
  annotations:
    # *.k8s.io groups are protected; the API server accepts a CRD marked unapproved.
    api-approved.kubernetes.io: \"unapproved, a test stand-in for the Gateway API CRD\"
spec:
  group: gateway.networking.k8s.io
  names: {kind: HTTPRoute, listKind: HTTPRouteList, plural: httproutes, singular: httproute}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
";

/// The HTTPRoute stand-in CRD installed and established.
pub async fn install_gateway_api(plane: &ControlPlane) {
    plane.apply(HTTPROUTE_CRD).await;
    let (ok, _, err) = plane
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/httproutes.gateway.networking.k8s.io",
        ])
        .await;
    assert!(ok, "{err}");
}
