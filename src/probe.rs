//! `trust-sds probe`: an MCP `initialize` over HTTPS, verified with live trust from
//! trust-sds, as the broker would do it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// What the upstream answered.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    pub status: u16,
    /// `result.serverInfo.name` of the JSON-RPC answer, when present.
    pub server_name: Option<String>,
    pub protocol_version: Option<String>,
    pub elapsed: Duration,
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"trust-sds-probe","version":"1"}}}"#;

/// POSTs an MCP `initialize` to `url` (streamable HTTP) over TLS configured by `tls`.
/// `connect_to` overrides the address dialled (the TLS name and Host stay the URL's).
pub async fn mcp_initialize(
    url: &str,
    tls: Arc<ClientConfig>,
    connect_to: Option<std::net::SocketAddr>,
) -> anyhow::Result<ProbeOutcome> {
    let start = Instant::now();
    let uri: http::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("https"),
        "the probe speaks HTTPS only: {url}"
    );
    let host = uri.host().context("URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = match connect_to {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect((host.as_str(), port)).await,
    }
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let server_name = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .with_context(|| format!("invalid TLS server name {host}"))?;
    let tls_stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {host}:{port} failed"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls_stream))
            .await
            .context("HTTP handshake failed")?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = http::Request::post(path)
        .header(
            http::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json, text/event-stream")
        .body(Full::new(Bytes::from_static(INITIALIZE.as_bytes())))?;
    let response = sender
        .send_request(request)
        .await
        .context("initialize request failed")?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer failed")?
        .to_bytes();
    driver.abort();
    let json = first_json(&body);
    Ok(ProbeOutcome {
        status,
        server_name: json.as_ref().and_then(|j| {
            j.pointer("/result/serverInfo/name")?
                .as_str()
                .map(str::to_owned)
        }),
        protocol_version: json.as_ref().and_then(|j| {
            j.pointer("/result/protocolVersion")?
                .as_str()
                .map(str::to_owned)
        }),
        elapsed: start.elapsed(),
    })
}

/// The JSON-RPC message of a plain JSON or a server-sent-events answer.
fn first_json(body: &[u8]) -> Option<serde_json::Value> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Some(v);
    }
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str(d.trim()).ok())
}
