//! An HTTPS upstream on 127.0.0.1 (tokio-rustls) whose certificate can be swapped while it
//! runs. Every response closes the connection, so each request makes a new TLS handshake
//! and is verified against the trust the client has at that moment.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::pki::Leaf;

pub struct Upstream {
    pub addr: SocketAddr,
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    task: tokio::task::JoinHandle<()>,
}

fn server_config(leaf: &Leaf, chain: &[Vec<u8>]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = vec![CertificateDer::from(leaf.cert_der.clone())];
    certs.extend(chain.iter().map(|c| CertificateDer::from(c.clone())));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
    Arc::new(config)
}

impl Upstream {
    /// Serves HTTPS with `leaf` (plus `chain`), answering `200 upstream ok` to any request
    /// (a JSON-RPC body for POSTs, so it can stand in for an MCP server).
    pub async fn start(leaf: &Leaf, chain: &[Vec<u8>]) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(RwLock::new(server_config(leaf, chain)));
        let current = config.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(current.read().unwrap().clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut request = Vec::new();
                    // Read headers (and a small body) until the blank line.
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"upstream ok","version":"1"}}}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Upstream { addr, config, task }
    }

    /// Serves a different certificate from the next connection on.
    pub fn set_certificate(&self, leaf: &Leaf, chain: &[Vec<u8>]) {
        *self.config.write().unwrap() = server_config(leaf, chain);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
