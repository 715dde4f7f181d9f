//! One-line builders for domain objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use trust_sds::model::{
    GatewayExtension, Object, ObjectKey, Registration, SecretKeyRef, SecretObject,
};

pub fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

/// A registration whose `caCertSecretRef` names `secret` (key `ca.crt`).
pub fn registration(ns: &str, name: &str, secret: &str) -> Object {
    Object::Registration(Registration {
        key: key(ns, name),
        generation: Some(1),
        ca_cert_secret_ref: Some(SecretKeyRef::new(secret, None)),
        target_route: None,
        disabled: false,
        upstream: Default::default(),
    })
}

/// A labelled Secret with `ca.crt` set to `pem`.
pub fn ca_secret(ns: &str, name: &str, pem: &str) -> Object {
    secret_with(ns, name, "ca.crt", pem.as_bytes())
}

pub fn secret_with(ns: &str, name: &str, data_key: &str, value: &[u8]) -> Object {
    let mut data = BTreeMap::new();
    data.insert(data_key.to_owned(), Arc::<[u8]>::from(value));
    Object::Secret(SecretObject::labelled(key(ns, name), data))
}

pub fn unlabelled_secret(ns: &str, name: &str) -> Object {
    Object::Secret(SecretObject::unlabelled(key(ns, name)))
}

pub fn extension(ns: &str, name: &str, bundle_secret: &str) -> Object {
    Object::Extension(GatewayExtension {
        key: key(ns, name),
        generation: Some(1),
        ca_cert_bundle_ref: Some(SecretKeyRef::new(bundle_secret, None)),
        target_gateway: Some(key(ns, "gateway")),
    })
}
