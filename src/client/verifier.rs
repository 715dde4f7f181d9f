//! A rustls `ServerCertVerifier` that always verifies against the current trust of one
//! name, and fails closed when there is none.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};

use super::store::Stores;

#[derive(Clone)]
pub struct LiveVerifier {
    name: String,
    stores: Arc<Stores>,
}

impl std::fmt::Debug for LiveVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveVerifier")
            .field("name", &self.name)
            .finish()
    }
}

impl LiveVerifier {
    pub(crate) fn new(name: String, stores: Arc<Stores>) -> Self {
        Self { name, stores }
    }

    fn current(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, Error> {
        self.stores
            .get(&self.name)
            .map(|s| s.verifier)
            .ok_or_else(|| {
                Error::General(format!(
                    "no trust bundle for {} (not served, or withdrawn)",
                    self.name
                ))
            })
    }
}

impl ServerCertVerifier for LiveVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.current()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.stores
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
