//! The Helm chart (rendered by Helm's own library, helm-python-sdk, installed by
//! scripts/test.sh) and the kustomize base describe the same objects, and the chart lints.

use std::path::Path;
use std::process::Command;

#[test]
fn helm_chart_and_kustomize_base_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/envoy-venv/bin/python");
    assert!(
        python.exists(),
        "no {}: run ./scripts/test.sh (it installs helm-python-sdk)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("scripts/check_deploy.py"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("objects compared, 0 differences"),
        "{stdout}"
    );
}
