//! Every row of DESIGN.md's validation table, with the exact messages and reasons.

mod support;

use support::pki::{self, Ca};
use trust_sds::model::{ObjectKey, SecretKeyRef, SecretObject};
use trust_sds::validation::{Subject, validate_data, validate_reference};

fn secret(data_key: &str, value: &[u8]) -> SecretObject {
    let mut data = std::collections::BTreeMap::new();
    data.insert(data_key.to_owned(), std::sync::Arc::<[u8]>::from(value));
    SecretObject::labelled(ObjectKey::new("ns", "upstream-ca"), data)
}

fn check(value: &[u8]) -> Result<String, (String, &'static str)> {
    let reference = SecretKeyRef::new("upstream-ca", None);
    validate_reference(
        Subject::ServerCa,
        &reference,
        Some(&secret("ca.crt", value)),
    )
    .map(|b| b.version().to_owned())
    .map_err(|f| (f.to_string(), f.reason()))
}

fn invalid(value: &[u8]) -> String {
    let (message, reason) = check(value).expect_err("must be rejected");
    assert_eq!(reason, "CACertInvalid", "{message}");
    message
}

#[test]
fn missing_secret_is_not_found() {
    let f =
        validate_reference(Subject::ServerCa, &SecretKeyRef::new("gone", None), None).unwrap_err();
    assert_eq!(f.to_string(), "CA certificate secret gone not found");
    assert_eq!(f.reason(), "CACertSecretNotFound");
    assert!(f.withdraws());
}

#[test]
fn unlabelled_secret_is_missing_label() {
    let s = SecretObject::unlabelled(ObjectKey::new("ns", "plain"));
    let f = validate_reference(
        Subject::ServerCa,
        &SecretKeyRef::new("plain", None),
        Some(&s),
    )
    .unwrap_err();
    assert_eq!(
        f.to_string(),
        "CA certificate secret plain is missing required label mcp.kuadrant.io/secret=true"
    );
    assert_eq!(f.reason(), "CACertSecretMissingLabel");
}

#[test]
fn missing_key_names_the_key() {
    let s = secret("tls.crt", Ca::root("A").pem().as_bytes());
    let r = SecretKeyRef::new("upstream-ca", Some("bundle.pem"));
    let f = validate_reference(Subject::ServerCa, &r, Some(&s)).unwrap_err();
    assert_eq!(
        f.to_string(),
        "CA certificate secret upstream-ca missing key bundle.pem"
    );
    assert_eq!(f.reason(), "CACertSecretMissingKey");
    assert!(!f.withdraws());
}

#[test]
fn empty_key_defaults_to_ca_crt() {
    assert_eq!(SecretKeyRef::new("s", Some("")).key, "ca.crt");
    assert_eq!(SecretKeyRef::new("s", None).key, "ca.crt");
}

/// Pads a valid PEM with comment lines to an exact size.
fn padded(pem: &str, size: usize) -> Vec<u8> {
    let mut out = pem.as_bytes().to_vec();
    while out.len() < size {
        let room = size - out.len();
        let line = if room > 80 { 79 } else { room - 1 };
        out.extend(std::iter::repeat_n(b'#', line));
        out.push(b'\n');
    }
    assert_eq!(out.len(), size);
    out
}

#[test]
fn size_limit_is_inclusive() {
    let pem = Ca::root("Sized").pem();
    assert!(
        check(&padded(&pem, 65_536)).is_ok(),
        "exactly 65536 bytes passes"
    );
    let (message, reason) = check(&padded(&pem, 65_537)).unwrap_err();
    assert_eq!(
        message,
        "CA certificate data in secret upstream-ca exceeds maximum size (65536 bytes)"
    );
    assert_eq!(reason, "CACertTooLarge");
}

#[test]
fn gateway_bundle_has_its_own_cap_and_wording() {
    let pem = Ca::root("Base").pem();
    assert!(validate_data(Subject::GatewayBundle, &padded(&pem, 262_144)).is_ok());
    let r = SecretKeyRef::new("base", None);
    let s = secret("ca.crt", &padded(&pem, 262_145));
    let f = validate_reference(Subject::GatewayBundle, &r, Some(&s)).unwrap_err();
    assert_eq!(
        f.to_string(),
        "CA bundle data in secret base exceeds maximum size (262144 bytes)"
    );
    assert_eq!(f.reason(), "CABundleTooLarge");
    let f = validate_reference(Subject::GatewayBundle, &r, None).unwrap_err();
    assert_eq!(f.to_string(), "CA bundle secret base not found");
    let f =
        validate_reference(Subject::GatewayBundle, &r, Some(&secret("ca.crt", b"x"))).unwrap_err();
    assert_eq!(
        f.to_string(),
        "CA bundle data in secret base is invalid: no valid PEM certificate blocks found"
    );
}

#[test]
fn empty_and_garbage_have_no_blocks() {
    let expected =
        "CA certificate in secret upstream-ca is invalid: no valid PEM certificate blocks found";
    assert_eq!(invalid(b""), expected);
    assert_eq!(invalid(b"not a certificate at all\n\x00\xff\xfe"), expected);
}

#[test]
fn private_key_is_refused_without_echo() {
    let key = pki::private_key_pem();
    let with_cert = format!("{}{key}", Ca::root("A").pem());
    for data in [key.clone(), with_cert] {
        let message = invalid(data.as_bytes());
        assert_eq!(
            message,
            "CA certificate in secret upstream-ca is invalid: unexpected PEM block type \"PRIVATE KEY\", expected CERTIFICATE"
        );
        let body: String = key.lines().nth(1).unwrap().to_owned();
        assert!(!message.contains(&body), "key material echoed");
    }
}

#[test]
fn corrupt_certificate_fails_to_parse() {
    let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let message = invalid(bogus.as_bytes());
    assert!(
        message.starts_with(
            "CA certificate in secret upstream-ca is invalid: failed to parse certificate: "
        ),
        "{message}"
    );
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert_eq!(
        invalid(bad_base64.as_bytes()),
        "CA certificate in secret upstream-ca is invalid: failed to parse certificate: PEM block contains invalid base64"
    );
}

#[test]
fn explicit_ca_false_is_rejected_by_common_name() {
    let data = format!(
        "{}{}",
        Ca::root("Good Root").pem(),
        pki::not_ca_pem("leafy.example")
    );
    assert_eq!(
        invalid(data.as_bytes()),
        "CA certificate in secret upstream-ca is invalid: certificate for \"leafy.example\" is not a CA certificate"
    );
}

#[test]
fn legacy_root_without_basic_constraints_is_accepted() {
    assert!(check(pki::legacy_root_pem("Legacy Root").as_bytes()).is_ok());
}

#[test]
fn self_signed_root_and_chain_are_accepted() {
    let root = Ca::root("Root");
    let intermediate = root.intermediate("Intermediate");
    let chain = format!("{}{}", intermediate.pem(), root.pem());
    let bundle = validate_data(Subject::ServerCa, chain.as_bytes()).unwrap();
    let names: Vec<_> = bundle
        .certificates()
        .map(|c| c.display_name.as_str())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"Root") && names.contains(&"Intermediate"));
}

#[test]
fn formatting_order_and_duplicates_give_the_same_version() {
    let (a, b) = (Ca::root("A").pem(), Ca::root("B").pem());
    let plain = check(format!("{a}{b}").as_bytes()).unwrap();
    let variants = [
        format!("{b}{a}"),
        format!("# upstream CA bundle\n\n{a}\n\n# second\n{b}\n\n"),
        format!("{a}{b}{a}{b}"),
        format!("{a}{b}").replace('\n', "\r\n"),
    ];
    for v in variants {
        assert_eq!(check(v.as_bytes()).unwrap(), plain, "variant: {v:?}");
    }
    assert_ne!(check(a.as_bytes()).unwrap(), plain);
}

#[test]
fn served_bytes_are_certificates_only() {
    let root = Ca::root("Only");
    let data = format!("comment\n{}", root.pem());
    let bundle = validate_data(Subject::ServerCa, data.as_bytes()).unwrap();
    assert!(bundle.pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert_eq!(bundle.pem().matches("BEGIN").count(), 1);
    assert!(!bundle.pem().contains("comment"));
}
