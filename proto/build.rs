//! Generates the gRPC code from `proto/yr/v1/*.proto` with protoc (Debian: protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/yr/v1/control.proto"], &["proto"])?;
    Ok(())
}
