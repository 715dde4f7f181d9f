//! Canonical trust bundles, held once however many registrations serve them.
//!
//! A bundle is a set of CA certificates. Its bytes are canonical: certificates are
//! de-duplicated by SHA-256, ordered by that digest and re-encoded as PEM, so that comments,
//! whitespace, order or duplicates in the source give the same bytes, the same version and
//! therefore no push. The version is a content hash, stable across restarts.
//!
//! A registration's bundle is layered: the gateway base, then the registration's own
//! certificates that the base does not already hold, each layer canonical. Layers are
//! shared pieces ([`Part`]), so 2,000 registrations on one 132 KB base hold that base once,
//! and the SDS encoder writes the pieces as they are.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
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

/// One canonical layer: certificates sorted by digest, their PEM and content version.
#[derive(Debug)]
struct Part {
    pem: Bytes,
    version: Arc<str>,
    certs: Vec<CertSummary>,
    digests: Vec<[u8; 32]>,
}

impl Part {
    /// The canonical layer of `entries` (digest, summary, PEM block), in any order.
    fn of<'a>(mut entries: Vec<([u8; 32], &'a CertSummary, &'a str)>) -> Arc<Part> {
        entries.sort_by_key(|e| e.0);
        entries.dedup_by(|a, b| a.0 == b.0);
        let pem: String = entries.iter().map(|e| e.2).collect();
        Arc::new(Part {
            version: content_version(pem.as_bytes()).into(),
            pem: Bytes::from(pem),
            certs: entries.iter().map(|e| e.1.clone()).collect(),
            digests: entries.iter().map(|e| e.0).collect(),
        })
    }

    /// Each certificate with its digest and PEM block.
    fn entries(&self) -> impl Iterator<Item = ([u8; 32], &CertSummary, &str)> {
        let pem = std::str::from_utf8(&self.pem).unwrap_or_default();
        self.digests
            .iter()
            .zip(&self.certs)
            .zip(split_pem_blocks(pem))
            .map(|((d, c), b)| (*d, c, b))
    }
}

/// A canonical CA bundle: one layer, or a gateway base followed by a registration's own.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    parts: Arc<[Arc<Part>]>,
    version: Arc<str>,
}

/// Bundles are equal when their content is: the version is a hash of it.
impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
    }
}

impl Eq for TrustBundle {}

impl TrustBundle {
    /// Builds the canonical bundle of `certs` (which may hold duplicates, in any order).
    pub fn from_certificates(certs: &[Certificate]) -> Self {
        let pems: Vec<String> = certs.iter().map(|c| cert::to_pem(&c.der)).collect();
        let summaries: Vec<CertSummary> = certs
            .iter()
            .map(|c| CertSummary {
                subject: c.subject.clone(),
                display_name: c.display_name.clone(),
                sha256: c.fingerprint(),
                not_before: c.not_before,
                not_after: c.not_after,
            })
            .collect();
        let entries = certs
            .iter()
            .zip(&summaries)
            .zip(&pems)
            .map(|((c, s), p)| (c.sha256, s, p.as_str()))
            .collect();
        Self::of_parts(vec![Part::of(entries)])
    }

    fn of_parts(parts: Vec<Arc<Part>>) -> Self {
        let version = match parts.as_slice() {
            [one] => one.version.clone(),
            // A hash of the layers' hashes: content-addressed, and it costs the same
            // whatever the size of the base.
            many => {
                let joined: Vec<&str> = many.iter().map(|p| &*p.version).collect();
                content_version(joined.join("+").as_bytes()).into()
            }
        };
        Self {
            parts: parts.into(),
            version,
        }
    }

    /// The union of several bundles as one canonical layer (trust is additive).
    pub fn merge<'a>(bundles: impl IntoIterator<Item = &'a TrustBundle>) -> Self {
        let entries = bundles
            .into_iter()
            .flat_map(|b| b.parts.iter())
            .flat_map(|p| p.entries())
            .collect();
        Self::of_parts(vec![Part::of(entries)])
    }

    /// `base`'s layers, then the certificates of `own` that `base` does not hold. Shares
    /// both: nothing is copied unless the two overlap.
    pub fn layered(base: &TrustBundle, own: &TrustBundle) -> Self {
        let mut parts: Vec<Arc<Part>> = base.parts.to_vec();
        let in_base = |d: &[u8; 32]| {
            base.parts
                .iter()
                .any(|p| p.digests.binary_search(d).is_ok())
        };
        for part in own.parts.iter() {
            if !part.digests.iter().any(&in_base) {
                parts.push(part.clone());
            } else {
                let rest: Vec<_> = part.entries().filter(|e| !in_base(&e.0)).collect();
                if !rest.is_empty() {
                    parts.push(Part::of(rest));
                }
            }
        }
        Self::of_parts(parts)
    }

    /// The PEM bytes served as `trusted_ca.inline_bytes`, in their shared pieces.
    pub fn pem_pieces(&self) -> impl Iterator<Item = &Bytes> {
        self.parts.iter().map(|p| &p.pem)
    }

    /// The PEM served as `trusted_ca.inline_bytes` (one piece borrowed, several joined).
    pub fn pem(&self) -> Cow<'_, str> {
        // Canonical PEM is ASCII, built here.
        fn text(p: &Part) -> &str {
            std::str::from_utf8(&p.pem).unwrap_or_default()
        }
        match &*self.parts {
            [one] => Cow::Borrowed(text(one)),
            many => {
                let mut joined = String::with_capacity(self.pem_len());
                many.iter().for_each(|p| joined.push_str(text(p)));
                Cow::Owned(joined)
            }
        }
    }

    /// The length of [`Self::pem`].
    pub fn pem_len(&self) -> usize {
        self.parts.iter().map(|p| p.pem.len()).sum()
    }

    /// Content hash of the bundle (hex, 16 characters).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The certificates, in the order they are served.
    pub fn certificates(&self) -> impl Iterator<Item = &CertSummary> {
        self.parts.iter().flat_map(|p| p.certs.iter())
    }

    pub fn certificate_count(&self) -> usize {
        self.parts.iter().map(|p| p.certs.len()).sum()
    }

    /// The earliest expiry among the certificates (Unix seconds).
    pub fn earliest_expiry(&self) -> Option<&CertSummary> {
        self.certificates().min_by_key(|c| c.not_after)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical bundle of freshly made CA certificates named `names`.
    fn bundle_of(names: &[&str]) -> TrustBundle {
        let pem: String = names.iter().map(|cn| cert::test_ca_pem(cn)).collect();
        TrustBundle::from_certificates(&cert::parse_ca_bundle(pem.as_bytes()).unwrap())
    }

    fn names(bundle: &TrustBundle) -> Vec<&str> {
        bundle
            .certificates()
            .map(|c| c.display_name.as_str())
            .collect()
    }

    #[test]
    fn a_layered_bundle_shares_the_base_and_holds_each_certificate_once() {
        let base = bundle_of(&["Base 1", "Base 2"]);
        let own = bundle_of(&["Own"]);
        let layered = TrustBundle::layered(&base, &own);
        assert_eq!(layered.certificate_count(), 3);
        assert_eq!(layered.pem(), format!("{}{}", base.pem(), own.pem()));
        // The pieces are the base's and the own bundle's bytes, not copies.
        let pieces: Vec<&Bytes> = layered.pem_pieces().collect();
        assert_eq!(
            pieces[0].as_ptr(),
            base.pem_pieces().next().unwrap().as_ptr()
        );
        assert_eq!(
            pieces[1].as_ptr(),
            own.pem_pieces().next().unwrap().as_ptr()
        );
        assert_ne!(layered.version(), base.version());
        assert_eq!(layered, TrustBundle::layered(&base, &own));

        // An own certificate the base holds is served once, in the base's layer.
        let overlapping = TrustBundle::merge([&own, &base]);
        let again = TrustBundle::layered(&base, &overlapping);
        assert_eq!(again.pem(), layered.pem());
        assert_eq!(again.version(), layered.version());
        assert_eq!(names(&again).len(), 3);

        // Wholly inside the base: the base itself.
        assert_eq!(TrustBundle::layered(&base, &base).version(), base.version());
    }
}
