//! Generates the ONNX protobuf types with prost from the vendored `proto/onnx.proto`.
//!
//! protox parses the schema in pure Rust, so building needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // Weight bytes stay slices of the memory-mapped model instead of being copied.
        .bytes([".onnx.TensorProto.raw_data"])
        .compile_fds(fds)?;
    Ok(())
}
