//! A running trust-sds fed directly with objects, and xDS clients built from envoy-types.

use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use trust_sds::model::Object;
use trust_sds::pipeline::SourceEvent;
use trust_sds::sds::clients::ClientInfo;
use trust_sds::sds::transport::keepalive::Keepalive;
use trust_sds::sds::{SECRET_TYPE_URL, UnknownNamePolicy};
use trust_sds::server::{Running, ServeConfig};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Test servers ping every 50 ms (`serve`'s default is 30 s), so every client in the suite
/// (Envoy, the client library, tonic and grpcio clients) gets a steady stream of keepalive
/// pings while its test runs, and a client that took them for a flood or an error would
/// break its test. (Whether pings are answered is `tests/transport.rs`'s business: most
/// tests end long before a 10 s timeout.)
pub const KEEPALIVE: Keepalive = Keepalive {
    interval: Duration::from_millis(50),
    timeout: TIMEOUT,
};

pub struct TestServer {
    pub running: Running,
    pub events: mpsc::Sender<SourceEvent>,
}

impl TestServer {
    pub async fn start(policy: UnknownNamePolicy) -> Self {
        Self::start_with(ServeConfig {
            sds: trust_sds::sds::SdsOptions {
                unknown_names: policy,
                ..Default::default()
            },
            ..ServeConfig::default()
        })
        .await
    }

    /// Wraps a server started some other way (e.g. `--kube`); `events` then feeds nothing.
    pub fn attach(running: Running) -> Self {
        let (events, _rx) = mpsc::channel(1);
        Self { running, events }
    }

    /// `config` with the default keepalive gets [`KEEPALIVE`] instead.
    pub async fn start_with(mut config: ServeConfig) -> Self {
        if config.sds.keepalive == Some(Keepalive::DEFAULT) {
            config.sds.keepalive = Some(KEEPALIVE);
        }
        let (events, rx) = mpsc::channel(1024);
        let running = trust_sds::server::start(config, rx).await.expect("server");
        Self { running, events }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.running.sds_addr)
    }

    /// Applies objects and waits until they are translated and visible to SDS streams, so
    /// tests never race the pipeline.
    pub async fn apply(&self, objects: Vec<Object>) {
        for o in objects {
            self.events.send(SourceEvent::Apply(o)).await.unwrap();
        }
        self.sync().await;
    }

    /// Waits until every event sent so far is published and encoded for SDS.
    pub async fn sync(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.events.send(SourceEvent::Sync(done)).await.unwrap();
        tokio::time::timeout(TIMEOUT, wait)
            .await
            .expect("pipeline synced")
            .unwrap();
        let domain = self.running.published.snapshot.borrow().clone();
        let mut encoded = self.running.sds_snapshot.clone();
        let caught_up = encoded.wait_for(|e| {
            e.resources.len() == domain.resources.len()
                && domain.resources.iter().all(|(n, b)| {
                    e.resources
                        .get(n)
                        .is_some_and(|r| &*r.version == b.version())
                })
        });
        tokio::time::timeout(TIMEOUT, caught_up)
            .await
            .expect("encoder caught up")
            .unwrap();
    }

    /// Applies objects without waiting.
    pub async fn send(&self, objects: Vec<Object>) {
        for o in objects {
            self.events.send(SourceEvent::Apply(o)).await.unwrap();
        }
    }

    pub fn version(&self, name: &str) -> String {
        self.running
            .published
            .snapshot
            .borrow()
            .get(name)
            .unwrap()
            .version()
            .to_owned()
    }

    /// Waits (bounded) until some stream's registry entry satisfies `pred`: the proof that
    /// the server processed a request that gets no reply (ACK, NACK, unsubscribe).
    pub async fn wait_for_client(&self, what: &str, pred: impl Fn(&ClientInfo) -> bool) {
        let clients = self.running.clients.clone();
        let found = tokio::time::timeout(TIMEOUT, async {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            while !clients.list().iter().any(&pred) {
                tick.tick().await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "timed out waiting for the server to record: {what}"
        );
    }

    pub async fn sds(&self) -> SecretDiscoveryServiceClient<tonic::transport::Channel> {
        SecretDiscoveryServiceClient::connect(self.url())
            .await
            .expect("connect")
    }
}

/// A gRPC channel to the Unix socket at `path`.
pub async fn unix_channel(path: &std::path::Path) -> tonic::transport::Channel {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let unix = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(unix))
            }
        }))
        .await
        .expect("connect to the unix socket")
}

/// The next message of a response stream, bounded in time.
pub async fn next_message<T>(rx: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(TIMEOUT, rx.message())
        .await
        .expect("response in time")
        .expect("stream ok")
        .expect("stream open")
}

/// The name of the Secret inside a served resource.
pub fn secret_name(any: &Any) -> String {
    Secret::decode(any.value.as_slice()).expect("Secret").name
}

/// The PEM inside a served Secret, checking its shape on the way.
pub fn secret_pem(any: &Any, expected_name: &str) -> String {
    assert_eq!(any.type_url, SECRET_TYPE_URL);
    let secret = Secret::decode(any.value.as_slice()).expect("Secret");
    assert_eq!(
        secret.name, expected_name,
        "Secret.name equals the requested name"
    );
    let Some(secret::Type::ValidationContext(vc)) = secret.r#type else {
        panic!("validation_context expected")
    };
    assert!(
        vc.match_typed_subject_alt_names.is_empty(),
        "no SAN matchers"
    );
    assert_eq!(vc.trust_chain_verification, 0, "VERIFY_TRUST_CHAIN");
    let Some(Specifier::InlineBytes(bytes)) = vc.trusted_ca.and_then(|d| d.specifier) else {
        panic!("inline bytes expected")
    };
    String::from_utf8(bytes).unwrap()
}

fn node() -> Option<Node> {
    Some(Node {
        id: "test-node".to_owned(),
        cluster: "test".to_owned(),
        ..Default::default()
    })
}

/// A State-of-the-World client over one stream.
pub struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    pub last: Option<DiscoveryResponse>,
}

impl SotwClient {
    pub async fn open(server: &TestServer) -> Self {
        Self::open_with(server.sds().await).await
    }

    pub async fn open_with(
        mut client: SecretDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let stream = client
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .expect("stream");
        Self {
            tx,
            rx: stream.into_inner(),
            last: None,
        }
    }

    pub async fn from_parts(
        tx: mpsc::Sender<DiscoveryRequest>,
        rx: tonic::Streaming<DiscoveryResponse>,
    ) -> Self {
        Self { tx, rx, last: None }
    }

    pub async fn request(&mut self, names: &[&str]) {
        let (version, nonce) = self
            .last
            .as_ref()
            .map(|r| (r.version_info.clone(), r.nonce.clone()))
            .unwrap_or_default();
        self.send(DiscoveryRequest {
            version_info: version,
            node: node(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            response_nonce: nonce,
            ..Default::default()
        })
        .await;
    }

    pub async fn send(&mut self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("send");
    }

    /// Receives the next response; checks it names only subscribed names, once each.
    pub async fn recv(&mut self, subscribed: &[&str]) -> DiscoveryResponse {
        let resp = next_message(&mut self.rx).await;
        let mut seen = BTreeSet::new();
        for any in &resp.resources {
            let name = secret_name(any);
            assert!(
                subscribed.contains(&name.as_str()),
                "unrequested name {name}"
            );
            assert!(seen.insert(name.clone()), "name {name} repeated");
        }
        self.last = Some(resp.clone());
        resp
    }

    /// The next message or the status that ended the stream, unchecked (limits tests).
    pub async fn next(&mut self) -> Result<Option<DiscoveryResponse>, tonic::Status> {
        let next = self.rx.message().await;
        if let Ok(Some(resp)) = &next {
            self.last = Some(resp.clone());
        }
        next
    }

    pub fn names(resp: &DiscoveryResponse) -> Vec<String> {
        let mut v: Vec<String> = resp.resources.iter().map(secret_name).collect();
        v.sort();
        v
    }

    pub async fn ack(&mut self, names: &[&str]) {
        self.request(names).await;
    }

    pub async fn nack(&mut self, names: &[&str], message: &str) {
        let last = self.last.clone().expect("a response to NACK");
        self.send(DiscoveryRequest {
            version_info: String::new(),
            node: node(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            response_nonce: last.nonce,
            error_detail: Some(nack_detail(message)),
            ..Default::default()
        })
        .await;
    }
}

/// A Delta client over one stream.
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    pub async fn open(server: &TestServer) -> Self {
        Self::open_with(server.sds().await).await
    }

    /// A stream on a connection of the caller's (e.g. to a server in another process).
    pub async fn open_with(
        mut client: SecretDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let stream = client
            .delta_secrets(ReceiverStream::new(rx))
            .await
            .expect("stream");
        Self {
            tx,
            rx: stream.into_inner(),
        }
    }

    pub async fn send(&mut self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("send");
    }

    pub async fn subscribe(&mut self, names: &[&str], nonce: &str) {
        self.send(DeltaDiscoveryRequest {
            node: node(),
            type_url: SECRET_TYPE_URL.to_owned(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        })
        .await;
    }

    pub async fn unsubscribe(&mut self, names: &[&str], nonce: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: SECRET_TYPE_URL.to_owned(),
            resource_names_unsubscribe: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        })
        .await;
    }

    /// Rejects the response with `nonce` (an `error_detail` of code 3).
    pub async fn nack(&mut self, nonce: &str, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: SECRET_TYPE_URL.to_owned(),
            response_nonce: nonce.to_owned(),
            error_detail: Some(nack_detail(message)),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        let resp = next_message(&mut self.rx).await;
        let mut seen = BTreeSet::new();
        for r in &resp.resources {
            assert!(seen.insert(r.name.clone()), "name repeated");
            secret_pem(r.resource.as_ref().unwrap(), &r.name);
        }
        resp
    }

    pub fn names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
        let mut v: Vec<String> = resp.resources.iter().map(|r| r.name.clone()).collect();
        v.sort();
        v
    }
}

/// A NACK's `error_detail`: INVALID_ARGUMENT (3) with `message`, as Envoy sends it.
fn nack_detail(message: &str) -> envoy_types::pb::google::rpc::Status {
    envoy_types::pb::google::rpc::Status {
        code: 3,
        message: message.to_owned(),
        details: vec![],
    }
}
