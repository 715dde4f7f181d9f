//! The subscription loop: connect, subscribe, apply responses, ACK or NACK, and reconnect
//! with capped exponential backoff, keeping the last good trust meanwhile.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Node, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use rustls::ClientConfig;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::store::{Connection, Stores, TrustEvent, TrustState};
use super::verifier::LiveVerifier;
use crate::xds::SECRET_TYPE_URL;

/// Which SDS variant to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Delta,
    Sotw,
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// trust-sds gRPC address, e.g. `http://trust-sds.mcp-system:18000`.
    pub endpoint: String,
    /// Resource names (`<namespace>/<registration>`).
    pub names: Vec<String>,
    pub protocol: Protocol,
    /// Trust the system roots in addition to the served bundle.
    pub system_roots: bool,
    pub node_id: String,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// TLS to trust-sds (an `https://` endpoint): the CA that issued trust-sds's serving
    /// certificate, and this client's certificate and key for mTLS, all PEM.
    pub tls: Option<ClientTls>,
}

/// TLS settings for reaching trust-sds itself (not the upstreams: those use served trust).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub server_ca_pem: Vec<u8>,
    /// Client certificate and key (PEM) for mTLS; its SANs are the identity trust-sds sees.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify on trust-sds's certificate (default: the endpoint's host).
    pub server_name: Option<String>,
}

impl ClientOptions {
    pub fn new(endpoint: impl Into<String>, names: Vec<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            names,
            protocol: Protocol::Delta,
            system_roots: false,
            node_id: "trust-sds-client".to_owned(),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// A live subscription. Dropping it stops the subscription (trust already handed out in
/// `ClientConfig`s then stays as it was).
pub struct TrustClient {
    stores: Arc<Stores>,
    names: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TrustClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TrustClient {
    /// Starts subscribing in the background.
    pub fn start(options: ClientOptions) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let system_roots = if options.system_roots {
            super::store::load_system_roots()
        } else {
            Vec::new()
        };
        let stores = Arc::new(Stores::new(provider, system_roots));
        let names = options.names.clone();
        let task = tokio::spawn(run(options, stores.clone()));
        Ok(Self {
            stores,
            names,
            task,
        })
    }

    /// A rustls config whose verifier always uses the current trust for `name`.
    pub fn client_config(&self, name: &str) -> Arc<ClientConfig> {
        let verifier = Arc::new(self.verifier(name));
        let mut config = ClientConfig::builder_with_provider(self.stores.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // A resumed session skips certificate verification: with resumption, withdrawn or
        // rotated-out trust would keep admitting the old server. Every connection verifies.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    pub fn verifier(&self, name: &str) -> LiveVerifier {
        LiveVerifier::new(name.to_owned(), self.stores.clone())
    }

    pub fn trust(&self, name: &str) -> Option<TrustState> {
        self.stores.get(name)
    }

    /// The events from now on (a receiver misses what was sent before it subscribed;
    /// [`Self::connection`] holds what the connection events said).
    pub fn events(&self) -> broadcast::Receiver<TrustEvent> {
        self.stores.events.subscribe()
    }

    /// The connection as the last `Connected`/`Disconnected` event said.
    pub fn connection(&self) -> Connection {
        self.stores.connection.borrow().clone()
    }

    /// Every subscribed name has trust.
    pub fn is_ready(&self) -> bool {
        *self.stores.ready.borrow() >= self.names.len()
    }

    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.stores.ready.subscribe();
        let want = self.names.len();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n >= want))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no trust bundle for {} after {timeout:?}",
                    self.names.join(", ")
                )
            })?
            .map_err(|_| anyhow::anyhow!("client stopped"))?;
        Ok(())
    }
}

async fn run(options: ClientOptions, stores: Arc<Stores>) {
    let mut backoff = options.initial_backoff;
    loop {
        let (reason, progressed) = match session(&options, &stores).await {
            Ok(()) => ("stream closed".to_owned(), false),
            Err(SessionError { reason, progressed }) => (reason, progressed),
        };
        if progressed {
            backoff = options.initial_backoff;
        }
        tracing::info!(endpoint = %options.endpoint, %reason, retry_in = ?backoff, "SDS stream lost; keeping last good trust");
        stores.connection.send_replace(Connection::Disconnected {
            reason: reason.clone(),
        });
        let _ = stores.events.send(TrustEvent::Disconnected { reason });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// How a session ended, clean closes included.
struct SessionError {
    reason: String,
    /// Whether a response was received before the end (resets the backoff). A server that
    /// accepts and closes at once, cleanly or not, has not progressed: it gets backoff,
    /// never a tight reconnect loop.
    progressed: bool,
}

/// The server ended the stream without an error (or stopped reading requests).
fn closed(api: &str, progressed: bool) -> SessionError {
    SessionError {
        reason: format!("{api}: stream closed by the server"),
        progressed,
    }
}

/// An error with its causes, `outer: inner: ...` (tonic's transport error alone says only
/// "transport error"; the cause says "Connection refused").
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn fail(reason: impl std::fmt::Display) -> SessionError {
    SessionError {
        reason: reason.to_string(),
        progressed: false,
    }
}

async fn session(options: &ClientOptions, stores: &Stores) -> Result<(), SessionError> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(options.endpoint.clone())
        .map_err(|e| fail(format!("invalid endpoint {}: {e}", options.endpoint)))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30));
    if let Some(tls) = &options.tls {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.server_ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| fail(format!("TLS settings: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| fail(format!("connect: {}", with_causes(&e))))?;
    let mut client = SecretDiscoveryServiceClient::new(channel);
    stores.connection.send_replace(Connection::Connected);
    let _ = stores.events.send(TrustEvent::Connected);
    match options.protocol {
        Protocol::Delta => delta_session(&mut client, options, stores).await,
        Protocol::Sotw => sotw_session(&mut client, options, stores).await,
    }
}

fn node(options: &ClientOptions) -> Option<Node> {
    Some(Node {
        id: options.node_id.clone(),
        ..Default::default()
    })
}

fn nack_status(errors: &[String]) -> Option<RpcStatus> {
    (!errors.is_empty()).then(|| RpcStatus {
        code: tonic::Code::InvalidArgument as i32,
        message: errors.join("; "),
        details: vec![],
    })
}

async fn delta_session(
    client: &mut SecretDiscoveryServiceClient<tonic::transport::Channel>,
    options: &ClientOptions,
    stores: &Stores,
) -> Result<(), SessionError> {
    let (tx, rx) = mpsc::channel(8);
    let held = stores.versions();
    let first = DeltaDiscoveryRequest {
        node: node(options),
        type_url: SECRET_TYPE_URL.to_owned(),
        resource_names_subscribe: options.names.clone(),
        initial_resource_versions: held
            .into_iter()
            .filter(|(n, _)| options.names.contains(n))
            .collect(),
        ..Default::default()
    };
    let _ = tx.send(first).await;
    let mut responses = client
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .map_err(|e| fail(format!("DeltaSecrets: {}", with_causes(&e))))?
        .into_inner();
    let mut progressed = false;
    loop {
        let response = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(closed("DeltaSecrets", progressed)),
            Err(e) => {
                return Err(SessionError {
                    reason: format!("DeltaSecrets: {}", with_causes(&e)),
                    progressed,
                });
            }
        };
        progressed = true;
        let mut errors = Vec::new();
        for resource in &response.resources {
            if let Err(e) = apply(
                stores,
                &resource.name,
                &resource.version,
                resource.resource.as_ref(),
            ) {
                errors.push(e);
            }
        }
        for name in &response.removed_resources {
            stores.remove(name);
        }
        let ack = DeltaDiscoveryRequest {
            type_url: SECRET_TYPE_URL.to_owned(),
            response_nonce: response.nonce.clone(),
            error_detail: nack_status(&errors),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return Err(closed("DeltaSecrets", progressed));
        }
    }
}

async fn sotw_session(
    client: &mut SecretDiscoveryServiceClient<tonic::transport::Channel>,
    options: &ClientOptions,
    stores: &Stores,
) -> Result<(), SessionError> {
    let (tx, rx) = mpsc::channel(8);
    let request = |version: String, nonce: String, error_detail| DiscoveryRequest {
        version_info: version,
        node: node(options),
        resource_names: options.names.clone(),
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: nonce,
        error_detail,
        ..Default::default()
    };
    let _ = tx.send(request(String::new(), String::new(), None)).await;
    let mut responses = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .map_err(|e| fail(format!("StreamSecrets: {}", with_causes(&e))))?
        .into_inner();
    let mut accepted = String::new();
    let mut progressed = false;
    loop {
        let response: DiscoveryResponse = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(closed("StreamSecrets", progressed)),
            Err(e) => {
                return Err(SessionError {
                    reason: format!("StreamSecrets: {}", with_causes(&e)),
                    progressed,
                });
            }
        };
        progressed = true;
        let mut errors = Vec::new();
        for any in &response.resources {
            let name = Secret::decode(any.value.as_slice())
                .map(|s| s.name)
                .unwrap_or_default();
            if !options.names.contains(&name) {
                errors.push(format!("unrequested resource {name:?}"));
                continue;
            }
            if let Err(e) = apply(stores, &name, &response.version_info, Some(any)) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            accepted = response.version_info.clone();
        }
        let ack = request(
            accepted.clone(),
            response.nonce.clone(),
            nack_status(&errors),
        );
        if tx.send(ack).await.is_err() {
            return Err(closed("StreamSecrets", progressed));
        }
    }
}

/// Decodes one served resource and installs it; the error is the NACK message.
fn apply(stores: &Stores, name: &str, version: &str, any: Option<&Any>) -> Result<(), String> {
    let result = decode_bundle(name, any).and_then(|pem| stores.install(name, version, &pem));
    if let Err(reason) = &result {
        tracing::warn!(%name, %reason, "refused a served bundle; keeping the previous trust");
        let _ = stores.events.send(TrustEvent::Rejected {
            name: name.to_owned(),
            reason: reason.clone(),
        });
    }
    result
}

fn decode_bundle(name: &str, any: Option<&Any>) -> Result<Vec<u8>, String> {
    let any = any.ok_or_else(|| format!("resource {name} has no body"))?;
    if any.type_url != SECRET_TYPE_URL {
        return Err(format!(
            "resource {name} has type {}, expected {SECRET_TYPE_URL}",
            any.type_url
        ));
    }
    let secret = Secret::decode(any.value.as_slice())
        .map_err(|e| format!("resource {name} does not decode: {e}"))?;
    if secret.name != name {
        return Err(format!(
            "resource {name} carries a Secret named {:?}",
            secret.name
        ));
    }
    let Some(secret::Type::ValidationContext(context)) = secret.r#type else {
        return Err(format!("resource {name} is not a validation context"));
    };
    match context.trusted_ca.and_then(|d| d.specifier) {
        Some(Specifier::InlineBytes(bytes)) => Ok(bytes),
        Some(Specifier::InlineString(s)) => Ok(s.into_bytes()),
        _ => Err(format!("resource {name} has no inline trusted_ca")),
    }
}
