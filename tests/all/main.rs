//! Integration tests, in one binary so tract links once.

mod cli;
mod common;
mod fixtures;
mod io;
mod ops;
mod properties;
