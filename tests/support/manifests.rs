//! Manifest text builders for the manifests source.

pub fn secret_yaml(ns: &str, name: &str, pem: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    mcp.kuadrant.io/secret: \"true\"\nstringData:\n  ca.crt: |\n{indented}"
    )
}

pub fn registration_yaml(ns: &str, name: &str, secret: &str) -> String {
    format!(
        "apiVersion: mcp.kuadrant.io/v1alpha1\nkind: MCPServerRegistration\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  prefix: {name}_\n  targetRef:\n    group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: {name}-route\n  caCertSecretRef:\n    name: {secret}\n"
    )
}

/// Writes `content` to `path` atomically (temp file + rename), as editors and kubelet do.
pub fn write_atomic(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
