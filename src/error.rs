//! Errors a user can act on: each names the file, node, op or tensor at fault and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },

    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },

    #[error("{path} is not a valid ONNX model ({why}); is it truncated, or not an .onnx file?")]
    Decode { path: PathBuf, why: String },

    #[error("{path} is not a valid ONNX graph: {why}; re-export it, or check it with onnx.checker.check_model")]
    Invalid { path: PathBuf, why: String },

    #[error("tensor '{tensor}' keeps its data in {path}, which cannot be read ({why}); keep the .data file next to the model under the name the model gives")]
    ExternalData { tensor: String, path: PathBuf, why: String },

    #[error("tensor '{tensor}': {why}")]
    UnsupportedTensor { tensor: String, why: String },

    #[error("{path} imports opset {version} of domain '{domain}', newer than the {max} onnx-minimize knows; its operators may mean something else, so nothing is rewritten")]
    UnknownOpset { path: PathBuf, domain: String, version: i64, max: i64 },

    #[error("{0}")]
    Usage(String),

    #[error("tract cannot run {model}: {why}\n  hint: pass --input-shape for dynamic inputs, or --no-verify to skip the check (at your own risk)")]
    Tract { model: String, why: String },

    #[error("verification failed: output '{output}' differs by {deviation:.3e} (relative to its scale) on input set {run}, above the tolerance {tolerance:.1e}; no file was written. Please report this model: it is a bug")]
    Diverged { output: String, deviation: f64, tolerance: f64, run: usize },
}

impl Error {
    /// Process exit status, documented in the CLI help.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Diverged { .. } => 3,
            Error::Tract { .. } => 4,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
