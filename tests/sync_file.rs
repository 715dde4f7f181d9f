//! `trust-sds sync` as an operator runs it: the binary, subscribed over real gRPC on
//! loopback to an in-process trust-sds serving a manifests directory, keeping a PEM file.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::manifests::{registration_yaml, secret_yaml, write_atomic};
use support::pki::Ca;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::watch;
use trust_sds::sds::UnknownNamePolicy;
use trust_sds::server::{self, ServeConfig};
use trust_sds::validation::{Subject, validate_data};

const NAME: &str = "mcp-demo/weather";
/// Generous: the machine is shared, and a wait only takes this long when something is wrong.
const TIMEOUT: Duration = Duration::from_secs(30);

/// trust-sds on a manifests directory holding the registration and, optionally, its CA.
struct Server {
    dir: tempfile::TempDir,
    running: server::Running,
}

impl Server {
    async fn start(pem: Option<&str>) -> Self {
        Self::start_with(ServeConfig::default(), pem).await
    }

    async fn start_with(config: ServeConfig, pem: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("reg.yaml"),
            registration_yaml("mcp-demo", "weather", "weather-ca"),
        )
        .unwrap();
        let server = Self::serve(config, dir).await;
        if let Some(pem) = pem {
            server.rotate(pem);
        }
        server
    }

    async fn serve(config: ServeConfig, dir: tempfile::TempDir) -> Self {
        let running = server::start_manifests(config, dir.path().to_path_buf(), "default".into())
            .await
            .unwrap();
        Self { dir, running }
    }

    fn url(&self) -> String {
        format!("http://{}", self.running.sds_addr)
    }

    /// Serves `pem` as the registration's CA (the manifests watcher picks it up).
    fn rotate(&self, pem: &str) {
        write_atomic(
            &self.dir.path().join("ca.yaml"),
            &secret_yaml("mcp-demo", "weather-ca", pem),
        );
    }

    /// Deletes the CA Secret: the server withdraws the resource.
    fn withdraw(&self) {
        std::fs::remove_file(self.dir.path().join("ca.yaml")).unwrap();
    }
}

/// What the server serves (and the file must hold) for a CA Secret holding `pem`.
fn served(pem: &str) -> (String, String) {
    let bundle = validate_data(Subject::ServerCa, pem.as_bytes()).unwrap();
    (bundle.pem().into_owned(), bundle.version().to_owned())
}

/// A running `trust-sds sync`, its log lines collected as they come.
struct SyncProcess {
    child: tokio::process::Child,
    logs: watch::Receiver<Vec<String>>,
}

impl SyncProcess {
    fn spawn(sds: &str, out: &Path, extra: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_trust-sds"))
            .args(["sync", "--sds", sds, "--registration", NAME, "--out"])
            .arg(out)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, logs) = watch::channel(Vec::new());
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|l| l.push(line));
            }
        });
        Self { child, logs }
    }

    /// Waits until `n` log lines contain `needle`; returns the last of them.
    async fn wait_logs(&mut self, needle: &str, n: usize) -> String {
        let found = tokio::time::timeout(
            TIMEOUT,
            self.logs
                .wait_for(|l| l.iter().filter(|l| l.contains(needle)).count() >= n),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let logs = self.logs.borrow().join("\n");
        assert!(found, "no {n} log lines with {needle:?} in:\n{logs}");
        logs.lines()
            .filter(|l| l.contains(needle))
            .nth(n - 1)
            .unwrap()
            .to_owned()
    }

    async fn wait_log(&mut self, needle: &str) -> String {
        self.wait_logs(needle, 1).await
    }

    fn count(&self, needle: &str) -> usize {
        self.logs
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The `--health-listen` address, from the start-up log line.
    async fn health_addr(&mut self) -> SocketAddr {
        let line = self.wait_log("health endpoints on http://").await;
        let rest = line.split("http://").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// SIGTERM, as a kubelet stops a container, and the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("sync exits on SIGTERM")
            .unwrap()
    }
}

/// Polls `path` until `pred` holds on its content (`None`: absent). Nothing else signals a
/// reader of a file, so the deadline is what keeps this from hanging.
async fn wait_file(path: &Path, what: &str, pred: impl Fn(Option<&str>) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let content = std::fs::read_to_string(path).ok();
        if pred(content.as_deref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {} holds {content:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_content(path: &Path, expected: &str) {
    wait_file(path, "the expected bundle", |c| c == Some(expected)).await;
}

/// `GET path` on the health listener: status code and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: sync\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// A `--exec` command that appends `<version> <event>` to `log`.
fn exec_logging_to(log: &Path) -> Vec<String> {
    vec![
        "--exec".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "echo \"$TRUST_SDS_VERSION $TRUST_SDS_EVENT $TRUST_SDS_FILE\" >> '{}'",
            log.display()
        ),
    ]
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const EXEC_DONE: &str = "ran the --exec command: exit status: 0";

#[tokio::test]
async fn writes_the_served_bundle_and_runs_the_command_once_per_change() {
    let (a, b, c) = (Ca::root("CA A"), Ca::root("CA B"), Ca::root("CA C"));
    let server = Server::start(Some(&a.pem())).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("ca.pem");
    let log = work.path().join("exec.log");
    let exec = exec_logging_to(&log);
    let exec: Vec<&str> = exec.iter().map(String::as_str).collect();
    let mut sync = SyncProcess::spawn(&server.url(), &out, &exec);

    // First write: the served PEM exactly, mode 0644, no temporary file left.
    let (pem_a, version_a) = served(&a.pem());
    sync.wait_logs(EXEC_DONE, 1).await;
    let on_disk = std::fs::read_to_string(&out).unwrap();
    let snapshot = server.running.published.snapshot.borrow().clone();
    assert_eq!(
        on_disk,
        snapshot.get(NAME).unwrap().pem(),
        "the served bytes"
    );
    assert_eq!(on_disk, pem_a);
    assert!(on_disk.ends_with("-----END CERTIFICATE-----\n"));
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(dir_entries(work.path()), ["ca.pem", "exec.log"]);
    let out_shown = out.display().to_string();
    assert!(sync.wait_log("wrote ").await.contains(&format!(
        "wrote {out_shown}: trust for {NAME} version {version_a} (1 certificate(s))"
    )));

    // A rotation rewrites the file and runs the command again.
    let (pem_b, version_b) = served(&b.pem());
    server.rotate(&b.pem());
    sync.wait_logs(EXEC_DONE, 2).await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), pem_b);

    // Reformatting the Secret serves the same canonical bytes: nothing is pushed, written or
    // run. The next real change shows it: its line directly follows B's.
    server.rotate(&format!("# reformatted\n{}\n{}", b.pem(), b.pem()));
    let (pem_c, version_c) = served(&c.pem());
    server.rotate(&c.pem());
    sync.wait_logs(EXEC_DONE, 3).await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), pem_c);
    assert_eq!(
        lines(&log),
        [version_a, version_b, version_c.clone()].map(|v| format!("{v} written {out_shown}"))
    );
    assert_eq!(sync.count("wrote "), 3);

    // SIGTERM: a clean exit that leaves the file in place.
    let status = sync.terminate().await;
    assert!(status.success(), "{status}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), pem_c);

    // A restart that finds the served bytes on disk neither rewrites nor runs the command.
    let inode = std::fs::metadata(&out).unwrap().ino();
    let mut again = SyncProcess::spawn(&server.url(), &out, &exec);
    again
        .wait_log(&format!(
            "{out_shown} already holds trust for {NAME} version {version_c}; not rewritten"
        ))
        .await;
    assert_eq!(again.terminate().await.code(), Some(0));
    assert_eq!(
        std::fs::metadata(&out).unwrap().ino(),
        inode,
        "not rewritten"
    );
    assert_eq!(lines(&log).len(), 3, "the command did not run");
}

/// A process that appends a line to `got` for each SIGHUP, and its pid file.
struct HupCatcher {
    child: tokio::process::Child,
    got: PathBuf,
    pid_file: PathBuf,
}

impl HupCatcher {
    async fn start(dir: &Path) -> Self {
        let (got, ready) = (dir.join("got"), dir.join("trap-set"));
        let child = tokio::process::Command::new("sh")
            .args([
                "-c",
                r#"trap 'echo HUP >> "$0"' HUP; : > "$1"; while :; do sleep 0.05; done"#,
            ])
            .arg(&got)
            .arg(&ready)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Only once the trap is set may the signal come (it would kill the shell before).
        wait_file(&ready, "the trap", |c| c.is_some()).await;
        let pid_file = dir.join("consumer.pid");
        std::fs::write(&pid_file, format!("{}\n", child.id().unwrap())).unwrap();
        Self {
            child,
            got,
            pid_file,
        }
    }

    async fn wait_signals(&self, n: usize) {
        wait_file(&self.got, &format!("{n} SIGHUPs"), |c| {
            c.is_some_and(|c| c.lines().count() >= n)
        })
        .await;
    }
}

#[tokio::test]
async fn signals_the_process_in_the_pid_file_after_each_change() {
    let (a, b) = (Ca::root("CA A"), Ca::root("CA B"));
    let server = Server::start(Some(&a.pem())).await;
    let work = tempfile::tempdir().unwrap();
    let mut consumer = HupCatcher::start(work.path()).await;
    let out = work.path().join("ca.pem");
    let pid_file = consumer.pid_file.to_str().unwrap().to_owned();
    let mut sync = SyncProcess::spawn(
        &server.url(),
        &out,
        &["--signal", "HUP", "--pid-file", &pid_file],
    );
    let pid = consumer.child.id().unwrap();
    sync.wait_log(&format!("sent SIGHUP pid={pid}")).await;
    consumer.wait_signals(1).await;

    server.rotate(&b.pem());
    sync.wait_logs("sent SIGHUP", 2).await;
    consumer.wait_signals(2).await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), served(&b.pem()).0);
    assert_eq!(lines(&consumer.got), ["HUP", "HUP"]);
    assert!(
        consumer.child.try_wait().unwrap().is_none(),
        "still running"
    );
}

#[tokio::test]
async fn server_away_keeps_the_file_and_readiness_then_resyncs() {
    let (a, b) = (Ca::root("CA A"), Ca::root("CA B"));
    let server = Server::start(None).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("ca.pem");
    let mut sync = SyncProcess::spawn(&server.url(), &out, &["--health-listen", "127.0.0.1:0"]);
    let health = sync.health_addr().await;

    // Not ready before the first write; alive all along.
    let (status, body) = get(health, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("waiting for the first bundle for mcp-demo/weather"),
        "{body}"
    );
    assert_eq!(get(health, "/live").await.0, 200);

    server.rotate(&a.pem());
    let (pem_a, version_a) = served(&a.pem());
    wait_content(&out, &pem_a).await;
    sync.wait_log("wrote ").await;
    let (status, body) = get(health, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&version_a), "{body}");

    // trust-sds goes away: the file stays, and so do readiness and liveness.
    let addr = server.running.sds_addr;
    let Server { dir, running } = server;
    running.shutdown().await;
    sync.wait_log("trust-sds unreachable; keeping").await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), pem_a);
    assert_eq!(get(health, "/ready").await.0, 200);
    assert_eq!(get(health, "/live").await.0, 200);

    // It comes back on the same address serving B: the file follows.
    let back = Server::serve(
        ServeConfig {
            sds_addr: addr,
            ..ServeConfig::default()
        },
        dir,
    )
    .await;
    back.rotate(&b.pem());
    let (pem_b, version_b) = served(&b.pem());
    wait_content(&out, &pem_b).await;
    sync.wait_log("reconnected to trust-sds").await;
    sync.wait_logs("wrote ", 2).await;
    let (status, body) = get(health, "/ready").await;
    assert_eq!(status, 200);
    assert!(body.contains(&version_b), "{body}");
}

#[tokio::test]
async fn withdrawal_removes_the_file_and_runs_the_command() {
    let a = Ca::root("CA A");
    let server = Server::start(Some(&a.pem())).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("ca.pem");
    let log = work.path().join("exec.log");
    let mut args = exec_logging_to(&log);
    args.splice(
        0..0,
        ["--health-listen".to_owned(), "127.0.0.1:0".to_owned()],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sync = SyncProcess::spawn(&server.url(), &out, &args);
    let health = sync.health_addr().await;
    sync.wait_logs(EXEC_DONE, 1).await;
    assert!(out.exists());

    server.withdraw();
    let out_shown = out.display().to_string();
    sync.wait_log(&format!(
        "trust for {NAME} withdrawn by the server: removed {out_shown} (fail closed)"
    ))
    .await;
    assert!(!out.exists(), "fail closed");
    sync.wait_logs(EXEC_DONE, 2).await;
    assert_eq!(lines(&log)[1], format!(" removed {out_shown}"));
    let (status, body) = get(health, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("withdrawn by the server"), "{body}");
    assert_eq!(get(health, "/live").await.0, 200);

    // Served again: written again.
    server.rotate(&a.pem());
    wait_content(&out, &served(&a.pem()).0).await;
    sync.wait_logs(EXEC_DONE, 3).await;
    assert_eq!(get(health, "/ready").await.0, 200);
}

/// `--once`, as an init container runs it.
async fn once(sds: &str, registration: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_trust-sds"))
        .args([
            "sync",
            "--once",
            "--sds",
            sds,
            "--registration",
            registration,
        ])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .await
        .unwrap()
}

/// Runs `sync --once`, which must exit with 1 and say `want` on stderr; returns stderr.
async fn once_fails(
    sds: &str,
    registration: &str,
    out: &Path,
    extra: &[&str],
    want: &str,
) -> String {
    let run = once(sds, registration, out, extra).await;
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    stderr
}

#[tokio::test]
async fn once_writes_the_bundle_and_exits() {
    let a = Ca::root("CA A");
    let server = Server::start(Some(&a.pem())).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("ca.pem");
    let run = once(&server.url(), NAME, &out, &["--timeout", "30s"]).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), served(&a.pem()).0);
    assert!(stderr.contains("wrote "), "{stderr}");
}

#[tokio::test]
async fn once_fails_clearly_for_a_registration_that_is_not_served() {
    let a = Ca::root("CA A");
    let server = Server::start(Some(&a.pem())).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("ca.pem");

    // The default server policy holds unknown names: the wait ends at --timeout, and the
    // message says the server is reached but does not serve the name. (It twice said "no
    // connection to trust-sds ... yet" under the full suite: `sync` missed a `Connected`
    // event sent before it subscribed. It now reads `TrustClient::connection` first.)
    once_fails(&server.url(),
        "mcp-demo/unknown",
        &out,
        &["--timeout", "5s"], &format!(
            "error: no trust bundle for mcp-demo/unknown after 5s: trust-sds at {} does not serve it",
            server.url()
        )).await;
    assert!(!out.exists());

    // A server that answers unknown names with not-found: no need to wait for the timeout.
    let strict = Server::start_with(
        ServeConfig {
            sds: trust_sds::sds::SdsOptions {
                unknown_names: UnknownNamePolicy::NotFound,
                ..Default::default()
            },
            ..ServeConfig::default()
        },
        Some(&a.pem()),
    )
    .await;
    let started = Instant::now();
    once_fails(&strict.url(),
        "mcp-demo/unknown",
        &out,
        &["--timeout", "60s"], "error: trust-sds does not serve mcp-demo/unknown (not found, or withdrawn): no file written").await;
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!out.exists());

    // There, a bundle an earlier run left for a name no longer served is removed: fail closed.
    std::fs::write(&out, served(&a.pem()).0).unwrap();
    once_fails(
        &strict.url(),
        "mcp-demo/unknown",
        &out,
        &["--timeout", "60s"],
        &format!(
            "trust for mcp-demo/unknown withdrawn by the server: removed {} (fail closed)",
            out.display()
        ),
    )
    .await;
    assert!(!out.exists());

    // Nothing listening: the error says so.
    once_fails(
        "http://127.0.0.1:1",
        NAME,
        &out,
        &["--timeout", "5s"],
        "trust-sds at http://127.0.0.1:1 is unreachable: connect",
    )
    .await;
}

#[tokio::test]
async fn refuses_to_replace_what_is_not_a_bundle() {
    let a = Ca::root("CA A");
    let server = Server::start(Some(&a.pem())).await;
    let work = tempfile::tempdir().unwrap();

    // A directory: refused before anything is subscribed, and left alone.
    let dir = work.path().join("certs");
    std::fs::create_dir(&dir).unwrap();
    let run = once(&server.url(), NAME, &dir, &[]).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: --out {}: a directory is already there; trust-sds sync writes only regular files. Choose a file path inside it, e.g. --out {}/ca.pem",
            dir.display(),
            dir.display()
        )),
        "{stderr}"
    );
    assert!(dir.is_dir());

    // A file that is not a CA bundle (the /etc/passwd mistake): refused, untouched.
    let passwd = work.path().join("passwd");
    std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    let stderr = once_fails(
        &server.url(),
        NAME,
        &passwd,
        &[],
        "the file there is not a PEM bundle of CA certificates (no valid PEM certificate blocks found)",
    )
    .await;
    assert!(stderr.contains("pass --force to replace it"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&passwd).unwrap(),
        "root:x:0:0:root:/root:/bin/bash\n"
    );

    // A symbolic link: refused even with --force (renaming would replace the link).
    let link = work.path().join("link.pem");
    std::os::unix::fs::symlink(&passwd, &link).unwrap();
    once_fails(
        &server.url(),
        NAME,
        &link,
        &["--force"],
        "a symbolic link is already there",
    )
    .await;
    assert!(link.is_symlink());

    // --force replaces the file; an existing bundle (another CA) is replaced without it.
    let run = once(&server.url(), NAME, &passwd, &["--force"]).await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&passwd).unwrap(),
        served(&a.pem()).0
    );
    let other = work.path().join("other.pem");
    std::fs::write(&other, Ca::root("Other").pem()).unwrap();
    let run = once(&server.url(), NAME, &other, &[]).await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), served(&a.pem()).0);
}

/// 200 rotations between a one-certificate bundle and a 60-certificate one, each waited
/// for, while a reader reads the file in a tight loop: every read is one of the two
/// bundles, complete, never empty or cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_sees_a_partial_file_during_a_rotation_storm() {
    const ROTATIONS: usize = 200;
    let small_pem = Ca::root("Small").pem();
    let big_pem: String = (0..60)
        .map(|i| Ca::root(&format!("Big {i}")).pem())
        .collect();
    let (small, _) = served(&small_pem);
    let (big, _) = served(&big_pem);
    assert!(big.len() > 30 * small.len(), "very different sizes");

    let server = Server::start(Some(&small_pem)).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("ca.pem");
    let mut sync = SyncProcess::spawn(&server.url(), &out, &[]);
    wait_content(&out, &small).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, out) = (stop.clone(), out.clone());
        let (small, big) = (small.clone().into_bytes(), big.clone().into_bytes());
        std::thread::spawn(move || {
            let (mut reads, mut seen_small, mut seen_big) = (0u64, 0u64, 0u64);
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                reads += 1;
                match std::fs::read(&out) {
                    Ok(b) if b == small => seen_small += 1,
                    Ok(b) if b == big => seen_big += 1,
                    Ok(b) => bad.push(format!(
                        "a read of {} bytes matching neither bundle",
                        b.len()
                    )),
                    Err(e) => bad.push(format!("a failed read: {e}")),
                }
            }
            (reads, seen_small, seen_big, bad)
        })
    };

    let started = Instant::now();
    for i in 0..ROTATIONS {
        let (pem, expected) = if i % 2 == 0 {
            (&big_pem, &big)
        } else {
            (&small_pem, &small)
        };
        server.rotate(pem);
        wait_content(&out, expected).await;
    }
    let storm = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (reads, seen_small, seen_big, bad) = reader.join().unwrap();
    assert!(
        bad.is_empty(),
        "{} bad reads, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(seen_small > 0 && seen_big > 0, "both bundles read");
    sync.wait_logs("wrote ", ROTATIONS + 1).await;
    assert_eq!(
        sync.count("wrote "),
        ROTATIONS + 1,
        "one write per rotation"
    );
    assert_eq!(
        dir_entries(work.path()),
        ["ca.pem"],
        "no temporary file left"
    );
    eprintln!("{ROTATIONS} rotations in {storm:?}; {reads} reads, none partial");
}
