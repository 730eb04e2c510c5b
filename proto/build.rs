//! Generates the gRPC code from `proto/yr/v1/*.proto` with protoc (Debian: protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // A call's payload is handed from the frontend to the proxy to the instance's socket:
        // shared buffers, so that passing it on is not a copy of it.
        .bytes(".yr.v1.InvokeRequest.payload")
        .bytes(".yr.v1.Call.payload")
        .compile_protos(&["proto/yr/v1/control.proto"], &["proto"])?;
    Ok(())
}
