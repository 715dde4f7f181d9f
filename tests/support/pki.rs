//! Test PKI built with rcgen: one-line builders for roots, intermediates, leaves and the
//! awkward cases of the validation table.

#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority that can issue leaves and intermediates.
pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Ca {
    /// A self-signed root CA.
    pub fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(ca_params(cn), key).expect("root"),
        }
    }

    /// A root CA whose certificate expires at `not_after` (Unix seconds).
    pub fn root_expiring(cn: &str, not_after: i64) -> Ca {
        let mut params = ca_params(cn);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).expect("timestamp");
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("root"),
        }
    }

    /// An intermediate CA signed by `self`.
    pub fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::signed_by(ca_params(cn), key, &self.issuer).expect("int"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `dns` signed by this CA.
    pub fn leaf(&self, dns: &str) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![dns.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, dns);
        params.is_ca = IsCa::ExplicitNoCa;
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

/// A leaf certificate and its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

/// A self-signed certificate with an explicit `CA:FALSE`.
pub fn not_ca_pem(cn: &str) -> String {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["example.test".to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.self_signed(&key).expect("cert").pem()
}

/// A self-signed legacy root without a BasicConstraints extension.
pub fn legacy_root_pem(cn: &str) -> String {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::NoCa;
    params.self_signed(&key).expect("cert").pem()
}

/// A private key in PEM.
pub fn private_key_pem() -> String {
    KeyPair::generate().expect("key").serialize_pem()
}

impl Ca {
    /// A client certificate (clientAuth) whose SANs are `uris` (e.g. SPIFFE IDs) and `dns`.
    pub fn client_leaf(&self, uris: &[&str], dns: &[&str]) -> Leaf {
        use rcgen::{ExtendedKeyUsagePurpose, SanType};
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, "client");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().expect("uri")));
        }
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into().expect("dns")));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        let cert = params.signed_by(&key, &self.issuer).expect("client");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}
