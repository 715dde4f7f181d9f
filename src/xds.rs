//! What both ends of SDS agree on, for the server (`sds`) and the client (`client`)
//! alike: the client builds without the server.

/// The type URL of `envoy.extensions.transport_sockets.tls.v3.Secret`.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
