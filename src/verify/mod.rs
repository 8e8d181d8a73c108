//! Verification: tract runs the original and the minimized model on the same random inputs.
//!
//! Inputs are fresh random tensors (not anything the analysis looked at), on several shapes where
//! the model has dynamic dimensions, so a rewrite that only holds for one batch size is caught.
//! Models too large for tract to hold whole (it needs a few times a model's bytes) are checked
//! piece by piece instead: see [`blockwise`].

mod blockwise;
mod for_tract;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use rand::{rngs::StdRng, Rng, SeedableRng};
use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::onnx::proto::{tensor_proto::DataType, tensor_shape_proto::dimension, type_proto, GraphProto};
use crate::report::{OutputCheck, Verification};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Largest accepted deviation relative to each output's scale; by default 1e-4, or 1e-2 for
    /// models with 16-bit float outputs.
    pub tolerance: Option<f64>,
    /// Shapes for inputs with dynamic dimensions, by input name.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// How many input sets to try.
    pub runs: usize,
    pub seed: u64,
    /// Inputs of the user's own to check on, besides the random ones.
    pub inputs: Vec<crate::npy::InputFile>,
    pub mode: VerifyMode,
    /// Bytes of weights per piece in block-wise verification (default 256 MB).
    pub block_bytes: Option<u64>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            tolerance: None,
            input_shapes: HashMap::new(),
            runs: 3,
            seed: 0x5eed,
            inputs: vec![],
            mode: VerifyMode::Auto,
            block_bytes: None,
        }
    }
}

/// Bytes in `mb` megabytes (a negative size is none), for `--block-mb`.
pub fn megabytes(mb: f64) -> u64 {
    (mb.max(0.0) * (1u64 << 20) as f64) as u64
}

/// How the minimized model is checked against the original (`--verify`, less `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyMode {
    /// Whole where tract can hold both models in the memory available, block-wise otherwise.
    Auto,
    /// Both models run whole: the strongest check, and a few times the models' bytes of memory.
    Whole,
    /// Piece by piece: memory follows two pieces.
    Blockwise,
}

/// Default weight bytes of a block-wise piece.
const BLOCK_BYTES: u64 = 256 << 20;

/// tract's peak memory for a model, in multiples of its bytes (measured on the 1B sparse MLP).
const TRACT_BYTES_FACTOR: f64 = 3.6;

/// Which entries of a value the minimized model keeps, along one axis.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    /// Counted from the end (-1: the last axis).
    pub axis: isize,
    /// Entries of the original along that axis.
    pub entries: usize,
    /// The kept entries, in order; none: all of them.
    pub keep: Option<Vec<usize>>,
    /// Which of the kept entries (positions in `keep`) something needs, the only ones that must
    /// agree; none: all of them.
    pub compared: Option<Vec<usize>>,
    /// Removed entries and the constant each holds for every input.
    pub constants: Vec<(usize, f64)>,
}

/// [`Kept`] for every value whose channels the analysis laid out, by name.
pub(crate) type ChannelMap = HashMap<String, Kept>;

/// Bytes of memory available to this process, where the system says.
fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Sizes tried for dynamic dimensions, one per run: 1 first, then others, so that a rewrite
/// that only works for batch 1 is caught.
const DYNAMIC_SIZES: [usize; 3] = [1, 3, 2];

struct InputSpec {
    name: String,
    elem: i32,
    dims: Vec<Option<usize>>,
}

fn input_specs(g: &GraphProto) -> Vec<InputSpec> {
    let inits: std::collections::HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    g.input
        .iter()
        .filter(|i| !inits.contains(i.name()))
        .map(|i| {
            let (elem, dims) = match i.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(t)) => (
                    t.elem_type(),
                    t.shape
                        .as_ref()
                        .map(|s| {
                            s.dim
                                .iter()
                                .map(|d| match d.value {
                                    Some(dimension::Value::DimValue(v)) if v > 0 => Some(v as usize),
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                _ => (DataType::Float as i32, vec![]),
            };
            InputSpec { name: i.name().to_string(), elem, dims }
        })
        .collect()
}

fn random_tensor(rng: &mut StdRng, elem: i32, shape: &[usize]) -> Result<Tensor> {
    // Past a billion elements a random input is a declared shape no one meant (or a crash).
    let n =
        shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= 1 << 30).ok_or_else(|| {
            Error::Usage(format!("an input of shape {shape:?} is too large to make: give --input-shape"))
        })?;
    let normal = |rng: &mut StdRng| {
        // Box-Muller: unit normal values exercise both signs of every activation.
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let t = match DataType::try_from(elem).unwrap_or(DataType::Float) {
        DataType::Double => Tensor::from_shape(shape, &(0..n).map(|_| normal(rng)).collect::<Vec<f64>>()),
        DataType::Float16 => {
            Tensor::from_shape(shape, &(0..n).map(|_| half::f16::from_f64(normal(rng))).collect::<Vec<_>>())
        }
        DataType::Int64 => Tensor::from_shape(shape, &(0..n).map(|_| rng.random_range(0..2i64)).collect::<Vec<_>>()),
        DataType::Int32 => Tensor::from_shape(shape, &(0..n).map(|_| rng.random_range(0..2i32)).collect::<Vec<_>>()),
        DataType::Bool => Tensor::from_shape(shape, &(0..n).map(|_| rng.random::<bool>()).collect::<Vec<_>>()),
        DataType::Float => Tensor::from_shape(shape, &(0..n).map(|_| normal(rng) as f32).collect::<Vec<_>>()),
        other => return Err(Error::Usage(format!("cannot make random inputs of type {}", other.as_str_name()))),
    };
    t.map_err(|e| Error::Usage(format!("cannot make an input of shape {shape:?}: {e}")))
}

fn tract_err(path: &Path) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Tract { model: path.display().to_string(), why: format!("{e:#}") }
}

/// An optimised tract plan of `model` (read from `path`) for inputs of these types and shapes.
pub fn plan(
    model: &InferenceModel,
    path: &Path,
    inputs: &[(DatumType, Vec<usize>)],
) -> Result<Arc<TypedRunnableModel>> {
    let err = tract_err(path);
    let mut m = model.clone();
    // Exporters declare intermediate shapes with symbols (dynamo's `batch`), which tract will not
    // unify with the concrete shapes tried here; the operators alone determine every shape.
    let sources: Vec<usize> = m.input_outlets().map_err(&err)?.iter().map(|o| o.node).collect();
    for node in m.nodes_mut().iter_mut().filter(|n| !sources.contains(&n.id)) {
        node.outputs.iter_mut().for_each(|o| o.fact = InferenceFact::default());
    }
    for (i, (dt, shape)) in inputs.iter().enumerate() {
        m = m.with_input_fact(i, InferenceFact::dt_shape(*dt, shape)).map_err(&err)?;
    }
    let typed = m.into_typed().map_err(&err)?.into_decluttered().map_err(&err)?;
    // tract's code generation refuses some forms its reference operators run (a boolean mask
    // in opset 23's Attention): those run decluttered, slower but the same arithmetic.
    match typed.clone().into_optimized() {
        Ok(optimized) => optimized.into_runnable().map_err(&err),
        Err(_) => typed.into_runnable().map_err(&err),
    }
}

fn run(model: &InferenceModel, path: &Path, inputs: &[(String, Tensor)]) -> Result<TVec<TValue>> {
    let facts: Vec<_> = inputs.iter().map(|(_, t)| (t.datum_type(), t.shape().to_vec())).collect();
    let values = inputs.iter().map(|(_, t)| t.clone().into_tvalue()).collect();
    plan(model, path, &facts)?.run(values).map_err(tract_err(path))
}

thread_local! {
    /// Set while tract runs under [`guarded`]: its panics are reported as errors, not printed.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into [`Error::Tract`]. tract panics on some inputs its
/// checks let through (a `Gather` index past its table, which a model can compute from the
/// random inputs' shapes); that is a model tract cannot check at those shapes, not a crash of
/// this tool. The panic hook stays quiet for such panics and prints every other one as before.
pub(crate) fn guarded<T>(model: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Error::Tract {
            model: model.display().to_string(),
            why: format!(
                "tract hit an internal error running it or the minimized model ({what}); at the verification's input shapes the model may index past a table (positions from a padded length): pass shapes it accepts with --input-shape, or inputs with --inputs"
            ),
        })
    })
}

/// Runs both models and returns the deviations, or [`Error::Diverged`] past the tolerance.
///
/// tract does not run every operator in float16 or float64 (Gemm among them). When it cannot run
/// either model in its own types, both are compared as float32 copies instead (every
/// float16/bfloat16 value is exact in float32), and the report says so.
pub(crate) fn verify(
    original: &Path,
    minimized: &Path,
    model: &crate::Model,
    opts: &VerifyOptions,
    channels: &ChannelMap,
    progress: &dyn Fn(crate::Progress),
) -> Result<Verification> {
    let graph = model.graph();
    // Folded biases are rounded to the weights' type: 16-bit floats carry ~3 decimal digits.
    let sixteen = graph
        .initializer
        .iter()
        .any(|t| [DataType::Float16 as i32, DataType::Bfloat16 as i32].contains(&t.data_type()));
    let tolerance = opts.tolerance.unwrap_or(if sixteen { 1e-2 } else { 1e-4 });
    let whole = match opts.mode {
        VerifyMode::Whole => true,
        VerifyMode::Blockwise => false,
        VerifyMode::Auto => {
            let bytes = crate::onnx::io::file_bytes(original) + crate::onnx::io::file_bytes(minimized);
            let need = TRACT_BYTES_FACTOR * bytes as f64;
            memory_available().is_none_or(|a| need <= a as f64 * 0.8)
        }
    };
    if !whole {
        return blockwise::verify(original, minimized, channels, opts, tolerance, progress);
    }
    // Copies tract can run, only where the model needs them: a copy costs a write of each model.
    let copies = |f32: bool| -> Result<Verification> {
        let dir = tempfile::tempdir().map_err(|source| Error::Write { path: std::env::temp_dir(), source })?;
        let (a, a_path) = for_tract::copy(original, &dir.path().join("original.onnx"), f32)?;
        let (_, b_path) = for_tract::copy(minimized, &dir.path().join("minimized.onnx"), f32)?;
        // Errors name the user's files, not the copies.
        let named = |model: String| match model {
            m if m == a_path.display().to_string() => original.display().to_string(),
            m if m == b_path.display().to_string() => minimized.display().to_string(),
            m => m,
        };
        let mut v = compare(&a_path, &b_path, a.graph(), opts, tolerance).map_err(|e| match e {
            Error::Tract { model, why } => Error::Tract { model: named(model), why },
            e => e,
        })?;
        v.as_float32 = f32;
        Ok(v)
    };
    let quirks = !for_tract::int64_sums(graph, &model.ir()?).is_empty();
    let first = if quirks { copies(false) } else { compare(original, minimized, graph, opts, tolerance) };
    match first {
        Err(Error::Tract { model, why }) if for_tract::has_non_f32_floats(graph) => copies(true).map_err(|e| match e {
            Error::Tract { why: second, .. } => {
                Error::Tract { model, why: format!("{why}\n  and as float32: {second}") }
            }
            e => e,
        }),
        other => other,
    }
}

/// One set of inputs to check on, by input name, and how their shapes were chosen.
struct InputSet {
    tensors: Vec<(String, Tensor)>,
    described: String,
    /// Some dynamic dimension was guessed, not given by the user.
    guessed: bool,
}

impl InputSet {
    /// `e` saying, when tract could not run a model, which inputs it was given.
    fn explain(&self, e: Error) -> Error {
        match e {
            Error::Tract { model, why } => Error::Tract { model, why: format!("{why}\n  on {}", self.described) },
            e => e,
        }
    }
}

/// Which inputs a run fed and how their shapes were chosen, for an error that says what to pass:
/// random values on dynamic dimensions are meaningless to some models (an audio length a frame
/// size must divide, a scalar sample rate).
fn describe_inputs(specs: &[InputSpec], set: &[(String, Tensor)], opts: &VerifyOptions) -> String {
    let one = |(name, t): &(String, Tensor)| {
        let spec = specs.iter().find(|s| &s.name == name);
        let how = if opts.input_shapes.contains_key(name) {
            "from --input-shape"
        } else if spec.is_some_and(|s| s.dims.iter().any(Option::is_none)) {
            "dynamic dimensions guessed: pass --input-shape NAME=D1,D2,... or --inputs FILE.npz"
        } else if t.rank() == 0 {
            "a random scalar: if it is a setting (a sample rate, a length), pass --inputs with its value"
        } else {
            "as declared"
        };
        format!("'{name}' {:?} {:?} ({how})", t.datum_type(), t.shape())
    };
    format!("inputs {}", set.iter().map(one).collect::<Vec<_>>().join(", "))
}

/// The input sets to check on, by input name: the user's first, when given, then random ones
/// on the shapes the options and [`DYNAMIC_SIZES`] give.
fn input_sets(graph: &GraphProto, opts: &VerifyOptions) -> Result<Vec<InputSet>> {
    let specs = input_specs(graph);
    for name in opts.input_shapes.keys() {
        if !specs.iter().any(|s| &s.name == name) {
            let known: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::Usage(format!("--input-shape names '{name}', but the model's inputs are {known:?}")));
        }
    }
    let user = crate::npy::read_inputs(&opts.inputs)?;
    if let Some(missing) = specs.iter().find(|s| !user.is_empty() && !user.contains_key(&s.name)) {
        let given: Vec<_> = user.keys().collect();
        return Err(Error::Usage(format!("--inputs gives {given:?} but not the model's input '{}'", missing.name)));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let offset = usize::from(!user.is_empty());
    (0..opts.runs.max(1) + offset)
        .map(|r| {
            let tensors = specs
                .iter()
                .map(|s| {
                    let t = if r < offset {
                        user[&s.name].clone()
                    } else {
                        let size = DYNAMIC_SIZES[(r - offset) % DYNAMIC_SIZES.len()];
                        let shape = match opts.input_shapes.get(&s.name) {
                            Some(shape) => shape.clone(),
                            None => s.dims.iter().map(|d| d.unwrap_or(size)).collect(),
                        };
                        random_tensor(&mut rng, s.elem, &shape)?
                    };
                    Ok((s.name.clone(), t))
                })
                .collect::<Result<Vec<_>>>()?;
            let guessed = r >= offset
                && specs.iter().any(|s| !opts.input_shapes.contains_key(&s.name) && s.dims.iter().any(Option::is_none));
            Ok(InputSet { described: describe_inputs(&specs, &tensors, opts), tensors, guessed })
        })
        .collect()
}

fn compare(
    original: &Path,
    minimized: &Path,
    graph: &GraphProto,
    opts: &VerifyOptions,
    tolerance: f64,
) -> Result<Verification> {
    let start = Instant::now();
    let load = |p: &Path| tract_onnx::onnx().model_for_path(p).map_err(tract_err(p));
    let (a, b) = (load(original)?, load(minimized)?);
    let mut worst: Vec<f64> = vec![];
    let mut shapes = vec![];
    let names: Vec<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let steps = quantization_steps(graph);
    let (mut skipped, mut refused) = (vec![], None);
    for (r, set) in input_sets(graph, opts)?.into_iter().enumerate() {
        // The original may not run at a guessed shape at all (a batch size baked into a reshape,
        // positions past a table): it defines no output there, so there is nothing to compare.
        let ya = match guarded(original, || run(&a, original, &set.tensors)) {
            Ok(ya) => ya,
            Err(e @ Error::Tract { .. }) if set.guessed => {
                skipped.push(set.described.clone());
                refused.get_or_insert(set.explain(e));
                continue;
            }
            Err(e) => return Err(set.explain(e)),
        };
        let yb = run(&b, minimized, &set.tensors).map_err(|e| set.explain(e))?;
        worst.resize(ya.len(), 0.0);
        for (i, (x, y)) in ya.iter().zip(&yb).enumerate() {
            let output = names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
            let (diff, scale) = deviation(x, y).map_err(|why| Error::Tract {
                model: minimized.display().to_string(),
                why: format!("output '{output}': {why}"),
            })?;
            let dev = diff / scale;
            if dev.is_nan() || dev > tolerance && diff > steps.get(i).copied().unwrap_or(0.0) {
                return Err(Error::Diverged { output, deviation: dev, tolerance, run: r });
            }
            worst[i] = worst[i].max(dev);
        }
        shapes.push(set.tensors.iter().map(|(_, t)| t.shape().to_vec()).collect());
    }
    if let (true, Some(e)) = (shapes.is_empty(), refused) {
        return Err(e);
    }
    let outputs = worst.into_iter().enumerate().map(|(i, d)| OutputCheck {
        output: names.get(i).cloned().unwrap_or_default(),
        max_relative_deviation: d,
        quantization_step: steps.get(i).copied().filter(|&q| q > 0.0),
    });
    let mut v = verification(shapes, tolerance, outputs, start, "whole", None);
    v.skipped = skipped;
    Ok(v)
}

/// The report of a check that passed: each output's largest deviation over the input sets.
fn verification(
    shapes: Vec<Vec<Vec<usize>>>,
    tolerance: f64,
    outputs: impl Iterator<Item = OutputCheck>,
    start: Instant,
    mode: &str,
    pieces: Option<usize>,
) -> Verification {
    Verification {
        runs: shapes.len(),
        input_shapes: shapes,
        tolerance,
        outputs: outputs.collect(),
        seconds: start.elapsed().as_secs_f64(),
        as_float32: false,
        skipped: vec![],
        mode: mode.into(),
        pieces,
    }
}

/// One step of the quantizer each graph output is read from (through operators that average or
/// move values, never amplify them), or 0.
///
/// A quantized model's float semantics round at every activation quantizer, and a minimized
/// layer sums its kept channels in another order: a value next to a rounding boundary can land
/// on its other side, one step away, and move what follows by about as much (ONNX Runtime's
/// integer kernels sum exactly and never see it). Such an output may differ by one step.
fn quantization_steps(graph: &GraphProto) -> Vec<f64> {
    const AVERAGING: &[&str] = &[
        "ReduceMean",
        "GlobalAveragePool",
        "AveragePool",
        "MaxPool",
        "GlobalMaxPool",
        "Reshape",
        "Flatten",
        "Transpose",
        "Identity",
        "Squeeze",
        "Unsqueeze",
    ];
    let producer: HashMap<&str, &crate::onnx::proto::NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let stored: HashMap<&str, &crate::onnx::proto::TensorProto> =
        graph.initializer.iter().map(|t| (t.name(), t)).collect();
    let step = |output: &str| {
        let mut at = output;
        for _ in 0..graph.node.len() {
            let node = producer.get(at)?;
            match node.op_type() {
                "DequantizeLinear" if !stored.contains_key(node.input.first()?.as_str()) => {
                    let scale = crate::onnx::tensor::Values::of(stored.get(node.input.get(1)?.as_str())?).ok()?;
                    return (scale.len() == 1).then(|| scale.get(0).abs());
                }
                op if AVERAGING.contains(&op) => at = node.input.first()?,
                _ => return None,
            }
        }
        None
    };
    graph.output.iter().map(|o| step(o.name()).unwrap_or(0.0)).collect()
}

/// max |x - y| and max |x|, the scale floored so all-zero outputs compare absolutely.
fn deviation(x: &Tensor, y: &Tensor) -> std::result::Result<(f64, f64), String> {
    if x.shape() != y.shape() {
        return Err(format!("shape {:?} became {:?}", x.shape(), y.shape()));
    }
    let cast = |t: &Tensor| t.cast_to::<f64>().map(|c| c.into_owned()).map_err(|e| e.to_string());
    let (x, y) = (cast(x)?, cast(y)?);
    let (x, y) = (
        x.to_plain_array_view::<f64>().map_err(|e| e.to_string())?,
        y.to_plain_array_view::<f64>().map_err(|e| e.to_string())?,
    );
    let mut scale: f64 = 0.0;
    let mut diff: f64 = 0.0;
    for (a, b) in x.iter().zip(y.iter()) {
        scale = scale.max(a.abs());
        diff = if a == b { diff } else { diff.max((a - b).abs()) };
        if a.is_nan() != b.is_nan() {
            diff = f64::INFINITY;
        }
    }
    Ok((diff, scale.max(f32::EPSILON as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::{f32_tensor, node};
    use crate::onnx::proto::ValueInfoProto;

    /// An output averaged from a dequantized activation may move by one step of its quantizer;
    /// one computed from it by a layer (which can amplify a step) may not.
    #[test]
    fn outputs_read_from_a_quantizer_allow_one_of_its_steps() {
        let output = |name: &str| ValueInfoProto { name: Some(name.into()), ..Default::default() };
        let g = GraphProto {
            node: vec![
                node("QuantizeLinear", "q", &["x", "s"], &["xq"], vec![]),
                node("DequantizeLinear", "dq", &["xq", "s"], &["xd"], vec![]),
                node("ReduceMean", "mean", &["xd"], &["pooled"], vec![]),
                node("MatMul", "fc", &["xd", "w"], &["y"], vec![]),
            ],
            initializer: vec![f32_tensor("s", &[], &[0.25]), f32_tensor("w", &[2, 2], &[1.0; 4])],
            output: vec![output("pooled"), output("y")],
            ..Default::default()
        };
        assert_eq!(quantization_steps(&g), vec![0.25, 0.0]);
    }
}
