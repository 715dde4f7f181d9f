//! Canonical trust bundles.
//!
//! A bundle is a set of CA certificates. Its bytes are canonical: certificates are
//! de-duplicated by SHA-256, ordered by that digest and re-encoded as PEM, so that comments,
//! whitespace, order or duplicates in the source give the same bytes, the same version and
//! therefore no push. The version is a content hash, stable across restarts.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cert::{self, Certificate};

/// What a subscriber is told about one certificate (no key material exists in a bundle).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    pub subject: String,
    pub display_name: String,
    pub sha256: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// A canonical CA bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    pem: Arc<str>,
    version: Arc<str>,
    certs: Arc<[CertSummary]>,
    digests: Arc<[[u8; 32]]>,
}

impl TrustBundle {
    /// Builds the canonical bundle of `certs` (which may hold duplicates, in any order).
    pub fn from_certificates(certs: &[Certificate]) -> Self {
        let mut sorted: Vec<&Certificate> = certs.iter().collect();
        sorted.sort_by_key(|c| c.sha256);
        sorted.dedup_by(|a, b| a.sha256 == b.sha256);
        let pem: String = sorted.iter().map(|c| cert::to_pem(&c.der)).collect();
        let summaries = sorted
            .iter()
            .map(|c| CertSummary {
                subject: c.subject.clone(),
                display_name: c.display_name.clone(),
                sha256: c.fingerprint(),
                not_before: c.not_before,
                not_after: c.not_after,
            })
            .collect();
        let digests = sorted.iter().map(|c| c.sha256).collect();
        Self::assemble(pem, summaries, digests)
    }

    fn assemble(pem: String, certs: Vec<CertSummary>, digests: Vec<[u8; 32]>) -> Self {
        let version = content_version(pem.as_bytes());
        Self {
            pem: pem.into(),
            version: version.into(),
            certs: certs.into(),
            digests: digests.into(),
        }
    }

    /// The union of several bundles, canonical again (trust is additive).
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a TrustBundle>) -> Self {
        let mut entries: Vec<([u8; 32], &CertSummary, &str)> = Vec::new();
        for part in parts {
            let blocks = split_pem_blocks(&part.pem);
            for ((digest, summary), block) in part.digests.iter().zip(part.certs.iter()).zip(blocks)
            {
                entries.push((*digest, summary, block));
            }
        }
        entries.sort_by_key(|e| e.0);
        entries.dedup_by(|a, b| a.0 == b.0);
        let pem = entries.iter().map(|e| e.2).collect();
        let certs = entries.iter().map(|e| e.1.clone()).collect();
        let digests = entries.iter().map(|e| e.0).collect();
        Self::assemble(pem, certs, digests)
    }

    /// The canonical PEM bytes served as `trusted_ca.inline_bytes`.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Content hash of the PEM bytes (hex, 16 characters).
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn certificates(&self) -> &[CertSummary] {
        &self.certs
    }

    /// The earliest expiry among the certificates (Unix seconds).
    pub fn earliest_expiry(&self) -> Option<&CertSummary> {
        self.certs.iter().min_by_key(|c| c.not_after)
    }
}

/// Splits canonical PEM (as built by [`cert::to_pem`]) into its blocks.
fn split_pem_blocks(pem: &str) -> impl Iterator<Item = &str> {
    const END: &str = "-----END CERTIFICATE-----\n";
    let mut rest = pem;
    std::iter::from_fn(move || {
        let end = rest.find(END)? + END.len();
        let (block, tail) = rest.split_at(end);
        rest = tail;
        Some(block)
    })
}

/// A short, stable content hash.
pub fn content_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}
