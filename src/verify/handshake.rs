//! One TLS handshake with an upstream, trusting what the broker would, and what its failure
//! means: the served bundle does not trust the issuer, the certificate is for other names,
//! it expired, or there was no TLS answer at all (which says nothing about trust).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::url::UpstreamTarget;
use crate::cert::{LeafSummary, leaf_summary};
use crate::status::Condition;

/// What one handshake showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Verified,
    UnknownIssuer {
        issuer: String,
    },
    HostnameMismatch {
        names: Vec<String>,
    },
    Expired {
        not_after: Option<i64>,
    },
    /// Another certificate problem (not yet valid, wrong key usage, ...): rustls's words.
    Invalid {
        why: String,
    },
    /// No TLS answer: refused, timed out, reset, or not TLS.
    Unreachable {
        cause: String,
    },
}

impl Outcome {
    /// The condition reason; also the metric's `result` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Verified => "Verified",
            Outcome::UnknownIssuer { .. } => "UnknownIssuer",
            Outcome::HostnameMismatch { .. } => "HostnameMismatch",
            Outcome::Expired { .. } => "CertificateExpired",
            Outcome::Invalid { .. } => "CertificateInvalid",
            Outcome::Unreachable { .. } => "Unreachable",
        }
    }

    /// The `UpstreamTrusted` condition saying this about `target`, checked with the
    /// bundle `version`.
    pub fn condition(
        &self,
        target: &UpstreamTarget,
        version: &str,
        generation: Option<i64>,
    ) -> Condition {
        let upstream = target.authority();
        let reason = self.reason();
        let message = match self {
            Outcome::Verified => {
                format!("upstream {upstream} verified with bundle version {version}")
            }
            Outcome::UnknownIssuer { issuer } => format!(
                "upstream {upstream} presents a certificate issued by \"{issuer}\" that the served bundle does not trust"
            ),
            Outcome::HostnameMismatch { names } => {
                let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
                let names = if names.is_empty() {
                    "no DNS or IP names".to_owned()
                } else {
                    names.join(", ")
                };
                format!(
                    "upstream {upstream} presents a certificate for {names}, not for {:?}",
                    target.host
                )
            }
            Outcome::Expired { not_after } => {
                let when = not_after
                    .map(|t| format!(" at {}", crate::translate::format_unix(t)))
                    .unwrap_or_default();
                format!("upstream {upstream} presents a certificate that expired{when}")
            }
            Outcome::Invalid { why } => {
                format!("upstream {upstream} presents a certificate that cannot be verified: {why}")
            }
            Outcome::Unreachable { cause } => {
                let via = target
                    .connect_to
                    .map(|a| format!(" (connecting to {a})"))
                    .unwrap_or_default();
                format!("upstream {upstream} unreachable{via}: {cause}")
            }
        };
        match self {
            Outcome::Verified => Condition::ready(reason, message, generation),
            Outcome::Unreachable { .. } => Condition::unknown(reason, message, generation),
            _ => Condition::not_ready(reason, message, generation),
        }
    }
}

/// Connects to `target` and completes a TLS handshake verified by `verifier`, within
/// `timeout` for connect and handshake together.
pub async fn check(
    target: &UpstreamTarget,
    verifier: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    timeout: Duration,
) -> Outcome {
    let capturing = Arc::new(Capturing {
        inner: verifier,
        provider: provider.clone(),
        leaf: Mutex::new(None),
    });
    let attempt = handshake(target, capturing.clone(), provider);
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => {
            return Outcome::Unreachable {
                cause: format!("no TLS answer within {}s", timeout.as_secs_f32()),
            };
        }
    };
    match result {
        Ok(()) => Outcome::Verified,
        Err(e) => classify(&e, capturing.leaf()),
    }
}

async fn handshake(
    target: &UpstreamTarget,
    verifier: Arc<Capturing>,
    provider: Arc<CryptoProvider>,
) -> std::io::Result<()> {
    let tcp = match target.connect_to {
        Some(addr) => TcpStream::connect(addr).await?,
        None => TcpStream::connect((target.host.as_str(), target.port)).await?,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = ServerName::try_from(target.host.clone()).map_err(std::io::Error::other)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector.connect(name, tcp).await?;
    // A polite close; the handshake already answered the question.
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
    Ok(())
}

/// Maps a failed handshake to its meaning. `leaf`: the certificate the upstream presented,
/// when it got that far.
fn classify(error: &std::io::Error, leaf: Option<LeafSummary>) -> Outcome {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return Outcome::Unreachable {
            cause: error.to_string(),
        };
    };
    let leaf = leaf.unwrap_or_default();
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            // A chain that does not lead to a trusted root, or whose signatures do not
            // verify with it, is a certificate the served bundle does not vouch for.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Outcome::UnknownIssuer {
                    issuer: leaf.issuer,
                }
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Outcome::HostnameMismatch { names: leaf.names }
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Outcome::Expired {
                    not_after: (leaf.not_after != 0).then_some(leaf.not_after),
                }
            }
            other => Outcome::Invalid {
                why: format!("{other:?}"),
            },
        },
        // Alerts, protocol errors, something that is not TLS: no trust answer.
        other => Outcome::Unreachable {
            cause: format!("TLS handshake failed: {other}"),
        },
    }
}

/// The broker's verifier, remembering the leaf the upstream presented so a failure can
/// name its issuer and names.
#[derive(Debug)]
struct Capturing {
    inner: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    leaf: Mutex<Option<LeafSummary>>,
}

impl Capturing {
    fn leaf(&self) -> Option<LeafSummary> {
        self.leaf.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ServerCertVerifier for Capturing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.leaf.lock().unwrap_or_else(|e| e.into_inner()) = leaf_summary(end_entity);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
