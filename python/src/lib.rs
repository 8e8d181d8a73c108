//! `onnx_minimize._native`: the library's public entry points for Python, on paths and plain
//! options, reports as JSON. The typed API (`onnx.ModelProto` in and out, dataclass reports,
//! keyword defaults, docstrings) is the pure-Python package around it, so the binding freezes none
//! of the engine's internals: only what the command line also offers.
//!
//! The GIL is released for the whole of every call; a progress callback takes it back only for
//! the moment it runs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;

use clap::ValueEnum;
use onnx_minimize::sparsify::{self, Amount, Calibration, Criterion, PruneOptions, Scope, SparsifyReport};
use onnx_minimize::{ClnForm, Error, Options, Progress, VerifyMode, VerifyOptions};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

create_exception!(onnx_minimize, OnnxMinimizeError, PyException, "Anything onnx-minimize refused or failed to do.");
create_exception!(
    onnx_minimize,
    BadInputError,
    OnnxMinimizeError,
    "The model or a file could not be read or written, or the model is not valid ONNX (exit status 1)."
);
create_exception!(
    onnx_minimize,
    UsageError,
    OnnxMinimizeError,
    "An option or argument is wrong, such as an output that is the input (exit status 2)."
);
create_exception!(
    onnx_minimize,
    VerificationError,
    OnnxMinimizeError,
    "The minimized model computed something else; nothing was written. A bug: please report the model \
     (exit status 3)."
);
create_exception!(
    onnx_minimize,
    TractError,
    OnnxMinimizeError,
    "tract could not run a model to verify it: give input_shapes, or verify=False (exit status 4)."
);

/// The exception class per CLI exit status, so Python callers catch what the shell would test.
fn to_py(e: Error) -> PyErr {
    let message = e.to_string();
    match e.exit_code() {
        2 => UsageError::new_err(message),
        3 => VerificationError::new_err(message),
        4 => TractError::new_err(message),
        _ => BadInputError::new_err(message),
    }
}

/// One of a library enum's command-line spellings ("unit-coupled", "per-tensor", ...).
fn choice<T: ValueEnum>(option: &str, given: &str) -> PyResult<T> {
    T::from_str(given, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| format!("'{}'", p.get_name()))
            .collect();
        PyValueError::new_err(format!("{option} must be one of {}, not '{given}'", names.join(", ")))
    })
}

/// Forwards the engine's progress to a Python callable as `(stage, done, total, items, of, unit)`.
/// An exception from the callable stops further calls and is raised when the work ends (the work
/// itself is not interrupted: nothing is half-written either way).
struct Reporter {
    callback: Option<Py<PyAny>>,
    stage: Mutex<String>,
    error: Mutex<Option<PyErr>>,
}

impl Reporter {
    fn new(callback: Option<Py<PyAny>>) -> Self {
        Reporter { callback, stage: Mutex::new(String::new()), error: Mutex::new(None) }
    }

    fn report(&self, p: Progress) {
        let Some(callback) = &self.callback else { return };
        let mut stage = self.stage.lock().unwrap_or_else(|e| e.into_inner());
        let (done, total, items, of, unit) = match p {
            Progress::Stage(s) => {
                *stage = s.to_string();
                (None, None, 0, 0, "")
            }
            Progress::Bytes { done, total, items, of, unit } => (Some(done), Some(total), items, of, unit),
        };
        let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if error.is_none() {
            Python::attach(|py| {
                if let Err(e) = callback.call1(py, (stage.as_str(), done, total, items, of, unit)) {
                    *error = Some(e);
                }
            });
        }
    }

    fn finish<T>(self, result: onnx_minimize::Result<T>) -> PyResult<T> {
        let value = result.map_err(to_py)?;
        match self.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

/// Minimizes `src` into `dst` (None: a dry run) and returns the report as (JSON, text summary).
#[pyfunction]
#[pyo3(signature = (
    src, dst, *, verify = "auto", tolerance = None, input_shapes = None, inputs = None, runs = 3, seed = 0x5eed,
    block_mb = 256.0, external_data = None, gather_inputs = false, compensated_layernorm = "ops", progress = None
))]
#[allow(clippy::too_many_arguments)]
fn minimize_file(
    py: Python<'_>,
    src: PathBuf,
    dst: Option<PathBuf>,
    verify: &str,
    tolerance: Option<f64>,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    inputs: Option<Vec<String>>,
    runs: usize,
    seed: u64,
    block_mb: f64,
    external_data: Option<bool>,
    gather_inputs: bool,
    compensated_layernorm: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<(String, String)> {
    let inputs = inputs
        .unwrap_or_default()
        .iter()
        .map(|s| s.parse().map_err(|e: String| PyValueError::new_err(format!("inputs: '{s}': {e}"))))
        .collect::<PyResult<_>>()?;
    let verify = match verify {
        "none" => None,
        mode => Some(VerifyOptions {
            mode: choice::<VerifyMode>("verify", mode)?,
            block_bytes: Some(onnx_minimize::verify::megabytes(block_mb)),
            tolerance,
            input_shapes: input_shapes.unwrap_or_default(),
            runs,
            seed,
            inputs,
        }),
    };
    let opts = Options {
        verify,
        external_data,
        gather_inputs,
        compensated_layernorm: choice::<ClnForm>("compensated_layernorm", compensated_layernorm)?,
    };
    let reporter = Reporter::new(progress);
    let result = py.detach(|| onnx_minimize::minimize_file(&src, dst.as_deref(), &opts, &|p| reporter.report(p)));
    let report = reporter.finish(result)?;
    Ok((serde_json::to_string(&report).expect("the report serializes"), report.to_text()))
}

fn sparsify_file(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    rewrite: impl Send + FnOnce(&mut onnx_minimize::Model) -> onnx_minimize::Result<SparsifyReport>,
) -> PyResult<String> {
    let report = py.detach(|| sparsify::rewrite_file(&src, &dst, rewrite)).map_err(to_py)?;
    Ok(serde_json::to_string(&report).expect("the report serializes"))
}

/// Prunes `src` into `dst`; returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (
    src, dst, *, sparsity = None, remove = None, scope = "global", criterion = "magnitude", coupling = 0.5,
    include_output_layer = false
))]
#[allow(clippy::too_many_arguments)]
fn prune_file(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    sparsity: Option<f64>,
    remove: Option<f64>,
    scope: &str,
    criterion: &str,
    coupling: f64,
    include_output_layer: bool,
) -> PyResult<String> {
    let amount = match (sparsity, remove) {
        (Some(s), None) => Amount::Sparsity(s),
        (None, Some(r)) => Amount::Remaining(r),
        _ => return Err(UsageError::new_err("give exactly one of sparsity and remove")),
    };
    let opts = PruneOptions {
        amount,
        scope: choice::<Scope>("scope", scope)?,
        criterion: choice::<Criterion>("criterion", criterion)?,
        coupling,
        include_output_layer,
    };
    sparsify_file(py, src, dst, |m| sparsify::prune(m, &opts))
}

/// The channel spaces of `src`'s prunable weights and their writers, as JSON memberships.
#[pyfunction]
#[pyo3(signature = (src, *, include_output_layer = false))]
fn channel_spaces(py: Python<'_>, src: PathBuf, include_output_layer: bool) -> PyResult<String> {
    let spaces = py.detach(|| {
        let model = onnx_minimize::Model::load(&src)?;
        sparsify::channel_spaces(&model, include_output_layer)
    });
    Ok(serde_json::to_string(&spaces.map_err(to_py)?).expect("memberships serialize"))
}

/// Releases `src` into `dst`; returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (src, dst, *, calibration = "threshold:1.5", seed = 0, include_output_layer = false))]
fn release_file(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    calibration: &str,
    seed: u64,
    include_output_layer: bool,
) -> PyResult<String> {
    let calibration: Calibration =
        calibration.parse().map_err(|e: String| PyValueError::new_err(format!("calibration: {e}")))?;
    sparsify_file(py, src, dst, |m| sparsify::release(m, calibration, include_output_layer, seed))
}

/// The command line on `argv` (program name first); returns the exit status.
#[pyfunction]
fn cli(py: Python<'_>, argv: Vec<OsString>) -> i32 {
    py.detach(|| onnx_minimize::cli::main(argv))
}

/// (operator types with a channel rule, operator types a rewrite can add).
#[pyfunction]
fn operators() -> (Vec<&'static str>, Vec<&'static str>) {
    (onnx_minimize::supported_operators(), onnx_minimize::emitted_operators())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    for (class, status) in [
        (py.get_type::<BadInputError>(), 1),
        (py.get_type::<UsageError>(), 2),
        (py.get_type::<VerificationError>(), 3),
        (py.get_type::<TractError>(), 4),
    ] {
        class.setattr("exit_code", status)?;
        m.add(class.name()?, class)?;
    }
    m.add("OnnxMinimizeError", py.get_type::<OnnxMinimizeError>())?;
    m.add_function(wrap_pyfunction!(minimize_file, m)?)?;
    m.add_function(wrap_pyfunction!(prune_file, m)?)?;
    m.add_function(wrap_pyfunction!(release_file, m)?)?;
    m.add_function(wrap_pyfunction!(channel_spaces, m)?)?;
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    m.add_function(wrap_pyfunction!(operators, m)?)?;
    Ok(())
}
