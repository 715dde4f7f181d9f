//! The validation table of DESIGN.md: a referenced Secret either yields a canonical bundle
//! or a failure whose reason and message are the status contract. Checks run in the table's
//! order and stop at the first failure.

use std::fmt;

use crate::bundle::TrustBundle;
use crate::cert::{self, CertError};
use crate::model::{SECRET_LABEL, SecretKeyRef, SecretObject};

/// Size cap for a registration's CA certificate data.
pub const MAX_CA_CERT_BYTES: usize = 65_536;
/// Size cap for a gateway-wide CA bundle.
pub const MAX_CA_BUNDLE_BYTES: usize = 262_144;

/// Which kind of reference is being validated: it picks the size cap and the wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// `MCPServerRegistration.spec.caCertSecretRef`.
    ServerCa,
    /// `MCPGatewayExtension.spec.caCertBundleRef`.
    GatewayBundle,
}

impl Subject {
    pub fn max_bytes(self) -> usize {
        match self {
            Subject::ServerCa => MAX_CA_CERT_BYTES,
            Subject::GatewayBundle => MAX_CA_BUNDLE_BYTES,
        }
    }
}

/// The check that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    NotFound,
    MissingLabel,
    MissingKey,
    TooLarge,
    Invalid(CertError),
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::NotFound => f.write_str("secret not found"),
            Check::MissingLabel => {
                write!(f, "secret is missing required label {SECRET_LABEL}=true")
            }
            Check::MissingKey => f.write_str("secret key missing"),
            Check::TooLarge => f.write_str("data exceeds the maximum size"),
            Check::Invalid(why) => why.fmt(f),
        }
    }
}

/// A failed validation: renders the exact status message and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub subject: Subject,
    pub secret: String,
    pub key: String,
    pub check: Check,
}

impl Failure {
    /// The condition reason (more specific than upstream's `NotReady`, on purpose).
    pub fn reason(&self) -> &'static str {
        match (self.subject, &self.check) {
            (Subject::ServerCa, Check::NotFound) => "CACertSecretNotFound",
            (Subject::ServerCa, Check::MissingLabel) => "CACertSecretMissingLabel",
            (Subject::ServerCa, Check::MissingKey) => "CACertSecretMissingKey",
            (Subject::ServerCa, Check::TooLarge) => "CACertTooLarge",
            (Subject::ServerCa, Check::Invalid(_)) => "CACertInvalid",
            (Subject::GatewayBundle, Check::NotFound) => "CABundleSecretNotFound",
            (Subject::GatewayBundle, Check::MissingLabel) => "CABundleSecretMissingLabel",
            (Subject::GatewayBundle, Check::MissingKey) => "CABundleSecretMissingKey",
            (Subject::GatewayBundle, Check::TooLarge) => "CABundleTooLarge",
            (Subject::GatewayBundle, Check::Invalid(_)) => "CABundleInvalid",
        }
    }

    /// Whether the failure means the reference is gone (withdraw) rather than a bad update
    /// of a Secret that still opts in (keep serving the last valid bundle).
    pub fn withdraws(&self) -> bool {
        matches!(self.check, Check::NotFound | Check::MissingLabel)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.secret;
        let (secret_noun, data_noun, invalid_noun) = match self.subject {
            Subject::ServerCa => (
                "CA certificate secret",
                "CA certificate data in secret",
                "CA certificate in secret",
            ),
            // DESIGN.md: extension messages begin `CA bundle secret` / `CA bundle data in secret`.
            Subject::GatewayBundle => (
                "CA bundle secret",
                "CA bundle data in secret",
                "CA bundle data in secret",
            ),
        };
        match &self.check {
            Check::NotFound => write!(f, "{secret_noun} {n} not found"),
            Check::MissingLabel => write!(
                f,
                "{secret_noun} {n} is missing required label {SECRET_LABEL}=true"
            ),
            Check::MissingKey => write!(f, "{secret_noun} {n} missing key {}", self.key),
            Check::TooLarge => write!(
                f,
                "{data_noun} {n} exceeds maximum size ({} bytes)",
                self.subject.max_bytes()
            ),
            Check::Invalid(why) => write!(f, "{invalid_noun} {n} is invalid: {why}"),
        }
    }
}

/// Runs the whole table for a reference and the Secret it resolves to (if any).
pub fn validate_reference(
    subject: Subject,
    reference: &SecretKeyRef,
    secret: Option<&SecretObject>,
) -> Result<TrustBundle, Failure> {
    let fail = |check| Failure {
        subject,
        secret: reference.name.clone(),
        key: reference.key.clone(),
        check,
    };
    let secret = secret.ok_or_else(|| fail(Check::NotFound))?;
    let data = secret
        .data
        .as_ref()
        .ok_or_else(|| fail(Check::MissingLabel))?;
    let value = data
        .get(&reference.key)
        .ok_or_else(|| fail(Check::MissingKey))?;
    validate_data(subject, value).map_err(fail)
}

/// The data checks alone (size, then PEM/X.509), for offline use and for the parse cache.
pub fn validate_data(subject: Subject, data: &[u8]) -> Result<TrustBundle, Check> {
    if data.len() > subject.max_bytes() {
        return Err(Check::TooLarge);
    }
    let certs = cert::parse_ca_bundle(data).map_err(Check::Invalid)?;
    Ok(TrustBundle::from_certificates(&certs))
}
