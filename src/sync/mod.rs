//! `trust-sds sync`: one registration's trust bundle kept in a PEM file, for consumers that
//! read files (OpenSSL's `SSL_CERT_FILE`, Python and Node MCP clients, nginx).
//!
//! The subscription is the client library's ([`crate::client::TrustClient`]): Delta or
//! SotW, NACK of unusable bundles, reconnect with backoff, last good trust kept. This
//! module only mirrors its current state into a file, level-triggered: every event (or a
//! lagged event stream) makes it compare the trust in force with what is on disk, so
//! bursts of rotations collapse into writes of the newest bundle and nothing is missed.
//!
//! Uses no Kubernetes types.

mod file;
mod health;
mod hooks;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

pub use file::{OnDisk, OutFile, Refusal};
pub use health::FileState;
pub use hooks::{Change, Hooks, NamedSignal, parse_signal};

use crate::client::{ClientOptions, Connection, TrustClient, TrustEvent, TrustState};

/// Everything `trust-sds sync` needs.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// The subscription; its `names` is the one registration.
    pub client: ClientOptions,
    pub registration: String,
    pub out: OutFile,
    pub hooks: Hooks,
    /// `--once`: write the first bundle and exit, failing after this long without one.
    pub once: Option<Duration>,
    pub health_listen: Option<SocketAddr>,
}

/// How long a failed write waits before it is tried again (doubling to the cap).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs until `shutdown` resolves (or, with `--once`, until the first bundle is written).
pub async fn run(
    config: SyncConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ExitCode> {
    let SyncConfig {
        client: options,
        registration: name,
        out,
        hooks,
        once,
        health_listen,
    } = config;
    check_out_path(&out)?;
    out.remove_stale_temps();
    let (state_tx, state_rx) = watch::channel(FileState::Waiting);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    if let Some(addr) = health_listen {
        let stopped = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        let file = out.path().display().to_string();
        health::serve(addr, state_rx, name.clone(), file, stopped).await?;
    }
    tracing::info!(
        "syncing trust for {name} from {} into {}",
        options.endpoint,
        out.path().display()
    );
    let endpoint = options.endpoint.clone();
    let client = TrustClient::start(options)?;
    let mut mirror = Mirror {
        name,
        out,
        hooks,
        state: state_tx,
        removal_seen: false,
        link: Connection::Connecting,
        rejected: None,
    };
    let result = mirror.follow(&client, once, &endpoint, shutdown).await;
    let _ = stop_tx.send(true);
    result
}

/// Refuses, before anything is subscribed, an `--out` that must not be written.
fn check_out_path(out: &OutFile) -> anyhow::Result<()> {
    let dir = out.dir();
    anyhow::ensure!(
        dir.is_dir(),
        "--out {}: the directory {} does not exist; create it (or mount a volume there) first",
        out.path().display(),
        dir.display()
    );
    out.inspect()?;
    Ok(())
}

/// The file, kept equal to the trust in force.
struct Mirror {
    name: String,
    out: OutFile,
    hooks: Hooks,
    state: watch::Sender<FileState>,
    /// The server said the name is not served (withdrawn, or not found) since the last
    /// reconcile: a file left by an earlier run is removed too.
    removal_seen: bool,
    /// The connection to trust-sds, as the client and its events tell it (for logs and
    /// the `--once` error).
    link: Connection,
    /// Why the last bundle served for the name was refused (for the `--once` error).
    rejected: Option<String>,
}

/// Where one reconcile left the file.
enum Step {
    /// The file holds the trust in force; `hooks_ok` is false if a hook it ran failed.
    InSync {
        hooks_ok: bool,
    },
    Waiting,
    Withdrawn,
    /// Writing or removing failed; retried later.
    Failed,
}

impl Mirror {
    async fn follow(
        &mut self,
        client: &TrustClient,
        once: Option<Duration>,
        endpoint: &str,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<ExitCode> {
        let mut events = client.events();
        // Subscribed first, then read: a connection made before the subscription (the
        // client starts connecting at once) is in the state, later changes in the events.
        self.link = client.connection();
        let deadline = once.map(|t| (Instant::now() + t, t));
        let mut retry = RETRY_FIRST;
        tokio::pin!(shutdown);
        loop {
            let step = self.reconcile(client.trust(&self.name)).await;
            if once.is_some()
                && let Some(code) = self.once_result(&step)?
            {
                return Ok(code);
            }
            let failed = matches!(step, Step::Failed);
            retry = if failed { retry } else { RETRY_FIRST };
            tokio::select! {
                () = &mut shutdown => return self.stopped(once.is_some()),
                event = events.recv() => self.on_event(event)?,
                () = sleep_until(deadline.map(|d| d.0)), if deadline.is_some() => {
                    let waited = deadline.map(|d| d.1).unwrap_or_default();
                    anyhow::bail!("{}", self.timeout_message(endpoint, waited));
                }
                () = tokio::time::sleep(retry), if failed => retry = (retry * 2).min(RETRY_MAX),
            }
        }
    }

    /// With `--once`: the exit code once the outcome is known.
    fn once_result(&self, step: &Step) -> anyhow::Result<Option<ExitCode>> {
        match step {
            Step::InSync { hooks_ok: true } => Ok(Some(ExitCode::SUCCESS)),
            Step::InSync { hooks_ok: false } => {
                tracing::error!("the file is written but a hook failed");
                Ok(Some(ExitCode::FAILURE))
            }
            Step::Withdrawn => anyhow::bail!(
                "trust-sds does not serve {} (not found, or withdrawn): no file written",
                self.name
            ),
            Step::Failed => anyhow::bail!("could not write {}", self.out.path().display()),
            Step::Waiting => Ok(None),
        }
    }

    fn on_event(
        &mut self,
        event: Result<TrustEvent, broadcast::error::RecvError>,
    ) -> anyhow::Result<()> {
        match event {
            Ok(TrustEvent::Removed { name }) if name == self.name => self.removal_seen = true,
            Ok(TrustEvent::Rejected { name, reason }) if name == self.name => {
                self.rejected = Some(reason)
            }
            Ok(TrustEvent::Connected) => {
                if matches!(self.link, Connection::Disconnected { .. }) {
                    tracing::info!("reconnected to trust-sds");
                }
                self.link = Connection::Connected;
            }
            Ok(TrustEvent::Disconnected { reason }) => {
                if !matches!(self.link, Connection::Disconnected { .. }) {
                    tracing::warn!(%reason, "trust-sds unreachable; {}; retrying", self.keeping());
                }
                self.link = Connection::Disconnected { reason };
            }
            // A lagged receiver lost events, not state: the next reconcile reads the state.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                anyhow::bail!("the SDS subscription stopped")
            }
        }
        Ok(())
    }

    /// What stays in place while trust-sds is away or this process stops.
    fn keeping(&self) -> String {
        let path = self.out.path().display();
        match &*self.state.borrow() {
            FileState::Current { version } => format!("keeping {path} (version {version})"),
            FileState::Waiting => format!("no bundle for {} written to {path} yet", self.name),
            FileState::Withdrawn => format!("{path} stays removed (trust withdrawn)"),
        }
    }

    fn stopped(&self, once: bool) -> anyhow::Result<ExitCode> {
        if once {
            anyhow::bail!("stopped before a bundle for {} arrived", self.name);
        }
        tracing::info!("stopping; {}", self.keeping());
        Ok(ExitCode::SUCCESS)
    }

    fn timeout_message(&self, endpoint: &str, waited: Duration) -> String {
        let why = match &self.link {
            _ if self.rejected.is_some() => format!(
                "the bundle trust-sds at {endpoint} serves was refused: {}",
                self.rejected.as_deref().unwrap_or_default()
            ),
            Connection::Disconnected { reason } => {
                format!("trust-sds at {endpoint} is unreachable: {reason}")
            }
            Connection::Connecting => format!("no connection to trust-sds at {endpoint} yet"),
            Connection::Connected => format!(
                "trust-sds at {endpoint} does not serve it: is the name <namespace>/<registration> \
                 and is the registration Ready (`trust-sds status`)?"
            ),
        };
        format!("no trust bundle for {} after {waited:?}: {why}", self.name)
    }

    /// Makes the file match `trust` (the trust in force, or none).
    async fn reconcile(&mut self, trust: Option<TrustState>) -> Step {
        match trust {
            Some(trust) => {
                self.removal_seen = false;
                self.install(trust).await
            }
            None if self.removal_seen || self.is_current() => {
                self.removal_seen = false;
                self.withdraw().await
            }
            None if *self.state.borrow() == FileState::Withdrawn => Step::Withdrawn,
            None => Step::Waiting,
        }
    }

    fn is_current(&self) -> bool {
        matches!(*self.state.borrow(), FileState::Current { .. })
    }

    async fn install(&mut self, trust: TrustState) -> Step {
        let content = file_content(&trust.pem);
        let out = self.out.clone();
        let path = out.path().display().to_string();
        let written = blocking(move || write_if_changed(&out, &content)).await;
        let name = &self.name;
        let version = trust.version;
        let changed = match written {
            Ok(changed) => changed,
            Err(e) => {
                tracing::error!(
                    "cannot write {path} (trust for {name} version {version}): {e:#}; retrying"
                );
                return Step::Failed;
            }
        };
        if changed {
            tracing::info!(
                "wrote {path}: trust for {name} version {version} ({} certificate(s))",
                trust.served_certificates
            );
        } else if !self.is_current() {
            tracing::info!(
                "{path} already holds trust for {name} version {version}; not rewritten"
            );
        }
        self.state.send_if_modified(|s| {
            set(
                s,
                FileState::Current {
                    version: version.clone(),
                },
            )
        });
        let hooks_ok = !changed
            || self
                .hooks
                .run(self.out.path(), &version, Change::Written)
                .await;
        Step::InSync { hooks_ok }
    }

    /// Fail closed: the file goes away, so consumers stop trusting what was withdrawn.
    async fn withdraw(&mut self) -> Step {
        let out = self.out.clone();
        let path = out.path().display().to_string();
        let name = &self.name;
        match blocking(move || remove_if_ours(&out)).await {
            Ok(true) => {
                tracing::warn!(
                    "trust for {name} withdrawn by the server: removed {path} (fail closed)"
                );
                self.state.send_replace(FileState::Withdrawn);
                self.hooks.run(self.out.path(), "", Change::Removed).await;
                Step::Withdrawn
            }
            Ok(false) => {
                if *self.state.borrow() != FileState::Withdrawn {
                    tracing::warn!(
                        "trust for {name} withdrawn by the server (or not served); {path} does not exist (fail closed)"
                    );
                }
                self.state.send_replace(FileState::Withdrawn);
                Step::Withdrawn
            }
            Err(e) => {
                tracing::error!(
                    "trust for {name} withdrawn by the server, but {path} could not be removed: {e:#}; retrying"
                );
                self.removal_seen = true;
                Step::Failed
            }
        }
    }
}

fn set(state: &mut FileState, new: FileState) -> bool {
    let changed = *state != new;
    *state = new;
    changed
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// File system work off the async threads (fsync may take a while on a busy disk).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("file task failed")?
}

/// The served PEM with a final newline (it has one; a file without is poor form for PEM).
fn file_content(pem: &str) -> Vec<u8> {
    let mut content = pem.as_bytes().to_vec();
    if !content.ends_with(b"\n") {
        content.push(b'\n');
    }
    content
}

/// Writes `content` unless the file already holds exactly it. Returns whether it wrote.
fn write_if_changed(out: &OutFile, content: &[u8]) -> anyhow::Result<bool> {
    if let OnDisk::Bundle(current) = out.inspect()?
        && current == content
    {
        return Ok(false);
    }
    out.write(content)?;
    Ok(true)
}

/// Removes the file if it is one we may replace. Returns whether there was one.
fn remove_if_ours(out: &OutFile) -> anyhow::Result<bool> {
    match out.inspect()? {
        OnDisk::Absent => Ok(false),
        OnDisk::Bundle(_) | OnDisk::Forced => {
            out.remove()?;
            Ok(true)
        }
    }
}
