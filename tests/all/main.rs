//! Integration tests, in one binary so tract links once.

mod attention;
mod cli;
mod cnn;
mod common;
mod fixtures;
mod frameworks;
mod io;
mod nonfinite;
mod norm;
mod ops;
mod properties;
mod quantized;
mod sparsify;
