//! A real Kubernetes control plane for tests: etcd and kube-apiserver (installed by
//! `scripts/kube-apiserver.sh`, which `scripts/test.sh` runs) on 127.0.0.1, with their own
//! PKI made here: a serving certificate, a client CA (`system:masters` client certificate
//! for the admin), a static admin token, and a service-account signing key so TokenRequest
//! works. RBAC is the authorizer. Both processes die with the value (kill on drop).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::process::{Child, Command};

/// Where `scripts/kube-apiserver.sh` puts the binaries.
pub fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kube/v1.36.3/bin");
    for bin in ["kube-apiserver", "kubectl", "etcd"] {
        assert!(
            dir.join(bin).exists(),
            "no {}: run ./scripts/test.sh (it runs scripts/kube-apiserver.sh, which builds \
             kube-apiserver and kubectl and installs etcd)",
            dir.join(bin).display()
        );
    }
    dir
}

/// The release binary the tests run as an operator would.
pub fn trust_sds_release() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/trust-sds");
    assert!(
        bin.exists(),
        "no {}: run ./scripts/test.sh (it builds the release binary first)",
        bin.display()
    );
    bin
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub url: String,
    /// Kubeconfig of the admin (client certificate in `system:masters`).
    pub admin_kubeconfig: PathBuf,
    ca_pem: String,
    _etcd: Child,
    _apiserver: Child,
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "test control plane CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate signed by `ca`: (certificate PEM, key PEM).
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    org: Option<&str>,
    server: bool,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    if server {
        params.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().unwrap()),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is ready and serves its
    /// OpenAPI document (kubectl validates against it).
    pub async fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = ca();
        let ca_pem = ca.pem();
        let (serving, serving_key) = issue(&ca, "kube-apiserver", None, true);
        let (admin, admin_key) = issue(&ca, "admin", Some("system:masters"), false);
        let sa_key = KeyPair::generate().unwrap();
        for (file, text) in [
            ("ca.crt", ca_pem.as_str()),
            ("serving.crt", &serving),
            ("serving.key", &serving_key),
            ("admin.crt", &admin),
            ("admin.key", &admin_key),
            ("sa.key", &sa_key.serialize_pem()),
            ("sa.pub", &sa_key.public_key_pem()),
            (
                "tokens.csv",
                "admin-token,admin,admin-uid,\"system:masters\"\n",
            ),
        ] {
            std::fs::write(d.join(file), text).unwrap();
        }

        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new(bin.join("etcd"))
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .args(["--unsafe-no-fsync", "--log-level=error"])
            .stdout(Stdio::null())
            .stderr(log_file(d, "etcd.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start etcd");
        let path = |f: &str| d.join(f).display().to_string();
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .args([
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--etcd-servers={etcd_url}"),
                &format!("--tls-cert-file={}", path("serving.crt")),
                &format!("--tls-private-key-file={}", path("serving.key")),
                &format!("--client-ca-file={}", path("ca.crt")),
                &format!("--token-auth-file={}", path("tokens.csv")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", path("sa.pub")),
                &format!("--service-account-signing-key-file={}", path("sa.key")),
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
                "--disable-admission-plugins=ServiceAccount",
                "--profiling=false",
                "--v=0",
            ])
            .stdout(Stdio::null())
            .stderr(log_file(d, "kube-apiserver.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start kube-apiserver");
        let url = format!("https://127.0.0.1:{api_port}");
        let admin_kubeconfig = d.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig(
                &url,
                &path("ca.crt"),
                &format!(
                    "client-certificate: {}\n    client-key: {}",
                    path("admin.crt"),
                    path("admin.key")
                ),
            ),
        )
        .unwrap();
        let plane = ControlPlane {
            dir,
            url,
            admin_kubeconfig,
            ca_pem,
            _etcd: etcd,
            _apiserver: apiserver,
        };
        plane.wait_ready().await;
        plane
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let ready = self.kubectl(&["get", "--raw", "/readyz"]).await;
            let openapi = ready.0 && self.kubectl(&["get", "--raw", "/openapi/v2"]).await.0;
            if openapi {
                eprintln!("control plane ready in {:.1?}", started.elapsed());
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "kube-apiserver not ready after 90 s; its log:\n{}",
                std::fs::read_to_string(self.dir.path().join("kube-apiserver.log"))
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A kubeconfig for a bearer token (e.g. a ServiceAccount's, from TokenRequest).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let ca = self.dir.path().join("ca.crt");
        let file = self.dir.path().join(format!("{name}.kubeconfig"));
        let user = format!("token: {token}");
        std::fs::write(
            &file,
            kubeconfig(&self.url, &ca.display().to_string(), &user),
        )
        .unwrap();
        file
    }

    /// Runs kubectl as the admin: (success, stdout, stderr).
    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_as(&self.admin_kubeconfig, args, None).await
    }

    /// Runs kubectl with `kubeconfig`, `stdin` piped in.
    pub async fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt as _;
        let mut child = Command::new(bin_dir().join("kubectl"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl apply -f -` of `yaml` as the admin; panics with kubectl's error.
    pub async fn apply(&self, yaml: &str) {
        let (ok, out, err) = self
            .kubectl_as(
                &self.admin_kubeconfig,
                &["apply", "--server-side", "-f", "-"],
                Some(yaml),
            )
            .await;
        assert!(ok, "kubectl apply failed: {err}\n{out}\n---\n{yaml}");
    }

    /// The CA that signed the API server's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

fn kubeconfig(url: &str, ca_file: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    \
         certificate-authority: {ca_file}\nusers:\n- name: user\n  user:\n    {user}\ncontexts:\n- \
         name: test\n  context:\n    cluster: test\n    user: user\n    namespace: default\n\
         current-context: test\n"
    )
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}
