//! ONNX I/O: the prost types generated from the vendored `proto/onnx.proto`, element access to
//! tensors, and lossless, memory-mapped reading and atomic writing.

pub mod build;
pub(crate) mod fold;
pub mod io;
pub(crate) mod quant;
pub mod tensor;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
