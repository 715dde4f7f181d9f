//! The gRPC services: `SecretDiscoveryService` and `AggregatedDiscoveryService` (Secrets
//! only), and the one loop every stream runs.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::SdsOptions;
use super::clients::{ClientEntry, ClientInfo, ClientRegistry};
use super::connection::PeerKeys;
use super::delta::DeltaStream;
use super::encode::SdsSnapshot;
use super::limits::{Admitted, Limit, RequestBudget, StreamCounter};
use super::sotw::{Ack, SotwStream};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

use crate::metrics::{ApiLabels, Metrics};

/// Shared by every stream.
#[derive(Clone)]
pub struct SdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    snapshots: watch::Receiver<Arc<SdsSnapshot>>,
    options: SdsOptions,
    metrics: Arc<Metrics>,
    clients: Arc<ClientRegistry>,
    streams: Arc<StreamCounter>,
    shutdown: watch::Receiver<bool>,
}

impl SdsServer {
    pub fn new(
        snapshots: watch::Receiver<Arc<SdsSnapshot>>,
        options: SdsOptions,
        metrics: Arc<Metrics>,
        clients: Arc<ClientRegistry>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshots,
                streams: Arc::new(StreamCounter::new(options.streams)),
                options,
                metrics,
                clients,
                shutdown,
            }),
        }
    }

    /// Admits a stream (or refuses it with RESOURCE_EXHAUSTED) and starts its task.
    fn spawn<M: Machine>(
        &self,
        api: &'static str,
        machine: M,
        request: Request<Streaming<M::Req>>,
    ) -> Result<Response<ResponseStream<M::Resp>>, Status> {
        let identities = peer_identities(&request);
        let keys = PeerKeys::of(&request, &identities);
        let admitted = match self.inner.streams.admit(&keys.connection, &keys.client) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.inner.metrics.limit_refused(refusal.limit);
                tracing::warn!(api, connection = %keys.connection, client = %keys.client, reason = %refusal.message, "stream refused");
                return Err(Status::resource_exhausted(refusal.message));
            }
        };
        let requests = request.into_inner();
        // One slot: a slow client blocks only its own task, which then skips to the newest
        // snapshot instead of queueing stale ones.
        let (tx, rx) = mpsc::channel(1);
        let inner = self.inner.clone();
        let peer = Peer {
            keys,
            identities,
            admitted,
        };
        tokio::spawn(run_stream(inner, api, peer, machine, requests, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Who is on the other end of a stream.
struct Peer {
    keys: PeerKeys,
    /// SANs of the mTLS client certificate.
    identities: Vec<String>,
    /// The stream's slot in the per-connection and per-client counts.
    admitted: Admitted,
}

pub(crate) fn peer_identities<T>(request: &Request<T>) -> Vec<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| certs.first().map(|c| crate::cert::identities(c)))
        .unwrap_or_default()
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream's protocol state machine.
trait Machine: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    fn on_request(&mut self, req: &Self::Req, snap: &SdsSnapshot) -> (Ack, Option<Self::Resp>);
    fn on_snapshot(&mut self, snap: &SdsSnapshot) -> Option<Self::Resp>;
    fn node(req: &Self::Req) -> Option<String>;
    /// How many resource names the request carries (for the per-request limit).
    fn name_count(req: &Self::Req) -> usize;
    /// The names a request asks for, and whether it asks for everything (authorization).
    fn requested<'a>(&self, req: &'a Self::Req) -> (Vec<&'a str>, bool);
    /// Whether the request may change the subscription the registry shows.
    fn changes_subscription(req: &Self::Req, shown: &[String]) -> bool;
    fn subscription(&self) -> (Vec<String>, bool);
    fn resource_count(resp: &Self::Resp) -> usize;
}

impl Machine for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snap: &SdsSnapshot,
    ) -> (Ack, Option<DiscoveryResponse>) {
        SotwStream::on_request(self, req, snap)
    }
    fn on_snapshot(&mut self, snap: &SdsSnapshot) -> Option<DiscoveryResponse> {
        SotwStream::on_snapshot(self, snap)
    }
    fn node(req: &DiscoveryRequest) -> Option<String> {
        req.node.as_ref().map(|n| n.id.clone())
    }
    fn name_count(req: &DiscoveryRequest) -> usize {
        req.resource_names.len()
    }
    fn requested<'a>(&self, req: &'a DiscoveryRequest) -> (Vec<&'a str>, bool) {
        let names: Vec<&str> = req.resource_names.iter().map(String::as_str).collect();
        let wildcard = names.contains(&"*")
            || (names.is_empty() && (!self.is_started() || self.is_wildcard()));
        (names, wildcard)
    }
    fn changes_subscription(req: &DiscoveryRequest, shown: &[String]) -> bool {
        req.resource_names != shown
    }
    fn subscription(&self) -> (Vec<String>, bool) {
        (
            self.names().map(str::to_owned).collect(),
            self.is_wildcard(),
        )
    }
    fn resource_count(resp: &DiscoveryResponse) -> usize {
        resp.resources.len()
    }
}

impl Machine for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snap: &SdsSnapshot,
    ) -> (Ack, Option<DeltaDiscoveryResponse>) {
        DeltaStream::on_request(self, req, snap)
    }
    fn on_snapshot(&mut self, snap: &SdsSnapshot) -> Option<DeltaDiscoveryResponse> {
        DeltaStream::on_snapshot(self, snap)
    }
    fn node(req: &DeltaDiscoveryRequest) -> Option<String> {
        req.node.as_ref().map(|n| n.id.clone())
    }
    fn name_count(req: &DeltaDiscoveryRequest) -> usize {
        req.resource_names_subscribe.len() + req.initial_resource_versions.len()
    }
    fn requested<'a>(&self, req: &'a DeltaDiscoveryRequest) -> (Vec<&'a str>, bool) {
        let mut names: Vec<&str> = req
            .resource_names_subscribe
            .iter()
            .map(String::as_str)
            .collect();
        names.extend(req.initial_resource_versions.keys().map(String::as_str));
        let wildcard =
            names.contains(&"*") || (!self.is_started() && req.resource_names_subscribe.is_empty());
        (names, wildcard)
    }
    fn changes_subscription(req: &DeltaDiscoveryRequest, _: &[String]) -> bool {
        !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty()
    }
    fn subscription(&self) -> (Vec<String>, bool) {
        (
            self.names().map(str::to_owned).collect(),
            self.is_wildcard(),
        )
    }
    fn resource_count(resp: &DeltaDiscoveryResponse) -> usize {
        resp.resources.len() + resp.removed_resources.len()
    }
}

/// A stream's metric handles, resolved once so the push path takes no registry locks.
struct StreamMetrics {
    streams: Gauge,
    responses: Counter,
    resources_sent: Counter,
    acks: Counter,
    nacks: Counter,
    rejected: Counter,
    push_latency: Histogram,
}

impl StreamMetrics {
    fn new(metrics: &Metrics, api: &'static str) -> Self {
        let labels = ApiLabels { api };
        Self {
            streams: metrics.streams.get_or_create(&labels).clone(),
            responses: metrics.responses.get_or_create(&labels).clone(),
            resources_sent: metrics.resources_sent.get_or_create(&labels).clone(),
            acks: metrics.acks.get_or_create(&labels).clone(),
            nacks: metrics.nacks.get_or_create(&labels).clone(),
            rejected: metrics.rejected_requests.get_or_create(&labels).clone(),
            push_latency: metrics.push_latency.clone(),
        }
    }
}

/// Removes the stream from the registry and the gauge however the task ends.
struct StreamGuard<'a> {
    inner: &'a Inner,
    id: u64,
    streams: Gauge,
    admitted: Option<Admitted>,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        // The slot first: once the registry no longer shows the stream, a new one fits.
        self.admitted.take();
        self.inner.clients.close(self.id);
        self.streams.dec();
    }
}

async fn run_stream<M: Machine>(
    inner: Arc<Inner>,
    api: &'static str,
    peer: Peer,
    mut machine: M,
    mut requests: Streaming<M::Req>,
    tx: mpsc::Sender<Result<M::Resp, Status>>,
) {
    let metrics = StreamMetrics::new(&inner.metrics, api);
    metrics.streams.inc();
    let Peer {
        keys,
        mut identities,
        admitted,
    } = peer;
    let is_unix = keys.is_unix;
    let mut budget = RequestBudget::new(inner.options.request_rate);
    let (id, entry) = inner.clients.open(ClientInfo {
        api,
        peer: keys.connection.clone(),
        identities: identities.clone(),
        ..ClientInfo::default()
    });
    let _guard = StreamGuard {
        inner: &inner,
        id,
        streams: metrics.streams.clone(),
        admitted: Some(admitted),
    };
    let mut snapshots = inner.snapshots.clone();
    let mut shutdown = inner.shutdown.clone();
    // The status a stream ends with when the client broke a rule.
    let mut break_with = None;
    loop {
        let response = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            request = requests.message() => {
                let request = match request {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    // An oversized message is a broken rule, not a broken connection: tell
                    // the client why (if it still listens).
                    Err(status) if status.code() == tonic::Code::OutOfRange => {
                        inner.metrics.limit_refused(Limit::MessageSize);
                        tracing::warn!(api, peer = %keys.connection, %status, "request too large; stream closed");
                        break_with = Some(Status::out_of_range(format!(
                            "{} (--max-request-bytes); the stream is closed",
                            status.message()
                        )));
                        break;
                    }
                    Err(status) => {
                        tracing::debug!(api, %status, "stream ended by client error");
                        break;
                    }
                };
                if !budget.admit() {
                    metrics.rejected.inc();
                    inner.metrics.limit_refused(Limit::RequestRate);
                    tracing::warn!(api, peer = %keys.connection, "request rate exceeded; stream closed");
                    break_with = Some(Status::resource_exhausted(budget.refusal()));
                    break;
                }
                let names = M::name_count(&request);
                let limit = inner.options.max_names_per_request;
                // On the Unix socket the node id is a usable identity: no remote peer can
                // reach it.
                if is_unix && let Some(node) = M::node(&request).filter(|n| !n.is_empty()) {
                    let node = format!("node:{node}");
                    if !identities.contains(&node) {
                        identities.push(node);
                        entry.lock().unwrap_or_else(|p| p.into_inner()).identities = identities.clone();
                    }
                }
                let denied = inner.options.authz.as_ref().and_then(|authz| {
                    let (requested, wildcard) = machine.requested(&request);
                    authz.check(&identities, &requested, wildcard).err()
                });
                if let Some(why) = denied {
                    metrics.rejected.inc();
                    tracing::warn!(api, reason = %why, "subscription refused; stream closed");
                    Some(Err(Status::permission_denied(why)))
                } else if names > limit {
                    metrics.rejected.inc();
                    inner.metrics.limit_refused(Limit::NamesPerRequest);
                    tracing::warn!(api, names, limit, "request names too many resources; stream closed");
                    let status = Status::resource_exhausted(format!(
                        "request names {names} resources; at most {limit} per request (--max-names-per-request)"
                    ));
                    Some(Err(status))
                } else {
                let snap = snapshots.borrow_and_update().clone();
                let (ack, response) = machine.on_request(&request, &snap);
                record(&metrics, api, &entry, &machine, &request, &ack);
                // Answers to requests are not pushes: no latency sample.
                response.map(|r| Ok((r, None)))
                }
            }
            changed = snapshots.changed() => {
                if changed.is_err() { break; }
                let snap = snapshots.borrow_and_update().clone();
                machine.on_snapshot(&snap).map(|r| Ok((r, Some(snap))))
            }
        };
        let response = match response {
            Some(Err(status)) => {
                let _ = tx.send(Err(status)).await;
                break;
            }
            Some(Ok(r)) => Some(r),
            None => None,
        };
        if let Some((response, snap)) = response {
            metrics.responses.inc();
            metrics
                .resources_sent
                .inc_by(M::resource_count(&response) as u64);
            if tx.send(Ok(response)).await.is_err() {
                break;
            }
            budget.responded();
            if let Some(snap) = snap {
                metrics
                    .push_latency
                    .observe(snap.published.elapsed().as_secs_f64());
            }
        }
    }
    if let Some(status) = break_with {
        let _ = tx.send(Err(status)).await;
    }
}

fn record<M: Machine>(
    metrics: &StreamMetrics,
    api: &'static str,
    entry: &ClientEntry,
    machine: &M,
    request: &M::Req,
    ack: &Ack,
) {
    match ack {
        Ack::Ack { .. } => {
            metrics.acks.inc();
        }
        Ack::Nack { version, message } => {
            metrics.nacks.inc();
            tracing::warn!(api, %version, %message, "client rejected a response (NACK); it is not resent");
        }
        Ack::UnsupportedType(type_url) => {
            metrics.rejected.inc();
            tracing::warn!(api, %type_url, "request for an unsupported type ignored; this server serves Secrets only");
            return;
        }
        Ack::Stale => {
            tracing::debug!(api, "request with a stale nonce ignored");
            return;
        }
        Ack::None => {}
    }
    let mut info = entry.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(node) = M::node(request).filter(|n| !n.is_empty()) {
        info.node = node;
    }
    if M::changes_subscription(request, &info.names) {
        let (names, wildcard) = machine.subscription();
        info.names = names;
        info.wildcard = wildcard;
    }
    match ack {
        Ack::Ack { version } => info.acked = Some(version.clone()),
        Ack::Nack { version, message } => {
            info.nacked = Some(version.clone());
            info.nack_message = Some(message.clone());
            info.nacks += 1;
        }
        _ => {}
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let machine = DeltaStream::new(self.inner.options.unknown_names, true);
        self.spawn("delta", machine, request)
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        self.spawn("sotw", SotwStream::new(true), request)
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let identities = peer_identities(&request);
        let req = request.into_inner();
        if let Some(authz) = &self.inner.options.authz {
            let names: Vec<&str> = req.resource_names.iter().map(String::as_str).collect();
            if let Err(why) = authz.check(&identities, &names, names.is_empty()) {
                return Err(Status::permission_denied(why));
            }
        }
        if !super::accepts_type(&req.type_url, true) {
            return Err(Status::invalid_argument(format!(
                "unsupported type_url {:?}: this server serves {}",
                req.type_url,
                super::SECRET_TYPE_URL
            )));
        }
        if req.resource_names.is_empty() {
            return Err(Status::invalid_argument(
                "FetchSecrets needs resource_names (e.g. \"<namespace>/<registration>\")",
            ));
        }
        let snap = self.inner.snapshots.borrow().clone();
        let mut stream = SotwStream::new(true);
        match stream.on_request(&req, &snap).1 {
            Some(mut response) => {
                response.nonce.clear();
                Ok(Response::new(response))
            }
            None => Err(Status::not_found(format!(
                "no bundle is served for {}",
                req.resource_names.join(", ")
            ))),
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for SdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.spawn("ads", SotwStream::new(false), request)
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let machine = DeltaStream::new(self.inner.options.unknown_names, false);
        self.spawn("ads-delta", machine, request)
    }
}
