//! The AFL++ target (`cargo afl build --release --features afl`, then `cargo afl fuzz`; see
//! fuzz/README.md).

fn main() {
    let case = onnx_minimize_fuzz::Case::new();
    afl::fuzz!(|data: &[u8]| case.run(data));
}
