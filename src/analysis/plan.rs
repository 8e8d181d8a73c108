//! Plan: the decision as edits to the model, and the report of what left and what was kept.

use std::collections::{BTreeMap, HashMap};

use super::decide::{Decision, InputPolicy};
use super::ids::{NodeId, ValueId};
use super::layout::Layout;
use super::operands::Param;
use super::reasons::{KeepReason, Opaque, Why};
use super::values::{at_node, At};
use super::{Facts, Needed};
use crate::error::Result;
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::tensor::{int64_vector_like, FloatType};
use crate::ops::{ClnForm, Role};
use crate::report::{Blocked, GatheredInput, LayerReport, Reason, Removals};
use crate::rewrite::Edit;
use crate::verify::{ChannelMap, Kept};

/// What the analysis decided, as edits to apply and a report of layers and blocks.
pub(crate) struct Plan {
    pub edits: Vec<Edit>,
    pub removals: Removals,
    /// Which entries of each laid-out value the minimized model keeps, for block-wise checks.
    pub channels: ChannelMap,
}

pub(crate) fn plan(facts: &Facts, decision: &Decision, cln_form: ClnForm) -> Result<Plan> {
    let g = &facts.graph;
    let mut cx = PlanCx {
        at: At { graph: g, node: NodeId(0) },
        facts,
        decision,
        cln_form,
        edits: vec![],
        layers: vec![],
        bias_folds: HashMap::new(),
        shifted: vec![],
    };
    for (node, op) in g.ops() {
        cx.at.node = node;
        op.rewrite(&mut cx)?;
    }
    let PlanCx { mut edits, layers, shifted, .. } = cx;
    let mut gathered = vec![];
    let mut channels = ChannelMap::new();
    for v in g.value_ids() {
        let l = facts.layouts[v];
        let (Some(w), Some(axis)) = (l.width, l.axis) else { continue };
        let keep = decision.kept(facts, v, w);
        let name = g.name(v).to_string();
        let b = l.block.unwrap_or(1);
        let gathered_input = decision.policy == InputPolicy::Gather && g.is_graph_input(v);
        // A value whose constants another node's bias now adds differs from the original's by
        // them: no entry of it can be compared.
        let comparable = l.heads.is_none() && !gathered_input && !shifted.contains(&v);
        if keep.len() == w && facts.needed[v].iter().all(|&n| n) {
            // Whole and needed whole: the same entries, not listed (a model's shapes may claim
            // more entries than any tensor holds).
            if comparable {
                channels.insert(name, Kept { axis, entries: w * b, keep: None, compared: None, constants: vec![] });
            }
            continue;
        }
        let mut kept = vec![false; w];
        keep.iter().for_each(|&c| kept[c] = true);
        let entries = l.entries_where(w, w * b, |c| kept[c]);
        if comparable {
            // Entries nothing needs may hold anything in the minimized model.
            let needed = &facts.needed[v];
            let constants = l
                .entries_where(w, w * b, |c| !kept[c] && needed[c])
                .into_iter()
                .filter_map(|e| facts.consts[v][l.channel_of(e, w)].map(|k| (e, k)))
                .collect();
            let compared: Vec<usize> = (0..entries.len()).filter(|&i| needed[l.channel_of(entries[i], w)]).collect();
            let compared = (compared.len() < entries.len()).then_some(compared);
            let keep = (keep.len() < w).then(|| entries.clone());
            channels.insert(name.clone(), Kept { axis, entries: w * b, keep, compared, constants });
        }
        if keep.len() == w {
            continue;
        }
        let select = g.ir.producer.get(&name).map(|&n| NodeId(n)).and_then(|n| match g.role(n) {
            Role::Op(op) => op.selected().map(|indices| (n, indices)),
            _ => None,
        });
        if let Some((n, indices)) = select {
            // An input read through a Gather already: fewer indices.
            let data = g.node(n).input[0].clone();
            gathered.push(GatheredInput { input: data, features: w, kept: keep.len() });
            let kept: Vec<i64> = keep.iter().map(|&c| indices[c]).collect();
            let like = g.const_input(n, 1).expect("constant indices");
            let tensor = int64_vector_like(like, &kept);
            edits.push(Edit::Const { node: n.0, slot: 1, tensor });
            edits.push(Edit::Width { value: name, axis, from: w, to: keep.len() });
        } else if gathered_input {
            gathered.push(GatheredInput { input: name.clone(), features: w * b, kept: entries.len() });
            edits.push(Edit::GatherInput { input: name, axis, keep: entries });
        } else if let Some(heads) = l.heads {
            let (rows, cols) = heads_kept(l, &keep);
            let per = w / heads.count;
            edits.push(Edit::Width { value: name.clone(), axis: heads.axis, from: heads.count, to: rows.len() });
            edits.push(Edit::Width { value: name, axis, from: per * b, to: cols.len() * b });
        } else {
            edits.push(Edit::Width { value: name, axis, from: w * b, to: keep.len() * b });
        }
    }
    let opaque = g
        .order
        .iter()
        .filter_map(|&n| match g.role(n) {
            Role::Opaque(why) if *why != Opaque::ComputesConstant => Some(Reason {
                code: why.code().into(),
                node: Some(g.node(n).name().to_string()),
                message: format!("{}: {why}", g.label(n)),
            }),
            _ => None,
        })
        .chain(facts.non_finite.iter().map(|&n| Reason {
            code: "non-finite".into(),
            node: Some(g.node(n).name().to_string()),
            message: format!(
                "{}: it reads a constant holding Inf or NaN, so what it reads and what it computes keep every channel (0 * Inf is NaN)",
                g.label(n)
            ),
        }))
        .collect();
    let blocked = blocked(facts, decision);
    Ok(Plan {
        edits,
        removals: Removals { layers, blocked, opaque, gathered_inputs: gathered, stored_float: vec![] },
        channels,
    })
}

/// The entries the first kept head keeps, for channels in heads (or groups) of `per` entries
/// that keep the same entries in every kept head; the heads need not be the layout's own (3-D
/// attention's heads are groups of the last axis).
pub(crate) fn first_head_entries(keep: &[usize], per: usize) -> Vec<usize> {
    let first = keep.first().map_or(0, |&c| c / per);
    keep.iter().filter(|&&c| c / per == first).map(|&c| c % per).collect()
}

/// The heads and the entries per head that a product of kept channels keeps. Ragged heads,
/// and heads that keep entries of their own (as many each: `decide::equal_heads`), stand for
/// their entries' count, `0..n`.
pub(crate) fn heads_kept(l: Layout, keep: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let per = l.per_head().expect("heads have a width");
    let (mut rows, mut cols): (Vec<usize>, Vec<usize>) = keep.iter().map(|&c| (c / per, c % per)).unzip();
    for v in [&mut rows, &mut cols] {
        v.sort_unstable();
        v.dedup();
    }
    let own = rows.len() * cols.len() != keep.len();
    debug_assert!(!own || keep.len().is_multiple_of(rows.len()), "heads keep as many entries each");
    if (own || l.heads.is_some_and(|h| h.ragged)) && !rows.is_empty() {
        cols = (0..keep.len() / rows.len()).collect();
    }
    (rows, cols)
}

/// Forced values that hold channels nothing needs, and why they were kept: the report's answer
/// to "why did this not shrink?".
fn blocked(facts: &Facts, decision: &Decision) -> Vec<Blocked> {
    let g = &facts.graph;
    // A class is free when each of its channels is unneeded or constant: needed by the graph's
    // readers (`demanded`), for forced values, whose own forcing needs every channel.
    let bound_by = |needed: &Needed| {
        let mut bound = vec![false; facts.classes.len()];
        for v in g.value_ids() {
            for c in 0..facts.layouts[v].width.unwrap_or(0) {
                if needed[v][c] && facts.consts[v][c].is_none() {
                    bound[facts.classes.class(v, c)] = true;
                }
            }
        }
        bound
    };
    let (bound, demanded) = (bound_by(&facts.needed), bound_by(&facts.demanded));
    let mut out = vec![];
    for v in g.value_ids() {
        let Some(w) = facts.layouts[v].width.filter(|_| decision.forced(facts, v)) else { continue };
        // Sizes computed from shapes are laid out like channels, but no channel of theirs leaves.
        let integer = g.ir.elem_type(g.proto, g.name(v)).is_some_and(|t| FloatType::from_onnx(t).is_none());
        if integer {
            continue;
        }
        let removable = (0..w).filter(|&c| !demanded[facts.classes.class(v, c)]).count();
        if removable > 0 {
            let input =
                (decision.policy == InputPolicy::Keep && g.is_graph_input(v)).then_some(KeepReason::GraphInput(v));
            let reasons = input.iter().chain(facts.forced.of(v)).map(|r| r.render(g)).collect();
            out.push(Blocked { values: vec![g.name(v).to_string()], width: w, removable, reasons });
        }
    }
    // Constant channels that a rule needed (it could not fold their values into what it computes)
    // in classes that nothing varying needs: they would have left but for that node.
    let mut held: BTreeMap<(ValueId, NodeId), usize> = BTreeMap::new();
    for (&(v, c), &n) in &facts.needed_by {
        if !bound[facts.classes.class(v, c)] && !decision.forced(facts, v) {
            *held.entry((v, n)).or_default() += 1;
        }
    }
    out.extend(held.into_iter().map(|((v, n), removable)| Blocked {
        values: vec![g.name(v).to_string()],
        width: facts.layouts[v].width.unwrap_or(0),
        removable,
        reasons: vec![KeepReason::Node { node: n, why: Why::NeedsConstant }.render(g)],
    }));
    out
}

/// What an operator's `rewrite` may read (the facts and the decision) and emit.
pub(crate) struct PlanCx<'a, 'g> {
    at: At<'a, 'g>,
    facts: &'a Facts<'g>,
    decision: &'a Decision,
    pub cln_form: ClnForm,
    edits: Vec<Edit>,
    layers: Vec<LayerReport>,
    /// Constants a MatMul folds into the bias `Add` that reads it, by (Add node, bias slot):
    /// planned in topological order, so the Add finds them when its turn comes.
    bias_folds: HashMap<(NodeId, usize), Vec<f64>>,
    /// Values whose folded constants a reader's bias adds instead: they differ from the original.
    shifted: Vec<ValueId>,
}

at_node!(PlanCx);

impl<'g> PlanCx<'_, 'g> {
    pub fn layout(&self, v: ValueId) -> Layout {
        self.facts.layouts[v]
    }

    pub fn consts(&self, v: ValueId) -> &[Option<f64>] {
        &self.facts.consts[v]
    }

    pub fn param(&self, slot: usize) -> Option<&Param<'g>> {
        self.facts.operands.get(self.at.node, slot)
    }

    pub fn const_tensor(&self, name: &str) -> Option<&'g TensorProto> {
        self.facts.graph.ir.const_tensor(self.facts.graph.proto, name)
    }

    pub fn node_of(&self, n: NodeId) -> &'g NodeProto {
        self.facts.graph.node(n)
    }

    pub fn readers(&self, name: &str) -> usize {
        self.facts.graph.ir.readers(name).len()
    }

    /// The channels of `v` that stay (all of them when its width is unknown: `full`).
    pub fn kept(&self, v: ValueId, full: usize) -> Vec<usize> {
        self.decision.kept(self.facts, v, full)
    }

    pub fn push(&mut self, edit: Edit) {
        self.edits.push(edit)
    }

    /// New contents for the constant input `slot` of `node`, which several rules may set alike
    /// (a size that the targets of Q, K and V all read): the first setting stands.
    pub fn set_shared_const(&mut self, node: NodeId, slot: usize, tensor: TensorProto) {
        let set =
            self.edits.iter().any(|e| matches!(e, Edit::Const { node: n, slot: s, .. } if *n == node.0 && *s == slot));
        if !set {
            self.edits.push(Edit::Const { node: node.0, slot, tensor });
        }
    }

    /// Sets constant inputs of `producer`, whose output this node reads at input 1 (a computed
    /// target shape): in place when this node is its only reader, else on a private copy, since
    /// exporters compute one target and hand it to several reshapes.
    pub fn rewrite_producer(&mut self, producer: NodeId, entries: Vec<(usize, TensorProto)>) {
        self.rewrite_producer_of(self.at.node, 1, producer, entries)
    }

    /// [`Self::rewrite_producer`] for the shape that input `slot` of `reader` reads (a node of
    /// a multi-node pattern).
    pub fn rewrite_producer_of(
        &mut self,
        reader: NodeId,
        slot: usize,
        producer: NodeId,
        entries: Vec<(usize, TensorProto)>,
    ) {
        if self.readers(&self.node_of(producer).output[0]) == 1 {
            self.extend(entries.into_iter().map(|(slot, tensor)| Edit::Const { node: producer.0, slot, tensor }));
        } else {
            self.push(Edit::CloneProducer { node: reader.0, slot, producer: producer.0, entries });
        }
    }

    pub fn extend(&mut self, edits: impl IntoIterator<Item = Edit>) {
        self.edits.extend(edits)
    }

    pub fn layer(&mut self, report: LayerReport) {
        self.layers.push(report)
    }

    /// Hands `fold` (per output channel of `y`) to the per-channel bias `Add` that is the only
    /// reader of `y`, when there is one of this type; says whether it took them.
    pub fn fold_into_reader(&mut self, y: ValueId, dtype: FloatType, fold: Vec<f64>) -> bool {
        let g = &self.facts.graph;
        let name = g.name(y);
        let [(m, slot)] = g.ir.readers(name) else { return false };
        let m = NodeId(*m);
        if g.ir.outputs.contains(name) || g.node(m).op_type() != "Add" || g.node(m).input.len() != 2 {
            return false;
        }
        let Role::Op(op) = g.role(m) else { return false };
        let other = if *slot == 0 { 1 } else { 0 };
        let bias = self.facts.operands.get(m, other);
        let ok = op.activations().slots == [*slot]
            && bias.is_some_and(|p| p.channel_dim.is_some() && p.values.dtype == dtype);
        if ok {
            self.bias_folds.insert((m, other), fold);
            self.shifted.push(y);
        }
        ok
    }

    /// The constants another node folded into this node's bias at `slot`.
    pub fn take_fold(&mut self, slot: usize) -> Option<Vec<f64>> {
        self.bias_folds.remove(&(self.at.node, slot))
    }
}
