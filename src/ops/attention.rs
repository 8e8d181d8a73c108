//! Products of two activations, as attention computes them:
//!
//! - **scores** `S = Q @ K^T`: Q's channel `d` (last axis) meets K^T's channel `d` (second to
//!   last); `S[i, j] = sum_d q_id k_jd`. Dimension `d` leaves from both when `q_d` is the
//!   constant 0 or `k_d` is (the term is 0), or, when `S` reaches a softmax over its last axis
//!   through scalings and additive masks only, when `k_d` is any constant: `q_id k_d` is then the
//!   same for every key `j`, and a softmax row does not change when a constant is added to it.
//!   The scale stays as written (the original `1 / sqrt(head_dim)`).
//! - **weighted values** `O = P @ V` with `P` a softmax over its last axis: O's channels are V's,
//!   and a constant `v_d` gives `o_d = v_d sum_j p_ij = v_d`, a constant the output projection
//!   folds.
//!
//! Both follow channels split into heads, so the Q/K and V/O head dimensions shrink with the
//! projections around them.

use super::shape::ShapeInput;
use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::layout::Heads;
use crate::analysis::plan::{first_head_entries, heads_kept};
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::Layout;
use crate::analysis::{CheckCx, ConstCx, Graph, LayoutCx, Layouts, NeedCx, NodeId, PlanCx, TieCx, ValueId};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::attr_float;
use crate::onnx::proto::NodeProto;
use crate::onnx::tensor::int64s;
use crate::rewrite::Edit;

/// The role of a MatMul of two activations.
pub(crate) fn role<'g>(node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
    if let Some(rows) = node.input.first().and_then(|p| softmax_rows(cx, p)) {
        Role::Op(Box::new(Weighted { rows }))
    } else {
        let softmax = into_softmax(cx, &node.output[0]);
        let weighted = softmax.and_then(|(p, _)| weighted_by(cx, p));
        let scores = score_values(cx, &node.output[0]);
        let shift_invariant = softmax.is_some_and(|(_, shift)| shift);
        Role::Op(Box::new(Scores { shift_invariant, weighted, scores }))
    }
}

/// The single reader of `value` (not a graph output), if it has exactly one.
fn sole_reader<'g>(cx: &Ctx<'g>, value: &str) -> Option<&'g NodeProto> {
    match cx.ir.readers(value) {
        [(n, _)] if !cx.ir.outputs.contains(value) => Some(&cx.graph.node[*n]),
        _ => None,
    }
}

/// A softmax over the last axis (opset 13 on, or `axis = -1` written out).
fn is_row_softmax(cx: &Ctx, node: &NodeProto) -> bool {
    node.op_type() == "Softmax"
        && match node.attr("axis") {
            Some(_) => node.attr_i("axis", 0) == -1,
            None => cx.ir.opset >= 13,
        }
}

/// Identities at inference: Identity, Dropout not asked to train, a Cast between float types.
fn is_pass_through(node: &NodeProto) -> bool {
    let float = |to: i64| {
        use crate::onnx::proto::tensor_proto::DataType as D;
        [D::Float, D::Double, D::Float16, D::Bfloat16].iter().any(|&d| d as i64 == to)
    };
    node.output.len() == 1
        && !node.input.is_empty()
        && match node.op_type() {
            "Identity" => true,
            // A `training_mode` input may turn it on: only the plain form is an identity.
            "Dropout" => node.input.get(2).is_none_or(|t| t.is_empty()),
            "Cast" => float(node.attr_i("to", 0)),
            _ => false,
        }
}

/// What the rows of attention weights sum to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    One,
    /// 1, or 0 where a row was all NaN (the dynamo exporter's `Where(IsNaN(P), 0, P)` after the
    /// softmax, for rows masked out entirely), or about 1 (weights quantized after the softmax,
    /// each rounded on its own): only a zero value dimension stays constant.
    OneOrZero,
}

impl Rows {
    /// Whether a constant value dimension `v` gives the constant `v` in the output: always
    /// when the rows sum to 1, only for 0 when a row may sum to 0.
    fn keeps(self, v: f64) -> bool {
        self == Rows::One || v == 0.0
    }
}

/// Whether `value` is a softmax over its last axis (through identities), and what its rows sum
/// to.
fn softmax_rows(cx: &Ctx, value: &str) -> Option<Rows> {
    let mut at = value;
    let mut rows = Rows::One;
    loop {
        let node = &cx.graph.node[*cx.ir.producer.get(at)?];
        if is_row_softmax(cx, node) {
            return Some(rows);
        }
        if let Some(p) = nan_to_zero(cx, node).or_else(|| quantized(cx, node)) {
            rows = Rows::OneOrZero;
            at = p;
            continue;
        }
        if !is_pass_through(node) {
            return None;
        }
        at = &node.input[0];
    }
}

/// `p` when `node` is `DequantizeLinear(QuantizeLinear(p))` (ONNX Runtime's QDQ format).
fn quantized<'g>(cx: &Ctx<'g>, node: &'g NodeProto) -> Option<&'g str> {
    if node.op_type() != "DequantizeLinear" {
        return None;
    }
    let q = &cx.graph.node[*cx.ir.producer.get(node.input.first()?)?];
    (q.op_type() == "QuantizeLinear").then(|| q.input.first().map(String::as_str)).flatten()
}

/// `p` when `node` is `Where(IsNaN(p), 0, p)`.
fn nan_to_zero<'g>(cx: &Ctx<'g>, node: &'g NodeProto) -> Option<&'g str> {
    let [cond, zero, p] = &node.input[..] else { return None };
    let isnan = &cx.graph.node[*cx.ir.producer.get(cond)?];
    let zero = cx.const_tensor(zero).and_then(|t| crate::onnx::tensor::Values::of(t).ok());
    let is_zero = zero.is_some_and(|z| z.len() == 1 && z.get(0) == 0.0);
    let matches = node.op_type() == "Where" && isnan.op_type() == "IsNaN" && isnan.input.first() == Some(p);
    (matches && is_zero).then_some(p.as_str())
}

/// The softmax over the last axis that `scores` reach through steps that keep a constant added
/// to a row a constant added to the row: scalings by a scalar constant, additions of anything
/// (masks), identities; each value read by the next step alone. Quantizers may sit between them
/// too, and then the constant is not kept (`false`).
fn into_softmax<'g>(cx: &Ctx<'g>, scores: &str) -> Option<(&'g str, bool)> {
    let scalar = |name: &str| cx.const_tensor(name).is_some_and(|t| crate::onnx::tensor::numel(&t.dims) == Some(1));
    let mut at = scores;
    let mut shift = true;
    loop {
        // A quantizer rounds `s + c` otherwise than `s`: the softmax is found, its shift
        // invariance lost.
        if let Some(next) = through_quantizer(cx, at) {
            (at, shift) = (next, false);
            continue;
        }
        let node = sole_reader(cx, at)?;
        if is_row_softmax(cx, node) {
            return Some((node.output.first()?.as_str(), shift));
        }
        let two = node.input.len() == 2;
        let keeps_shift = match node.op_type() {
            "Mul" => two && node.input.iter().any(|i| i != at && scalar(i)),
            "Div" => two && node.input[0] == at && scalar(&node.input[1]),
            "Add" => two,
            _ => is_pass_through(node),
        };
        match node.output.first() {
            Some(out) if keeps_shift => at = out,
            _ => return None,
        }
    }
}

/// The dequantized `at` where its sole reader quantizes it and the quantized value's sole reader
/// dequantizes it (ONNX Runtime's QDQ format around an activation).
fn through_quantizer<'g>(cx: &Ctx<'g>, at: &str) -> Option<&'g str> {
    let q = sole_reader(cx, at).filter(|n| n.op_type() == "QuantizeLinear")?;
    let dq = sole_reader(cx, q.output.first()?).filter(|n| n.op_type() == "DequantizeLinear")?;
    dq.output.first().map(String::as_str)
}

/// `scores` and the values computed from it alone (each read by the next step only) up to the
/// operand of a product: the attention weights, with a NaN guard's mask.
fn score_values<'g>(cx: &Ctx<'g>, scores: &'g str) -> Vec<&'g str> {
    let mut values = vec![scores];
    let mut at = scores;
    while let Some(node) = sole_reader(cx, at) {
        if node.op_type() == "MatMul" {
            break;
        }
        if let Some(isnan) = node.input.first().and_then(|c| cx.ir.producer.get(c)) {
            if nan_to_zero(cx, node).is_some() {
                values.push(&cx.graph.node[*isnan].output[0]);
            }
        }
        match node.output.first() {
            Some(out) if node.output.len() == 1 => {
                values.push(out);
                at = out;
            }
            _ => break,
        }
    }
    values
}

/// `(V, O)` of the `O = P @ V` that alone reads the softmax `p` (through identities, the NaN
/// guard and quantizers): the attention whose heads the scores serve.
fn weighted_by<'g>(cx: &Ctx<'g>, p: &str) -> Option<(&'g str, &'g str)> {
    let mut at = p;
    loop {
        if let Some(next) = through_quantizer(cx, at) {
            at = next;
            continue;
        }
        let node = sole_reader(cx, at)?;
        if node.op_type() == "MatMul" && node.input.first().map(String::as_str) == Some(at) {
            return Some((node.input.get(1)?.as_str(), node.output.first()?.as_str()));
        }
        let through = is_pass_through(node) || nan_to_zero(cx, node).is_some();
        at = node.output.first().filter(|_| through)?;
    }
}

/// Both operands of a product need two axes at least (a 1-D operand contracts its channels
/// away): other ranks, or unknown ones, keep their channels.
fn check_ranks(cx: &mut CheckCx, values: &[ValueId]) {
    if values.iter().any(|&v| cx.layout(v).rank.is_none_or(|r| r < 2)) {
        values.iter().for_each(|&v| cx.force(v, Why::UnknownRank));
    }
}

/// `S = Q @ K^T` over channels that Q holds on its last axis and K^T on its second to last.
struct Scores<'g> {
    shift_invariant: bool,
    /// `(V, O)` of the attention that reads the scores' softmax alone: a head whose output
    /// nothing needs (or whose output is constant) needs no scores, so its Q/K go, and the
    /// heads Q and V keep must then be the same.
    weighted: Option<(&'g str, &'g str)>,
    /// The scores and what is computed from them up to the attention weights `P` (a NaN
    /// guard's mask too): `[.., H, T, T]` tensors whose declared heads follow Q's.
    scores: Vec<&'g str>,
}

impl Scores<'_> {
    /// Per head of the scores, whether the attention output reads it; `None` when unknown.
    fn live_heads(&self, cx: &NeedCx, heads: usize) -> Option<Vec<bool>> {
        let o = cx.value(self.weighted?.1)?;
        let l = cx.layout(o);
        let (needed, consts) = (cx.needed(o), cx.consts(o));
        if l.heads.map(|h| h.count) != Some(heads) || needed.len() != l.width? {
            return None;
        }
        let per = l.per_head()?;
        Some((0..heads).map(|h| (h * per..(h + 1) * per).any(|c| needed[c] && consts[c].is_none())).collect())
    }
}

impl<'g> ChannelOp<'g> for Scores<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![0, 1], "its operands are constants or missing")
    }

    fn same_entries_in_heads(&self, _g: &Graph<'g>, _node: NodeId, _layouts: &Layouts) -> bool {
        false
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn output_channels(&self) -> bool {
        false
    }

    /// The scores' last axis indexes keys (or, where this is no attention, the columns of a
    /// weight the graph computes): a reader that drops some of them (a linear layer with zero
    /// rows reading `x @ Transpose(W)`) could not have them dropped here, so they stay.
    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (q, kt) = (cx.input(0), cx.input(1));
        if let Some(s) = cx.output(0) {
            cx.force(s, Why::ProductOfActivations);
        }
        cx.set_axis(q, -1);
        cx.set_axis(kt, -2);
        cx.same_width(q, kt);
        for (a, b) in [(q, kt), (kt, q)] {
            if let Some(h) = cx.get(a).heads {
                cx.set_heads(b, h);
            }
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let values = [cx.input(0), cx.input(1)];
        check_ranks(cx, &values);
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        // The declared heads of the scores follow the queries' (no channels of their own).
        let q = cx.input(0);
        let (Some(w), Some(h)) = (cx.layout(q).width, cx.layout(q).heads) else { return Ok(()) };
        let keep = cx.kept(q, w);
        let rows = heads_kept(cx.layout(q), &keep).0.len();
        if rows < h.count && h.axis <= -3 {
            for value in &self.scores {
                cx.push(Edit::Width { value: value.to_string(), axis: h.axis, from: h.count, to: rows });
            }
        }
        Ok(())
    }

    fn head_links(&self, g: &Graph<'g>, node: NodeId) -> Vec<(ValueId, Option<ValueId>)> {
        let v = self.weighted.and_then(|(v, _)| g.value(v));
        g.input(node, 0).map(|q| (q, v)).into_iter().collect()
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (q, kt) = (cx.input(0), cx.input(1));
        if let (Some(w), true) = (cx.width(q), cx.width(q) == cx.width(kt)) {
            cx.tie(q, 0, kt, 0, w);
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (q, kt) = (cx.input(0), cx.input(1));
        let (qc, kc) = (cx.consts(q), cx.consts(kt));
        if qc.len() != kc.len() {
            cx.mark_all(q);
            cx.mark_all(kt);
            return;
        }
        let heads = cx.layout(q).heads.map(|h| h.count);
        let live = heads.and_then(|h| self.live_heads(cx, h));
        let per = cx.layout(q).per_head().unwrap_or(qc.len().max(1));
        for d in 0..qc.len() {
            let vanishes = qc[d] == Some(0.0) || kc[d] == Some(0.0) || (self.shift_invariant && kc[d].is_some());
            let dead_head = live.as_ref().is_some_and(|l| !l[d / per]);
            if !vanishes && !dead_head {
                cx.mark(q, d);
                cx.mark(kt, d);
            }
        }
    }
}

/// `O = P @ V` with the rows of `P` summing to 1: O's channels are V's.
struct Weighted {
    rows: Rows,
}

impl<'g> ChannelOp<'g> for Weighted {
    fn activations(&self) -> Activations {
        Activations::new(vec![0, 1], "its operands are constants or missing")
    }

    fn same_entries_in_heads(&self, _g: &Graph<'g>, _node: NodeId, _layouts: &Layouts) -> bool {
        false
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (v, Some(o)) = (cx.input(1), cx.output(0)) else { return };
        cx.set_axis(v, -1);
        cx.copy(v, o);
        cx.copy(o, v);
        if let Some(r) = cx.get(v).rank.or(cx.get(o).rank) {
            cx.set_rank(v, r);
            cx.set_rank(o, r);
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let (v, Some(o)) = (cx.input(1), cx.output(0)) else { return };
        check_ranks(cx, &[v, o]);
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (v, Some(o)) = (cx.input(1), cx.output(0)) else { return };
        if let (Some(w), true) = (cx.width(v), cx.width(v) == cx.width(o)) {
            cx.tie(v, 0, o, 0, w);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (v, Some(o)) = (cx.input(1), cx.output(0)) else { return };
        let r = cx.consts(v).iter().map(|&c| c.filter(|&k| self.rows.keeps(k))).collect();
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (p, v, Some(o)) = (cx.input(0), cx.input(1), cx.output(0)) else { return };
        cx.mark_all(p);
        let (needed, out) = (cx.needed(o), cx.consts(o));
        if needed.len() != cx.needed(v).len() || out.len() != needed.len() {
            return cx.mark_all(v);
        }
        // A needed output dimension reads its value dimension unless it is a known constant.
        let marks: Vec<usize> = (0..needed.len()).filter(|&d| needed[d] && out[d].is_none()).collect();
        marks.into_iter().for_each(|d| cx.mark(v, d));
    }
}

/// Grouped-query attention's `repeat_kv` as every exporter writes it: `Unsqueeze` a new axis
/// after the heads, `Expand` it to `n_rep` copies, `Reshape` the two axes into one:
/// `[.., KVH, T, D] -> [.., KVH, 1, T, D] -> [.., KVH, n_rep, T, D] -> [.., KVH * n_rep, T, D]`.
/// Output head `g * n_rep + r` is input head `g`, so a K/V dimension (or head) is one class
/// with its copies in the group's query heads: it leaves only when the rule holds for the whole
/// group. Multi-query attention is `KVH = 1` (the key then has no heads axis of its own).
pub(crate) struct RepeatKv<'g> {
    input: &'g str,
    /// Its nodes but the last: the Unsqueeze and the Expand, and the shape computations that
    /// read sizes back.
    pub inner: Vec<NodeId>,
    unsqueeze: NodeId,
    expand: NodeId,
    expand_shape: ShapeInput,
    target: ShapeInput,
    /// Rank of the input and output; the heads axis sits at `heads` (from the start).
    rank: usize,
    heads: usize,
    n_rep: usize,
    /// The key/value heads and the head dimension, where a shape writes them; `None` where
    /// every entry naming it reads the input's own dimension back at run time (TorchScript's
    /// `x.shape`): the input's layout then tells it, and the entry follows the rewrite by itself.
    kv_heads: Option<usize>,
    head_dim: Option<usize>,
    /// Which written entries name the sizes (the others are 1, -1 or read back, and stay): the
    /// expand shape's heads and head dimension, the target's heads and head dimension.
    written: [bool; 4],
}

/// Every `repeat_kv` in the graph, keyed by its Reshape.
pub(crate) fn repeated_heads<'g>(cx: &Ctx<'g>) -> Vec<(NodeId, RepeatKv<'g>)> {
    let (g, ir) = (cx.graph, cx.ir);
    let sole = |value: &str, op: &str| cx.sole_reader(value, op);
    let mut found = vec![];
    for (n, unsqueeze) in g.node.iter().enumerate() {
        let matched = (|| {
            if unsqueeze.op_type() != "Unsqueeze" || !unsqueeze.domain().is_empty() {
                return None;
            }
            let x = unsqueeze.input.first().filter(|x| !ir.is_const(x))?;
            let expand = sole(&unsqueeze.output[0], "Expand")?;
            let expand_shape = ShapeInput::of(cx, &g.node[expand], 1)?;
            // The rank as declared, or as the expanded shape (one axis more) says.
            let rank = ir.rank(x).unwrap_or(expand_shape.len().checked_sub(1)?);
            let axes = match unsqueeze.input.get(1).filter(|a| !a.is_empty()) {
                Some(_) => cx.ints(unsqueeze, 1)?,
                None => unsqueeze.attr_ints("axes")?,
            };
            let [axis] = axes[..] else { return None };
            let axis = if axis < 0 { axis + rank as i64 + 1 } else { axis } as usize;
            // The new axis follows the heads axis, both before the channel axis (the last).
            let heads = axis.checked_sub(1).filter(|&h| h + 1 < rank)?;
            let reshape = sole(&g.node[expand].output[0], "Reshape")?;
            (expand_shape.len() == rank + 1).then_some(())?;
            let target = ShapeInput::of(cx, &g.node[reshape], 1).filter(|s| s.len() == rank)?;
            let n_rep = expand_shape.get(cx, axis).filter(|&r| r > 1)? as usize;
            // Each size is written as a number or read back from x itself (the same axis; the
            // target's heads times n_rep).
            let own = |shape: &ShapeInput, k: usize, axis: usize, factor: i64| {
                shape.read_back(cx, k).filter(|r| r.tensor == x.as_str() && r.axis == axis && r.factor == factor)
            };
            let entry = |shape: &ShapeInput, k: usize, axis: usize, factor: i64| match shape.get(cx, k) {
                Some(v) => Some(Some(v)),
                None => own(shape, k, axis, factor).map(|_| None),
            };
            let all_heads = entry(&target, heads, heads, n_rep as i64)?;
            let kv_entry = entry(&expand_shape, heads, heads, 1)?;
            let (d_entry, d_target) =
                (entry(&expand_shape, rank, rank - 1, 1)?, entry(&target, rank - 1, rank - 1, 1)?);
            let kv_heads = match (all_heads, kv_entry) {
                (Some(h), _) => Some((h > 0 && (h as usize).is_multiple_of(n_rep)).then_some(h as usize / n_rep)?),
                (None, Some(k)) if k > 1 => Some(k as usize),
                _ => None,
            };
            // An expand entry of 1 may be a broadcast: the target must then write the size. Read
            // back, it is x's last dimension where shape inference knows it.
            let head_dim = match (d_target, d_entry) {
                (Some(d), _) if d > 0 => Some(d as usize),
                (_, Some(d)) if d > 1 => Some(d as usize),
                (None, None) => ir.dim_from_end(g, x, -1).map(|d| d as usize),
                _ => None,
            };
            let fits = kv_entry.is_none_or(|k| k == 1 || Some(k as usize) == kv_heads)
                && d_entry.is_none_or(|d| d == 1 || Some(d as usize) == head_dim)
                && d_target.is_none_or(|d| d == -1 || Some(d as usize) == head_dim)
                && (head_dim.is_none_or(|d| d > 1) || d_target == Some(1));
            let written = [
                kv_entry.is_some_and(|k| k != 1),
                d_entry.is_some_and(|d| d != 1),
                all_heads.is_some(),
                d_target.is_some_and(|d| d != -1),
            ];
            let writable = (expand_shape.writable() || !written[0] && !written[1]) && target.writable();
            let mut inner = vec![NodeId(n), NodeId(expand)];
            if [kv_entry, d_entry, all_heads, d_target].contains(&None) {
                // Sizes read back: the pattern answers for the shapes it computes (the Shape of
                // x among them), which must serve it alone and hold nothing else of x's.
                let shapes = [&expand_shape, &target];
                inner.extend(read_back_shapes(cx, x, (heads, rank), shapes, [&g.node[expand], &g.node[reshape]])?);
                let outside = inner.iter().flat_map(|&n| &g.node[n.0].output).any(|v| {
                    ir.outputs.contains(v)
                        || ir.readers(v).iter().any(|(r, _)| !inner.contains(&NodeId(*r)) && *r != reshape)
                });
                (!outside).then_some(())?;
            }
            (fits && writable).then_some(())?;
            let repeat = RepeatKv {
                input: x.as_str(),
                inner,
                unsqueeze: NodeId(n),
                expand: NodeId(expand),
                expand_shape,
                target,
                rank,
                heads,
                n_rep,
                kv_heads,
                head_dim,
                written,
            };
            Some((NodeId(reshape), repeat))
        })();
        found.extend(matched);
    }
    found
}

/// The nodes computing `shapes` (read by `readers` at slot 1) when each piece is a constant or
/// a dimension read back: of x's heads (axis `heads`) only at the heads entry, of its head
/// dimension (the last axis) only at the last entry, where [`repeated_heads`] checked them;
/// x's other axes anywhere (they do not change); another tensor's through its own `Shape` rule.
fn read_back_shapes(
    cx: &Ctx,
    x: &str,
    (heads, rank): (usize, usize),
    shapes: [&ShapeInput; 2],
    readers: [&NodeProto; 2],
) -> Option<Vec<NodeId>> {
    let mut nodes = vec![];
    for (shape, reader) in shapes.into_iter().zip(readers) {
        let last = shape.len() - 1;
        for k in 0..shape.len() {
            if shape.get(cx, k).is_some() {
                continue;
            }
            let r = shape.read_back(cx, k)?;
            let placed = r.tensor != x
                || (r.axis != heads && r.axis != rank - 1)
                || (r.axis == heads && k == heads)
                || (r.axis == rank - 1 && k == last);
            placed.then_some(())?;
            nodes.extend(r.steps);
            // Another tensor's Shape keeps its own rule, which says what reading it costs.
            if r.tensor == x {
                nodes.push(r.shape);
            }
        }
        nodes.extend(shape.assembly(cx, reader, 1));
    }
    nodes.sort_unstable_by_key(|n| n.0);
    nodes.dedup();
    Some(nodes)
}

impl RepeatKv<'_> {
    fn heads_of(&self, count: usize) -> Option<Heads> {
        (count > 1).then_some(Heads::plain(self.heads as isize - self.rank as isize, count))
    }

    /// The key/value heads and head dimension: as written, or as the input's (or output's)
    /// heads are laid out, or the input's width over the head dimension.
    fn sizes(&self, lx: Layout, lo: Layout) -> Option<(usize, usize)> {
        let per = |l: Layout| l.per_head().filter(|_| l.heads.is_some());
        let d = self.head_dim.or(per(lx)).or(per(lo));
        let kv = self
            .kv_heads
            .or(lx.heads.map(|h| h.count))
            .or(lo.heads.map(|h| h.count / self.n_rep))
            .or(d.zip(lx.width).filter(|&(d, w)| d > 0 && w % d == 0).map(|(d, w)| w / d))?;
        let d = d.or(lx.width.filter(|_| kv == 1))?;
        Some((kv, d))
    }

    /// Input channel of output channel `c`: head `c / D` is input head `c / D / n_rep`.
    fn source(&self, c: usize, d: usize) -> usize {
        (c / d / self.n_rep) * d + c % d
    }
}

impl<'g> ChannelOp<'g> for RepeatKv<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it repeats constant heads")
    }

    fn same_entries_in_heads(&self, _g: &Graph<'g>, _node: NodeId, _layouts: &Layouts) -> bool {
        false
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        for v in [x, o] {
            cx.set_axis(v, -1);
            cx.set_rank(v, self.rank);
            cx.set_block(v, 1);
        }
        let Some((kv, d)) = self.sizes(cx.get(x), cx.get(o)) else { return };
        for (v, count) in [(x, kv), (o, kv * self.n_rep)] {
            cx.set_width(v, count * d);
            if let Some(h) = self.heads_of(count) {
                cx.set_heads(v, h);
            }
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        // Heads that some other operator laid out differently (a conflict already forces them),
        // a single key head that is not the only head (the copies would not line up), or sizes
        // nothing tells.
        let sizes = self.sizes(cx.layout(x), cx.layout(o));
        if sizes.is_none_or(|(kv, _)| kv == 1 && cx.layout(x).heads.is_some()) {
            cx.force(x, Why::LayoutConflict);
            cx.force(o, Why::LayoutConflict);
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let Some((kv, d)) = self.sizes(cx.layout(x), cx.layout(o)) else { return };
        if cx.width(x) != Some(kv * d) || cx.width(o) != Some(kv * self.n_rep * d) {
            return;
        }
        for h in 0..kv * self.n_rep {
            cx.tie(x, self.source(h * d, d), o, h * d, d);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let Some((_, d)) = self.sizes(cx.layout(x), cx.layout(o)) else { return };
        let xs = cx.consts(x).to_vec();
        let r = (0..cx.consts(o).len()).map(|c| xs.get(self.source(c, d)).copied().flatten()).collect();
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let (needed, consts) = (cx.needed(o), cx.consts(x));
        let Some((kv, d)) = self.sizes(cx.layout(x), cx.layout(o)) else { return cx.mark_all(x) };
        if needed.len() != kv * self.n_rep * d || consts.len() != kv * d {
            return cx.mark_all(x);
        }
        let marks: Vec<usize> = (0..needed.len())
            .filter(|&c| needed[c])
            .map(|c| self.source(c, d))
            .filter(|&s| consts[s].is_none())
            .collect();
        marks.into_iter().for_each(|s| cx.mark(x, s));
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return Ok(()) };
        let Some((kv, d)) = self.sizes(cx.layout(x), cx.layout(o)) else { return Ok(()) };
        let full = kv * self.n_rep * d;
        let keep = cx.kept(o, full);
        if keep.len() == full {
            return Ok(());
        }
        let (rows, cols) = match cx.layout(o).heads {
            Some(_) => heads_kept(cx.layout(o), &keep),
            None => (vec![0], keep.clone()),
        };
        let (groups, dims) = ((rows.len() / self.n_rep) as i64, cols.len() as i64);
        let (last, heads) = (self.rank, self.heads);
        let [kv_written, d_written, heads_written, d_target_written] = self.written;
        let expand_changes: Vec<(usize, i64)> = [(heads, groups, kv_written), (last, dims, d_written)]
            .into_iter()
            .filter(|e| e.2)
            .map(|(k, v, _)| (k, v))
            .collect();
        if !expand_changes.is_empty() {
            self.expand_shape.rewrite(cx, self.expand, 1, &expand_changes);
        }
        let target_changes: Vec<(usize, i64)> =
            [(heads, groups * self.n_rep as i64, heads_written), (last - 1, dims, d_target_written)]
                .into_iter()
                .filter(|e| e.2)
                .map(|(k, v, _)| (k, v))
                .collect();
        if !target_changes.is_empty() {
            let node = cx.node;
            self.target.rewrite(cx, node, 1, &target_changes);
        }
        // The declared shapes of the pattern's inner values, `[.., KVH, 1 | n_rep, T, D]`.
        let heads_axis = self.heads as isize - self.rank as isize - 1;
        for inner in [self.unsqueeze, self.expand] {
            let value = cx.node_of(inner).output[0].clone();
            cx.push(Edit::Width { value: value.clone(), axis: heads_axis, from: kv, to: groups as usize });
            cx.push(Edit::Width { value, axis: -1, from: d, to: dims as usize });
        }
        Ok(())
    }
}

/// The dynamo exporter's `K^T` in `scaled_dot_product_attention` (torchlib): the last two axes
/// swapped through a 3-D reshape, `Reshape(k, [-1, k.shape[-2], k.shape[-1]])`, `Transpose(perm
/// = [0, 2, 1])`, `Reshape(.., k.shape[:-2] ++ [k.shape[-1], k.shape[-2]])`, with every shape
/// read from `k` itself. It is a transpose of the last two axes whatever `k`'s width, so its
/// shapes need no rewriting; the pattern only keeps the `Shape` of `k` from counting as a read
/// of the channel count.
pub(crate) struct SwapLast<'g> {
    input: &'g str,
    pub inner: Vec<NodeId>,
}

/// Every such swap in the graph, keyed by its last Reshape.
pub(crate) fn swapped_last_axes<'g>(cx: &Ctx<'g>) -> Vec<(NodeId, SwapLast<'g>)> {
    let (g, ir) = (cx.graph, cx.ir);
    let producer = |name: &str| ir.producer.get(name).copied();
    let op = |n: usize, t: &str| g.node[n].op_type() == t && g.node[n].domain().is_empty();
    let mut found = vec![];
    for (last, reshape) in g.node.iter().enumerate() {
        let matched = (|| {
            (op(last, "Reshape") && reshape.input.len() == 2).then_some(())?;
            let t = producer(&reshape.input[0]).filter(|&t| op(t, "Transpose"))?;
            (g.node[t].attr_ints("perm")? == [0, 2, 1]).then_some(())?;
            let first = producer(&g.node[t].input[0]).filter(|&r| op(r, "Reshape"))?;
            let k = g.node[first].input.first()?.as_str();
            let (c1, c2) = (producer(g.node[first].input.get(1)?)?, producer(&reshape.input[1])?);
            (op(c1, "Concat") && op(c2, "Concat")).then_some(())?;
            // Pieces: Slices of one Shape of k, [-1] a constant.
            let mut shape = None;
            let mut piece = |name: &str| -> Option<(Vec<i64>, Vec<i64>, usize)> {
                let s = producer(name).filter(|&s| op(s, "Slice"))?;
                let node = &g.node[s];
                (node.input.len() == 3).then_some(())?;
                let sh = producer(&node.input[0]).filter(|&n| op(n, "Shape"))?;
                let plain = g.node[sh].attr_i("start", 0) == 0 && g.node[sh].attr("end").is_none();
                (plain && g.node[sh].input.first().map(String::as_str) == Some(k)).then_some(())?;
                (*shape.get_or_insert(sh) == sh).then_some(())?;
                Some((cx.ints(node, 1)?, cx.ints(node, 2)?, s))
            };
            let [minus_one, second, last_dim] = &g.node[c1].input[..] else { return None };
            (cx.const_tensor(minus_one).map(int64s)? == [-1]).then_some(())?;
            let (s2, e2, n2) = piece(second)?;
            let (s1, e1, n1) = piece(last_dim)?;
            let [lead, l2, p2] = &g.node[c2].input[..] else { return None };
            let (s0, e0, n0) = piece(lead)?;
            let same = l2 == last_dim && p2 == second;
            let bounds = s2 == [-2] && e2 == [-1] && s1 == [-1] && e1 == [i64::MAX] && s0 == [i64::MIN] && e0 == [-2];
            (same && bounds).then_some(())?;
            let inner = vec![shape?, n0, n1, n2, c1, first, t, c2];
            // Nothing outside reads what the pattern computes (the shape of k included).
            let outside = inner
                .iter()
                .flat_map(|&n| &g.node[n].output)
                .any(|v| ir.outputs.contains(v) || ir.readers(v).iter().any(|(r, _)| !inner.contains(r) && *r != last));
            (!outside).then(|| SwapLast { input: k, inner: inner.into_iter().map(NodeId).collect() })
        })();
        found.extend(matched.map(|s| (NodeId(last), s)));
    }
    found
}

impl<'g> ChannelOp<'g> for SwapLast<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it transposes a constant")
    }

    fn same_entries_in_heads(&self, _g: &Graph<'g>, _node: NodeId, _layouts: &Layouts) -> bool {
        false
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let swap = |a: isize| match a {
            -1 => -2,
            -2 => -1,
            a => a,
        };
        for (from, to) in [(x, o), (o, x)] {
            let l = cx.get(from);
            l.axis.inspect(|&a| cx.set_axis(to, swap(a)));
            l.rank.inspect(|&r| cx.set_rank(to, r));
            l.width.inspect(|&w| cx.set_width(to, w));
            l.block.inspect(|&b| cx.set_block(to, b));
            l.heads.inspect(|&h| cx.set_heads(to, Heads { axis: swap(h.axis), ..h }));
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        if let (Some(w), true) = (cx.width(x), cx.width(x) == cx.width(o)) {
            cx.tie(x, 0, o, 0, w);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let r = cx.consts(x).to_vec();
        cx.set(o, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (Some(x), Some(o)) = (cx.value(self.input), cx.output(0)) else { return };
        let needed = cx.needed(o).to_vec();
        if needed.len() != cx.needed(x).len() {
            return cx.mark_all(x);
        }
        (0..needed.len()).filter(|&c| needed[c]).for_each(|c| cx.mark(x, c));
    }
}

/// ONNX's `Attention` (opset 23), in its 4-D form: `Q [B, Hq, T, D]`, `K [B, Hkv, S, D]`,
/// `V [B, Hkv, S, Dv]` to `Y [B, Hq, T, Dv]`, query head `h` reading key/value head
/// `h / (Hq / Hkv)`. The scores and weighted-values rules of the written-out form, inside one
/// operator: query/key dimensions tie across the group, value/output dimensions too, a head
/// whose output nothing needs leaves, and the scale is written out when the head dimension
/// shrinks (its default, `1 / sqrt(D)`, would follow the new width).
pub(crate) struct AttentionOp {
    /// `(q_num_heads, kv_num_heads)` of 3-D inputs, whose heads are inside the last axis: every
    /// head stays and keeps the same entries (grouped layouts), so the operator can split them.
    merged: Option<(usize, usize)>,
    scale_written: bool,
    /// Softcapping (`softcap * tanh(S / softcap)`) breaks the softmax's shift invariance.
    shift_invariant: bool,
    rows: Rows,
    has_mask: bool,
}

pub(crate) struct Attention;

impl OpRule for Attention {
    fn op_types(&self) -> &'static [&'static str] {
        &["Attention"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let used = |o: &String| !o.is_empty() && (!cx.ir.readers(o).is_empty() || cx.ir.outputs.contains(o));
        if node.output.iter().skip(1).any(used) {
            return Role::Opaque(Opaque::AuxiliaryOutput("its cache or scores outputs are used"));
        }
        if node.input.iter().skip(4).any(|i| !i.is_empty()) {
            return Role::Opaque(Opaque::Unsupported("it reads a key/value cache".into()));
        }
        let merged = match (node.attr_i("q_num_heads", 0), node.attr_i("kv_num_heads", 0)) {
            (0, 0) => None,
            (q, kv) if q > 0 && kv > 0 => Some((q as usize, kv as usize)),
            _ => return Role::Opaque(Opaque::Malformed("it has one of q_num_heads and kv_num_heads only")),
        };
        let has_mask = node.input.get(3).is_some_and(|m| !m.is_empty());
        Role::Op(Box::new(AttentionOp {
            merged,
            scale_written: node.attr("scale").is_some(),
            shift_invariant: node.attr_f("softcap", 0.0) == 0.0,
            // A mask may leave a row with no key at all: its weights are then not a softmax row.
            rows: if has_mask { Rows::OneOrZero } else { Rows::One },
            has_mask,
        }))
    }
}

impl AttentionOp {
    /// `(Hq, Hkv, D, Dv)` when the layouts of Q, K and V line up.
    fn shape(&self, l: [Layout; 3]) -> Option<(usize, usize, usize, usize)> {
        if let Some((hq, hkv)) = self.merged {
            let per = |l: Layout, h: usize| l.width.filter(|w| l.heads.is_none() && w.is_multiple_of(h)).map(|w| w / h);
            let (d, dk, dv) = (per(l[0], hq)?, per(l[1], hkv)?, per(l[2], hkv)?);
            return (hq.is_multiple_of(hkv) && d == dk).then_some((hq, hkv, d, dv));
        }
        // A 4-D operand laid out without heads has one (multi-query attention's keys).
        let count = |l: Layout| l.width.map(|_| l.heads.map_or(1, |h| h.count));
        let (hq, hkv) = (count(l[0])?, count(l[1])?);
        let (d, dk, dv) = (l[0].per_head()?, l[1].per_head()?, l[2].per_head()?);
        let ok = count(l[2]) == Some(hkv) && hkv > 0 && hq.is_multiple_of(hkv) && d == dk;
        ok.then_some((hq, hkv, d, dv))
    }
}

impl<'g> ChannelOp<'g> for AttentionOp {
    fn activations(&self) -> Activations {
        Activations::new(vec![0, 1, 2], "its query, key or value is a constant or missing")
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let Some(y) = cx.output(0) else { return };
        let (q, v) = (cx.input(0), cx.input(2));
        let (k, rank) = (cx.input(1), if self.merged.is_some() { 3 } else { 4 });
        for x in [q, k, v, y] {
            cx.set_axis(x, -1);
            cx.set_rank(x, rank);
            cx.set_block(x, 1);
        }
        if let Some((hq, hkv)) = self.merged {
            [(q, hq), (k, hkv), (v, hkv), (y, hq)].into_iter().for_each(|(x, h)| cx.set_groups(x, h));
            if let Some(w) = cx.get(v).width.filter(|w| w.is_multiple_of(hkv)) {
                cx.set_width(y, hq * (w / hkv));
            }
            return;
        }
        let lq = cx.get(q);
        if let (Some(_), Some(dv)) = (lq.width, cx.get(v).per_head()) {
            lq.heads.inspect(|&h| cx.set_heads(y, h));
            cx.set_width(y, lq.heads.map_or(1, |h| h.count) * dv);
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let Some(y) = cx.output(0) else { return };
        let values = [cx.input(0), cx.input(1), cx.input(2), y];
        let l = [cx.layout(values[0]), cx.layout(values[1]), cx.layout(values[2])];
        let fits = self.shape(l).is_some_and(|(hq, _, _, dv)| cx.layout(y).width == Some(hq * dv));
        if !fits {
            values.iter().for_each(|&v| cx.force(v, Why::UnknownPartWidths));
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (q, k, v, Some(y)) = (cx.input(0), cx.input(1), cx.input(2), cx.output(0)) else { return };
        let Some((hq, hkv, d, dv)) = self.shape([cx.layout(q), cx.layout(k), cx.layout(v)]) else { return };
        let rep = hq / hkv;
        for h in 0..hq {
            cx.tie(q, h * d, k, h / rep * d, d);
            cx.tie(y, h * dv, v, h / rep * dv, dv);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (q, k, v, Some(y)) = (cx.input(0), cx.input(1), cx.input(2), cx.output(0)) else { return };
        let Some((hq, hkv, _, dv)) = self.shape([cx.layout(q), cx.layout(k), cx.layout(v)]) else { return };
        let vs = cx.consts(v).to_vec();
        let r = (0..hq * dv)
            .map(|c| vs.get((c / dv) / (hq / hkv) * dv + c % dv).copied().flatten().filter(|&k| self.rows.keeps(k)));
        let r: Vec<_> = r.collect();
        cx.set(y, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (q, k, v, Some(y)) = (cx.input(0), cx.input(1), cx.input(2), cx.output(0)) else { return };
        // A computed mask is read whole (it has no channels of its own).
        if let Some(mask) = cx.graph.input(cx.node, 3).filter(|_| self.has_mask) {
            cx.mark_all(mask);
        }
        let Some((hq, hkv, d, dv)) = self.shape([cx.layout(q), cx.layout(k), cx.layout(v)]) else {
            return [q, k, v].into_iter().for_each(|x| cx.mark_all(x));
        };
        let rep = hq / hkv;
        let (needed, out) = (cx.needed(y), cx.consts(y));
        if needed.len() != hq * dv || out.len() != hq * dv {
            return [q, k, v].into_iter().for_each(|x| cx.mark_all(x));
        }
        let (qc, kc) = (cx.consts(q), cx.consts(k));
        let mut marks = vec![];
        for h in 0..hq {
            let outputs = h * dv..(h + 1) * dv;
            // Output dimensions read their value dimensions unless they are known constants.
            marks
                .extend(outputs.clone().filter(|&c| needed[c] && out[c].is_none()).map(|c| (v, h / rep * dv + c % dv)));
            if !outputs.into_iter().any(|c| needed[c] && out[c].is_none()) {
                continue; // nothing reads this head's output: its scores do not matter
            }
            for e in 0..d {
                let (qd, kd) = (qc[h * d + e], kc[h / rep * d + e]);
                let vanishes = qd == Some(0.0) || kd == Some(0.0) || (self.shift_invariant && kd.is_some());
                if !vanishes {
                    marks.push((q, h * d + e));
                    marks.push((k, h / rep * d + e));
                }
            }
        }
        marks.into_iter().for_each(|(x, c)| cx.mark(x, c));
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let q = cx.input(0);
        let l = cx.layout(q);
        let Some((_, _, d, _)) = self.shape([l, cx.layout(cx.input(1)), cx.layout(cx.input(2))]) else { return Ok(()) };
        let keep = cx.kept(q, l.width.expect("shaped"));
        if !self.scale_written && first_head_entries(&keep, d).len() < d {
            let node = cx.node.0;
            cx.push(Edit::Attr { node, attr: attr_float("scale", 1.0 / (d as f32).sqrt()) });
        }
        Ok(())
    }

    fn head_links(&self, g: &Graph<'g>, node: NodeId) -> Vec<(ValueId, Option<ValueId>)> {
        g.input(node, 0).map(|q| (q, g.output(node, 0))).into_iter().collect()
    }
}
