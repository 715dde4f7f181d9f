//! trust-sds (the release binary) against a real kube-apiserver and etcd on 127.0.0.1
//! (`support::control_plane`): the deploy as it is (`kubectl apply -k deploy/kustomize`),
//! the ServiceAccount's RBAC enforced by a real authorizer with a TokenRequest token, the
//! seed's operator flow with each exact message on the object, a rotation through the API
//! to a Delta subscriber, and leader election on a real Lease with the holder killed.
//! The in-process fake API server (`tests/kube_source.rs`) stays for what a real one
//! cannot easily show: outages, hangs, 410 after compaction.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::control_plane::ControlPlane;
use support::pki::Ca;
use support::replicas::{
    LABEL, NS, Replica, assert_secret_verbs, deployed, expect_message, install_gateway_api,
    ready_condition, registration, secret, service_account_kubeconfig,
};
use support::sds::DeltaClient;
use tokio::process::Command;

/// The seed's operator flow, each exact message on the object: with `v1alpha1` objects as
/// the seed writes them, and with `v1`; trust-sds runs as its ServiceAccount with exactly
/// the RBAC of `deploy/kustomize`, which must not let it `get` Secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_flow_as_the_service_account_with_the_deployed_rbac() {
    let plane = ControlPlane::start().await;
    // Static-token authentication works too (the admin's token, in system:masters).
    let static_admin = plane.token_kubeconfig("static-admin", "admin-token");
    let (_, out, _) = plane
        .kubectl_as(
            &static_admin,
            &["auth", "can-i", "get", "secrets", "-A"],
            None,
        )
        .await;
    assert_eq!(out.trim(), "yes");
    let kubeconfig = deployed(&plane).await;
    assert_secret_verbs(&plane, &kubeconfig).await;
    let replica = Replica::start(&plane, &kubeconfig, "replica-a").await;
    // No Gateway API here: said once, quietly, without the client's 404 warning.
    let log = replica.log_text();
    assert!(
        log.contains("HTTPRoutes (gateway.networking.k8s.io/v1) not served"),
        "{log}"
    );
    assert!(
        !log.contains("page not found") && !log.contains("kube_client"),
        "{log}"
    );

    let valid = Ca::root("Operator Flow CA").pem();
    let oversized = format!("{valid}{}", "#".repeat(70 * 1024));
    for (ns, api_version) in [
        ("seed-alpha", "mcp.kuadrant.io/v1alpha1"),
        ("seed-v1", "mcp.kuadrant.io/v1"),
    ] {
        plane.kubectl(&["create", "namespace", ns]).await;
        plane
            .apply(&registration(api_version, ns, "weather", "weather-ca"))
            .await;
        let steps: [(String, &str, String); 6] = [
            (String::new(), "False", "CA certificate secret weather-ca not found".into()),
            (
                secret(ns, "weather-ca", false, &[("ca.crt", &valid)]),
                "False",
                format!("CA certificate secret weather-ca is missing required label {LABEL}=true"),
            ),
            (
                secret(ns, "weather-ca", true, &[("tls.crt", &valid)]),
                "False",
                "CA certificate secret weather-ca missing key ca.crt".into(),
            ),
            (
                secret(ns, "weather-ca", true, &[("ca.crt", "not a certificate")]),
                "False",
                "CA certificate in secret weather-ca is invalid: no valid PEM certificate blocks found".into(),
            ),
            (
                secret(ns, "weather-ca", true, &[("ca.crt", &oversized)]),
                "False",
                "CA certificate data in secret weather-ca exceeds maximum size (65536 bytes)".into(),
            ),
            (
                secret(ns, "weather-ca", true, &[("ca.crt", &valid)]),
                "True",
                "CA certificate secret weather-ca is valid: 1 certificate(s) served as".into(),
            ),
        ];
        for (object, status, message) in steps {
            if !object.is_empty() {
                // Replace rather than merge, so a removed key or label is really gone.
                let (ok, _, err) = plane
                    .kubectl_as(
                        &plane.admin_kubeconfig,
                        &["replace", "--force", "-f", "-"],
                        Some(&object),
                    )
                    .await;
                if !ok {
                    plane.apply(&object).await;
                    assert!(err.contains("not found"), "{err}");
                }
            }
            expect_message(&plane, ns, "weather", status, &message).await;
        }
    }
}

/// The admin's client, for writes whose timing matters (no kubectl process in between).
async fn admin_client(plane: &ControlPlane) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&plane.admin_kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A registration with a valid CA in `ns`, reported ready.
async fn ready_registration(plane: &ControlPlane, ns: &str, pem: &str) {
    plane.kubectl(&["create", "namespace", ns]).await;
    plane
        .apply(&registration(
            "mcp.kuadrant.io/v1",
            ns,
            "weather",
            "weather-ca",
        ))
        .await;
    plane
        .apply(&secret(ns, "weather-ca", true, &[("ca.crt", pem)]))
        .await;
    expect_message(
        plane,
        ns,
        "weather",
        "True",
        "CA certificate secret weather-ca is valid",
    )
    .await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A CA rotated through the API server (a Secret PATCH) reaches a Delta subscriber of the
/// release binary, every time, with the new bundle; the note reports the latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_through_the_api_reach_a_delta_subscriber() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams};
    let plane = ControlPlane::start().await;
    let kubeconfig = deployed(&plane).await;
    let replica = Replica::start(&plane, &kubeconfig, "replica-a").await;
    ready_registration(&plane, "rotate", &Ca::root("Rotation 0").pem()).await;

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", replica.sds_port))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let sds = envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient::new(channel);
    let mut subscriber = DeltaClient::open_with(sds).await;
    subscriber.subscribe(&["rotate/weather"], "").await;
    let mut last = subscriber.recv().await;
    assert_eq!(DeltaClient::names(&last), ["rotate/weather"]);

    let secrets: Api<Secret> = Api::namespaced(admin_client(&plane).await, "rotate");
    let mut latencies = Vec::new();
    for i in 1..=30 {
        let pem = Ca::root(&format!("Rotation {i}")).pem();
        let patch = serde_json::json!({"stringData": {"ca.crt": pem}});
        let written = Instant::now();
        secrets
            .patch("weather-ca", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let pushed = subscriber.recv().await;
        latencies.push(written.elapsed());
        assert_eq!(DeltaClient::names(&pushed), ["rotate/weather"]);
        assert_ne!(pushed.resources[0].version, last.resources[0].version);
        let served = support::sds::secret_pem(
            pushed.resources[0].resource.as_ref().unwrap(),
            "rotate/weather",
        );
        assert!(
            served.contains(pem.lines().nth(1).unwrap()),
            "rotation {i}: the pushed bundle is the new CA"
        );
        subscriber.subscribe(&[], &pushed.nonce).await;
        last = pushed;
    }
    latencies.sort();
    println!(
        "API write -> Delta push over {} rotations: median {:.1?}, p99 {:.1?}, max {:.1?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}

/// Two replicas with leader election on a real Lease: the holder is killed with SIGKILL
/// (no release), the other takes over once the Lease expires and writes the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_takes_over_from_a_killed_lease_holder() {
    let plane = ControlPlane::start().await;
    let kubeconfig = deployed(&plane).await;
    let holder = async || {
        let (_, out, _) = plane
            .kubectl(&[
                "get",
                "lease",
                "trust-sds-status-writer",
                "-n",
                NS,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await;
        out.trim().to_owned()
    };
    let mut a = Replica::start(&plane, &kubeconfig, "replica-a").await;
    let started = Instant::now();
    while holder().await != "replica-a" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replica-a never led"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _b = Replica::start(&plane, &kubeconfig, "replica-b").await;
    ready_registration(&plane, "takeover", &Ca::root("Takeover").pem()).await;

    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let killed = Instant::now();
    while holder().await != "replica-b" {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "replica-b never took over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = killed.elapsed();
    plane
        .kubectl_as(
            &plane.admin_kubeconfig,
            &["replace", "-f", "-"],
            Some(&secret(
                "takeover",
                "weather-ca",
                true,
                &[("ca.crt", "not a certificate")],
            )),
        )
        .await;
    expect_message(
        &plane,
        "takeover",
        "weather",
        "False",
        "CA certificate in secret weather-ca is invalid: no valid PEM certificate blocks found",
    )
    .await;
    println!(
        "Lease holder killed with SIGKILL: replica-b held the Lease {takeover:.1?} later \
         (lease duration 15 s) and wrote the next change {:.1?} after the kill",
        killed.elapsed()
    );
}

/// The Helm chart as Helm renders it (helm-python-sdk), applied to the real API server in
/// its release namespace: trust-sds works with exactly its RBAC and may not get Secrets;
/// its Ready condition and another field manager's condition coexist (server-side apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helm_chart_works_as_rendered_beside_another_field_manager() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plane = ControlPlane::start().await;
    let release_ns = "mcp-system";
    plane.kubectl(&["create", "namespace", release_ns]).await;
    let crds = std::fs::read_to_string(repo.join("deploy/helm/trust-sds/crds/crds.yaml")).unwrap();
    plane.apply(&crds).await;
    let out = Command::new(repo.join("target/envoy-venv/bin/python"))
        .arg(repo.join("scripts/render_chart.py"))
        .arg(release_ns)
        .output()
        .await
        .expect("render the chart (scripts/test.sh installs helm-python-sdk)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    plane.apply(&String::from_utf8(out.stdout).unwrap()).await;
    let kubeconfig = service_account_kubeconfig(&plane, release_ns).await;
    assert_secret_verbs(&plane, &kubeconfig).await;
    let _replica = Replica::start_in(&plane, &kubeconfig, release_ns, "helm-replica").await;
    ready_registration(&plane, "helm-tenant", &Ca::root("Helm CA").pem()).await;

    // Server-side apply coexistence: another controller's condition, applied under its own
    // field manager, survives trust-sds's next write of Ready, and Ready survives it.
    let foreign = "apiVersion: mcp.kuadrant.io/v1\nkind: MCPServerRegistration\nmetadata:\n  \
        name: weather\n  namespace: helm-tenant\nstatus:\n  conditions:\n  - type: Accepted\n    \
        status: \"True\"\n    reason: Accepted\n    message: route attached\n    \
        lastTransitionTime: \"2026-01-01T00:00:00Z\"\n";
    let (ok, _, err) = plane
        .kubectl_as(
            &plane.admin_kubeconfig,
            &[
                "apply",
                "--server-side",
                "--field-manager=mcp-controller",
                "--subresource=status",
                "-f",
                "-",
            ],
            Some(foreign),
        )
        .await;
    assert!(ok, "{err}");
    let broken = secret(
        "helm-tenant",
        "weather-ca",
        true,
        &[("ca.crt", "not a certificate")],
    );
    plane
        .kubectl_as(
            &plane.admin_kubeconfig,
            &["replace", "-f", "-"],
            Some(&broken),
        )
        .await;
    expect_message(&plane, "helm-tenant", "weather", "False", BROKEN_MESSAGE).await;
    let (_, out, _) = plane
        .kubectl(&[
            "get",
            "mcpserverregistrations.mcp.kuadrant.io",
            "weather",
            "-n",
            "helm-tenant",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .await;
    let object: serde_json::Value = serde_json::from_str(&out).unwrap();
    let types: Vec<&str> = object["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert!(
        types.contains(&"Accepted") && types.contains(&"Ready"),
        "{types:?}"
    );
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["subresource"] == "status")
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"trust-sds") && managers.contains(&"mcp-controller"),
        "{managers:?}"
    );

    // A foreign write over trust-sds's Ready (an ordinary status update, as by hand) is
    // written back, with its lastTransitionTime kept.
    let conditions = object["status"]["conditions"].as_array().unwrap();
    let index = conditions
        .iter()
        .position(|c| c["type"] == "Ready")
        .unwrap();
    let before = conditions[index]["lastTransitionTime"].clone();
    let overwrite = serde_json::json!([
        {"op": "replace", "path": format!("/status/conditions/{index}/status"), "value": "True"},
        {"op": "replace", "path": format!("/status/conditions/{index}/message"), "value": "patched by hand"},
    ]);
    let (ok, _, err) = plane
        .kubectl(&[
            "patch",
            "mcpserverregistrations.mcp.kuadrant.io",
            "weather",
            "-n",
            "helm-tenant",
            "--subresource=status",
            "--type=json",
            "-p",
            &overwrite.to_string(),
        ])
        .await;
    assert!(ok, "{err}");
    expect_message(&plane, "helm-tenant", "weather", "False", BROKEN_MESSAGE).await;
    let ready = ready_condition(&plane, "helm-tenant", "weather")
        .await
        .unwrap();
    assert_eq!(ready["lastTransitionTime"], before);
}

/// Ready's message for a Secret whose `ca.crt` is "not a certificate".
const BROKEN_MESSAGE: &str =
    "CA certificate in secret weather-ca is invalid: no valid PEM certificate blocks found";

/// With the Gateway API installed, an HTTPRoute's `parentRefs` decide which gateway's base
/// bundle a registration gets: the registration whose route names the extension's Gateway
/// serves base + own CA, one whose route names another Gateway its own CA only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_parents_decide_gateway_membership() {
    let plane = ControlPlane::start().await;
    install_gateway_api(&plane).await;
    let kubeconfig = deployed(&plane).await;
    let replica = Replica::start(&plane, &kubeconfig, "replica-a").await;
    assert!(
        !replica.log_text().contains("not served"),
        "{}",
        replica.log_text()
    );

    for ns in ["gw-system", "apps"] {
        plane.kubectl(&["create", "namespace", ns]).await;
    }
    let extension = "apiVersion: mcp.kuadrant.io/v1\nkind: MCPGatewayExtension\nmetadata:\n  \
        name: mcp\n  namespace: gw-system\nspec:\n  targetRef:\n    group: \
        gateway.networking.k8s.io\n    kind: Gateway\n    name: gateway\n  caCertBundleRef:\n    \
        name: base-ca\n";
    let route = |name: &str, gateway: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: \
             {name}-route\n  namespace: apps\nspec:\n  parentRefs:\n  - name: {gateway}\n    \
             namespace: gw-system\n"
        )
    };
    let own = Ca::root("Own").pem();
    for object in [
        extension.to_owned(),
        secret(
            "gw-system",
            "base-ca",
            true,
            &[("ca.crt", &Ca::root("Base").pem())],
        ),
        route("member", "gateway"),
        route("stranger", "other-gateway"),
        registration("mcp.kuadrant.io/v1", "apps", "member", "own-ca"),
        registration("mcp.kuadrant.io/v1", "apps", "stranger", "own-ca"),
        secret("apps", "own-ca", true, &[("ca.crt", &own)]),
    ] {
        plane.apply(&object).await;
    }
    let certificates = |bundles: &serde_json::Value, name: &str| {
        bundles
            .as_array()
            .and_then(|all| all.iter().find(|b| b["name"] == name))
            .map(|b| b["certificates"].as_array().map_or(0, Vec::len))
    };
    let started = Instant::now();
    loop {
        let bundles: serde_json::Value = support::envoy::http_get(replica.admin_port, "/bundles")
            .await
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default();
        let (member, stranger) = (
            certificates(&bundles, "apps/member"),
            certificates(&bundles, "apps/stranger"),
        );
        if member == Some(2) && stranger == Some(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "member {member:?}, stranger {stranger:?} certificates; /bundles: {bundles}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
