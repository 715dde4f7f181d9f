//! The client library against a scripted SDS server (a tonic service in this test that
//! sends exactly the responses the test chooses and hands every request back to it).

mod support;

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use prost::Message;
use support::pki::Ca;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use trust_sds::client::{ClientOptions, TrustClient, TrustEvent};
use trust_sds::sds::SECRET_TYPE_URL;

type Sessions = mpsc::Sender<Session>;

/// Each DeltaSecrets stream is handed to the test as (requests, responses).
struct Scripted {
    sessions: Mutex<Sessions>,
}

#[tonic::async_trait]
impl SecretDiscoveryService for Scripted {
    type DeltaSecretsStream =
        Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;
    type StreamSecretsStream =
        Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let mut incoming = request.into_inner();
        let (req_tx, req_rx) = mpsc::channel(16);
        let (resp_tx, resp_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                if req_tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let sessions = self.sessions.lock().unwrap().clone();
        sessions.send((req_rx, resp_tx)).await.unwrap();
        Ok(Response::new(Box::pin(ReceiverStream::new(resp_rx))))
    }

    async fn stream_secrets(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Err(Status::unimplemented("scripted server: delta only"))
    }

    async fn fetch_secrets(
        &self,
        _: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("scripted server: delta only"))
    }
}

fn resource(name: &str, secret_name: &str, version: &str, pem: &[u8]) -> Resource {
    let secret = Secret {
        name: secret_name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(pem.to_vec())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    };
    Resource {
        name: name.to_owned(),
        version: version.to_owned(),
        resource: Some(Any {
            type_url: SECRET_TYPE_URL.to_owned(),
            value: secret.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn response(nonce: &str, resources: Vec<Resource>, removed: Vec<String>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: SECRET_TYPE_URL.to_owned(),
        nonce: nonce.to_owned(),
        resources,
        removed_resources: removed,
        ..Default::default()
    }
}

async fn next<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("in time")
        .expect("open")
}

type Session = (
    mpsc::Receiver<DeltaDiscoveryRequest>,
    mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
);

/// Starts the scripted server on 127.0.0.1; each new stream arrives on the receiver.
async fn scripted_server() -> (std::net::SocketAddr, mpsc::Receiver<Session>) {
    let (sessions_tx, sessions) = mpsc::channel(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = SecretDiscoveryServiceServer::new(Scripted {
        sessions: Mutex::new(sessions_tx),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, sessions)
}

#[tokio::test]
async fn client_nacks_what_it_cannot_use_acks_the_rest_and_resumes_after_reconnect() {
    let (addr, mut sessions) = scripted_server().await;

    let name = "team/x";
    let client = TrustClient::start(ClientOptions::new(
        format!("http://{addr}"),
        vec![name.to_owned()],
    ))
    .unwrap();
    let mut events = client.events();
    let (mut requests, responses) = next(&mut sessions).await;
    let first = next(&mut requests).await;
    assert_eq!(first.resource_names_subscribe, [name]);
    assert_eq!(first.type_url, SECRET_TYPE_URL);

    // Garbage: NACKed with a clear error_detail, trust stays absent.
    responses
        .send(Ok(response(
            "1",
            vec![resource(name, name, "v1", b"garbage")],
            vec![],
        )))
        .await
        .unwrap();
    let nack = next(&mut requests).await;
    assert_eq!(nack.response_nonce, "1");
    let detail = nack.error_detail.expect("NACK").message;
    assert!(
        detail.contains("bundle for team/x rejected: no valid PEM certificate blocks found"),
        "{detail}"
    );
    assert!(!client.is_ready());

    // A Secret whose name differs from the resource is refused too.
    responses
        .send(Ok(response(
            "2",
            vec![resource(
                name,
                "team/other",
                "v2",
                Ca::root("A").pem().as_bytes(),
            )],
            vec![],
        )))
        .await
        .unwrap();
    let nack = next(&mut requests).await;
    assert!(
        nack.error_detail
            .expect("NACK")
            .message
            .contains("carries a Secret named \"team/other\"")
    );

    // A good bundle: ACK, ready.
    let good = Ca::root("Good").pem();
    responses
        .send(Ok(response(
            "3",
            vec![resource(name, name, "v3", good.as_bytes())],
            vec![],
        )))
        .await
        .unwrap();
    let ack = next(&mut requests).await;
    assert_eq!(ack.response_nonce, "3");
    assert!(ack.error_detail.is_none());
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(client.trust(name).unwrap().version, "v3");

    // The server goes away: trust is kept; the reconnect announces what the client holds.
    drop(responses);
    drop(requests);
    let (mut requests, responses) = next(&mut sessions).await;
    let resumed = next(&mut requests).await;
    assert_eq!(
        resumed
            .initial_resource_versions
            .get(name)
            .map(String::as_str),
        Some("v3")
    );
    assert_eq!(
        client.trust(name).unwrap().version,
        "v3",
        "last good trust kept"
    );

    // Removal withdraws trust: fail closed.
    responses
        .send(Ok(response("1", vec![], vec![name.to_owned()])))
        .await
        .unwrap();
    let ack = next(&mut requests).await;
    assert!(ack.error_detail.is_none());
    assert!(client.trust(name).is_none());
    let mut saw_rejected = false;
    let mut saw_removed = false;
    while let Ok(e) = events.try_recv() {
        saw_rejected |= matches!(e, TrustEvent::Rejected { .. });
        saw_removed |= matches!(e, TrustEvent::Removed { .. });
    }
    assert!(saw_rejected && saw_removed);
}

/// A server that accepts each stream and closes it cleanly before any response gets
/// backoff that keeps doubling: a clean close without progress is no reason to reset it.
#[tokio::test]
async fn clean_closes_without_a_response_back_off() {
    let (addr, mut sessions) = scripted_server().await;
    let mut options = ClientOptions::new(format!("http://{addr}"), vec!["team/x".to_owned()]);
    options.initial_backoff = Duration::from_millis(100);
    options.max_backoff = Duration::from_secs(30);
    let _client = TrustClient::start(options).unwrap();

    // Five sessions, each closed at once (the response stream ends with status OK).
    let mut arrivals = Vec::new();
    for _ in 0..5 {
        let (requests, responses) = next(&mut sessions).await;
        arrivals.push(std::time::Instant::now());
        drop((requests, responses));
    }
    // The waits are at least 100, 200, 400 and 800 ms (lower bounds: a busy machine only
    // makes them longer). A backoff reset on every clean close waits ~100 ms each time.
    let last_wait = arrivals[4] - arrivals[3];
    assert!(
        last_wait >= Duration::from_millis(800),
        "the fourth reconnect came {last_wait:?} after the third: the backoff was reset"
    );
}
