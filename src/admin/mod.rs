//! The admin surface: a gRPC API (`proto/trust_sds/admin/v1/admin.proto`) and HTTP
//! endpoints for probes, Prometheus and JSON views.

pub mod grpc;
pub mod http;

/// Generated from `proto/trust_sds/admin/v1/admin.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("trust_sds.admin.v1");
}

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::sds::clients::ClientRegistry;
use crate::sds::delivery::{self, Delivery};
use crate::snapshot::Snapshot;

/// The delivery report of every served resource (see [`crate::sds::delivery`]).
pub fn deliveries(clients: &ClientRegistry, snapshot: &Snapshot) -> BTreeMap<Arc<str>, Delivery> {
    let versions: Vec<(Arc<str>, Arc<str>)> = snapshot
        .resources
        .iter()
        .map(|(name, bundle)| (name.clone(), Arc::from(bundle.version())))
        .collect();
    delivery::report(&clients.list(), versions.iter().map(|(n, v)| (n, v)))
}
