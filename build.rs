//! Compiles the project's own protos (`proto/`) with protox, a pure-Rust protobuf compiler,
//! so building needs no system `protoc`. Envoy's protos come from the `envoy-types` crate.
//! Only the server serves the admin API, so the client alone compiles no protos.

#[cfg(feature = "server")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/trust_sds/admin/v1/admin.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

#[cfg(not(feature = "server"))]
fn main() {}
