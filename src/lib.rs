//! onnx-minimize: exact structural minimization of pruned ONNX models.
//!
//! Pruning zeroes weights but leaves tensors their dense shapes. This crate finds the channels
//! that zero weights make dead (nothing needed reads them) or constant (the same value for every
//! input), removes them, folds the constants into the next layer's bias, and checks with tract
//! that the smaller model computes what the original did.
//!
//! The pipeline, one module each: [`onnx`] reads and writes models losslessly; `ir` indexes the
//! graph; `ops` says what each operator means for channels; `analysis` decides what leaves, in
//! small passes; `rewrite` applies it; [`verify`] checks it; [`report`] tells what happened.
//! The engine modules are private: the API is [`minimize_file`], [`minimize`], [`Model`],
//! [`Options`], [`Report`], the cycle's [`sparsify`] rewrites, and the command line itself
//! ([`cli::main`], for front ends that ship the command: the binary and the Python wheel).
//!
//! ```no_run
//! use onnx_minimize::{minimize_file, Options};
//! let report = minimize_file("pruned.onnx".as_ref(), Some("small.onnx".as_ref()), &Options::default(), &|_| {})?;
//! println!("{} -> {} parameters", report.before.params, report.after.params);
//! # Ok::<(), onnx_minimize::Error>(())
//! ```

mod analysis;
pub mod cli;
pub mod error;
mod ir;
pub mod npy;
pub mod onnx;
mod ops;
pub mod report;
mod rewrite;
pub mod sparsify;
pub mod verify;

use std::path::Path;
use std::time::Instant;

use analysis::{Additions, Facts, Graph, InputPolicy};
pub use error::{Error, Result};
pub use onnx::io::Model;
pub use ops::ClnForm;
pub use report::Report;
use report::{Removals, Size};
pub use verify::{VerifyMode, VerifyOptions};

/// What a long run reports as it goes, for a progress display.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A stage begins.
    Stage(&'a str),
    /// The current stage has handled `done` of `total` bytes, in `items` of `of` `unit`s
    /// (tensors written, pieces verified).
    Bytes { done: u64, total: u64, items: usize, of: usize, unit: &'static str },
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `None` skips verification.
    pub verify: Option<VerifyOptions>,
    /// Write weights to `<output>.data`; by default, as the input did.
    pub external_data: Option<bool>,
    /// Drop graph-input features that nothing reads, with a Gather in front of their readers.
    /// The input keeps its declared shape.
    pub gather_inputs: bool,
    /// How LayerNorms that lose channels are written out.
    pub compensated_layernorm: ClnForm,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verify: Some(VerifyOptions::default()),
            external_data: None,
            gather_inputs: false,
            compensated_layernorm: ClnForm::Ops,
        }
    }
}

/// Minimizes a loaded model in place, and says what left and what could not.
pub fn minimize(model: &mut Model, opts: &Options) -> Result<Removals> {
    let (removals, _) = minimize_deferred(model, opts, &|_| {})?;
    model.materialize();
    Ok(removals)
}

/// [`minimize`], leaving sliced weights to be copied when the model is written; also says which
/// entries of each value the minimized model keeps.
///
/// Sizes computed from declared dimensions (`onnx/fold.rs`) are folded into constants only when
/// that lets more channels go: a dimension read back follows a new size by itself, while a
/// constant needs a rule to rewrite it, so neither form is better everywhere. The graph is
/// planned both ways (its weights are shared, not copied); the fold is kept only where its plan
/// removes more parameters, so a model nothing more can leave stays as it is (and a second
/// pass changes nothing).
///
/// A plan that would add parameters on the whole (a padded Conv's border correction costing more
/// than the few channels it frees in a tiny model) is planned again without border corrections,
/// and if the written graph would still hold more weights (bytes of float tensors and of the
/// integers of quantized ones) than the original, nothing changes: a minimized model never has
/// more weights. Shape constants do not count: a tiny attention block's shared targets get
/// private copies that can outnumber what left.
fn minimize_deferred(
    model: &mut Model,
    opts: &Options,
    progress: &dyn Fn(Progress),
) -> Result<(Removals, verify::ChannelMap)> {
    let original = model.graph().clone();
    if let Some(done) = minimize_with(model, opts, progress, original.clone(), true)? {
        return Ok(done);
    }
    // A tied table would be stored twice (its two sides kept different slices): plan again with
    // the table read whole through its `Transpose`, as the export wrote it.
    *model.graph_mut() = original.clone();
    Ok(minimize_with(model, opts, &|_| {}, original, false)?.expect("nothing tied, nothing to retie"))
}

/// [`minimize_deferred`], folding tied tables (`onnx/fold.rs`) or not; `None` where the rewrite
/// cannot write a tied table back once.
fn minimize_with(
    model: &mut Model,
    opts: &Options,
    progress: &dyn Fn(Progress),
    original: onnx::proto::GraphProto,
    tie: bool,
) -> Result<Option<(Removals, verify::ChannelMap)>> {
    let before = weight_bytes(&original);
    let ties = model.fold_constants(tie);
    let dequantized = onnx::quant::dequantize(model.graph_mut());
    // Nodes added so that constants can leave (a border correction, a bias Add after a MatMul)
    // are float: in a quantized model they cost four bytes per element where the channel they
    // free saved one, and they break the `DequantizeLinear -> layer -> QuantizeLinear` pattern
    // runtimes fuse into integer kernels. There, such constants stay.
    let quantized = !dequantized.is_empty();
    let mut ir = model.ir()?;
    let (mut plan, growth) = plan_of(model.graph(), &ir, opts, quantized, progress)?;
    if let Some(folded) = onnx::fold::sizes(model.graph(), &ir) {
        let folded_ir = model.ir_of(&folded)?;
        let (folded_plan, folded_growth) = plan_of(&folded, &folded_ir, opts, quantized, &|_| {})?;
        if folded_growth < growth {
            (plan, ir) = (folded_plan, folded_ir);
            *model.graph_mut() = folded;
        }
    }
    let mut applied = rewrite::apply(model.graph_mut(), &ir, plan.edits);
    if !onnx::fold::retie(model.graph_mut(), &mut applied, &ties) {
        return Ok(None);
    }
    plan.removals.stored_float = onnx::quant::requantize(model.graph_mut(), &mut applied, &dequantized);
    if weight_bytes(model.graph()) > before {
        *model.graph_mut() = original;
        plan.channels.clear();
        plan.removals.stored_float.clear();
        for l in &mut plan.removals.layers {
            (l.inputs_after, l.outputs_after, l.removed_constant, l.removed_dead) =
                (l.inputs_before, l.outputs_before, 0, 0);
        }
    } else {
        model.defer(applied.pending);
    }
    Ok(Some((plan.removals, plan.channels)))
}

/// The plan for one graph, and the parameters it adds (negative: removes): with border
/// corrections where they pay, and in a `quantized` graph without any node added for constants.
fn plan_of(
    graph: &onnx::proto::GraphProto,
    ir: &ir::Ir,
    opts: &Options,
    quantized: bool,
    progress: &dyn Fn(Progress),
) -> Result<(analysis::plan::Plan, i64)> {
    if quantized {
        return plan_with(graph, ir, opts, progress, Additions { corrections: false, biases: false });
    }
    let (plan, growth) = plan_with(graph, ir, opts, progress, Additions { corrections: true, biases: true })?;
    if growth <= 0 {
        return Ok((plan, growth));
    }
    let (without, less) = plan_with(graph, ir, opts, &|_| {}, Additions { corrections: false, biases: true })?;
    Ok(if less < growth { (without, less) } else { (plan, growth) })
}

/// [`plan_of`], with the additions given.
fn plan_with(
    graph: &onnx::proto::GraphProto,
    ir: &ir::Ir,
    opts: &Options,
    progress: &dyn Fn(Progress),
    additions: Additions,
) -> Result<(analysis::plan::Plan, i64)> {
    let facts = Facts::of(Graph::new(graph, ir), progress, additions);
    let plan =
        |policy| analysis::plan::plan(&facts, &analysis::decide::decide(&facts, policy), opts.compensated_layernorm);
    let mut plan_ = plan(if opts.gather_inputs { InputPolicy::Gather } else { InputPolicy::Keep })?;
    if !plan_.removals.gathered_inputs.is_empty() {
        // A Gather stores one index per kept feature: when few features go, reading the input
        // whole is smaller. Only the decision and the plan depend on it.
        let whole = plan(InputPolicy::Keep)?;
        if rewrite::param_growth(&whole.edits, graph, ir) <= rewrite::param_growth(&plan_.edits, graph, ir) {
            plan_ = whole;
        }
    }
    let growth = rewrite::param_growth(&plan_.edits, graph, ir);
    Ok((plan_, growth))
}

/// A committed fixture, minimized without verification, its sliced weights still pending.
#[cfg(test)]
pub(crate) fn minimized_fixture(name: &str) -> (std::path::PathBuf, Model, verify::ChannelMap) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    let mut model = Model::load(&src).expect("a committed fixture");
    let opts = Options { verify: None, ..Default::default() };
    let (_, channels) = minimize_deferred(&mut model, &opts, &|_| {}).expect("fixtures minimize");
    (src, model, channels)
}

/// Every operator type with a channel rule (all others keep their tensors whole).
pub fn supported_operators() -> Vec<&'static str> {
    ops::supported()
}

/// Every operator type a minimization can add to a model.
pub fn emitted_operators() -> Vec<&'static str> {
    ops::emitted()
}

/// Bytes of the weights stored in a graph: float tensors (weights, biases, norms) and the
/// integers that a `DequantizeLinear` reads (quantized weights).
fn weight_bytes(g: &onnx::proto::GraphProto) -> u64 {
    let quantized: std::collections::HashSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type() == "DequantizeLinear")
        .filter_map(|n| n.input.first().map(String::as_str))
        .collect();
    let size = |t: &onnx::proto::TensorProto| match onnx::tensor::FloatType::from_onnx(t.data_type()) {
        Some(f) => f.size() as u64,
        None if quantized.contains(t.name()) => onnx::quant::int_size(t.data_type()).unwrap_or(0),
        None => 0,
    };
    tensors(g).map(|t| onnx::tensor::numel(&t.dims).unwrap_or(0).saturating_mul(size(t))).fold(0, u64::saturating_add)
}

/// Parameters (elements of every stored tensor) of a model.
pub fn param_count(model: &Model) -> u64 {
    tensors(model.graph()).map(|t| onnx::tensor::numel(&t.dims).unwrap_or(0)).fold(0, u64::saturating_add)
}

/// The tensors a graph stores, initializers and `Constant` nodes alike.
fn tensors(g: &onnx::proto::GraphProto) -> impl Iterator<Item = &onnx::proto::TensorProto> {
    let constants = g
        .node
        .iter()
        .filter(|n| n.op_type() == "Constant")
        .flat_map(|n| n.attribute.iter().filter_map(|a| a.t.as_ref()));
    g.initializer.iter().chain(constants)
}

/// Refuses to overwrite the input with the output.
pub(crate) fn check_paths(input: &Path, output: &Path) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    if output == input || canonical(output).is_some_and(|o| Some(o) == canonical(input)) {
        return Err(Error::Usage(format!("the output {} is the input: choose another output path", output.display())));
    }
    Ok(())
}

/// Reads `input`, minimizes it, verifies it and writes it to `output` (none: a dry run).
/// Nothing is written unless verification passes (or is turned off).
pub fn minimize_file(
    input: &Path,
    output: Option<&Path>,
    opts: &Options,
    progress: &dyn Fn(Progress),
) -> Result<Report> {
    let start = Instant::now();
    if let Some(out) = output {
        check_paths(input, out)?;
    }
    progress(Progress::Stage(&format!("reading {}", input.display())));
    let mut model = Model::load(input)?;
    let before = Size { params: param_count(&model), bytes: model.disk_bytes() };
    progress(Progress::Stage("analysing channels"));
    let t = Instant::now();
    let (removals, channels) = minimize_deferred(&mut model, opts, progress)?;
    let seconds_analysis = t.elapsed().as_secs_f64();
    let mut after = Size { params: param_count(&model), bytes: 0 };
    let mut verification = None;
    // A dry run still writes, to a private folder, when it verifies: tract reads files.
    let staging;
    let target = match output {
        Some(out) => Some(out.to_path_buf()),
        None if opts.verify.is_some() => {
            staging = tempfile::tempdir().map_err(|source| Error::Write { path: std::env::temp_dir(), source })?;
            Some(staging.path().join("minimized.onnx"))
        }
        None => None,
    };
    match &target {
        None => after.bytes = model.encoded_len() as u64,
        Some(out) => {
            let external = opts.external_data.unwrap_or(model.had_external_data);
            progress(Progress::Stage(&format!("writing {}", out.display())));
            onnx::io::write_atomically(&model, out, external, &mut |p| progress(p), |staged| {
                after.bytes = onnx::io::file_bytes(staged);
                if let Some(v) = &opts.verify {
                    progress(Progress::Stage("verifying with tract"));
                    let check = || verify::verify(input, staged, &model, v, &channels, progress);
                    verification = Some(verify::guarded(input, check)?);
                }
                Ok(())
            })?;
        }
    }
    Ok(Report {
        input: input.display().to_string(),
        output: output.map(|o| o.display().to_string()),
        removals,
        before,
        after,
        verification,
        seconds_analysis,
        seconds_total: start.elapsed().as_secs_f64(),
    })
}
