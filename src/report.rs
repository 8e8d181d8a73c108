//! What a run did, for people (a table) and pipelines (`--report report.json`).

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub node: String,
    pub op: String,
    pub inputs_before: usize,
    pub inputs_after: usize,
    pub outputs_before: usize,
    pub outputs_after: usize,
    /// Output channels that left because they were constant (folded into the next layer).
    pub removed_constant: usize,
    /// Output channels that left because nothing needed reads them.
    pub removed_dead: usize,
}

/// A channel space that holds removable channels but could not shrink.
#[derive(Debug, Clone, Serialize)]
pub struct Blocked {
    /// The tensors of the space.
    pub values: Vec<String>,
    pub width: usize,
    /// Channels that no computation needs: they would have left but for `reasons`.
    pub removable: usize,
    /// Which graph input, output or node kept them.
    pub reasons: Vec<Reason>,
}

/// Why something was kept or not followed: a stable code for pipelines, the node it names (if
/// any) and a message for people.
#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    pub code: String,
    pub node: Option<String>,
    pub message: String,
}

/// What minimization removed, and what it could not.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Removals {
    pub layers: Vec<LayerReport>,
    pub blocked: Vec<Blocked>,
    /// Nodes without a channel rule (or whose operands it does not cover), with the reason.
    pub opaque: Vec<Reason>,
    pub gathered_inputs: Vec<GatheredInput>,
    /// Quantized weights the output stores as float: their new values (a bias that absorbed
    /// removed channels' constants) have no exact integer form at the original scales.
    pub stored_float: Vec<String>,
}

/// A graph input whose unused features a Gather now drops (`--gather-inputs`).
#[derive(Debug, Clone, Serialize)]
pub struct GatheredInput {
    pub input: String,
    pub features: usize,
    pub kept: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Size {
    /// Elements of all initializers and Constant-node tensors.
    pub params: u64,
    /// Bytes of the model file plus its external data.
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputCheck {
    pub output: String,
    /// Largest |original - minimized| over all runs, divided by the largest |original|.
    pub max_relative_deviation: f64,
    /// For an output read from an activation quantizer: one of its steps, the absolute deviation
    /// accepted besides the tolerance (float rounding can move a quantized value by one step).
    pub quantization_step: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub runs: usize,
    pub input_shapes: Vec<Vec<Vec<usize>>>,
    pub tolerance: f64,
    pub outputs: Vec<OutputCheck>,
    pub seconds: f64,
    /// tract could not run the model in its own float types, so both were compared as float32.
    pub as_float32: bool,
    /// Input sets with guessed dynamic sizes that the *original* model cannot run on (a batch
    /// size baked into a reshape, positions past a table), as tried: nothing to compare there.
    pub skipped: Vec<String>,
    /// "whole", or "blockwise" (piece by piece, `pieces` of them).
    pub mode: String,
    pub pieces: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub input: String,
    pub output: Option<String>,
    #[serde(flatten)]
    pub removals: Removals,
    pub before: Size,
    pub after: Size,
    pub verification: Option<Verification>,
    pub seconds_analysis: f64,
    pub seconds_total: f64,
}

impl Report {
    /// A terminal summary: one line per layer, then sizes, blocks and the check.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<28} {:<7} {:>15} {:>15} {:>9} {:>9}",
            "layer", "op", "inputs", "outputs", "constant", "dead"
        );
        for l in &self.removals.layers {
            let name = if l.node.len() > 28 { format!("…{}", &l.node[l.node.len() - 27..]) } else { l.node.clone() };
            let _ = writeln!(
                s,
                "{:<28} {:<7} {:>15} {:>15} {:>9} {:>9}",
                name,
                l.op,
                format!("{} -> {}", l.inputs_before, l.inputs_after),
                format!("{} -> {}", l.outputs_before, l.outputs_after),
                l.removed_constant,
                l.removed_dead
            );
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let _ = writeln!(
            s,
            "parameters {} -> {} ({:.2}x smaller), bytes {} -> {} ({:.2}x smaller)",
            self.before.params,
            self.after.params,
            ratio(self.before.params, self.after.params),
            self.before.bytes,
            self.after.bytes,
            ratio(self.before.bytes, self.after.bytes)
        );
        if self.after.params > self.before.params {
            let _ = writeln!(s, "note: the model grew: weights shared by several layers keep different slices per layer, and each layer got its own copy");
        }
        for i in &self.removals.gathered_inputs {
            let _ = writeln!(
                s,
                "input '{}' is read through a Gather of the {} of its {} features in use",
                i.input, i.kept, i.features
            );
        }
        if !self.removals.stored_float.is_empty() {
            let _ = writeln!(
                s,
                "note: {} quantized weight(s) stored as float, since their new values (constants folded in) have no exact integer form at the original scales: {}",
                self.removals.stored_float.len(),
                self.removals.stored_float.join(", ")
            );
        }
        for b in &self.removals.blocked {
            let mut values = b.values.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            if b.values.len() > 3 {
                values.push_str(", …");
            }
            let _ = writeln!(
                s,
                "kept {} of {} removable channels of [{}] because of: {}",
                b.removable,
                b.width,
                values,
                b.reasons.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("; ")
            );
        }
        let opaque = &self.removals.opaque;
        for o in opaque.iter().take(10) {
            let _ = writeln!(s, "opaque {}", o.message);
        }
        if opaque.len() > 10 {
            let _ = writeln!(s, "… and {} more opaque nodes (see --report)", opaque.len() - 10);
        }
        match &self.verification {
            Some(v) => {
                let worst = v.outputs.iter().map(|o| o.max_relative_deviation).fold(0.0, f64::max);
                let how =
                    if v.as_float32 { " (as float32 copies: tract cannot run the model's own types)" } else { "" };
                let whole = match v.pieces {
                    Some(n) => format!(", block-wise in {n} pieces"),
                    None => String::new(),
                };
                let step = match v.outputs.iter().filter_map(|o| o.quantization_step).reduce(f64::max) {
                    Some(q) => format!(", or one quantization step of the output, {q:.2e}"),
                    None => String::new(),
                };
                let _ = writeln!(
                    s,
                    "verified with tract on {} input sets{whole}{how}: max relative deviation {:.2e} (tolerance {:.0e}{step})",
                    v.runs, worst, v.tolerance
                );
                for skipped in &v.skipped {
                    let _ = writeln!(s, "  not compared: the original model cannot run on {skipped}");
                }
            }
            None => {
                let _ = writeln!(s, "not verified (--no-verify)");
            }
        }
        let _ = write!(s, "took {:.2}s (analysis and rewrite {:.2}s)", self.seconds_total, self.seconds_analysis);
        s
    }
}
