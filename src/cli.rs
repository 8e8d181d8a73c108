//! The `onnx-minimize` command line: a thin layer over the library's `minimize_file`. It lives in
//! the library so that every front end ships the same command: the Rust binary, and the Python
//! wheel's console script, which has no binary of its own.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use crate::sparsify::{self, Amount, Calibration, Criterion, PruneOptions, Scope};
use crate::{minimize_file, ClnForm, Error, Options, Progress, VerifyMode, VerifyOptions};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
EXAMPLES:
  Minimize a pruned model, check it with tract, print what was removed:
    onnx-minimize pruned.onnx small.onnx

  The Squeeze-Release cycle around it (train in your framework between steps):
    onnx-minimize prune model.onnx pruned.onnx --sparsity 0.9 --criterion unit-coupled
    onnx-minimize pruned.onnx small.onnx
    onnx-minimize release small.onnx released.onnx --calibration threshold:1.5 --seed 1

  Models with dynamic dimensions other than a batch: give the shapes to verify with:
    onnx-minimize bert.onnx small.onnx --input-shape input_ids=1,128 --input-shape attention_mask=1,128

  See what would be removed, without writing anything, as JSON for a pipeline:
    onnx-minimize pruned.onnx --dry-run --report report.json

  Models larger than tract can hold (LLMs): verify piece by piece, a few GB of memory at most:
    onnx-minimize llama.onnx small.onnx --verify blockwise --block-mb 256

HOW IT WORKS:
  A channel (a unit of a Gemm/MatMul layer or a Conv filter, and every tensor that carries it:
  activations, residual streams, LayerNorms, concatenations) leaves
  the model when no output depends on it: its weights into needed units are zero, or it is the
  same constant for every input, in which case that constant is folded into the next layer's
  bias. Channels that meet an operator without a rule, a graph input or a graph output are kept,
  and the summary says which node kept them. The written model is run against the original with
  tract on fresh random inputs (whole, or piece by piece where it would not fit in memory); if any
  output deviates past --tolerance, nothing is written. Kept weights are copied from the
  memory-mapped input straight into the output, so memory stays far below the model's size.
  Quantized models (ONNX Runtime's QDQ format) stay quantized: weights are written back as the
  same integers with the scales of what they keep, and an output read from a quantizer may differ
  by one of its steps (float rounding in a re-ordered sum can cross a rounding boundary).

EXIT STATUS:
  0 success; 1 bad input or I/O error; 2 usage error; 3 verification found a difference
  (a bug: please report it); 4 tract could not run a model (try --input-shape or --no-verify).";

/// Make a pruned ONNX model physically smaller without changing what it computes.
///
/// Removes the channels that pruning made dead or constant (units of Gemm/MatMul layers,
/// convolution filters, LayerNorm stream channels), folds the constants into biases, and verifies
/// the result with tract before writing it.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "More with --help: examples, how it works, exit status, operators.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    minimize: MinimizeArgs,
}

/// The other rewrites of the Squeeze-Release cycle: prune, minimize (the default), release.
#[derive(Subcommand)]
enum Command {
    /// Zero the smallest-scoring weights of the linear layers (Gemm, MatMul, Conv) to an exact
    /// sparsity. Biases, norms and the output layer are left alone.
    Prune(PruneArgs),
    /// Turn the exact zeros inside the linear layers' weights into small calibrated noise, so a
    /// minimized model can train its full capacity again.
    Release(ReleaseArgs),
    /// Print, as JSON, the operator types minimization reads with a channel rule and those a
    /// rewrite can add: {"reads": [...], "emits": [...]} (for executors of minimized models).
    Operators,
}

#[derive(Args)]
struct Io {
    /// The model to rewrite.
    input: PathBuf,
    /// Where to write the result (atomically; external data as the input had it).
    output: PathBuf,
    /// Also touch the output layer (a linear layer whose result reaches a graph output directly).
    #[arg(long)]
    include_output_layer: bool,
    /// Write the report as JSON to this file ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// No summary.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct PruneArgs {
    #[command(flatten)]
    io: Io,
    /// Fraction of the prunable weights that are zero afterwards, existing zeros included.
    #[arg(long, value_name = "FRACTION", required_unless_present = "remove", conflicts_with = "remove", value_parser = number(sparsify::fraction))]
    sparsity: Option<f64>,
    /// Instead of --sparsity: the fraction of the weights not zero yet to zero now (one step of
    /// iterative pruning; 0.2 removes a fifth of what survives).
    #[arg(long, value_name = "FRACTION", value_parser = number(sparsify::fraction))]
    remove: Option<f64>,
    /// One threshold across all layers, or each layer to the sparsity on its own.
    #[arg(long, value_enum, default_value_t = Scope::Global)]
    scope: Scope,
    /// magnitude: |w|; unit-coupled: |w| times the geometric mean of its row's and column's
    /// mass, which gathers the zeros into whole units that minimization can remove;
    /// space-coupled: the same with the masses of whole channel spaces (a residual stream's
    /// channel across every block that writes or reads it), and a channel left without weights
    /// also loses its biases, norm scales and embedding entries, so that it can leave a
    /// LayerNorm stream (ConvNeXt, transformers); space-structured: whole channel spaces, the
    /// weakest (root mean square of their weights, relative to their layer's) first, structured
    /// pruning that minimization turns into smaller layers; space-uniform: the same share of
    /// every layer's spaces, each layer's weakest (torch-pruning's uniform ratio).
    #[arg(long, value_enum, default_value_t = Criterion::Magnitude)]
    criterion: Criterion,
    /// How strongly unit-coupled scores follow the units: |w| * (row mass * column mass)^P. 0.5 is the
    /// geometric mean; 1 or 2 prune whole weak units and input features first.
    #[arg(long, default_value_t = 0.5, value_name = "P", value_parser = number(sparsify::coupling))]
    coupling: f64,
}

#[derive(Args)]
struct ReleaseArgs {
    #[command(flatten)]
    io: Io,
    /// Noise for each zero: std:X is normal noise with X times the standard deviation of the
    /// tensor's non-zero weights; threshold:X is uniform in [1, X] times its smallest non-zero
    /// magnitude, with a random sign (above the last pruning threshold).
    #[arg(long, default_value = "threshold:1.5", value_name = "KIND:X")]
    calibration: Calibration,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum VerifyArg {
    Auto,
    Whole,
    Blockwise,
    None,
}

#[derive(Args)]
struct MinimizeArgs {
    /// The pruned model (.onnx; external data is read from beside it).
    #[arg(required = true)]
    input: Option<PathBuf>,
    /// Where to write the minimized model. Required unless --dry-run.
    output: Option<PathBuf>,
    /// Analyse and report only; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the report as JSON to this file ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// How tract checks the output: whole (both models at once: a few times their bytes of
    /// memory), blockwise (piece by piece: memory follows two pieces of --block-mb), auto (whole
    /// where it fits in the memory available), or none (nothing then proves the output right).
    #[arg(long, value_enum, default_value_t = VerifyArg::Auto, value_name = "HOW")]
    verify: VerifyArg,
    /// The same as --verify none.
    #[arg(long)]
    no_verify: bool,
    /// Megabytes of weights per piece in block-wise verification.
    #[arg(long, default_value_t = 256.0, value_name = "MB")]
    block_mb: f64,
    /// Largest accepted output deviation, relative to each output's largest magnitude.
    /// Default 1e-4, or 1e-2 for models with float16/bfloat16 weights.
    #[arg(long, value_name = "X")]
    tolerance: Option<f64>,
    /// Shape for an input during verification, as NAME=D1,D2,...; repeat per input.
    /// Dynamic dimensions are otherwise tried at 1, 3 and 2.
    #[arg(long, value_name = "NAME=DIMS", value_parser = parse_shape)]
    input_shape: Vec<(String, Vec<usize>)>,
    /// Inputs of your own to verify on (besides the random ones): FILE.npz holding one array
    /// per model input, or NAME=FILE.npy per input; repeatable.
    #[arg(long, value_name = "FILE")]
    inputs: Vec<crate::npy::InputFile>,
    /// Number of random input sets to verify on.
    #[arg(long, default_value_t = 3, value_name = "N")]
    runs: usize,
    /// Seed of the random verification inputs.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Write weights to OUTPUT.data (default: as the input stores them).
    #[arg(long, conflicts_with = "inline_data")]
    external_data: bool,
    /// Write weights inside the .onnx file (impossible above 2 GB).
    #[arg(long)]
    inline_data: bool,
    /// Drop graph-input features that no computation reads, through a Gather in front of the
    /// input's readers (the input keeps its shape; callers pass the same tensors).
    #[arg(long)]
    gather_inputs: bool,
    /// How a LayerNorm that loses channels is written: plain operators, or LayerNormalization
    /// over the kept channels concatenated with the removed constants.
    #[arg(long, value_enum, default_value_t = ClnForm::Ops, value_name = "FORM")]
    compensated_layernorm: ClnForm,
    /// No progress messages.
    #[arg(short, long)]
    quiet: bool,
}

fn number(check: fn(f64) -> Result<f64, String>) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s| s.parse::<f64>().map_err(|e| format!("{e}")).and_then(check)
}

fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s.split_once('=').ok_or("expected NAME=D1,D2,... such as input=1,784")?;
    let dims = dims
        .split(',')
        .map(|d| d.trim().parse::<usize>().map_err(|e| format!("bad dimension '{d}': {e}")))
        .collect::<Result<_, _>>()?;
    Ok((name.to_string(), dims))
}

/// Writes to standard output; a reader that stops early (`| head`) ends the output cleanly,
/// as ripgrep does, rather than with a panic.
fn print(text: &str) -> Result<(), Error> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::Write { path: PathBuf::from("<standard output>"), source: e })
        }
        _ => Ok(()),
    }
}

fn write_report(path: &PathBuf, report: &impl serde::Serialize) -> Result<(), Error> {
    let json = serde_json::to_string_pretty(report).expect("the report serializes");
    if path.as_os_str() == "-" {
        print(&json)
    } else {
        std::fs::write(path, json).map_err(|source| Error::Write { path: path.clone(), source })
    }
}

/// The human summary goes to standard output, unless the JSON report does: then to standard error, so that
/// `--report -` pipes clean JSON.
fn summary(report: &Option<PathBuf>, text: &str) -> Result<(), Error> {
    if report.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprintln!("{text}");
        Ok(())
    } else {
        print(text)
    }
}

fn sparsify(
    io: &Io,
    what: &str,
    rewrite: impl FnOnce(&mut crate::Model) -> Result<sparsify::SparsifyReport, Error>,
) -> Result<(), Error> {
    let report = sparsify::rewrite_file(&io.input, &io.output, rewrite)?;
    if !io.quiet {
        let mut text: Vec<String> = report
            .tensors
            .iter()
            .map(|t| {
                format!(
                    "{:<40} {:>10} weights, zeros {:>10} -> {:>10}",
                    t.tensor, t.elements, t.zeros_before, t.zeros_after
                )
            })
            .collect();
        text.push(format!("{what}: sparsity {:.4} -> {:.4}", report.sparsity_before, report.sparsity_after));
        if !report.silenced.is_empty() {
            let entries: usize = report.silenced.iter().map(|t| t.zeros_after - t.zeros_before).sum();
            let tensors = report.silenced.len();
            text.push(format!(
                "channels left without weights: {entries} bias, norm and embedding entries zeroed in {tensors} tensors"
            ));
        }
        summary(&io.report, &text.join("\n"))?;
    }
    match &io.report {
        Some(path) => write_report(path, &report),
        None => Ok(()),
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Some(Command::Prune(a)) => {
            let amount = match (a.sparsity, a.remove) {
                (Some(s), _) => Amount::Sparsity(s),
                (None, Some(f)) => Amount::Remaining(f),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let opts = PruneOptions {
                amount,
                scope: a.scope,
                criterion: a.criterion,
                coupling: a.coupling,
                include_output_layer: a.io.include_output_layer,
            };
            sparsify(&a.io, "pruned", |m| sparsify::prune(m, &opts))
        }
        Some(Command::Release(a)) => {
            let include = a.io.include_output_layer;
            sparsify(&a.io, "released", |m| sparsify::release(m, a.calibration, include, a.seed))
        }
        Some(Command::Operators) => {
            let lists = serde_json::json!({
                "reads": crate::supported_operators(),
                "emits": crate::emitted_operators(),
            });
            print(&lists.to_string())
        }
        None => {
            let report = cli.minimize.report.clone();
            let result = minimize(cli.minimize);
            // Pipelines read the report whatever happened: on failure it says why.
            if let (Err(e), Some(path)) = (&result, &report) {
                let failure = serde_json::json!({ "error": e.to_string(), "exit_code": e.exit_code() });
                write_report(path, &failure)?;
            }
            result
        }
    }
}

fn minimize(cli: MinimizeArgs) -> Result<(), Error> {
    if cli.output.is_none() && !cli.dry_run {
        return Err(Error::Usage("give an output path, or --dry-run to only report".into()));
    }
    let opts = Options {
        verify: (!cli.no_verify && !matches!(cli.verify, VerifyArg::None)).then(|| VerifyOptions {
            mode: match cli.verify {
                VerifyArg::Whole => VerifyMode::Whole,
                VerifyArg::Blockwise => VerifyMode::Blockwise,
                _ => VerifyMode::Auto,
            },
            block_bytes: Some(crate::verify::megabytes(cli.block_mb)),
            tolerance: cli.tolerance,
            input_shapes: cli.input_shape.iter().cloned().collect::<HashMap<_, _>>(),
            runs: cli.runs,
            seed: cli.seed,
            inputs: cli.inputs.clone(),
        }),
        external_data: match (cli.external_data, cli.inline_data) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        gather_inputs: cli.gather_inputs,
        compensated_layernorm: cli.compensated_layernorm,
    };
    let display = ProgressDisplay::new();
    let quiet = cli.quiet;
    let progress = |p: Progress| {
        if !quiet {
            display.show(p)
        }
    };
    let output = if cli.dry_run { None } else { cli.output.as_deref() };
    let input = cli.input.as_deref().expect("clap requires it without a subcommand");
    let report = minimize_file(input, output, &opts, &progress)?;
    if !quiet {
        summary(&cli.report, &report.to_text())?;
    }
    match &cli.report {
        Some(path) => write_report(path, &report),
        None => Ok(()),
    }
}

/// Stage lines on stderr, and for long stages a bar with bytes done and time left: redrawn in
/// place on a terminal, a line per tenth in a log.
struct ProgressDisplay {
    start: Instant,
    tty: bool,
    /// When the current stage began, and what was last drawn (time, tenths done).
    stage: std::cell::Cell<(Instant, Instant, u64)>,
}

impl ProgressDisplay {
    fn new() -> Self {
        let now = Instant::now();
        ProgressDisplay { start: now, tty: std::io::stderr().is_terminal(), stage: std::cell::Cell::new((now, now, 0)) }
    }

    fn show(&self, p: Progress) {
        let now = Instant::now();
        let at = now.duration_since(self.start).as_secs_f64();
        match p {
            Progress::Stage(msg) => {
                self.stage.set((now, now, 0));
                eprintln!("[{at:>6.2}s] {msg}");
            }
            Progress::Bytes { done, total, items, of, unit } => {
                let (began, drawn, tenths) = self.stage.get();
                let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
                let finished = done >= total;
                let tenth = (fraction * 10.0) as u64;
                let due = if self.tty { now.duration_since(drawn).as_millis() >= 100 } else { tenth > tenths };
                if !(due || finished) {
                    return;
                }
                self.stage.set((began, now, tenth));
                let spent = now.duration_since(began).as_secs_f64();
                let left = if fraction > 0.0 { (spent * (1.0 - fraction) / fraction).max(0.0) } else { 0.0 };
                let bar: String = (0..30).map(|i| if (i as f64) < fraction * 30.0 { '#' } else { '.' }).collect();
                let gb = |b: u64| b as f64 / 1e9;
                let line = format!(
                    "[{at:>6.2}s]   [{bar}] {items}/{of} {unit}, {:.2}/{:.2} GB, {left:.0} s left",
                    gb(done),
                    gb(total)
                );
                match (self.tty, finished) {
                    (true, false) => eprint!("\r{line}"),
                    (true, true) => eprintln!("\r{line}"),
                    (false, _) => eprintln!("{line}"),
                }
            }
        }
    }
}

/// Runs the command line on `args` (the program name first) and returns the exit status. Never
/// exits the process itself, so a host (the Python console script) can flush and exit its way.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> i32 {
    let ops = crate::supported_operators().join(", ");
    let command = Cli::command()
        .after_long_help(format!("{AFTER_HELP}\n\nOPERATORS WITH CHANNEL RULES (all others are kept whole):\n  {ops}"));
    let cli = match command.try_get_matches_from(args).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version land here too, with status 0.
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
