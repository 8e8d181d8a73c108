//! Recurrent layers (LSTM, GRU, RNN): the hidden units are the channels of `Y`, `Y_h` and `Y_c`
//! (and of the initial states), the input features the channels of `X`.
//!
//! A unit is *dead* when its state is 0 at every step: the row of the gate that writes the state
//! (LSTM's cell candidate, GRU's new gate, the RNN's only one) reads nothing that varies, its
//! constant inputs and biases sum to 0, it reads no live unit through `R`, and its initial states
//! are 0. Then `tanh(0) = 0` keeps LSTM's cell at 0 (and `h = o * tanh(c)` too), GRU's state is
//! `z * h_prev = 0`, and the RNN's `f(0) = 0`. A dead unit is the constant 0 its readers fold.
//! A live unit is kept when something needs it, or when a kept unit reads it through `R` (the
//! closure runs inside the operator); every other unit leaves with its rows of `W`, `R`, `B` and
//! `P`, its column of `R`, and its entries of the initial states. An input feature leaves when no
//! kept unit reads it; a constant one folds into the input bias. Both directions of a
//! bidirectional layer keep the same units (they share `hidden_size`): the direction axis is a
//! heads axis.

use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::layout::Heads;
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::values::At;
use crate::analysis::{ConstCx, LayoutCx, NeedCx, PlanCx, TieCx, ValueId};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::attr_int;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto, TensorProto};
use crate::onnx::tensor::{encode, int64s, with_data, Values};
use crate::report::LayerReport;
use crate::rewrite::Edit;

pub(crate) struct Recurrent;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    Lstm,
    Gru { linear_before_reset: bool },
    Rnn,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru { .. } => 3,
            Cell::Rnn => 1,
        }
    }

    /// The gate that writes the state: LSTM's `c` (gates `iofc`), GRU's `h` (`zrh`).
    fn candidate(self) -> usize {
        match self {
            Cell::Lstm => 3,
            Cell::Gru { .. } => 2,
            Cell::Rnn => 0,
        }
    }

    /// The activations the rule's algebra assumes, per direction: the defaults (and ReLU for
    /// the RNN, which keeps `f(0) = 0`).
    fn accepts(self, activations: &[String]) -> bool {
        let defaults: &[&str] = match self {
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Cell::Gru { .. } => &["Sigmoid", "Tanh"],
            Cell::Rnn => &["Tanh"],
        };
        let per = defaults.len();
        activations.chunks(per).all(|a| {
            a.len() == per
                && a.iter().zip(defaults).all(|(x, d)| x.eq_ignore_ascii_case(d) || self == Cell::Rnn && x == "Relu")
        })
    }
}

/// Input slots: the initial states, and LSTM's peepholes.
const INITIAL_H: usize = 5;
const INITIAL_C: usize = 6;
const PEEPHOLES: usize = 7;

struct RecurrentNode<'g> {
    node: &'g NodeProto,
    cell: Cell,
    dirs: usize,
    hidden: usize,
    inputs: usize,
    w: Values<'g>,
    r: Values<'g>,
    b: Option<Values<'g>>,
    p: Option<Values<'g>>,
    /// `layout = 1`: batch first, so the directions sit one axis further in.
    batch_first: bool,
    /// Initial states that are activations (slots), and those that are constants.
    state_acts: Vec<usize>,
    state_consts: Vec<(usize, Values<'g>)>,
    /// Initial states computed as zeros: dropped (absent means zeros) when the units change.
    zero_states: Vec<usize>,
}

/// Whether `name` is zeros of a computed shape: `ConstantOfShape` of 0 (TorchScript's
/// `zeros(D, B, H)`), or an `Expand` of a constant 0 (the dynamo exporter's), possibly sliced.
fn zeros(cx: &Ctx, name: &str) -> bool {
    let zero = |t: &TensorProto| match Values::of(t) {
        Ok(v) => (0..v.len()).all(|i| v.get(i) == 0.0),
        Err(_) => t.data_type() == DataType::Int64 as i32 && int64s(t).iter().all(|&v| v == 0),
    };
    let Some(node) = cx.ir.producer.get(name).map(|&n| &cx.graph.node[n]) else { return false };
    let input = node.input.first().map(String::as_str).unwrap_or("");
    match node.op_type() {
        "ConstantOfShape" => node.attr("value").and_then(|a| a.t.as_ref()).is_none_or(zero),
        "Expand" => cx.const_tensor(input).is_some_and(zero),
        "Slice" | "Identity" | "Reshape" | "Unsqueeze" | "Squeeze" => zeros(cx, input),
        _ => false,
    }
}

impl OpRule for Recurrent {
    fn op_types(&self) -> &'static [&'static str] {
        &["LSTM", "GRU", "RNN"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let cell = match node.op_type() {
            "LSTM" => Cell::Lstm,
            "GRU" => Cell::Gru { linear_before_reset: node.attr_i("linear_before_reset", 0) != 0 },
            _ => Cell::Rnn,
        };
        let input = |slot: usize| node.input.get(slot).filter(|s| !s.is_empty());
        let constant = |slot: usize| input(slot).map(|s| cx.const_tensor(s).map(Values::of));
        let (Some(Some(Ok(w))), Some(Some(Ok(r)))) = (constant(1), constant(2)) else {
            return Role::Opaque(Opaque::NotConstant("its weights W and R are not float constants"));
        };
        let (b, p) = match (constant(3), constant(PEEPHOLES)) {
            (Some(Some(Err(_)) | None), _) | (_, Some(Some(Err(_)) | None)) => {
                return Role::Opaque(Opaque::NotConstant("its bias or peepholes are not float constants"))
            }
            (b, p) => (b.flatten().and_then(Result::ok), p.flatten().and_then(Result::ok)),
        };
        let activations: Vec<String> = node
            .attr("activations")
            .map(|a| a.strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
            .unwrap_or_default();
        let scaled = node.attr("activation_alpha").is_some() || node.attr("activation_beta").is_some();
        if !cell.accepts(&activations) || scaled {
            return Role::Opaque(Opaque::Unsupported("its activations are not the defaults".into()));
        }
        let (g, dims) = (cell.gates(), (&w.dims, &r.dims));
        let (dirs, hidden) =
            (r.dims.first().copied().unwrap_or(0) as usize, r.dims.get(2).copied().unwrap_or(0) as usize);
        let shapes_agree = dims.0.len() == 3
            && dims.1.len() == 3
            && dims.0[0] == dims.1[0]
            && dims.0[1] as usize == g * hidden
            && dims.1[1] as usize == g * hidden
            && node.attr_i("hidden_size", hidden as i64) == hidden as i64
            && hidden > 0
            && (dirs == 1 || dirs == 2)
            && b.as_ref().is_none_or(|b| b.dims == [dirs as i64, (2 * g * hidden) as i64])
            && p.as_ref().is_none_or(|p| cell == Cell::Lstm && p.dims == [dirs as i64, (3 * hidden) as i64]);
        if !shapes_agree {
            return Role::Opaque(Opaque::Malformed("its weights do not match hidden_size and its directions"));
        }
        let slots = if cell == Cell::Lstm { vec![INITIAL_H, INITIAL_C] } else { vec![INITIAL_H] };
        let (mut state_acts, mut state_consts, mut zero_states) = (vec![], vec![], vec![]);
        for slot in slots {
            match constant(slot) {
                None => {}
                // Zeros of a computed shape (TorchScript's `h0 = zeros(D, B, H)`): absent.
                Some(None) if zeros(cx, &node.input[slot]) => zero_states.push(slot),
                Some(None) => state_acts.push(slot),
                Some(Some(Ok(v))) if v.dims.last() == Some(&(hidden as i64)) && v.dims.len() == 3 => {
                    state_consts.push((slot, v))
                }
                Some(Some(_)) => {
                    return Role::Opaque(Opaque::Shape("an initial state is not a float [directions, batch, hidden]"))
                }
            }
        }
        Role::Op(Box::new(RecurrentNode {
            node,
            cell,
            dirs,
            hidden,
            inputs: w.dims[2] as usize,
            w,
            r,
            b,
            p,
            batch_first: node.attr_i("layout", 0) != 0,
            state_acts,
            state_consts,
            zero_states,
        }))
    }
}

impl RecurrentNode<'_> {
    /// Row of gate `g` of unit `j` in direction `d`, in `W` and `R`.
    fn row(&self, d: usize, g: usize, j: usize) -> usize {
        (d * self.cell.gates() + g) * self.hidden + j
    }

    /// The input bias (`Wb`) of a row, and the recurrent one (`Rb`).
    fn biases(&self, d: usize, row_in_dir: usize) -> (f64, f64) {
        let gh = self.cell.gates() * self.hidden;
        self.b.as_ref().map_or((0.0, 0.0), |b| (b.get(d * 2 * gh + row_in_dir), b.get(d * 2 * gh + gh + row_in_dir)))
    }

    /// The outputs with hidden units on their last axis (`Y`, `Y_h`, `Y_c`), where present.
    fn outputs(&self, cx: &At) -> Vec<ValueId> {
        (0..self.node.output.len().min(3)).filter_map(|s| cx.output(s)).collect()
    }

    /// The axis of the directions, counted from the end: `[.., D, batch, H]` (`Y` has the steps
    /// in front), or `[batch, .., D, H]` batch first.
    fn dirs_axis(&self) -> isize {
        if self.batch_first {
            -2
        } else {
            -3
        }
    }

    /// The constant of initial state `slot` at direction `d`, unit `j`: absent states are 0; a
    /// constant one must hold one value over the batch.
    fn initial(&self, slot: usize, d: usize, j: usize, acts: &dyn Fn(usize, usize) -> Option<f64>) -> Option<f64> {
        if self.state_acts.contains(&slot) {
            return acts(slot, d * self.hidden + j);
        }
        let Some((_, v)) = self.state_consts.iter().find(|(s, _)| *s == slot) else { return Some(0.0) };
        let (dims, h) = (&v.dims, self.hidden);
        let (dirs_at, batch) = if self.batch_first { (1, dims[0]) } else { (0, dims[1]) };
        let at = |dir: usize, n: usize| {
            let (a, b) = if dirs_at == 0 { (dir, n) } else { (n, dir) };
            (a * dims[1] as usize + b) * h + j
        };
        let first = v.get(at(d, 0));
        (0..batch as usize).all(|n| v.get(at(d, n)) == first).then_some(first)
    }

    /// The dead units (see the module's doc), given the constants of the input features and of
    /// the initial states that are activations.
    fn dead(&self, xc: &[Option<f64>], acts: &dyn Fn(usize, usize) -> Option<f64>) -> Vec<bool> {
        let (h, k, c) = (self.hidden, self.inputs, self.cell.candidate());
        let mut dead = vec![true; h];
        for (j, dead_j) in dead.iter_mut().enumerate() {
            for d in 0..self.dirs {
                let zero_states = self.initial(INITIAL_H, d, j, acts) == Some(0.0)
                    && (self.cell != Cell::Lstm || self.initial(INITIAL_C, d, j, acts) == Some(0.0));
                let row = self.row(d, c, j);
                let mut sum = 0.0;
                let mut varies = false;
                for (i, x) in xc.iter().enumerate().take(k) {
                    let w = self.w.get(row * k + i);
                    match (w != 0.0, x) {
                        (false, _) => {}
                        (true, Some(v)) => sum += w * v,
                        (true, None) => varies = true,
                    }
                }
                let (wb, rb) = self.biases(d, c * h + j);
                match self.cell {
                    // The reset gate multiplies the recurrent bias: it must be 0 by itself.
                    Cell::Gru { linear_before_reset: true } => {
                        varies |= rb != 0.0;
                        sum += wb;
                    }
                    _ => sum += wb + rb,
                }
                *dead_j &= zero_states && !varies && sum == 0.0;
            }
        }
        // A dead unit reads only dead units through R: the largest such set.
        loop {
            let mut changed = false;
            for j in 0..h {
                let reads_live =
                    (0..self.dirs).any(|d| (0..h).any(|m| !dead[m] && self.r.get(self.row(d, c, j) * h + m) != 0.0));
                if dead[j] && reads_live {
                    dead[j] = false;
                    changed = true;
                }
            }
            if !changed {
                return dead;
            }
        }
    }

    /// Units kept: those `wanted` (needed by readers) and not dead, closed under reading
    /// through any gate's `R`.
    fn live(&self, wanted: &[bool], dead: &[bool]) -> Vec<bool> {
        let (h, g) = (self.hidden, self.cell.gates());
        let mut live: Vec<bool> = (0..h).map(|j| wanted[j] && !dead[j]).collect();
        let mut stack: Vec<usize> = (0..h).filter(|&j| live[j]).collect();
        while let Some(j) = stack.pop() {
            for (d, gate, m) in
                (0..self.dirs).flat_map(|d| (0..g).flat_map(move |gate| (0..h).map(move |m| (d, gate, m))))
            {
                if !live[m] && !dead[m] && self.r.get(self.row(d, gate, j) * h + m) != 0.0 {
                    live[m] = true;
                    stack.push(m);
                }
            }
        }
        live
    }

    /// Per unit, whether a channel of any value holding it (an output, an initial state) is
    /// needed: whatever keeps a unit must keep what it reads.
    fn wanted(&self, cx: &NeedCx) -> Vec<bool> {
        let mut wanted = vec![false; self.hidden];
        for o in self.outputs(cx).into_iter().chain(self.state_acts.iter().map(|&s| cx.input(s))) {
            for (c, &n) in cx.needed(o).iter().enumerate() {
                wanted[c % self.hidden] |= n;
            }
        }
        wanted
    }
}

impl<'g> ChannelOp<'g> for RecurrentNode<'g> {
    fn activations(&self) -> Activations {
        let slots = [vec![0], self.state_acts.clone()].concat();
        Activations::new(slots, "its input or an initial state is a constant or missing")
    }

    fn covers_all_outputs(&self) -> bool {
        true
    }

    fn follows_heads(&self) -> bool {
        self.dirs > 1
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let x = cx.input(0);
        cx.set_axis(x, -1);
        cx.set_rank(x, 3);
        cx.set_block(x, 1);
        cx.set_width(x, self.inputs);
        let states: Vec<ValueId> = self.state_acts.iter().map(|&s| cx.input(s)).collect();
        let outputs: Vec<(ValueId, usize)> = (0..self.node.output.len().min(3))
            .filter_map(|s| cx.output(s).map(|o| (o, if s == 0 { 4 } else { 3 })))
            .collect();
        for (v, rank) in states.into_iter().map(|v| (v, 3)).chain(outputs) {
            cx.set_axis(v, -1);
            cx.set_rank(v, rank);
            cx.set_block(v, 1);
            cx.set_width(v, self.dirs * self.hidden);
            if self.dirs > 1 {
                cx.set_heads(v, Heads { whole: true, ..Heads::plain(self.dirs_axis(), self.dirs) });
            }
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let states = self.state_acts.iter().map(|&s| cx.input(s));
        let values: Vec<ValueId> =
            states.chain((0..self.node.output.len().min(3)).filter_map(|s| cx.output(s))).collect();
        let width = self.dirs * self.hidden;
        for pair in values.windows(2) {
            match (cx.width(pair[0]), cx.width(pair[1])) {
                (Some(a), Some(b)) if a == width && b == width => cx.tie(pair[0], 0, pair[1], 0, width),
                _ => pair.iter().for_each(|&v| cx.force(v, Why::Broadcasts)),
            }
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let x = cx.input(0);
        let xc = cx.consts(x).to_vec();
        if xc.len() != self.inputs {
            return;
        }
        let acts = |slot: usize, c: usize| cx.consts(cx.input(slot)).get(c).copied().flatten();
        let dead = self.dead(&xc, &acts);
        for o in self.outputs(cx) {
            if cx.consts(o).len() == self.dirs * self.hidden {
                let consts = (0..self.dirs * self.hidden).map(|c| dead[c % self.hidden].then_some(0.0)).collect();
                cx.set(o, consts);
            }
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let x = cx.input(0);
        let xc = cx.consts(x).to_vec();
        if xc.len() != self.inputs || self.outputs(cx).iter().any(|&o| cx.needed(o).len() != self.dirs * self.hidden) {
            return cx.need_all_inputs();
        }
        let acts = |slot: usize, c: usize| cx.consts(cx.input(slot)).get(c).copied().flatten();
        let dead = self.dead(&xc, &acts);
        let live = self.live(&self.wanted(cx), &dead);
        let (h, k, g) = (self.hidden, self.inputs, self.cell.gates());
        // Kept units keep their channels in every output and initial state (the closure may keep
        // units no reader needs).
        let holders: Vec<ValueId> =
            self.outputs(cx).into_iter().chain(self.state_acts.iter().map(|&s| cx.input(s))).collect();
        for (j, _) in live.iter().enumerate().filter(|(_, &l)| l) {
            for &v in &holders {
                (0..self.dirs).for_each(|d| cx.mark(v, d * h + j));
            }
        }
        let reads = |i: usize| {
            (0..self.dirs)
                .any(|d| (0..g).any(|gate| (0..h).any(|j| live[j] && self.w.get(self.row(d, gate, j) * k + i) != 0.0)))
        };
        let mut read: Vec<usize> = (0..k).filter(|&i| xc[i].is_none() && reads(i)).collect();
        // tract (0.23) cannot run a GRU with `linear_before_reset` over a single input feature,
        // so verification would fail: such a layer keeps two.
        if self.cell == (Cell::Gru { linear_before_reset: true }) {
            let spare = (0..k).filter(|i| !read.contains(i)).take(2usize.saturating_sub(read.len()));
            read.extend(spare.collect::<Vec<_>>());
        }
        read.into_iter().for_each(|i| cx.mark(x, i));
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (h, k, g, dirs) = (self.hidden, self.inputs, self.cell.gates(), self.dirs);
        let x = cx.input(0);
        let Some(&holder) = self.outputs(cx).first() else { return Ok(()) };
        let units: Vec<usize> = cx.kept(holder, dirs * h).into_iter().filter(|&c| c < h).collect();
        let keep_in = cx.kept(x, k);
        let constant = (0..h).filter(|j| !units.contains(j) && cx.consts(holder).get(*j) == Some(&Some(0.0))).count();
        cx.layer(LayerReport {
            node: self.node.name().to_string(),
            op: self.node.op_type().to_string(),
            inputs_before: k,
            inputs_after: keep_in.len(),
            outputs_before: h,
            outputs_after: units.len(),
            removed_constant: constant,
            removed_dead: h - units.len() - constant,
        });
        if units.len() == h && keep_in.len() == k {
            return Ok(());
        }
        let node = cx.node.0;
        let xc = cx.consts(x).to_vec();
        // Constant features that leave add their weights' share to the input bias.
        let removed: Vec<(usize, f64)> = (0..k)
            .filter(|i| !keep_in.contains(i))
            .filter_map(|i| xc.get(i).copied().flatten().filter(|&v| v != 0.0).map(|v| (i, v)))
            .collect();
        let n = units.len();
        let units = &units;
        let rows = |d: usize| (0..g).flat_map(move |gate| units.iter().map(move |&j| (d, gate, j)));
        let w: Vec<f64> = (0..dirs)
            .flat_map(rows)
            .flat_map(|(d, gate, j)| keep_in.iter().map(move |&i| self.w.get(self.row(d, gate, j) * k + i)))
            .collect();
        let r: Vec<f64> = (0..dirs)
            .flat_map(rows)
            .flat_map(|(d, gate, j)| units.iter().map(move |&m| self.r.get(self.row(d, gate, j) * h + m)))
            .collect();
        let dtype = self.w.dtype;
        let stored: Vec<Option<&TensorProto>> = self.node.input.iter().map(|i| cx.const_tensor(i)).collect();
        let empty = TensorProto::default();
        let tensor = |slot: usize, dims: Vec<i64>, vals: &[f64]| {
            let like = stored.get(slot).copied().flatten().unwrap_or(&empty);
            with_data(like, dims, dtype, encode(dtype, vals))
        };
        let (dirs_i, n_i) = (dirs as i64, n as i64);
        cx.push(Edit::Const {
            node,
            slot: 1,
            tensor: tensor(1, vec![dirs_i, g as i64 * n_i, keep_in.len() as i64], &w),
        });
        cx.push(Edit::Const { node, slot: 2, tensor: tensor(2, vec![dirs_i, g as i64 * n_i, n_i], &r) });
        if self.b.is_some() || !removed.is_empty() {
            let mut b = vec![];
            for d in 0..dirs {
                let fold = |gate: usize, j: usize| -> f64 {
                    removed.iter().map(|&(i, v)| self.w.get(self.row(d, gate, j) * k + i) * v).sum()
                };
                b.extend(rows(d).map(|(d, gate, j)| self.biases(d, gate * h + j).0 + fold(gate, j)));
                b.extend(rows(d).map(|(d, gate, j)| self.biases(d, gate * h + j).1));
            }
            let dims = vec![dirs_i, 2 * g as i64 * n_i];
            match self.b {
                Some(_) => cx.push(Edit::Const { node, slot: 3, tensor: tensor(3, dims, &b) }),
                None => cx.push(Edit::SetInput { node, slot: 3, tensor: tensor(3, dims, &b) }),
            }
        }
        if let Some(p) = &self.p {
            let vals: Vec<f64> = (0..dirs)
                .flat_map(|d| (0..3).flat_map(move |q| units.iter().map(move |&j| (d * 3 + q) * h + j)))
                .map(|at| p.get(at))
                .collect();
            cx.push(Edit::Const { node, slot: PEEPHOLES, tensor: tensor(PEEPHOLES, vec![dirs_i, 3 * n_i], &vals) });
        }
        for (slot, v) in &self.state_consts {
            let outer = v.len() / h;
            let vals: Vec<f64> = (0..outer).flat_map(|o| units.iter().map(move |&j| v.get(o * h + j))).collect();
            let dims = [&v.dims[..2], &[n_i]].concat();
            cx.push(Edit::Const { node, slot: *slot, tensor: tensor(*slot, dims, &vals) });
        }
        for &slot in &self.zero_states {
            cx.push(Edit::DropInput { node, slot });
        }
        cx.push(Edit::Attr { node, attr: attr_int("hidden_size", n_i) });
        Ok(())
    }
}
