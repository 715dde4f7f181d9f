//! `/ready` and `/live` for a sidecar's probes.
//!
//! Ready means "the file holds the bundle trust-sds serves", as far as this process knows:
//! it stays ready while trust-sds is away (the file is kept), and is not ready before the
//! first write or after a withdrawal removed the file. Live answers as long as the process
//! runs: restarting a sync sidecar because trust-sds is down would only lose its state.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;

/// What the file holds, for `/ready`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    /// No bundle written or confirmed on disk yet.
    Waiting,
    /// The file holds this version.
    Current { version: String },
    /// The server withdrew the trust and the file was removed.
    Withdrawn,
}

struct Context {
    state: watch::Receiver<FileState>,
    name: String,
    file: String,
}

/// Binds `addr` and serves the probes in the background until `stop` resolves. Returns
/// the bound address (`--health-listen 127.0.0.1:0` picks a free port).
pub async fn serve(
    addr: SocketAddr,
    state: watch::Receiver<FileState>,
    name: String,
    file: String,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for health probes on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/ready", get(ready))
        .route("/live", get(|| async { "alive\n" }))
        .with_state(Arc::new(Context { state, name, file }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "health endpoint failed");
        }
    });
    tracing::info!("health endpoints on http://{bound} (/ready, /live)");
    Ok(bound)
}

async fn ready(State(ctx): State<Arc<Context>>) -> (StatusCode, String) {
    let Context { name, file, .. } = &*ctx;
    match &*ctx.state.borrow() {
        FileState::Current { version } => (
            StatusCode::OK,
            format!("ready: {file} holds trust for {name} version {version}\n"),
        ),
        FileState::Waiting => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for the first bundle for {name}\n"),
        ),
        FileState::Withdrawn => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: trust for {name} was withdrawn by the server; {file} removed\n"),
        ),
    }
}
