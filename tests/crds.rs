//! The committed CRDs are exactly what the Rust types generate (regenerate with
//! `cargo run -- crd > deploy/crds.yaml`).

#[test]
fn committed_crds_match_generated() {
    let generated = trust_sds::crd::crds_yaml().expect("generate");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds.yaml"))
            .expect("deploy/crds.yaml");
    assert!(
        generated == committed,
        "deploy/crds.yaml is stale: run `cargo run -- crd > deploy/crds.yaml`"
    );
}

#[test]
fn both_versions_served_v1_stored_with_status_subresource() {
    let docs: Vec<serde_json::Value> =
        serde_yaml_ng::Deserializer::from_str(&trust_sds::crd::crds_yaml().unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &serde_json::Value| !v.is_null())
            .collect();
    assert_eq!(docs.len(), 2);
    for crd in &docs {
        let versions = crd["spec"]["versions"].as_array().unwrap();
        let names: Vec<&str> = versions
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["v1", "v1alpha1"]);
        for v in versions {
            assert_eq!(v["served"], true);
            assert_eq!(v["storage"], v["name"] == "v1");
            assert!(v["subresources"]["status"].is_object());
            let conditions =
                &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
            assert_eq!(conditions["x-kubernetes-list-type"], "map");
        }
    }
    let reg = &docs[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in [
        "targetRef",
        "prefix",
        "path",
        "credentialRef",
        "state",
        "caCertSecretRef",
        "tokenURLElicitation",
        "userSpecificList",
        "category",
        "hint",
        "tags",
    ] {
        assert!(reg[field].is_object(), "spec.{field} missing from the CRD");
    }
    let ext = &docs[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert!(ext["caCertBundleRef"]["properties"]["key"].is_object());
}

#[test]
fn helm_chart_carries_the_same_crds() {
    let root = env!("CARGO_MANIFEST_DIR");
    let committed = std::fs::read_to_string(format!("{root}/deploy/crds.yaml")).unwrap();
    let chart =
        std::fs::read_to_string(format!("{root}/deploy/helm/trust-sds/crds/crds.yaml")).unwrap();
    assert!(
        committed == chart,
        "deploy/helm/trust-sds/crds/crds.yaml differs from deploy/crds.yaml: copy it"
    );
}
