//! Channel analysis: which channels of which tensors are dead or constant, and which can leave.
//!
//! Follows docs/design.md:
//! 1. **Layout.** Every activation gets a channel axis (counted from the end), a width, a rank
//!    where known, and a block size (entries per channel along the axis: 1, or `H * W` once a
//!    feature map is flattened into a Gemm). Linear layers and convolutions fix them; pointwise
//!    operators, reshapes, concatenations and splits carry them along, to a fixed point.
//! 2. **Channel classes.** Union-find over individual channels: a pointwise operator ties channel
//!    `c` of its inputs and output, a concatenation ties input channel `c` to output channel
//!    `offset + c`. A class is a set of channels that must be kept or removed together.
//! 3. **Forward constancy.** A channel is constant when it is the same number for every input
//!    and position.
//! 4. **Backward need.** A channel is needed when it is not constant (or its constant cannot be
//!    folded exactly) and something needed reads it with a non-zero weight.
//! 5. **Decision.** A class leaves when none of its channels is needed and none belongs to a
//!    *forced* tensor: graph inputs and outputs, tensors an opaque operator touches, tensors
//!    whose layout is ambiguous. Forced tensors keep every channel; the report says why.
//!
//! One forward and one backward pass reach the fixed point on a DAG; the tests check that a
//! second minimization removes nothing more.

use std::collections::HashMap;

use petgraph::unionfind::UnionFind;

use crate::ir::Ir;
use crate::onnx::proto::{tensor_proto::DataType, GraphProto, TensorProto};
use crate::onnx::tensor::{encode, int64s, with_data, with_int64s, Values};
use crate::ops::{self, Ctx, Layout, Pointwise, Role};
use crate::report::{Blocked, GatheredInput, LayerReport};
use crate::rewrite::Edit;

/// (node index, input slot) of a pointwise node's constant operand.
type ParamKey = (usize, usize);

/// A per-channel constant operand of a pointwise node.
struct Param<'g> {
    values: Values<'g>,
    /// Position of the channel dimension in the constant's dims, when it is not broadcast.
    channel_dim: Option<usize>,
}

impl Param<'_> {
    fn at(&self, c: usize) -> f64 {
        self.values.get(if self.channel_dim.is_some() { c } else { 0 })
    }
}

/// What the analysis decided, as edits to apply and a report of layers and blocks.
pub struct Plan {
    pub edits: Vec<Edit>,
    pub layers: Vec<LayerReport>,
    pub blocked: Vec<Blocked>,
    /// Nodes whose channels are kept whole, and why.
    pub opaque: Vec<String>,
    pub gathered: Vec<GatheredInput>,
}

pub struct Analysis<'g> {
    cx: Ctx<'g>,
    roles: Vec<Role<'g>>,
    ids: HashMap<&'g str, usize>,
    names: Vec<&'g str>,
    axis: Vec<Option<isize>>,
    width: Vec<Option<usize>>,
    rank: Vec<Option<usize>>,
    /// Entries per channel along the axis; `None` until a consumer fixes it.
    block: Vec<Option<usize>>,
    /// Why a value keeps all its channels (empty: it need not).
    forced: Vec<Vec<String>>,
    params: HashMap<ParamKey, Param<'g>>,
    /// Per value: the constant of each channel (`None` = varies); empty when the width is unknown.
    consts: Vec<Vec<Option<f64>>>,
    needed: Vec<Vec<bool>>,
    /// Start of each value's channels in the channel index space.
    offset: Vec<usize>,
    classes: UnionFind<usize>,
    kept_class: Vec<bool>,
    gather_inputs: bool,
    cln_form: ops::ClnForm,
    gathered: Vec<usize>,
}

impl<'g> Analysis<'g> {
    /// `release` is told when a weight's bytes are no longer needed, so that the pages of a
    /// memory-mapped model can go back to the kernel (see [`crate::Model::release_pages`]).
    /// With `opts.gather_inputs`, features of a graph input that nothing needs are dropped by a
    /// Gather in front of its readers instead of being kept.
    pub fn run(graph: &'g GraphProto, ir: &'g Ir, release: &'g dyn Fn(&[u8]), opts: &crate::Options) -> Analysis<'g> {
        let cx = Ctx { graph, ir, release };
        let mut roles: Vec<Role<'g>> = graph.node.iter().map(|n| ops::role(n, &cx)).collect();
        for (last, norm) in ops::decomposed(&cx) {
            norm.inner.iter().for_each(|&i| roles[i] = Role::Inner);
            roles[last] = Role::Norm(norm);
        }
        let mut a = Analysis {
            cx,
            roles,
            ids: HashMap::new(),
            names: vec![],
            axis: vec![],
            width: vec![],
            rank: vec![],
            block: vec![],
            forced: vec![],
            params: HashMap::new(),
            consts: vec![],
            needed: vec![],
            offset: vec![],
            classes: UnionFind::new(0),
            kept_class: vec![],
            gather_inputs: opts.gather_inputs,
            cln_form: opts.compensated_layernorm,
            gathered: vec![],
        };
        a.collect_values();
        a.infer_layout();
        a.check_operands();
        a.build_classes();
        a.forward();
        a.backward();
        a.decide();
        a
    }

    fn node_label(&self, n: usize) -> String {
        let node = &self.cx.graph.node[n];
        format!("node '{}' ({})", node.name(), node.op_type())
    }

    fn is_act(&self, name: &str) -> bool {
        !name.is_empty() && !self.cx.ir.is_const(name)
    }

    fn value(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }

    fn input(&self, n: usize, slot: usize) -> usize {
        self.ids[self.cx.graph.node[n].input[slot].as_str()]
    }

    fn output(&self, n: usize, slot: usize) -> usize {
        self.ids[self.cx.graph.node[n].output[slot].as_str()]
    }

    fn force(&mut self, v: usize, why: String) {
        if !self.forced[v].contains(&why) {
            self.forced[v].push(why);
        }
    }

    fn collect_values(&mut self) {
        let g = self.cx.graph;
        let ir = self.cx.ir;
        let add = |a: &mut Self, name: &'g str| {
            if !a.ids.contains_key(name) {
                a.names.push(name);
                a.ids.insert(name, a.names.len() - 1);
            }
        };
        for name in ir.inputs.iter().map(String::as_str) {
            add(self, name);
        }
        for n in &g.node {
            for v in n.input.iter().chain(&n.output) {
                if self.is_act(v) {
                    add(self, v);
                }
            }
        }
        let count = self.names.len();
        self.axis = vec![None; count];
        self.width = vec![None; count];
        self.rank = self.names.iter().map(|n| ir.rank(n)).collect();
        self.block = vec![Some(1); count];
        self.forced = vec![vec![]; count];
        for i in &ir.inputs {
            let v = self.ids[i.as_str()];
            if self.gather_inputs {
                self.gathered.push(v);
            } else {
                self.force(v, format!("graph input '{i}'"));
            }
        }
        for o in &ir.outputs {
            if let Some(v) = self.value(o) {
                self.force(v, format!("graph output '{o}'"));
            }
        }
        let roles = std::mem::take(&mut self.roles);
        for &n in &ir.order {
            let node = &g.node[n];
            let label = self.node_label(n);
            let touched: Vec<usize> = match &roles[n] {
                Role::Opaque(why) => {
                    let mut names: Vec<&String> = node.input.iter().chain(&node.output).collect();
                    for a in &node.attribute {
                        for sub in a.g.iter().chain(a.graphs.iter()) {
                            names.extend(sub.node.iter().flat_map(|sn| sn.input.iter()));
                        }
                    }
                    let vs: Vec<usize> = names.into_iter().filter_map(|s| self.value(s)).collect();
                    for v in vs {
                        self.force(v, format!("{label}: {why}"));
                    }
                    continue;
                }
                Role::Split { .. } => vec![],
                _ => node.output.iter().skip(1).filter_map(|o| self.value(o)).collect(),
            };
            for v in touched {
                self.force(v, format!("{label}: a secondary output"));
            }
        }
        self.roles = roles;
    }

    /// Sets a layout fact, or forces the value when it contradicts what is known.
    fn set<T: PartialEq + Copy>(
        &mut self,
        field: fn(&mut Self) -> &mut Vec<Option<T>>,
        v: usize,
        x: T,
        who: &str,
    ) -> bool {
        match field(self)[v] {
            Some(old) if old == x => false,
            Some(_) => {
                self.force(v, format!("{who} disagrees with another operator on its channel layout"));
                false
            }
            None => {
                field(self)[v] = Some(x);
                true
            }
        }
    }

    fn copy_layout(&mut self, from: usize, to: usize, who: &str) -> bool {
        let mut changed = false;
        if let Some(a) = self.axis[from] {
            changed |= self.set(|s| &mut s.axis, to, a, who);
        }
        if let Some(w) = self.width[from] {
            changed |= self.set(|s| &mut s.width, to, w, who);
        }
        if let Some(b) = self.block[from] {
            changed |= self.set(|s| &mut s.block, to, b, who);
        }
        changed
    }

    /// The channel axis counted from the start, where the rank is known.
    fn position(&self, v: usize) -> Option<usize> {
        let (r, a) = (self.rank[v]?, self.axis[v]?);
        usize::try_from(r as isize + a).ok()
    }

    fn infer_layout(&mut self) {
        let order = self.cx.ir.order.clone();
        let roles = std::mem::take(&mut self.roles);
        // Blocks of flattened feature maps are unknown until a Gemm reads them.
        for &n in &order {
            if let Role::Pointwise(Pointwise { layout: Layout::Flatten { .. } | Layout::Reshape { .. }, .. }) =
                &roles[n]
            {
                let o = self.output(n, 0);
                self.block[o] = None;
            }
        }
        for _pass in 0..order.len().max(1) {
            let mut changed = false;
            for &n in order.iter().chain(order.iter().rev()) {
                changed |= self.infer_node(n, &roles[n]);
            }
            if !changed {
                break;
            }
        }
        self.roles = roles;
    }

    fn infer_node(&mut self, n: usize, role: &Role) -> bool {
        let node = &self.cx.graph.node[n];
        let who = self.node_label(n);
        let mut changed = false;
        match role {
            Role::Select { indices } => {
                let o = self.output(n, 0);
                changed |= self.set(|s| &mut s.axis, o, -1, &who);
                changed |= self.set(|s| &mut s.width, o, indices.len(), &who);
            }
            Role::Linear(l) => {
                let (x, y) = (self.input(n, l.input_slot()), self.output(n, 0));
                let ((ai, ao), (ri, ro)) = (l.axes(), l.ranks());
                let (k, width_out) = (l.weight().k, l.weight().n);
                changed |= self.set(|s| &mut s.axis, x, ai, &who);
                changed |= self.set(|s| &mut s.axis, y, ao, &who);
                changed |= self.set(|s| &mut s.width, y, width_out, &who);
                if let Some(r) = ri {
                    changed |= self.set(|s| &mut s.rank, x, r, &who);
                }
                if let Some(r) = ro.or(self.rank[x]) {
                    changed |= self.set(|s| &mut s.rank, y, r, &who);
                }
                match (self.width[x], self.block[x]) {
                    (_, Some(b)) if k % b == 0 => changed |= self.set(|s| &mut s.width, x, k / b, &who),
                    (Some(w), None) if w > 0 && k % w == 0 => changed |= self.set(|s| &mut s.block, x, k / w, &who),
                    (None, None) => {}
                    _ => self.force(x, format!("{who}: its input width does not divide its weight")),
                }
            }
            Role::Norm(nm) => {
                let (x, y) = (self.ids[nm.input], self.output(n, 0));
                if let Some(w) = nm.width() {
                    for v in [x, y] {
                        changed |= self.set(|s| &mut s.width, v, w, &who);
                    }
                }
                changed |= self.copy_layout(x, y, &who);
                changed |= self.copy_layout(y, x, &who);
                if let Some(r) = self.rank[x].or(self.rank[y]) {
                    changed |= self.set(|s| &mut s.rank, x, r, &who);
                    changed |= self.set(|s| &mut s.rank, y, r, &who);
                    let axis = if nm.axis < 0 { nm.axis + r as i64 } else { nm.axis };
                    let channels_alone = !nm.to_end || axis == r as i64 - 1;
                    if !channels_alone || self.position(x).is_some_and(|p| p as i64 != axis) {
                        let why = format!("{who}: it normalizes over axes other than the channels alone");
                        self.force(x, why.clone());
                        self.force(y, why);
                    }
                }
            }
            Role::Channelwise(c) => {
                let (x, y) = (self.input(n, c.input_slot()), self.output(n, 0));
                for v in [x, y] {
                    changed |= self.set(|s| &mut s.axis, v, c.axis(), &who);
                    changed |= self.set(|s| &mut s.rank, v, c.rank(), &who);
                    changed |= self.set(|s| &mut s.width, v, c.width(), &who);
                }
            }
            Role::Pointwise(p) => {
                let o = self.output(n, 0);
                let acts: Vec<usize> = p.acts.iter().map(|&s| self.input(n, s)).collect();
                match &p.layout {
                    Layout::Same => {
                        for &a in &acts {
                            changed |= self.copy_layout(a, o, &who);
                            changed |= self.copy_layout(o, a, &who);
                        }
                        let param_rank =
                            p.params.iter().filter_map(|&s| self.cx.const_tensor(&node.input[s])).map(|t| t.dims.len());
                        let ranks: Option<Vec<usize>> = acts.iter().map(|&a| self.rank[a]).collect();
                        if let Some(r) = ranks.and_then(|r| r.into_iter().chain(param_rank).max()) {
                            changed |= self.set(|s| &mut s.rank, o, r, &who);
                        }
                    }
                    Layout::Flatten { from } => changed |= self.infer_flatten(acts[0], o, Some(*from), &who),
                    Layout::Transpose { perm } => {
                        let x = acts[0];
                        let r = self.rank[x].or(self.rank[o]).filter(|&r| r == perm.len());
                        let Some(r) = r else { return changed };
                        changed |= self.set(|s| &mut s.rank, x, r, &who);
                        changed |= self.set(|s| &mut s.rank, o, r, &who);
                        if let Some(p) = self.position(x) {
                            let q = perm.iter().position(|&a| a == p as i64).unwrap_or(p);
                            changed |= self.set(|s| &mut s.axis, o, q as isize - r as isize, &who);
                        } else if let Some(q) = self.position(o) {
                            changed |= self.set(|s| &mut s.axis, x, perm[q] as isize - r as isize, &who);
                        }
                        for (a, b) in [(x, o), (o, x)] {
                            if let Some(w) = self.width[a] {
                                changed |= self.set(|s| &mut s.width, b, w, &who);
                            }
                        }
                        if self.block[x].is_some_and(|b| b != 1) {
                            self.force(x, format!("{who}: it moves a flattened feature axis"));
                        }
                    }
                    Layout::Reshape { slot } => {
                        let shape = int64s(self.cx.const_tensor(&node.input[*slot]).expect("checked by the rule"));
                        let x = acts[0];
                        if self.axis[x] == Some(-1) {
                            // Leading axes merge or split; the channel axis stays last and whole.
                            changed |= self.set(|s| &mut s.axis, o, -1, &who);
                            changed |= self.set(|s| &mut s.rank, o, shape.len(), &who);
                            if let Some(w) = self.width[x] {
                                changed |= self.set(|s| &mut s.width, o, w, &who);
                            }
                            if let Some(b) = self.block[x] {
                                changed |= self.set(|s| &mut s.block, o, b, &who);
                            }
                        } else if shape.len() == 2 && self.position(x) == Some(1) {
                            changed |= self.infer_flatten(x, o, None, &who);
                        } else if self.axis[x].is_some() {
                            self.force(x, format!("{who}: it reshapes the channel axis"));
                            self.force(o, format!("{who}: it reshapes the channel axis"));
                        }
                    }
                    Layout::ReshapeLast { .. } => {
                        let x = acts[0];
                        if self.axis[x] == Some(-1) {
                            changed |= self.set(|s| &mut s.axis, o, -1, &who);
                            for (a, b) in [(x, o), (o, x)] {
                                if let Some(w) = self.width[a] {
                                    changed |= self.set(|s| &mut s.width, b, w, &who);
                                }
                            }
                            if let Some(b) = self.block[x] {
                                changed |= self.set(|s| &mut s.block, o, b, &who);
                            }
                        } else if self.axis[x].is_some() {
                            self.force(x, format!("{who}: it reshapes the channel axis"));
                            self.force(o, format!("{who}: it reshapes the channel axis"));
                        }
                    }
                    Layout::Reduce { axes, keepdims } => {
                        let x = acts[0];
                        let (Some(r), Some(p)) = (self.rank[x], self.position(x)) else { return changed };
                        let axes: Vec<usize> =
                            axes.iter().map(|&a| if a < 0 { (a + r as i64) as usize } else { a as usize }).collect();
                        if axes.contains(&p) {
                            self.force(x, format!("{who}: it reduces over the channel axis"));
                            return changed;
                        }
                        let (a, w) = (self.axis[x].expect("positioned"), self.width[x]);
                        let (out_axis, out_rank) = if *keepdims {
                            (a, r)
                        } else {
                            (a + axes.iter().filter(|&&q| q > p).count() as isize, r - axes.len())
                        };
                        changed |= self.set(|s| &mut s.axis, o, out_axis, &who);
                        changed |= self.set(|s| &mut s.rank, o, out_rank, &who);
                        if let Some(w) = w {
                            changed |= self.set(|s| &mut s.width, o, w, &who);
                        }
                    }
                }
            }
            Role::Concat { axis } => {
                let ins: Vec<usize> = (0..node.input.len()).map(|s| self.input(n, s)).collect();
                let o = self.output(n, 0);
                let all: Vec<usize> = ins.iter().copied().chain([o]).collect();
                if self.along(&all, *axis, &mut changed, &who) {
                    if let Some(total) = ins.iter().map(|&v| self.width[v]).sum::<Option<usize>>() {
                        changed |= self.set(|s| &mut s.width, o, total, &who);
                    }
                }
            }
            Role::Split { axis, sizes, .. } => {
                let x = self.input(n, 0);
                let outs: Vec<usize> =
                    (0..node.output.len()).filter(|&s| !node.output[s].is_empty()).map(|s| self.output(n, s)).collect();
                if outs.len() != node.output.len() {
                    return changed;
                }
                let all: Vec<usize> = outs.iter().copied().chain([x]).collect();
                self.along(&all, *axis, &mut changed, &who);
                let sizes = if sizes.is_empty() {
                    match self.width[x] {
                        Some(w) if w % outs.len() == 0 => vec![w / outs.len(); outs.len()],
                        _ => return changed,
                    }
                } else {
                    sizes.clone()
                };
                if sizes.len() == outs.len() {
                    changed |= self.set(|s| &mut s.width, x, sizes.iter().sum(), &who);
                    for (&o, &w) in outs.iter().zip(&sizes) {
                        changed |= self.set(|s| &mut s.width, o, w, &who);
                    }
                }
            }
            Role::Opaque(_) | Role::Inner => {}
        }
        changed
    }

    /// Concat and Split: all `values` have their channels along the operator's `axis` (as
    /// written, possibly counted from the start), once some rank is known. Says whether it was.
    fn along(&mut self, values: &[usize], axis: i64, changed: &mut bool, who: &str) -> bool {
        let Some(r) = values.iter().find_map(|&v| self.rank[v]) else { return false };
        let a = if axis < 0 { axis as isize } else { axis as isize - r as isize };
        for &v in values {
            *changed |= self.set(|s| &mut s.axis, v, a, who);
            *changed |= self.set(|s| &mut s.rank, v, r, who);
        }
        true
    }

    /// `o = flatten(x)` from axis `from` (or a 2-D reshape when `None`): the channel axis either
    /// stays whole and last, or turns into blocks of the flat axis.
    fn infer_flatten(&mut self, x: usize, o: usize, from: Option<i64>, who: &str) -> bool {
        let (Some(r), Some(p)) = (self.rank[x], self.position(x)) else { return false };
        let from = from.map_or(1, |f| if f < 0 { f + r as i64 } else { f }) as usize;
        let mut changed = self.set(|s| &mut s.axis, o, -1, who);
        changed |= self.set(|s| &mut s.rank, o, 2, who);
        if let Some(w) = self.width[x] {
            changed |= self.set(|s| &mut s.width, o, w, who);
        }
        if p == r - 1 && from == r - 1 {
            if let Some(b) = self.block[x] {
                changed |= self.set(|s| &mut s.block, o, b, who);
            }
        } else if p != from || self.block[x] != Some(1) {
            self.force(x, format!("{who}: it flattens the channel axis together with others"));
            self.force(o, format!("{who}: it flattens the channel axis together with others"));
        }
        changed
    }

    /// Validates pointwise constants and reshape targets against the inferred layout.
    fn check_operands(&mut self) {
        let roles = std::mem::take(&mut self.roles);
        for &n in &self.cx.ir.order.clone() {
            let Role::Pointwise(p) = &roles[n] else { continue };
            let o = self.output(n, 0);
            let (Some(axis), Some(width)) = (self.axis[o], self.width[o]) else { continue };
            match self.check_pointwise(n, p, axis, width, o) {
                Ok(params) => self.params.extend(params),
                Err(why) => {
                    let who = format!("{}: {why}", self.node_label(n));
                    let acts: Vec<usize> = p.acts.iter().map(|&s| self.input(n, s)).collect();
                    for v in acts.into_iter().chain([o]) {
                        self.force(v, who.clone());
                    }
                }
            }
        }
        self.roles = roles;
    }

    fn check_pointwise(
        &self,
        n: usize,
        p: &Pointwise,
        axis: isize,
        width: usize,
        o: usize,
    ) -> Result<Vec<(ParamKey, Param<'g>)>, String> {
        let node = &self.cx.graph.node[n];
        if let Layout::Reshape { slot } = p.layout {
            let shape = int64s(self.cx.const_tensor(&node.input[slot]).expect("checked by the rule"));
            let last = *shape.last().unwrap_or(&0);
            let entries = self.block[o].map(|b| (width * b) as i64);
            if last != -1 && Some(last) != entries {
                return Err(format!("its target shape {shape:?} does not end in the channel entries"));
            }
        }
        if let Layout::ReshapeLast { last: Some((m, s)) } = p.layout {
            let last = int64s(self.cx.const_tensor(&self.cx.graph.node[m].input[s]).expect("checked by the rule"))[0];
            if last != -1 && Some(last) != self.block[o].map(|b| (width * b) as i64) {
                return Err(format!("its target shape ends in {last}, not the channel entries"));
            }
        }
        let mut out = vec![];
        for &slot in &p.params {
            let t = self.cx.const_tensor(&node.input[slot]).expect("checked by the rule");
            let values = Values::of(t).map_err(|e| e.to_string())?;
            let dims = values.dims;
            let channel_dim = if p.channel_params {
                if dims.len() != 1 || dims[0] != width as i64 {
                    return Err(format!("its constant '{}' is not a vector of {width}", node.input[slot]));
                }
                Some(0)
            } else {
                let pos = dims.len() as isize + axis;
                let others_one = dims.iter().enumerate().all(|(i, &d)| d == 1 || i as isize == pos);
                let at = if pos >= 0 { dims[pos as usize] } else { 1 };
                if !others_one || (at != 1 && at != width as i64) {
                    return Err(format!(
                        "its constant '{}' of shape {dims:?} varies along more than the channel axis",
                        node.input[slot]
                    ));
                }
                (at != 1).then_some(pos as usize)
            };
            out.push(((n, slot), Param { values, channel_dim }));
        }
        Ok(out)
    }

    fn chan(&self, v: usize, c: usize) -> usize {
        self.offset[v] + c
    }

    fn build_classes(&mut self) {
        let mut total = 0;
        self.offset = self
            .width
            .iter()
            .map(|w| {
                let at = total;
                total += w.unwrap_or(0);
                at
            })
            .collect();
        self.classes = UnionFind::new(total);
        let g = self.cx.graph;
        let roles = std::mem::take(&mut self.roles);
        for &n in &self.cx.ir.order {
            let node = &g.node[n];
            let tie = |a: &mut Self, x: usize, y: usize, xo: usize, yo: usize, w: usize| {
                for c in 0..w {
                    let (i, j) = (a.chan(x, xo + c), a.chan(y, yo + c));
                    a.classes.union(i, j);
                }
            };
            match &roles[n] {
                Role::Pointwise(p) => {
                    let o = self.output(n, 0);
                    for &s in &p.acts {
                        let a = self.input(n, s);
                        match (self.width[a], self.width[o]) {
                            (Some(wa), Some(wo)) if wa == wo => tie(self, a, o, 0, 0, wa),
                            (None, None) => {}
                            _ => {
                                let who = format!("{}: it broadcasts along the channel axis", self.node_label(n));
                                self.force(a, who.clone());
                                self.force(o, who);
                            }
                        }
                    }
                }
                Role::Norm(nm) => {
                    let (x, y) = (self.ids[nm.input], self.output(n, 0));
                    if let (Some(w), true) = (self.width[x], self.width[x] == self.width[y]) {
                        tie(self, x, y, 0, 0, w);
                    }
                }
                Role::Channelwise(c) => {
                    let (x, y) = (self.input(n, c.input_slot()), self.output(n, 0));
                    tie(self, x, y, 0, 0, c.width());
                }
                Role::Concat { .. } => {
                    let o = self.output(n, 0);
                    let mut at = 0;
                    for s in 0..node.input.len() {
                        let x = self.input(n, s);
                        let Some(w) = self.width[x].filter(|_| self.width[o].is_some()) else { break };
                        tie(self, x, o, 0, at, w);
                        at += w;
                    }
                }
                Role::Split { .. } => {
                    let x = self.input(n, 0);
                    let mut at = 0;
                    for s in 0..node.output.len() {
                        let o = self.output(n, s);
                        let Some(w) = self.width[o].filter(|_| self.width[x].is_some()) else { break };
                        tie(self, x, o, at, 0, w);
                        at += w;
                    }
                }
                Role::Linear(_) | Role::Opaque(_) | Role::Inner | Role::Select { .. } => {}
            }
        }
        // A concatenation or split whose widths are not all known cannot be followed.
        for &n in &self.cx.ir.order {
            if let Role::Concat { .. } | Role::Split { .. } = &roles[n] {
                let vs: Vec<usize> = node_values(g, n).filter_map(|s| self.value(s)).collect();
                if vs.iter().any(|&v| self.width[v].is_none()) {
                    let who = format!("{}: the widths of its parts are unknown", self.node_label(n));
                    vs.into_iter().for_each(|v| self.force(v, who.clone()));
                }
            }
        }
        self.roles = roles;
    }

    /// The constant value of a pointwise node's operand at channel `c`, if it has one.
    fn operand(&self, n: usize, p: &Pointwise, slot: usize, c: usize) -> Option<f64> {
        match self.value(&self.cx.graph.node[n].input[slot]) {
            Some(a) if p.acts.contains(&slot) => self.consts[a].get(c).copied().flatten(),
            _ => self.params.get(&(n, slot)).map(|pr| pr.at(c)),
        }
    }

    /// A linear node's input constants per weight row, with `None` where the constant cannot be
    /// folded exactly (a padded Conv reading a non-zero constant).
    fn linear_inputs(&self, x: usize, l: &dyn ops::Linear) -> Option<Vec<Option<f64>>> {
        let b = self.block[x]?;
        let xc = &self.consts[x];
        if xc.len() * b != l.weight().k {
            return None;
        }
        let exact = l.folds_constants();
        Some((0..l.weight().k).map(|kc| xc[kc / b].filter(|&k| exact || k == 0.0)).collect())
    }

    fn forward(&mut self) {
        let g = self.cx.graph;
        self.consts = self.width.iter().map(|w| vec![None; w.unwrap_or(0)]).collect();
        for &n in &self.cx.ir.order {
            let node = &g.node[n];
            let results: Vec<(usize, Vec<Option<f64>>)> = match &self.roles[n] {
                Role::Pointwise(p) => {
                    let o = self.output(n, 0);
                    let r = (0..self.consts[o].len())
                        .map(|c| {
                            let args: Vec<Option<f64>> = (0..node.input.len())
                                .filter(|s| p.acts.contains(s) || p.params.contains(s))
                                .map(|s| self.operand(n, p, s, c))
                                .collect();
                            if p.zero_absorbs && args.contains(&Some(0.0)) {
                                Some(0.0)
                            } else {
                                args.into_iter().collect::<Option<Vec<f64>>>().and_then(|a| (p.eval)(&a))
                            }
                        })
                        .collect();
                    vec![(o, r)]
                }
                Role::Linear(l) => {
                    let (x, y) = (self.input(n, l.input_slot()), self.output(n, 0));
                    let w = l.weight();
                    let r = match self.linear_inputs(x, l.as_ref()) {
                        Some(xc) if self.consts[y].len() == w.n => {
                            let (acc, varies) = w.fold_nonzero(
                                || (vec![0.0; w.n], vec![false; w.n]),
                                |(acc, varies), c, j, wv| match xc[c] {
                                    Some(k) => acc[j] += wv * k,
                                    None => varies[j] = true,
                                },
                                |(mut a, mut v), (b, u)| {
                                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                                    v.iter_mut().zip(u).for_each(|(x, y)| *x |= y);
                                    (a, v)
                                },
                            );
                            (self.cx.release)(w.values.raw());
                            (0..w.n)
                                .map(|j| if varies[j] { None } else { l.bias(j).map(|b| l.alpha() * acc[j] + b) })
                                .collect()
                        }
                        _ => vec![None; self.consts[y].len()],
                    };
                    vec![(y, r)]
                }
                Role::Norm(nm) => {
                    let y = self.output(n, 0);
                    vec![(y, (0..self.consts[y].len()).map(|c| nm.constant(c)).collect())]
                }
                Role::Channelwise(ch) => {
                    let (x, y) = (self.input(n, ch.input_slot()), self.output(n, 0));
                    let r = (0..self.consts[y].len())
                        .map(|c| ch.constant(c, self.consts[x].get(c).copied().flatten()))
                        .collect();
                    vec![(y, r)]
                }
                Role::Concat { .. } => {
                    let o = self.output(n, 0);
                    let r: Vec<Option<f64>> =
                        (0..node.input.len()).flat_map(|s| self.consts[self.input(n, s)].clone()).collect();
                    vec![(o, r)]
                }
                Role::Split { .. } => {
                    let x = self.input(n, 0);
                    let mut at = 0;
                    (0..node.output.len())
                        .map(|s| {
                            let o = self.output(n, s);
                            let w = self.consts[o].len();
                            at += w;
                            (o, self.consts[x].get(at - w..at).map(<[_]>::to_vec).unwrap_or_default())
                        })
                        .collect()
                }
                Role::Opaque(_) | Role::Inner | Role::Select { .. } => vec![],
            };
            for (v, r) in results {
                if r.len() == self.consts[v].len() {
                    self.consts[v] = r;
                }
            }
        }
    }

    fn backward(&mut self) {
        let g = self.cx.graph;
        self.needed = self.consts.iter().map(|c| vec![false; c.len()]).collect();
        // Graph outputs are needed, and so is everything kept whole for another reason (an
        // opaque producer, a layout the analysis cannot follow): whatever reads it may use every
        // channel. Graph inputs have nothing upstream, and their unused features are reported.
        let inputs: Vec<usize> = self.cx.ir.inputs.iter().filter_map(|i| self.value(i)).collect();
        for v in 0..self.names.len() {
            if !self.forced[v].is_empty() && !inputs.contains(&v) {
                self.needed[v].iter_mut().for_each(|x| *x = true);
            }
        }
        for o in &self.cx.ir.outputs {
            if let Some(v) = self.value(o) {
                self.needed[v].iter_mut().for_each(|x| *x = true);
            }
        }
        for &n in self.cx.ir.order.iter().rev() {
            let node = &g.node[n];
            let mut marks: Vec<(usize, usize)> = vec![];
            // An output whose channels the analysis could not lay out may be used in full.
            let unknown = node.output.iter().filter_map(|o| self.value(o)).any(|v| self.width[v].is_none());
            if unknown && !matches!(self.roles[n], Role::Inner) {
                for v in node.input.iter().filter_map(|i| self.value(i)) {
                    marks.extend((0..self.needed[v].len()).map(|c| (v, c)));
                }
            }
            match &self.roles[n] {
                Role::Inner => {}
                Role::Opaque(_) | Role::Select { .. } => {
                    for v in node.input.iter().filter_map(|i| self.value(i)) {
                        marks.extend((0..self.needed[v].len()).map(|c| (v, c)));
                    }
                }
                Role::Pointwise(p) => {
                    let o = self.output(n, 0);
                    for c in (0..self.needed[o].len()).filter(|&c| self.needed[o][c]) {
                        for &slot in &p.acts {
                            let a = self.input(n, slot);
                            let other_zero = p.zero_absorbs
                                && (0..node.input.len()).any(|s| s != slot && self.operand(n, p, s, c) == Some(0.0));
                            if c < self.needed[a].len() && self.consts[a][c].is_none() && !other_zero {
                                marks.push((a, c));
                            }
                        }
                    }
                }
                Role::Linear(l) => {
                    let (x, y) = (self.input(n, l.input_slot()), self.output(n, 0));
                    let w = l.weight();
                    match self.linear_inputs(x, l.as_ref()) {
                        Some(xc) if self.needed[y].len() == w.n => {
                            let b = self.block[x].expect("checked");
                            let ny = &self.needed[y];
                            let nx = w.fold_nonzero(
                                || vec![false; self.needed[x].len()],
                                |nx, kc, j, _| {
                                    if ny[j] && xc[kc].is_none() {
                                        nx[kc / b] = true;
                                    }
                                },
                                |mut a, b| {
                                    a.iter_mut().zip(b).for_each(|(x, y)| *x |= y);
                                    a
                                },
                            );
                            (self.cx.release)(w.values.raw());
                            marks.extend(nx.into_iter().enumerate().filter(|(_, m)| *m).map(|(c, _)| (x, c)));
                        }
                        _ => marks.extend((0..self.needed[x].len()).map(|c| (x, c))),
                    }
                }
                Role::Norm(nm) => {
                    // The statistics read every channel: if any normalized output is needed,
                    // so is every input channel whose value is not a known constant.
                    let (x, y) = (self.ids[nm.input], self.output(n, 0));
                    let used = (0..self.needed[y].len()).any(|c| self.needed[y][c] && nm.constant(c).is_none());
                    if used {
                        marks
                            .extend((0..self.needed[x].len()).filter(|&c| self.consts[x][c].is_none()).map(|c| (x, c)));
                    }
                }
                Role::Channelwise(ch) => {
                    let (x, y) = (self.input(n, ch.input_slot()), self.output(n, 0));
                    for c in (0..self.needed[y].len()).filter(|&c| self.needed[y][c]) {
                        if c < self.needed[x].len() && ch.reads(c, self.consts[x][c]) {
                            marks.push((x, c));
                        }
                    }
                }
                Role::Concat { .. } => {
                    let o = self.output(n, 0);
                    let mut at = 0;
                    for s in 0..node.input.len() {
                        let x = self.input(n, s);
                        for c in 0..self.needed[x].len() {
                            if self.needed[o].get(at + c).copied().unwrap_or(true) {
                                marks.push((x, c));
                            }
                        }
                        at += self.needed[x].len();
                    }
                }
                Role::Split { .. } => {
                    let x = self.input(n, 0);
                    let mut at = 0;
                    for s in 0..node.output.len() {
                        let o = self.output(n, s);
                        for c in (0..self.needed[o].len()).filter(|&c| self.needed[o][c]) {
                            marks.push((x, at + c));
                        }
                        at += self.needed[o].len();
                    }
                }
            }
            for (v, c) in marks {
                if let Some(m) = self.needed[v].get_mut(c) {
                    *m = true;
                }
            }
        }
    }

    fn decide(&mut self) {
        let total = self.offset.last().copied().unwrap_or(0) + self.width.last().copied().flatten().unwrap_or(0);
        let mut kept = vec![false; total];
        for v in 0..self.names.len() {
            let forced = !self.forced[v].is_empty();
            for c in 0..self.width[v].unwrap_or(0) {
                if forced || self.needed[v][c] {
                    kept[self.classes.find(self.chan(v, c))] = true;
                }
            }
        }
        // A zero-width tensor is legal ONNX but not every runtime takes it: keep one channel,
        // which costs nothing in exactness (unneeded channels only reach unneeded places).
        loop {
            let empty = (0..self.names.len()).find(|&v| {
                let w = self.width[v].unwrap_or(0);
                w > 0 && (0..w).all(|c| !kept[self.classes.find(self.chan(v, c))])
            });
            match empty {
                Some(v) => kept[self.classes.find(self.chan(v, 0))] = true,
                None => break,
            }
        }
        self.kept_class = kept;
    }

    /// The channels of `v` that stay (all of them when its width is unknown: `full`).
    fn kept(&self, v: usize, full: usize) -> Vec<usize> {
        match self.width[v] {
            Some(w) => (0..w).filter(|&c| self.kept_class[self.classes.find(self.chan(v, c))]).collect(),
            None => (0..full).collect(),
        }
    }

    /// Turns the decision into edits, and reports per layer and per block.
    pub fn plan(&self) -> crate::error::Result<Plan> {
        let g = self.cx.graph;
        let mut edits = vec![];
        let mut layers = vec![];
        // Constants a MatMul folds into the bias `Add` that follows it, by (node, slot).
        let mut bias_folds: HashMap<ParamKey, Vec<f64>> = HashMap::new();
        for &n in &self.cx.ir.order {
            let node = &g.node[n];
            match &self.roles[n] {
                Role::Linear(l) => layers.push(self.plan_linear(n, l.as_ref(), &mut edits, &mut bias_folds)),
                Role::Norm(nm) => {
                    let x = self.ids[nm.input];
                    let (Some(w), Some(axis)) = (self.width[x], self.axis[x]) else { continue };
                    let keep = self.kept(x, w);
                    if keep.len() < w {
                        let mut kept = vec![false; w];
                        keep.iter().for_each(|&c| kept[c] = true);
                        // Removed channels are constants whenever a normalized output is needed;
                        // otherwise nothing reads the result and any value will do.
                        let removed: Vec<f64> =
                            (0..w).filter(|&c| !kept[c]).map(|c| self.consts[x][c].unwrap_or(0.0)).collect();
                        let (nodes, initializers) =
                            nm.compensated(self.cln_form, nm.input, &node.output[0], axis, &keep, &removed);
                        edits.push(Edit::Replace { node: n, nodes, initializers });
                        edits.extend(nm.inner.iter().map(|&node| Edit::Remove { node }));
                    }
                }
                Role::Channelwise(ch) => {
                    let x = self.input(n, ch.input_slot());
                    ch.rewrite(n, &self.kept(x, ch.width()), &mut edits)?;
                }
                Role::Pointwise(p) => {
                    let o = self.output(n, 0);
                    let Some(w) = self.width[o] else { continue };
                    let keep = self.kept(o, w);
                    let folded = p.params.iter().find_map(|&slot| bias_folds.remove(&(n, slot)).map(|f| (slot, f)));
                    if keep.len() == w && folded.is_none() {
                        continue;
                    }
                    for &slot in &p.params {
                        let prm = &self.params[&(n, slot)];
                        if let Some(dim) = prm.channel_dim {
                            let t = self.cx.const_tensor(&node.input[slot]).expect("constant");
                            let mut dims = t.dims.clone();
                            dims[dim] = keep.len() as i64;
                            let dtype = prm.values.dtype;
                            let raw = match &folded {
                                Some((s, fold)) if *s == slot => {
                                    encode(dtype, &keep.iter().map(|&c| prm.at(c) + fold[c]).collect::<Vec<_>>())
                                }
                                _ => prm.values.gather(keep.iter().copied()),
                            };
                            edits.push(Edit::Const { node: n, slot, tensor: with_data(t, dims, dtype, raw) });
                        }
                    }
                    if let Layout::ReshapeLast { last: Some((m, s)) } = p.layout {
                        let t = self.cx.const_tensor(&g.node[m].input[s]).expect("constant");
                        if int64s(t)[0] != -1 {
                            let entries = (keep.len() * self.block[o].expect("checked")) as i64;
                            let tensor = with_int64s(t, &[entries]);
                            if self.cx.ir.readers(&g.node[m].output[0]).len() == 1 {
                                edits.push(Edit::Const { node: m, slot: s, tensor });
                            } else {
                                edits.push(Edit::CloneProducer {
                                    node: n,
                                    slot: 1,
                                    producer: m,
                                    producer_slot: s,
                                    tensor,
                                });
                            }
                        }
                    }
                    if let Layout::Reshape { slot } = p.layout {
                        let t = self.cx.const_tensor(&node.input[slot]).expect("constant");
                        let mut shape = int64s(t);
                        let last = shape.last_mut().expect("checked");
                        if *last != -1 {
                            *last = (keep.len() * self.block[o].expect("checked")) as i64;
                            edits.push(Edit::Const { node: n, slot, tensor: with_int64s(t, &shape) });
                        }
                    }
                }
                Role::Split { sizes, sizes_slot, .. } => {
                    let x = self.input(n, 0);
                    let mut new = vec![];
                    for s in 0..node.output.len() {
                        let o = self.output(n, s);
                        new.push(self.kept(o, self.width[o].unwrap_or(0)).len() as i64);
                    }
                    let old: Vec<i64> =
                        (0..node.output.len()).map(|s| self.width[self.output(n, s)].unwrap_or(0) as i64).collect();
                    if new == old || self.width[x].is_none() {
                        continue;
                    }
                    let tensor = TensorProto {
                        dims: vec![new.len() as i64],
                        data_type: Some(DataType::Int64 as i32),
                        raw_data: Some(new.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()),
                        ..Default::default()
                    };
                    match sizes_slot {
                        Some(slot) => edits.push(Edit::Const { node: n, slot: *slot, tensor }),
                        None if !sizes.is_empty() || self.cx.ir.opset < 13 => {
                            edits.push(Edit::Attr { node: n, attr: ints_attr("split", new) })
                        }
                        None => {
                            edits.push(Edit::RemoveAttr { node: n, name: "num_outputs".into() });
                            edits.push(Edit::SetInput { node: n, slot: 1, tensor });
                        }
                    }
                }
                Role::Concat { .. } | Role::Opaque(_) | Role::Inner | Role::Select { .. } => {}
            }
        }
        let mut gathered = vec![];
        for v in 0..self.names.len() {
            let (Some(w), Some(axis)) = (self.width[v], self.axis[v]) else { continue };
            let keep = self.kept(v, w);
            if keep.len() == w {
                continue;
            }
            let name = self.names[v].to_string();
            let b = self.block[v].unwrap_or(1);
            let select = self.cx.ir.producer.get(&name).and_then(|&n| match &self.roles[n] {
                Role::Select { indices } => Some((n, indices)),
                _ => None,
            });
            if let Some((n, indices)) = select {
                // An input read through a Gather already: fewer indices.
                let data = g.node[n].input[0].clone();
                gathered.push(GatheredInput { input: data, features: w, kept: keep.len() });
                let kept: Vec<i64> = keep.iter().map(|&c| indices[c]).collect();
                let like = self.cx.ir.const_tensor(g, &g.node[n].input[1]).expect("constant indices");
                let tensor = TensorProto { dims: vec![kept.len() as i64], ..with_int64s(like, &kept) };
                edits.push(Edit::Const { node: n, slot: 1, tensor });
                edits.push(Edit::Width { value: name, axis, from: w, to: keep.len() });
            } else if self.gathered.contains(&v) {
                let entries: Vec<usize> = keep.iter().flat_map(|&c| c * b..(c + 1) * b).collect();
                gathered.push(GatheredInput { input: name.clone(), features: w * b, kept: entries.len() });
                edits.push(Edit::GatherInput { input: name, axis, keep: entries });
            } else {
                edits.push(Edit::Width { value: name, axis, from: w * b, to: keep.len() * b });
            }
        }
        let opaque = self
            .cx
            .ir
            .order
            .iter()
            .filter_map(|&n| match &self.roles[n] {
                Role::Opaque(why) if why != ops::CONSTANT => Some(format!("{}: {why}", self.node_label(n))),
                _ => None,
            })
            .collect();
        Ok(Plan { edits, layers, blocked: self.blocked(), opaque, gathered })
    }

    /// The per-channel bias a linear node's output goes through, when that `Add` is its only
    /// reader: folded constants go there rather than into a new `Add`.
    fn bias_reader(&self, y: usize, dtype: crate::onnx::tensor::FloatType) -> Option<ParamKey> {
        let name = self.names[y];
        let [(m, slot)] = self.cx.ir.readers(name) else { return None };
        if self.cx.ir.outputs.contains(name) || self.cx.graph.node[*m].op_type() != "Add" {
            return None;
        }
        let Role::Pointwise(p) = &self.roles[*m] else { return None };
        let other = *p.params.first().filter(|_| p.acts == [*slot] && p.params.len() == 1)?;
        let prm = self.params.get(&(*m, other))?;
        (prm.channel_dim.is_some() && prm.values.dtype == dtype).then_some((*m, other))
    }

    fn plan_linear(
        &self,
        n: usize,
        l: &dyn ops::Linear,
        edits: &mut Vec<Edit>,
        bias_folds: &mut HashMap<ParamKey, Vec<f64>>,
    ) -> LayerReport {
        let node = &self.cx.graph.node[n];
        let w = l.weight();
        let (x, y) = (self.input(n, l.input_slot()), self.output(n, 0));
        let b = self.block[x].filter(|b| self.width[x].map(|wx| wx * b) == Some(w.k));
        // Input entries kept: whole blocks of kept channels.
        let keep_in: Vec<usize> = match b {
            Some(b) => self.kept(x, w.k / b).iter().flat_map(|&c| c * b..(c + 1) * b).collect(),
            None => (0..w.k).collect(),
        };
        let keep_out = self.kept(y, w.n);
        let mut fold = vec![0.0; w.n];
        if keep_in.len() < w.k {
            let mut removed = vec![true; w.k];
            keep_in.iter().for_each(|&c| removed[c] = false);
            let xc = self.linear_inputs(x, l).expect("a block means known constants");
            let folded: Vec<(usize, f64)> =
                (0..w.k).filter(|&c| removed[c]).filter_map(|c| xc[c].filter(|&k| k != 0.0).map(|k| (c, k))).collect();
            // Reading the few folded columns directly beats scanning the whole matrix.
            if folded.len() * w.spatial * keep_out.len() < w.k * w.n * w.spatial / 4 {
                for &j in &keep_out {
                    fold[j] = folded.iter().map(|&(c, k)| w.sum(c, j) * k).sum();
                }
            } else if !folded.is_empty() {
                fold = w.fold_nonzero(
                    || vec![0.0; w.n],
                    |fold, kc, j, wv| {
                        if let (true, Some(k)) = (removed[kc], xc[kc]) {
                            fold[j] += wv * k;
                        }
                    },
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                        a
                    },
                );
            }
        }
        let reader =
            (!l.holds_bias() && fold.iter().any(|&f| f != 0.0)).then(|| self.bias_reader(y, w.values.dtype)).flatten();
        let fold: Vec<f64> = match reader {
            Some(key) => {
                bias_folds.insert(key, fold.iter().map(|f| l.alpha() * f).collect());
                vec![0.0; keep_out.len()]
            }
            None => keep_out.iter().map(|&j| l.alpha() * fold[j]).collect(),
        };
        if keep_in.len() < w.k || keep_out.len() < w.n {
            edits.extend(w.slice_edit(n, &keep_in, &keep_out));
            l.rewrite_bias(n, &keep_out, &fold, edits);
        }
        (self.cx.release)(w.values.raw());
        let mut kept = vec![false; w.n];
        keep_out.iter().for_each(|&j| kept[j] = true);
        let constant = (0..w.n).filter(|&j| !kept[j] && self.consts[y].get(j).copied().flatten().is_some()).count();
        LayerReport {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            inputs_before: w.k,
            inputs_after: keep_in.len(),
            outputs_before: w.n,
            outputs_after: keep_out.len(),
            removed_constant: constant,
            removed_dead: w.n - keep_out.len() - constant,
        }
    }

    /// Forced tensors that hold channels nothing needs, and why they were kept: the report's
    /// answer to "why did this not shrink?".
    fn blocked(&self) -> Vec<Blocked> {
        let total = self.kept_class.len();
        // A class is free when each of its channels is unneeded or constant.
        let mut bound = vec![false; total];
        for v in 0..self.names.len() {
            for c in 0..self.width[v].unwrap_or(0) {
                if self.needed[v][c] && self.consts[v][c].is_none() {
                    bound[self.classes.find(self.chan(v, c))] = true;
                }
            }
        }
        let mut out = vec![];
        for v in 0..self.names.len() {
            let Some(w) = self.width[v].filter(|_| !self.forced[v].is_empty()) else { continue };
            let removable = (0..w).filter(|&c| !bound[self.classes.find(self.chan(v, c))]).count();
            if removable > 0 {
                out.push(Blocked {
                    values: vec![self.names[v].to_string()],
                    width: w,
                    removable,
                    reasons: self.forced[v].clone(),
                });
            }
        }
        out
    }
}

fn node_values(g: &GraphProto, n: usize) -> impl Iterator<Item = &str> {
    g.node[n].input.iter().chain(&g.node[n].output).map(String::as_str)
}

fn ints_attr(name: &str, v: Vec<i64>) -> crate::onnx::proto::AttributeProto {
    crate::onnx::proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(crate::onnx::proto::attribute_proto::AttributeType::Ints as i32),
        ints: v,
        ..Default::default()
    }
}
