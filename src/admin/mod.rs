//! The admin surface: a gRPC API (`proto/trust_sds/admin/v1/admin.proto`) and HTTP
//! endpoints for probes, Prometheus and JSON views.

pub mod grpc;
pub mod http;

/// Generated from `proto/trust_sds/admin/v1/admin.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("trust_sds.admin.v1");
}
