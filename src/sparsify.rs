//! Prune and release: the two rewrites of the Squeeze-Release cycle around minimization.
//!
//! - **Prune** zeroes the smallest-scoring weights of the linear layers (Gemm, MatMul, Conv) to
//!   an exact sparsity, globally or per tensor, by plain magnitude or by a *unit-coupled* score
//!   `|w_ij| * (row mass_j * column mass_i)^p` that favours weights of units that are weak as a
//!   whole, so zeros gather into whole dead units that minimization can then remove. The coupling
//!   `p` (0.5 by default) sets how hard: 0 is plain magnitude, large values prune whole units.
//! - **Release** turns the exact zeros left inside (minimized) weight tensors into small noise,
//!   so the capacity trains again, calibrated per tensor against its surviving weights: either a
//!   fraction of their standard deviation, or a multiple of their smallest magnitude (the last
//!   pruning threshold), so that released weights are not pruned straight back.
//!
//! Biases, norms and the output layer (a linear layer whose output reaches a graph output
//! without another linear layer) are never touched, with one exception: the *space-coupled*
//! criterion scores a weight by the masses of whole channel spaces (every layer that writes or
//! reads the channel, across residual blocks), and a space it leaves without any non-zero
//! weight loses its biases, norm scales and embedding entries too, so that the channel is the
//! constant 0 that minimization removes. Both rewrites are deterministic under a seed.

use std::collections::HashMap;

use petgraph::unionfind::UnionFind;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use crate::analysis::{self, Graph, NodeId, ValueId};
use crate::error::Result;
use crate::ir::{ConstRef, Ir};
use crate::onnx::proto::GraphProto;
use crate::onnx::tensor::{encode, with_data, FloatType, Values};
use crate::ops::{self, Role};
use crate::Model;

/// `--criterion` (the derived names are the CLI's and the Python package's spellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Criterion {
    /// |w|.
    Magnitude,
    /// |w| times the geometric mean of its row's and column's mass (each relative to the
    /// tensor's mean), which favours whole-unit death.
    UnitCoupled,
    /// As unit-coupled, with a row's and a column's mass taken over the whole channel space
    /// they belong to: every row that writes the channel and every column that reads it, in
    /// every layer (a residual stream's channel across all its blocks, a hidden unit's row with
    /// its reader's column, a head dimension's query and key rows). A space left with no
    /// non-zero weight also loses its biases, norm scales and embedding entries, which a
    /// channel needs to be constant where LayerNorms, class tokens or position tables write it.
    SpaceCoupled,
    /// Whole channel spaces, weakest first by the root mean square of their weights (every row
    /// that writes the channel and every column that reads it, in every layer), relative to the
    /// other spaces of the layer that first writes them, so that every layer loses its weakest
    /// rather than one layer going whole: a weight goes
    /// with the weaker of its row's and its column's space, so a cut removes spaces whole (the
    /// last one reached may go in part) and minimization removes them; their biases, norm scales
    /// and embedding entries go too, as with space-coupled.
    SpaceStructured,
    /// As space-structured, ranked within each layer instead: every layer loses the same share
    /// of its spaces, its weakest by root mean square (torch-pruning's uniform ratio), so a
    /// residual stream, whose channel costs a row or column in every block, shrinks as fast as
    /// the hidden layers.
    SpaceUniform,
}

/// `--scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Scope {
    /// One threshold across all prunable tensors.
    Global,
    /// Each tensor pruned to the sparsity on its own.
    PerTensor,
}

/// Checks an amount to prune (the command line checks its flags with it too).
pub fn fraction(x: f64) -> std::result::Result<f64, String> {
    (0.0..=1.0).contains(&x).then_some(x).ok_or_else(|| format!("{x} is not a fraction between 0 and 1"))
}

/// Checks the unit-coupled score's exponent.
pub fn coupling(x: f64) -> std::result::Result<f64, String> {
    (0.0..=16.0).contains(&x).then_some(x).ok_or_else(|| format!("the coupling {x} is not between 0 and 16"))
}

/// How much to prune, as a fraction of the prunable weights (of each scope group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// This fraction is zero afterwards, existing zeros included.
    Sparsity(f64),
    /// This fraction of the weights that are not zero yet becomes zero: one step of iterative pruning.
    Remaining(f64),
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub amount: Amount,
    pub scope: Scope,
    pub criterion: Criterion,
    /// The exponent `p` of the unit-coupled score.
    pub coupling: f64,
    pub include_output_layer: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Calibration {
    /// Normal noise with this fraction of the standard deviation of the tensor's non-zeros.
    Std(f64),
    /// Uniform noise of magnitude between 1x and this multiple of the tensor's smallest
    /// non-zero magnitude, with a random sign: above the last pruning threshold.
    Threshold(f64),
}

impl std::str::FromStr for Calibration {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, x) = s.split_once(':').ok_or("expected std:X or threshold:X")?;
        let x: f64 = x.parse().map_err(|e| format!("bad number '{x}': {e}"))?;
        match kind {
            "std" if x > 0.0 => Ok(Calibration::Std(x)),
            "threshold" if x >= 1.0 => Ok(Calibration::Threshold(x)),
            _ => Err("expected std:X (X > 0) or threshold:X (X >= 1)".into()),
        }
    }
}

/// What happened to one weight tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorChange {
    pub tensor: String,
    pub elements: usize,
    pub zeros_before: usize,
    pub zeros_after: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SparsifyReport {
    pub tensors: Vec<TensorChange>,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    /// Biases, norm scales and embedding entries zeroed with the channel spaces that the
    /// space-coupled criterion left without weights (not counted in the sparsity).
    pub silenced: Vec<TensorChange>,
}

/// A prunable weight: where it is stored and its `[rows, cols]` view (rows = outputs).
struct Prunable {
    node: usize,
    cref: ConstRef,
    name: String,
    rows: usize,
    cols: usize,
    /// Stored `[outputs, inputs, ...]` rather than `[inputs, outputs, ...]`.
    output_major: bool,
    spatial: usize,
}

fn is_linear(role: &Role) -> bool {
    matches!(role, Role::Op(op) if op.linear().is_some())
}

/// Whether a graph output is reachable from node `n` without passing another linear layer.
fn is_output_layer(g: &GraphProto, ir: &Ir, roles: &[Role], n: usize) -> bool {
    let mut stack = vec![n];
    let mut seen = vec![false; g.node.len()];
    while let Some(m) = stack.pop() {
        for o in &g.node[m].output {
            if ir.outputs.contains(o) {
                return true;
            }
            for &(r, _) in ir.readers(o) {
                if !seen[r] && !is_linear(&roles[r]) {
                    seen[r] = true;
                    stack.push(r);
                }
            }
        }
    }
    false
}

fn prunables(model: &Model, include_output_layer: bool) -> Result<Vec<Prunable>> {
    let ir = model.ir()?;
    let g = model.graph();
    let roles = ops::roles(g, &ir);
    let mut out: Vec<Prunable> = vec![];
    for (n, role) in roles.iter().enumerate() {
        let Some(l) = (match role {
            Role::Op(op) => op.linear(),
            _ => None,
        }) else {
            continue;
        };
        if !include_output_layer && is_output_layer(g, &ir, &roles, n) {
            continue;
        }
        let w = l.weight();
        let cref = ir.const_ref(&g.node[n].input[w.slot]).expect("a linear weight is a constant");
        if out.iter().any(|p| p.cref == cref) {
            continue;
        }
        let name = w.tensor.name().to_string();
        let cols = w.k / w.groups; // a grouped weight stores its group's inputs only
        out.push(Prunable { node: n, cref, name, rows: w.n, cols, output_major: w.transposed, spatial: w.spatial });
    }
    Ok(out)
}

fn read(model: &Model, p: &Prunable) -> Result<(Vec<f64>, FloatType)> {
    let v = Values::of(p.cref.tensor(model.graph()))?;
    Ok(((0..v.len()).map(|i| v.get(i)).collect(), v.dtype))
}

/// Where a weight element sits: `(row, column)` of its `[outputs, inputs]` view.
fn position(p: &Prunable, i: usize) -> (usize, usize) {
    let (rows, cols, s) = (p.rows, p.cols, p.spatial);
    if p.output_major {
        (i / (cols * s), (i / s) % cols)
    } else {
        ((i / s) % rows, i / (rows * s))
    }
}

/// The entries of one tensor along one axis, and the channel space of each: what a group lasso
/// over whole channel spaces sums (see [`channel_spaces`]).
#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    pub tensor: String,
    pub axis: usize,
    /// The space of each entry along `axis`, numbered over the whole model (the numbers are
    /// distinct per space, not consecutive).
    pub spaces: Vec<usize>,
}

/// The channel spaces of a model's prunable weights and of the biases, norm scales and embedding
/// entries that write them: the groups of a group lasso that, like the space-coupled criterion,
/// acts on a residual stream's channel across every block at once. A weight's rows (outputs)
/// and columns (inputs) each belong to a space; a row or column the layouts do not map is a
/// space of its own.
pub fn channel_spaces(model: &Model, include_output_layer: bool) -> Result<Vec<Membership>> {
    let targets = prunables(model, include_output_layer)?;
    let s = spaces(model, &targets)?;
    let g = model.graph();
    let (mut number, mut count) = (std::collections::HashMap::new(), 0);
    let mut id = |k: Option<usize>| {
        count += 1;
        match k {
            Some(k) => *number.entry(k).or_insert(count - 1),
            None => count - 1, // a space of its own
        }
    };
    let mut out = vec![];
    for (p, slices) in targets.iter().zip(&s.slices) {
        // Stored [outputs, inputs, ...] (Gemm with transB, Conv) or [inputs, outputs] (MatMul).
        let (row_axis, col_axis) = if p.output_major { (0, 1) } else { (1, 0) };
        for (axis, of) in [(row_axis, &slices.rows), (col_axis, &slices.cols)] {
            // One entry (a depthwise kernel's column) is the whole tensor, not a channel.
            if of.len() > 1 {
                out.push(Membership { tensor: p.name.clone(), axis, spaces: of.iter().map(|&k| id(k)).collect() });
            }
        }
    }
    for (cref, at, classes) in &s.writers {
        let tensor = cref.tensor(g).name().to_string();
        out.push(Membership { tensor, axis: *at, spaces: classes.iter().map(|&k| id(Some(k))).collect() });
    }
    Ok(out)
}

/// Unit-coupled scores: |w| times (row mass * column mass)^power, masses relative to their
/// mean over the tensor. A row's or column's mass is its own, or its channel space's (`space`).
fn coupled(p: &Prunable, w: &[f64], power: f64, space: Option<(&Slices, &[f64])>) -> Vec<f64> {
    let (mut row, mut col) = (vec![0.0; p.rows], vec![0.0; p.cols]);
    for (i, x) in w.iter().enumerate() {
        let (r, c) = position(p, i);
        row[r] += x.abs();
        col[c] += x.abs();
    }
    if let Some((slices, mass)) = space {
        let shared = |own: &mut [f64], classes: &[Option<usize>]| {
            own.iter_mut().zip(classes).for_each(|(m, k)| *m = k.map_or(*m, |k| mass[k]));
        };
        shared(&mut row, &slices.rows);
        shared(&mut col, &slices.cols);
    }
    let mean = |v: &[f64]| (v.iter().sum::<f64>() / v.len().max(1) as f64).max(f64::MIN_POSITIVE);
    let (mr, mc) = (mean(&row), mean(&col));
    w.iter()
        .enumerate()
        .map(|(i, x)| {
            let (r, c) = position(p, i);
            x.abs() * ((row[r] / mr) * (col[c] / mc)).powf(power)
        })
        .collect()
}

/// The channel space (class) of each row and column of one prunable weight; `None` where the
/// layouts do not map it (the slice then counts alone).
struct Slices {
    rows: Vec<Option<usize>>,
    cols: Vec<Option<usize>>,
}

/// The channel spaces of the prunable weights, and what zeroing whole spaces needs to know.
struct Spaces {
    slices: Vec<Slices>,
    count: usize,
    /// Per-channel constants of the nodes writing each space: (constant, its channel dimension,
    /// the space of each entry along it).
    writers: Vec<(ConstRef, usize, Vec<usize>)>,
}

/// Float constants that a node writing a channel space adds or multiplies per channel, by op
/// type and input slot: zeroing a channel's entries makes it the constant 0 (never a divisor,
/// an exponent or a variance).
fn writes_per_channel(op: &str, slot: usize) -> bool {
    match op {
        "Add" | "Sub" | "Mul" | "Concat" => true,
        "Expand" => slot == 0,
        "LayerNormalization" => slot == 1 || slot == 2,
        "RMSNormalization" => slot == 1,
        "Gemm" | "Conv" | "ConvTranspose" => slot == 2,
        _ => false,
    }
}

fn spaces(model: &Model, targets: &[Prunable]) -> Result<Spaces> {
    let ir = model.ir()?;
    let g = Graph::new(model.graph(), &ir);
    let (layouts, classes) = analysis::spaces(&g);
    // Heads leave an entry only from every head at once (or whole): entry `d` of every head is one
    // space, the way minimization will remove it.
    let mut heads = UnionFind::<usize>::new(classes.len());
    for v in g.value_ids() {
        let l = layouts[v];
        let (Some(h), Some(per)) = (l.heads.filter(|h| !h.ragged), l.per_head()) else { continue };
        for d in 0..per {
            (1..h.count).for_each(|head| {
                heads.union(classes.class(v, d), classes.class(v, head * per + d));
            });
        }
    }
    let space: Vec<usize> = (0..classes.len()).map(|k| heads.find(k)).collect();
    let class = |v: ValueId, c: usize| space[classes.class(v, c)];
    // The space of each of `entries` entries along a value's channel axis.
    let map = |v: Option<ValueId>, entries: usize| -> Option<Vec<usize>> {
        let v = v?;
        let l = layouts[v];
        let w = l.width.filter(|&w| w > 0 && w * l.block.unwrap_or(1) == entries)?;
        Some((0..entries).map(|e| class(v, l.channel_of(e, w))).collect())
    };
    let lift = |m: Option<Vec<usize>>, n: usize| m.map_or(vec![None; n], |m| m.into_iter().map(Some).collect());
    let slices = targets
        .iter()
        .map(|p| {
            let n = NodeId(p.node);
            let linear = match g.role(n) {
                Role::Op(op) => op.linear(),
                _ => None,
            };
            let x = linear.and_then(|l| g.input(n, l.input_slot()));
            // A grouped weight's columns are per group: each row's own inputs, not one channel.
            let grouped = linear.is_none_or(|l| l.weight().groups > 1);
            Slices {
                rows: lift(map(g.output(n, 0), p.rows), p.rows),
                cols: if grouped { vec![None; p.cols] } else { lift(map(x, p.cols), p.cols) },
            }
        })
        .collect();
    let mut writers = vec![];
    for n in g.order.iter().copied() {
        let node = g.node(n);
        let Some(o) = g.output(n, 0) else { continue };
        let l = layouts[o];
        let (Some(axis), Some(width)) = (l.axis, l.width) else { continue };
        if l.heads.is_some() || l.block.is_some_and(|b| b != 1) {
            continue;
        }
        for (slot, name) in node.input.iter().enumerate() {
            let Some(cref) = ir.const_ref(name) else { continue };
            // A constant another node reads too would change there as well.
            if !writes_per_channel(node.op_type(), slot) || ir.readers(name).len() != 1 {
                continue;
            }
            let t = cref.tensor(g.proto);
            if Values::of(t).is_err() {
                continue; // not a float tensor
            }
            let dims = &t.dims;
            let at = if node.op_type().starts_with("Conv") { 0 } else { dims.len() as isize + axis };
            if at < 0 || dims.get(at as usize) != Some(&(width as i64)) {
                continue;
            }
            writers.push((cref, at as usize, (0..width).map(|c| class(o, c)).collect::<Vec<usize>>()));
        }
    }
    Ok(Spaces { slices, count: classes.len(), writers })
}

fn zeros(w: &[f64]) -> usize {
    w.iter().filter(|x| **x == 0.0).count()
}

/// Prunes the model's linear-layer weights in place by exactly `opts.amount`.
pub fn prune(model: &mut Model, opts: &PruneOptions) -> Result<SparsifyReport> {
    let (Amount::Sparsity(amount) | Amount::Remaining(amount)) = opts.amount;
    fraction(amount).and_then(|_| coupling(opts.coupling)).map_err(crate::Error::Usage)?;
    let targets = prunables(model, opts.include_output_layer)?;
    let mut weights = vec![];
    for p in &targets {
        weights.push(read(model, p)?);
    }
    let spaces = match opts.criterion {
        Criterion::SpaceCoupled | Criterion::SpaceStructured | Criterion::SpaceUniform => {
            Some(spaces(model, &targets)?)
        }
        _ => None,
    };
    let rms = match (&spaces, opts.criterion) {
        (Some(s), Criterion::SpaceStructured | Criterion::SpaceUniform) => {
            let uniform = opts.criterion == Criterion::SpaceUniform;
            Some(space_scores(s, &targets, weights.iter().map(|(w, _)| w.as_slice()), uniform))
        }
        _ => None,
    };
    let mass = spaces.as_ref().map(|s| space_mass(s, &targets, weights.iter().map(|(w, _)| w.as_slice())));
    let scores: Vec<Vec<f64>> = targets
        .iter()
        .zip(&weights)
        .enumerate()
        .map(|(t, (p, (w, _)))| match opts.criterion {
            Criterion::Magnitude => w.iter().map(|x| x.abs()).collect(),
            Criterion::UnitCoupled => coupled(p, w, opts.coupling, None),
            Criterion::SpaceCoupled => {
                let (s, m) = (spaces.as_ref().expect("computed above"), mass.as_deref().expect("computed above"));
                coupled(p, w, opts.coupling, Some((&s.slices[t], m)))
            }
            Criterion::SpaceStructured | Criterion::SpaceUniform => {
                let (s, rms) = (spaces.as_ref().expect("computed above"), rms.as_deref().expect("computed above"));
                let slices = &s.slices[t];
                // A row or column outside every space never goes whole: it scores as the strongest.
                let of = |k: Option<usize>| k.map_or(f64::INFINITY, |k| rms[k]);
                w.iter()
                    .enumerate()
                    .map(|(i, &x)| {
                        let (r, c) = position(p, i);
                        if x == 0.0 {
                            0.0
                        } else {
                            of(slices.rows[r]).min(of(slices.cols[c]))
                        }
                    })
                    .collect()
            }
        })
        .collect();
    // Which elements to zero: the lowest scores, exactly the amount of each group; existing zeros
    // score 0 and go first.
    let mut cut: Vec<Vec<bool>> = scores.iter().map(|s| vec![false; s.len()]).collect();
    let groups: Vec<Vec<usize>> = match opts.scope {
        Scope::Global => vec![(0..targets.len()).collect()],
        Scope::PerTensor => (0..targets.len()).map(|t| vec![t]).collect(),
    };
    for group in groups {
        let mut all: Vec<(f64, usize, usize)> =
            group.iter().flat_map(|&t| scores[t].iter().enumerate().map(move |(i, &s)| (s, t, i))).collect();
        let k = match opts.amount {
            Amount::Sparsity(s) => ((all.len() as f64) * s.clamp(0.0, 1.0)).round() as usize,
            Amount::Remaining(f) => {
                let zero: usize = group.iter().map(|&t| zeros(&weights[t].0)).sum();
                zero + (((all.len() - zero) as f64) * f.clamp(0.0, 1.0)).round() as usize
            }
        };
        if k > 0 {
            all.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            all[..k].iter().for_each(|&(_, t, i)| cut[t][i] = true);
        }
    }
    let mut changes = vec![];
    let mut pruned = vec![];
    for ((p, (w, dtype)), cut) in targets.iter().zip(weights).zip(cut) {
        let before = zeros(&w);
        let new: Vec<f64> = w.iter().zip(&cut).map(|(&x, &c)| if c { 0.0 } else { x }).collect();
        changes.push(store(model, &p.cref, &p.name, before, &new, dtype));
        pruned.push(new);
    }
    let silenced = match spaces {
        Some(s) => silence(model, &s, &targets, &pruned)?,
        None => vec![],
    };
    Ok(summarize(changes, silenced))
}

/// Each space's mass: the magnitudes of every weight in a row or column of it.
fn space_mass<'w>(s: &Spaces, targets: &[Prunable], weights: impl Iterator<Item = &'w [f64]>) -> Vec<f64> {
    space_sums(s, targets, weights, f64::abs).0
}

/// Per space, the sum of `term(w)` over the weights in its rows and columns, and their count.
fn space_sums<'w>(
    s: &Spaces,
    targets: &[Prunable],
    weights: impl Iterator<Item = &'w [f64]>,
    term: impl Fn(f64) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let (mut sums, mut count) = (vec![0.0; s.count], vec![0usize; s.count]);
    for ((p, slices), w) in targets.iter().zip(&s.slices).zip(weights) {
        for (i, &x) in w.iter().enumerate() {
            let (r, c) = position(p, i);
            for k in [slices.rows[r], slices.cols[c]].into_iter().flatten() {
                sums[k] += term(x);
                count[k] += 1;
            }
        }
    }
    (sums, count)
}

/// Each space's root mean square over the weights in its rows and columns (0 for a space with
/// none), relative to the other spaces of its layer: big spaces (a stream channel across every
/// block) and small ones (a hidden unit) on one scale, and every layer on its own. `uniform`:
/// its rank among them instead, as a share (`(rank + 1/2) / spaces`), so every layer loses the
/// same share of its spaces.
fn space_scores<'w>(
    s: &Spaces,
    targets: &[Prunable],
    weights: impl Iterator<Item = &'w [f64]>,
    uniform: bool,
) -> Vec<f64> {
    let (squares, count) = space_sums(s, targets, weights, |x| x * x);
    let rms: Vec<f64> =
        squares.iter().zip(&count).map(|(&q, &n)| if n == 0 { 0.0 } else { (q / n as f64).sqrt() }).collect();
    // A space's layer is the first that writes it, else the first that reads it, so that a cut
    // takes the weakest of every layer rather than a whole layer whose weights are small (a
    // stage of a network initialised at another scale).
    let mut home = vec![None; s.count];
    for (t, slices) in s.slices.iter().enumerate() {
        slices.rows.iter().flatten().for_each(|&k| home[k] = home[k].or(Some((0, t))));
    }
    for (t, slices) in s.slices.iter().enumerate() {
        slices.cols.iter().flatten().for_each(|&k| home[k] = home[k].or(Some((1, t))));
    }
    let mut layers: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    for (k, h) in home.iter().enumerate() {
        if let Some(h) = h {
            layers.entry(*h).or_default().push(k);
        }
    }
    let mut score = rms.clone();
    for spaces in layers.values_mut() {
        if uniform {
            spaces.sort_by(|&a, &b| rms[a].total_cmp(&rms[b]).then(a.cmp(&b)));
            let n = spaces.len() as f64;
            spaces.iter().enumerate().for_each(|(rank, &k)| score[k] = (rank as f64 + 0.5) / n);
        } else {
            let mean = (spaces.iter().map(|&k| rms[k]).sum::<f64>() / spaces.len() as f64).max(f64::MIN_POSITIVE);
            spaces.iter().for_each(|&k| score[k] = rms[k] / mean);
        }
    }
    score
}

/// Zeroes the per-channel writer constants of every space that has weights but none left
/// non-zero.
fn silence(model: &mut Model, s: &Spaces, targets: &[Prunable], pruned: &[Vec<f64>]) -> Result<Vec<TensorChange>> {
    let mass = space_mass(s, targets, pruned.iter().map(Vec::as_slice));
    let mut has = vec![false; s.count];
    for slices in &s.slices {
        slices.rows.iter().chain(&slices.cols).flatten().for_each(|&k| has[k] = true);
    }
    let mut changes = vec![];
    for (cref, at, classes) in &s.writers {
        let t = cref.tensor(model.graph());
        let v = Values::of(t)?;
        let stride: usize = t.dims[at + 1..].iter().map(|&d| d as usize).product();
        let old: Vec<f64> = (0..v.len()).map(|i| v.get(i)).collect();
        let gone = |i: usize| {
            let k = classes[(i / stride) % classes.len()];
            has[k] && mass[k] == 0.0
        };
        let new: Vec<f64> = old.iter().enumerate().map(|(i, &x)| if gone(i) { 0.0 } else { x }).collect();
        if new != old {
            let (name, dtype) = (t.name().to_string(), v.dtype);
            changes.push(store(model, cref, &name, zeros(&old), &new, dtype));
        }
    }
    Ok(changes)
}

/// Replaces the exact zeros of the linear-layer weights by calibrated noise, in place.
pub fn release(
    model: &mut Model,
    calibration: Calibration,
    include_output_layer: bool,
    seed: u64,
) -> Result<SparsifyReport> {
    let targets = prunables(model, include_output_layer)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut changes = vec![];
    for p in &targets {
        let (w, dtype) = read(model, p)?;
        let live: Vec<f64> = w.iter().copied().filter(|x| *x != 0.0).collect();
        let before = zeros(&w);
        let new: Vec<f64> = if live.is_empty() {
            w.clone() // nothing to calibrate against
        } else {
            let mean = live.iter().sum::<f64>() / live.len() as f64;
            let std = (live.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / live.len() as f64).sqrt();
            let smallest = live.iter().map(|x| x.abs()).fold(f64::INFINITY, f64::min);
            w.iter()
                .map(|&x| {
                    if x != 0.0 {
                        return x;
                    }
                    let noise = match calibration {
                        Calibration::Std(f) => {
                            let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                            f * std * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
                        }
                        Calibration::Threshold(f) => {
                            let magnitude = smallest * rng.random_range(1.0..=f);
                            if rng.random_bool(0.5) {
                                magnitude
                            } else {
                                -magnitude
                            }
                        }
                    };
                    // A value that rounds to zero in the tensor's type would stay pruned.
                    if dtype.round(noise) == 0.0 {
                        smallest.copysign(noise)
                    } else {
                        noise
                    }
                })
                .collect()
        };
        changes.push(store(model, &p.cref, &p.name, before, &new, dtype));
    }
    Ok(summarize(changes, vec![]))
}

/// Writes a tensor back in its own type, and says what changed.
fn store(
    model: &mut Model,
    cref: &ConstRef,
    name: &str,
    zeros_before: usize,
    new: &[f64],
    dtype: FloatType,
) -> TensorChange {
    let t = cref.tensor_mut(model.graph_mut());
    *t = with_data(t, t.dims.clone(), dtype, encode(dtype, new));
    TensorChange { tensor: name.to_string(), elements: new.len(), zeros_before, zeros_after: zeros(new) }
}

fn summarize(tensors: Vec<TensorChange>, silenced: Vec<TensorChange>) -> SparsifyReport {
    let total = tensors.iter().map(|t| t.elements).sum::<usize>().max(1) as f64;
    let before = tensors.iter().map(|t| t.zeros_before).sum::<usize>() as f64 / total;
    let after = tensors.iter().map(|t| t.zeros_after).sum::<usize>() as f64 / total;
    SparsifyReport { tensors, sparsity_before: before, sparsity_after: after, silenced }
}

/// Reads `input`, applies `rewrite`, and writes `output` atomically with the input's storage.
pub fn rewrite_file(
    input: &std::path::Path,
    output: &std::path::Path,
    rewrite: impl FnOnce(&mut Model) -> Result<SparsifyReport>,
) -> Result<SparsifyReport> {
    crate::check_paths(input, output)?;
    let mut model = Model::load(input)?;
    let report = rewrite(&mut model)?;
    crate::onnx::io::write_atomically(&model, output, model.had_external_data, &mut |_| {}, |_| Ok(()))?;
    Ok(report)
}
