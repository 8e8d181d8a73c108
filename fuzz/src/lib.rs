//! One fuzz case: any bytes, as an `.onnx` file, through everything onnx-minimize does to a model
//! except tract's check (tract is not under test here): read, analyse, rewrite, write, then prune
//! and release. Whatever the bytes, each step must answer with a result: an error naming what is
//! wrong is fine, a panic, an abort or a hang is a bug.

use std::path::{Path, PathBuf};

use onnx_minimize::sparsify::{self, Amount, Calibration, Criterion, PruneOptions, Scope};
use onnx_minimize::{minimize_file, Options};

/// A private folder the case writes its files in, reused across cases.
pub struct Case {
    _dir: tempfile::TempDir,
    input: PathBuf,
    output: PathBuf,
}

impl Case {
    /// In `/dev/shm` where there is one: AFL runs thousands of cases a second.
    pub fn new() -> Case {
        let shm = Path::new("/dev/shm");
        let dir =
            if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("a temporary folder");
        let (input, output) = (dir.path().join("model.onnx"), dir.path().join("out.onnx"));
        Case { _dir: dir, input, output }
    }

    pub fn run(&self, data: &[u8]) {
        std::fs::write(&self.input, data).expect("the temporary model is writable");
        let opts = Options { verify: None, gather_inputs: true, ..Options::default() };
        let _ = minimize_file(&self.input, Some(&self.output), &opts, &|_| {});
        let prune = PruneOptions {
            amount: Amount::Sparsity(0.5),
            scope: Scope::Global,
            criterion: Criterion::UnitCoupled,
            coupling: 0.5,
            include_output_layer: true,
        };
        let _ = sparsify::rewrite_file(&self.input, &self.output, |m| sparsify::prune(m, &prune));
        let _ = sparsify::rewrite_file(&self.input, &self.output, |m| {
            sparsify::release(m, Calibration::Threshold(1.5), true, 0)
        });
    }
}

impl Default for Case {
    fn default() -> Self {
        Case::new()
    }
}
