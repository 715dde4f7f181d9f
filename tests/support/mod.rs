//! Shared test support. Each integration test binary uses a part of it.
#![allow(dead_code)]

pub mod control_plane;
pub mod envoy;
pub mod fake_apiserver;
pub mod manifests;
pub mod objects;
pub mod pki;
pub mod procfs;
pub mod replicas;
pub mod sds;
pub mod serve_process;
pub mod upstream;
