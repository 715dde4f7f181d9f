//! PEM and X.509 decoding of CA certificates.
//!
//! This is the only module that touches `x509-parser`: everything else sees [`Certificate`],
//! a small owned summary plus the DER bytes. Error texts are part of the status contract
//! (DESIGN.md, "Validation") and never include the input bytes.

use sha2::{Digest, Sha256};
use x509_parser::error::PEMError;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

/// One decoded certificate from a CA bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// The certificate exactly as encoded on the wire (DER).
    pub der: Vec<u8>,
    /// SHA-256 of `der`: the identity used for de-duplication and ordering.
    pub sha256: [u8; 32],
    /// RFC 4514 subject, e.g. `CN=Example Root CA, O=Example`.
    pub subject: String,
    /// The subject common name, or the whole subject when there is none.
    pub display_name: String,
    /// Validity window as Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Certificate {
    /// Lower-case hex SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Why PEM data is not an acceptable CA bundle. `Display` is the `<why>` of DESIGN.md.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no valid PEM certificate blocks found")]
    NoBlocks,
    #[error("unexpected PEM block type \"{0}\", expected CERTIFICATE")]
    UnexpectedBlock(String),
    #[error("failed to parse certificate: {0}")]
    Parse(String),
    #[error("certificate for \"{0}\" is not a CA certificate")]
    NotCa(String),
}

const CERTIFICATE_LABEL: &str = "CERTIFICATE";

/// Decodes every PEM block of `data` as a CA certificate.
///
/// Text outside PEM blocks (comments, blank lines) is ignored, as with Go's `pem.Decode`.
/// Any block that is not a certificate (a private key above all) rejects the whole input,
/// whatever its position, so that key material is never accepted as trust.
pub fn parse_ca_bundle(data: &[u8]) -> Result<Vec<Certificate>, CertError> {
    let mut blocks = Vec::new();
    let mut first_malformed = None;
    for block in Pem::iter_from_buffer(data) {
        match block {
            Ok(pem) if pem.label == CERTIFICATE_LABEL => blocks.push(pem.contents),
            // Only the label is echoed, never the contents.
            Ok(pem) => return Err(CertError::UnexpectedBlock(sanitize_label(&pem.label))),
            Err(e) => {
                first_malformed.get_or_insert_with(|| describe_pem_error(&e));
                // A malformed block may leave the reader mid-block; stop rather than guess.
                break;
            }
        }
    }
    if let Some(why) = first_malformed {
        return Err(CertError::Parse(why));
    }
    if blocks.is_empty() {
        return Err(CertError::NoBlocks);
    }
    blocks.into_iter().map(decode_certificate).collect()
}

fn decode_certificate(der: Vec<u8>) -> Result<Certificate, CertError> {
    let (rest, cert) =
        X509Certificate::from_der(&der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Parse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let subject = cert.subject().to_string();
    let display_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| subject.clone());
    // A legacy root without BasicConstraints is accepted; only an explicit CA:FALSE is refused.
    match cert.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => return Err(CertError::NotCa(display_name)),
        Ok(_) => {}
        Err(e) => return Err(CertError::Parse(e.to_string())),
    }
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    drop(cert);
    let sha256 = Sha256::digest(&der).into();
    Ok(Certificate {
        der,
        sha256,
        subject,
        display_name,
        not_before,
        not_after,
    })
}

fn describe_pem_error(e: &PEMError) -> String {
    match e {
        PEMError::Base64DecodeError => "PEM block contains invalid base64".to_owned(),
        PEMError::IncompletePEM => "PEM block has no END line".to_owned(),
        PEMError::InvalidHeader => "PEM block has a malformed BEGIN line".to_owned(),
        PEMError::MissingHeader => "PEM block has no BEGIN line".to_owned(),
        PEMError::IOError(_) => "PEM data could not be read".to_owned(),
    }
}

/// Keeps a block label printable and short: it ends up in status messages.
fn sanitize_label(label: &str) -> String {
    label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ' || *c == '_')
        .take(64)
        .collect()
}

/// Encodes DER as a PEM `CERTIFICATE` block with 64-column lines.
pub fn to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The identities a client certificate asserts: its URI SANs (e.g. SPIFFE IDs) and DNS SANs.
/// Empty when the certificate does not parse.
pub fn identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            // `node:` identities are reserved for Unix-socket clients: a certificate cannot
            // claim one.
            GeneralName::URI(uri) if !uri.starts_with("node:") => Some(uri.to_string()),
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// What a verification report says about a server's leaf certificate: never its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeafSummary {
    /// RFC 4514 issuer, e.g. `CN=Other CA`.
    pub issuer: String,
    /// DNS and IP subject alternative names.
    pub names: Vec<String>,
    pub not_after: i64,
}

/// Summarises a server certificate (DER); `None` when it does not parse.
pub fn leaf_summary(der: &[u8]) -> Option<LeafSummary> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_string()),
                GeneralName::IPAddress(ip) => ip_text(ip),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(LeafSummary {
        issuer: cert.issuer().to_string(),
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn ip_text(octets: &[u8]) -> Option<String> {
    match octets.len() {
        4 => <[u8; 4]>::try_from(octets)
            .ok()
            .map(|o| std::net::Ipv4Addr::from(o).to_string()),
        16 => <[u8; 16]>::try_from(octets)
            .ok()
            .map(|o| std::net::Ipv6Addr::from(o).to_string()),
        _ => None,
    }
}

/// A fresh self-signed CA certificate named `cn`, as PEM (unit tests).
#[cfg(test)]
pub(crate) fn test_ca_pem(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.self_signed(&key).unwrap().pem()
}
