//! The gRPC services: `SecretDiscoveryService` and `AggregatedDiscoveryService` (Secrets
//! only), and the one loop every stream runs.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Status};

use super::SdsOptions;
use super::clients::{ClientEntry, ClientInfo, ClientRegistry, Rejected};
use super::connection::{Peer, PeerKeys};
use super::delta::{DeltaResponse, DeltaStream};
use super::encode::{Feed, SdsSnapshot};
use super::interest::Listener;
use super::limits::{Admitted, Limit, RequestBudget, StreamCounter};
use super::sotw::{SotwResponse, SotwStream};
use super::transport::requests::{RequestError, Requests};
use super::{Ack, Subscription};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

use crate::metrics::{ApiLabels, Metrics};

/// Shared by every stream.
#[derive(Clone)]
pub struct SdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    feed: Feed,
    options: SdsOptions,
    metrics: Arc<Metrics>,
    clients: Arc<ClientRegistry>,
    streams: Arc<StreamCounter>,
}

impl SdsServer {
    pub fn new(
        feed: Feed,
        options: SdsOptions,
        metrics: Arc<Metrics>,
        clients: Arc<ClientRegistry>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        // Shutdown reaches the streams as a wakeup, like a publication: a stream waits on
        // nothing else than its requests and its listener.
        let interest = feed.interest.clone();
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            interest.stop();
        });
        Self {
            inner: Arc::new(Inner {
                feed,
                streams: Arc::new(StreamCounter::new(options.streams)),
                options,
                metrics,
                clients,
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Admits a stream (or refuses it with RESOURCE_EXHAUSTED) and returns its responses.
    ///
    /// There is no task or channel per stream: the response stream itself runs the state
    /// machine whenever its connection's task polls it ([`super::transport`]), so an idle
    /// stream costs its state and nothing more. A slow client is not polled until it has
    /// window again, and then gets the newest snapshot, never a queue of stale ones.
    fn open<M: Subscription>(
        &self,
        api: &'static str,
        machine: M,
        peer: &Peer,
        requests: Requests<M::Req>,
    ) -> Result<ResponseStream<M::Resp>, Status> {
        let Peer { keys, identities } = peer.clone();
        let admitted = match self.inner.streams.admit(&keys.connection, &keys.client) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.inner.metrics.limit_refused(refusal.limit);
                tracing::warn!(api, connection = %keys.connection, client = %keys.client, reason = %refusal.message, "stream refused");
                return Err(Status::resource_exhausted(refusal.message));
            }
        };
        let stream = SdsStream::new(
            self.inner.clone(),
            api,
            keys,
            identities,
            admitted,
            machine,
            requests,
        );
        Ok(Box::pin(stream))
    }
}

/// The certificate identities of a unary request's peer.
pub(crate) fn peer_identities<T>(request: &Request<T>) -> Vec<String> {
    Peer::of(request).identities
}

/// The identity a node id gives a client: `node:<id>`, only on the Unix socket, where no
/// remote peer can connect, so the id is as trustworthy as the file permissions. Streams and
/// `FetchSecrets` identify callers by this one rule.
fn node_identity(is_unix: bool, node: Option<&str>) -> Option<String> {
    node.filter(|n| is_unix && !n.is_empty())
        .map(|n| format!("node:{n}"))
}

/// A stream's responses; an error status ends it.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

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
struct StreamGuard {
    inner: Arc<Inner>,
    id: u64,
    streams: Gauge,
    admitted: Option<Admitted>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // The slot first: once the registry no longer shows the stream, a new one fits.
        self.admitted.take();
        self.inner.clients.close(self.id);
        self.streams.dec();
    }
}

/// One stream: its state machine, its requests and what it needs to answer them.
struct SdsStream<M: Subscription> {
    inner: Arc<Inner>,
    api: &'static str,
    keys: PeerKeys,
    /// SANs of the mTLS client certificate, plus `node:<id>` on the Unix socket.
    identities: Vec<String>,
    machine: M,
    requests: Requests<M::Req>,
    snapshots: watch::Receiver<Arc<SdsSnapshot>>,
    /// Wakes the stream when a name it wants changes.
    listener: Listener,
    /// The names the listener wants (`None` before the first request).
    wants: Option<(Vec<String>, bool)>,
    /// The machine's [`Subscription::subscription_seq`] when the listener and the registry
    /// last took its subscription (`None` before the first request).
    followed: Option<u64>,
    metrics: StreamMetrics,
    budget: RequestBudget,
    entry: ClientEntry,
    /// Set once the stream has ended (after an error status, nothing more is sent).
    ended: bool,
    _guard: StreamGuard,
}

/// What woke a stream.
enum Event<Req> {
    Stop,
    Request(Result<Option<Req>, RequestError>),
    /// A new snapshot (`false`: the publisher is gone).
    Changed(bool),
}

/// What one event on a stream leads to.
enum Step<R> {
    /// Send this response; a push carries the snapshot it was built from (push latency).
    Respond(R, Option<Arc<SdsSnapshot>>),
    /// Nothing to send.
    Quiet,
    /// End the stream with this status.
    Fail(Status),
    /// End the stream normally.
    End,
}

impl<M: Subscription> SdsStream<M> {
    fn new(
        inner: Arc<Inner>,
        api: &'static str,
        keys: PeerKeys,
        identities: Vec<String>,
        admitted: Admitted,
        machine: M,
        requests: Requests<M::Req>,
    ) -> Self {
        let metrics = StreamMetrics::new(&inner.metrics, api);
        metrics.streams.inc();
        let (id, entry) = inner.clients.open(ClientInfo {
            api,
            peer: keys.connection.clone(),
            identities: identities.clone(),
            ..ClientInfo::default()
        });
        let guard = StreamGuard {
            inner: inner.clone(),
            id,
            streams: metrics.streams.clone(),
            admitted: Some(admitted),
        };
        Self {
            snapshots: inner.feed.snapshots.clone(),
            listener: inner.feed.interest.listen(),
            wants: None,
            followed: None,
            budget: RequestBudget::new(inner.options.request_rate),
            inner,
            api,
            keys,
            identities,
            machine,
            requests,
            metrics,
            entry,
            ended: false,
            _guard: guard,
        }
    }

    /// What woke the stream, in order: shutdown, a request, a publication.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event<M::Req>> {
        if self.listener.is_stopping() {
            return Poll::Ready(Event::Stop);
        }
        if let Poll::Ready(request) = self.requests.poll_message(cx) {
            return Poll::Ready(Event::Request(request));
        }
        ready!(self.listener.poll_notified(cx));
        Poll::Ready(if self.listener.is_stopping() {
            Event::Stop
        } else {
            Event::Changed(self.snapshots.has_changed().is_ok())
        })
    }

    /// The next item of the response stream; `None` ends it.
    fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<M::Resp, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            let step = match ready!(self.poll_event(cx)) {
                Event::Stop | Event::Changed(false) => Step::End,
                Event::Request(Ok(Some(request))) => self.on_request(request),
                Event::Request(Ok(None)) => Step::End,
                // An oversized message is a broken rule, not a broken connection: tell the
                // client why (if it still listens).
                Event::Request(Err(RequestError::Invalid(status)))
                    if status.code() == tonic::Code::OutOfRange =>
                {
                    self.inner.metrics.limit_refused(Limit::MessageSize);
                    tracing::warn!(api = self.api, peer = %self.keys.connection, %status, "request too large; stream closed");
                    Step::Fail(Status::out_of_range(format!(
                        "{} (--max-request-bytes); the stream is closed",
                        status.message()
                    )))
                }
                // Not a request (compressed, not protobuf, cut short): the status says which.
                Event::Request(Err(RequestError::Invalid(status))) => {
                    self.metrics.rejected.inc();
                    tracing::warn!(api = self.api, peer = %self.keys.connection, %status, "malformed request; stream closed");
                    Step::Fail(status)
                }
                Event::Request(Err(RequestError::Gone(error))) => {
                    tracing::debug!(api = self.api, %error, "stream ended by the client or its connection");
                    Step::End
                }
                Event::Changed(true) => {
                    let snap = self.snapshots.borrow_and_update().clone();
                    match self.machine.on_snapshot(&snap) {
                        Some(r) => Step::Respond(r, Some(snap)),
                        None => Step::Quiet,
                    }
                }
            };
            match step {
                Step::Quiet => continue,
                Step::End => {
                    self.ended = true;
                    return Poll::Ready(None);
                }
                Step::Fail(status) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Step::Respond(response, snap) => {
                    self.metrics.responses.inc();
                    self.metrics
                        .resources_sent
                        .inc_by(M::resource_count(&response) as u64);
                    self.budget.responded();
                    if let Some(snap) = snap {
                        self.metrics
                            .push_latency
                            .observe(snap.published.elapsed().as_secs_f64());
                    }
                    return Poll::Ready(Some(Ok(response)));
                }
            }
        }
    }

    /// Keeps the names the stream is woken for equal to its subscription (`changed`: the
    /// subscription may have changed since the last request).
    fn follow(&mut self, changed: bool) {
        if !changed {
            return;
        }
        let wanted = self.machine.subscription();
        if self.wants.as_ref() == Some(&wanted) {
            return;
        }
        self.listener.want(&wanted.0, wanted.1);
        self.wants = Some(wanted);
        // A publication between reading the snapshot for this request and now did not wake
        // the stream for its new names: look again.
        if self.snapshots.has_changed().unwrap_or(true) {
            self.listener.wake();
        }
    }

    /// Logs, counts and records in the client registry what a request meant. The
    /// subscription shown is set when it may have changed (`changed`), always on the first
    /// request (a Delta stream that names nothing in it is a wildcard, which no later
    /// request need repeat).
    fn record(&self, request: &M::Req, ack: Ack, changed: bool) {
        let (metrics, api, machine) = (&self.metrics, self.api, &self.machine);
        match &ack {
            Ack::Ack { .. } => {
                metrics.acks.inc();
            }
            Ack::Nack {
                version,
                message,
                code,
                ..
            } => {
                metrics.nacks.inc();
                self.inner.metrics.nacked(api, *code);
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
        let claimed = machine.claimed(request);
        let mut info = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = M::node(request).filter(|n| !n.is_empty() && *n != info.node) {
            info.node = node.to_owned();
        }
        if changed {
            let (names, wildcard) = machine.subscription();
            info.names = names;
            info.wildcard = wildcard;
            if !wildcard {
                let ClientInfo {
                    names, delivery, ..
                } = &mut *info;
                // Both machines list their names sorted.
                delivery.retain_sorted(names);
            }
        }
        info.delivery
            .update(claimed.iter().cloned(), |_, delivered, version| {
                delivered.held = Some(version)
            });
        let mut rejected = Vec::new();
        match ack {
            Ack::Ack { version, answers } => {
                info.acked = Some(version);
                info.delivery
                    .update(answers.iter().cloned(), |_, delivered, version| {
                        delivered.held = Some(version)
                    });
            }
            Ack::Nack {
                version,
                message,
                answers,
                ..
            } => {
                info.nack_message = Some(message.clone());
                info.nacked = Some(version);
                info.nacks += 1;
                // What the reply answers and the client does not already hold is what it
                // refused (a Delta NACK answers every resource of its response).
                let clients = &self.inner.clients;
                info.delivery
                    .update(answers.iter().cloned(), |name, delivered, version| {
                        if delivered.held.as_ref() != Some(&version) {
                            delivered.rejected = Some(Rejected {
                                version,
                                message: message.clone(),
                                seq: clients.next_nack(),
                            });
                            rejected.push(name.clone());
                        }
                    });
            }
            _ => {}
        }
        drop(info);
        if !rejected.is_empty() {
            self.publish_rejections(&rejected);
        }
    }

    /// A NACK event: the rejected names' delivery, recounted and handed to the status
    /// writer (connects and ACKs never come here, so they never cause status writes).
    fn publish_rejections(&self, names: &[Arc<str>]) {
        let snap = self.snapshots.borrow().clone();
        let current = |name: &str| snap.resources.get(name).map(|r| r.version.clone());
        for name in names {
            let Some(version) = current(name) else {
                continue;
            };
            let delivery = self.inner.clients.delivery_of(name, &version);
            self.inner
                .clients
                .set_rejection(name, &delivery, |n, v| current(n).is_some_and(|c| *c == *v));
        }
    }

    fn on_request(&mut self, request: M::Req) -> Step<M::Resp> {
        let api = self.api;
        if !self.budget.admit(self.machine.is_reply(&request)) {
            self.metrics.rejected.inc();
            self.inner.metrics.limit_refused(Limit::RequestRate);
            tracing::warn!(api, peer = %self.keys.connection, "request rate exceeded; stream closed");
            return Step::Fail(Status::resource_exhausted(self.budget.refusal()));
        }
        if let Some(node) = node_identity(self.keys.is_unix, M::node(&request))
            && !self.identities.contains(&node)
        {
            self.identities.push(node);
            self.entry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .identities = self.identities.clone();
        }
        let denied = self.inner.options.authz.as_ref().and_then(|authz| {
            let (requested, wildcard) = self.machine.requested(&request);
            authz.check(&self.identities, &requested, wildcard).err()
        });
        if let Some(why) = denied {
            self.metrics.rejected.inc();
            tracing::warn!(api, reason = %why, "subscription refused; stream closed");
            return Step::Fail(Status::permission_denied(why));
        }
        let names = M::name_count(&request);
        let limit = self.inner.options.max_names_per_request;
        if names > limit {
            self.metrics.rejected.inc();
            self.inner.metrics.limit_refused(Limit::NamesPerRequest);
            tracing::warn!(
                api,
                names,
                limit,
                "request names too many resources; stream closed"
            );
            return Step::Fail(Status::resource_exhausted(format!(
                "request names {names} resources; at most {limit} per request (--max-names-per-request)"
            )));
        }
        let snap = self.snapshots.borrow_and_update().clone();
        let (ack, response) = self.machine.on_request(&request, &snap);
        let seq = Some(self.machine.subscription_seq());
        let changed = self.followed != seq;
        self.followed = seq;
        self.follow(changed);
        self.record(&request, ack, changed);
        // Answers to requests are not pushes: no latency sample.
        match response {
            Some(r) => Step::Respond(r, None),
            None => Step::Quiet,
        }
    }
}

/// The response stream the transport polls: the stream's state machine runs inside it.
impl<M: Subscription> Stream for SdsStream<M> {
    type Item = Result<M::Resp, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_response(cx)
    }
}

/// The discovery methods, called by the transport ([`super::transport`]) and tonic's
/// routing of `FetchSecrets` ([`super::grpc`]).
impl SdsServer {
    /// `StreamSecrets` (SDS) or `StreamAggregatedResources` (ADS, `ads`).
    pub fn stream_sotw(
        &self,
        peer: &Peer,
        requests: Requests<DiscoveryRequest>,
        ads: bool,
    ) -> Result<ResponseStream<SotwResponse>, Status> {
        let api = if ads { "ads" } else { "sotw" };
        self.open(api, SotwStream::new(!ads), peer, requests)
    }

    /// `DeltaSecrets` (SDS) or `DeltaAggregatedResources` (ADS, `ads`).
    pub fn stream_delta(
        &self,
        peer: &Peer,
        requests: Requests<DeltaDiscoveryRequest>,
        ads: bool,
    ) -> Result<ResponseStream<DeltaResponse>, Status> {
        let api = if ads { "ads-delta" } else { "delta" };
        let machine = DeltaStream::new(self.inner.options.unknown_names, !ads);
        self.open(api, machine, peer, requests)
    }

    /// `FetchSecrets`: the current bundles of the named resources, once.
    pub fn fetch(&self, request: Request<DiscoveryRequest>) -> Result<DiscoveryResponse, Status> {
        let Peer {
            keys, identities, ..
        } = Peer::of(&request);
        let (mut identities, is_unix) = (identities, keys.is_unix);
        let req = request.into_inner();
        let node = req.node.as_ref().map(|n| n.id.as_str());
        identities.extend(node_identity(is_unix, node));
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
        let snap = self.inner.feed.snapshots.borrow().clone();
        let mut stream = SotwStream::new(true);
        match stream.on_request(&req, &snap).1 {
            Some(response) => {
                let mut response = response.to_sotw();
                response.nonce.clear();
                Ok(response)
            }
            None => Err(Status::not_found(format!(
                "no bundle is served for {}",
                req.resource_names.join(", ")
            ))),
        }
    }
}
