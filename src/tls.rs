//! TLS (optionally mutual) for the SDS listener, with certificate reload without restart.
//!
//! The server certificate, key and client CA are files (a mounted Secret in Kubernetes).
//! They are re-read when their contents change; a broken update keeps the configuration in
//! use and is logged. Handshakes run off the accept loop, bounded in time, so a client that
//! stalls its handshake delays no one else.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// Where the TLS material lives.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// A server TLS configuration that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, [u8; 32])>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_CHECK: Duration = Duration::from_secs(2);

impl ReloadingTls {
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let digest = digest(&files)?;
        let config = build(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((config, digest)),
        }))
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Re-reads the files if they changed. Returns whether a new configuration is in use.
    pub fn reload(&self) -> bool {
        let Ok(digest) = digest(&self.files) else {
            return false;
        };
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == digest {
            return false;
        }
        match build(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (config, digest);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "TLS files changed but cannot be used; keeping the current ones");
                false
            }
        }
    }

    /// Accepts TCP connections and yields completed TLS connections. Both background tasks
    /// (accept, certificate reload) end when the returned stream is dropped, which the
    /// server does on shutdown, so the listening socket is released at once.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reloader = self.clone();
        let reload_tx = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_CHECK);
            loop {
                tokio::select! {
                    _ = tick.tick() => { reloader.reload(); }
                    () = reload_tx.closed() => return,
                }
            }
        });
        tokio::spawn(async move {
            let mut backoff = AcceptBackoff::default();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(c) => {
                        backoff.reset();
                        c
                    }
                    Err(e) => {
                        // E.g. EMFILE: retrying at once would spin; connections wait in the
                        // kernel's backlog meanwhile.
                        let pause = backoff.next_pause();
                        tracing::warn!(error = %e, retry_in = ?pause, "accept failed");
                        tokio::select! {
                            () = tokio::time::sleep(pause) => continue,
                            () = tx.closed() => return,
                        }
                    }
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Pause after consecutive accept errors: 5 ms doubling to 1 s (the same ceiling hyper and
/// Go's net/http use), back to the start after a successful accept.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    pub fn next_pause(&mut self) -> Duration {
        let pause = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

fn digest(files: &TlsFiles) -> anyhow::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    for path in [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        hasher.update(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        );
    }
    Ok(hasher.finalize().into())
}

fn build(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("cannot read certificates from {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM in {}", files.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("no usable private key in {}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read {}", ca.display()))?
            {
                roots.add(cert.with_context(|| format!("invalid PEM in {}", ca.display()))?)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_to_a_cap_and_reset_on_success() {
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<u128> = (0..10).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(5));
    }

    /// Dropping the incoming stream (the server's shutdown) ends the accept loop, which
    /// releases the port, and the reload task, which releases the configuration.
    #[tokio::test]
    async fn dropping_the_incoming_stream_releases_the_port_and_the_reload_task() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let tls = ReloadingTls::load(files).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tls.clone().incoming(listener);
        assert!(
            Arc::strong_count(&tls) > 1,
            "the tasks hold the configuration"
        );
        drop(incoming);
        let released = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if Arc::strong_count(&tls) == 1 && std::net::TcpListener::bind(addr).is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            released.is_ok(),
            "after the stream is dropped the port stays bound or a task keeps running"
        );
    }
}
