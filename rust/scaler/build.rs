//! Compiles KEDA's vendored external scaler protocol (`proto/keda/externalscaler.proto`) into
//! the gRPC server `scale serve --keda-listen` serves (and the client its tests use), with
//! protox (a protobuf compiler in Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/keda/externalscaler.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto/keda"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
