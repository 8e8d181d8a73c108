//! The `onnx-minimize` binary; the command line itself is the library's [`onnx_minimize::cli`].

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(onnx_minimize::cli::main(std::env::args_os()) as u8)
}
