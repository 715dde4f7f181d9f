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

    /// Accepts TCP connections and yields completed TLS connections.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reloader = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_CHECK);
            loop {
                tick.tick().await;
                reloader.reload();
                if Arc::strong_count(&reloader) == 1 {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
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
