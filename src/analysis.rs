//! Channel analysis: which channels of which tensors are dead or constant, and which can leave.
//!
//! Follows docs/design.md ("minimization math"):
//! 1. **Spaces.** Pointwise operators tie their activations into one channel space (union-find);
//!    linear layers border spaces and fix their axis and width. Graph inputs, graph outputs and
//!    opaque operators *pin* the spaces they touch: those keep every channel, and the pin's
//!    reason is reported.
//! 2. **Forward constancy.** A channel is constant when it is the same number for every input and
//!    position: a linear output whose weights over non-constant inputs are all zero, or a pointwise
//!    function of constants.
//! 3. **Backward need.** A channel is needed when it is not constant and something needed reads
//!    it with a non-zero weight. Graph outputs are needed.
//! 4. **Decision.** A channel leaves a space when no value of the space needs it. Its producers'
//!    rows go; readers of a constant channel fold it into their bias.
//!
//! One forward and one backward pass reach the fixed point on a DAG; the tests check that a
//! second minimization removes nothing more.

use std::collections::HashMap;

use petgraph::unionfind::UnionFind;

use crate::ir::Ir;
use crate::onnx::proto::GraphProto;
use crate::onnx::tensor::{int64s, with_data, with_int64s, Values};
use crate::ops::{self, Ctx, Pointwise, Role};
use crate::report::{Blocked, GatheredInput, LayerReport};
use crate::rewrite::Edit;

#[derive(Default, Clone)]
struct Space {
    axis: Option<isize>,
    width: Option<usize>,
    pins: Vec<String>,
}

impl Space {
    fn pin(&mut self, why: String) {
        if !self.pins.contains(&why) {
            self.pins.push(why);
        }
    }
}

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

pub struct Analysis<'g> {
    cx: Ctx<'g>,
    roles: Vec<Role<'g>>,
    ids: HashMap<&'g str, usize>,
    names: Vec<&'g str>,
    space_of: Vec<usize>,
    spaces: HashMap<usize, Space>,
    params: HashMap<ParamKey, Param<'g>>,
    /// Per value: the constant of each channel (`None` = varies); empty when the width is unknown.
    consts: Vec<Vec<Option<f64>>>,
    needed: Vec<Vec<bool>>,
    /// Per space root: the kept channels, for spaces that shrink.
    keep: HashMap<usize, Vec<usize>>,
    gather_inputs: bool,
    /// Graph inputs read through a Gather, with their space.
    gathered: HashMap<String, usize>,
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

impl<'g> Analysis<'g> {
    /// `release` is told when a weight's bytes are no longer needed, so that the pages of a
    /// memory-mapped model can go back to the kernel (see [`crate::Model::release_pages`]).
    /// With `gather_inputs`, features of a graph input that nothing needs are dropped by a Gather
    /// in front of its readers instead of being kept.
    pub fn run(graph: &'g GraphProto, ir: &'g Ir, release: &'g dyn Fn(&[u8]), gather_inputs: bool) -> Analysis<'g> {
        let cx = Ctx { graph, ir, release };
        let roles: Vec<Role<'g>> = graph.node.iter().map(|n| ops::role(n, &cx)).collect();
        let mut a = Analysis {
            cx,
            roles,
            ids: HashMap::new(),
            names: vec![],
            space_of: vec![],
            spaces: HashMap::new(),
            params: HashMap::new(),
            consts: vec![],
            needed: vec![],
            keep: HashMap::new(),
            gather_inputs,
            gathered: HashMap::new(),
        };
        a.build_spaces();
        a.forward();
        a.backward();
        a.decide();
        a
    }

    fn id(&mut self, name: &'g str) -> usize {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        self.names.push(name);
        self.ids.insert(name, self.names.len() - 1);
        self.names.len() - 1
    }

    fn node_label(&self, n: usize) -> String {
        let node = &self.cx.graph.node[n];
        format!("node '{}' ({})", node.name(), node.op_type())
    }

    fn is_act(&self, name: &str) -> bool {
        !name.is_empty() && !self.cx.ir.is_const(name)
    }

    fn build_spaces(&mut self) {
        let g = self.cx.graph;
        let ir = self.cx.ir;
        // Every activation gets an id.
        for name in ir.inputs.iter().map(String::as_str) {
            self.id(name);
        }
        for n in &g.node {
            for v in n.input.iter().chain(&n.output) {
                if self.is_act(v) {
                    self.id(v);
                }
            }
        }
        let mut uf = UnionFind::new(self.names.len());
        for &n in &ir.order {
            if let Role::Pointwise(p) = &self.roles[n] {
                let out = self.ids[g.node[n].output[0].as_str()];
                for &slot in &p.acts {
                    uf.union(out, self.ids[g.node[n].input[slot].as_str()]);
                }
            }
        }
        self.space_of = (0..self.names.len()).map(|v| uf.find(v)).collect();
        let mut spaces: HashMap<usize, Space> = HashMap::new();
        let claim = |spaces: &mut HashMap<usize, Space>, root: usize, axis: isize, width: usize, who: String| {
            let s = spaces.entry(root).or_default();
            if s.axis.is_some_and(|a| a != axis) || s.width.is_some_and(|w| w != width) {
                s.pin(format!("{who} disagrees with another layer on the channel axis or width"));
            }
            s.axis.get_or_insert(axis);
            s.width.get_or_insert(width);
        };
        for &n in &ir.order {
            let node = &g.node[n];
            match &self.roles[n] {
                Role::Linear(l) => {
                    let (ai, ao) = l.axes();
                    let w = l.weight();
                    let x = self.space_of[self.ids[node.input[l.input_slot()].as_str()]];
                    claim(&mut spaces, x, ai, w.k, self.node_label(n));
                    let y = self.space_of[self.ids[node.output[0].as_str()]];
                    claim(&mut spaces, y, ao, w.n, self.node_label(n));
                    for o in node.output.iter().skip(1).filter(|o| self.is_act(o)) {
                        spaces.entry(self.space_of[self.ids[o.as_str()]]).or_default().pin(self.node_label(n));
                    }
                }
                Role::Opaque(why) => {
                    let who = format!("{}: {why}", self.node_label(n));
                    let mut reads = vec![];
                    let mut implicit = vec![];
                    for a in &node.attribute {
                        for sub in a.g.iter().chain(a.graphs.iter()) {
                            implicit.extend(sub.node.iter().flat_map(|sn| sn.input.iter()));
                        }
                    }
                    reads.extend(node.input.iter().chain(&node.output).chain(implicit));
                    for v in reads.into_iter().filter(|v| self.ids.contains_key(v.as_str())) {
                        spaces.entry(self.space_of[self.ids[v.as_str()]]).or_default().pin(who.clone());
                    }
                }
                Role::Pointwise(_) => {
                    for o in node.output.iter().skip(1).filter(|o| self.ids.contains_key(o.as_str())) {
                        spaces.entry(self.space_of[self.ids[o.as_str()]]).or_default().pin(self.node_label(n));
                    }
                }
            }
        }
        for i in &ir.inputs {
            let root = self.space_of[self.ids[i.as_str()]];
            // With gathering on, an input keeps its declared shape and a Gather in front of its
            // readers selects the features that are used; one input per space keeps that simple.
            if self.gather_inputs && !self.gathered.values().any(|&r| r == root) {
                self.gathered.insert(i.clone(), root);
            } else {
                spaces.entry(root).or_default().pin(format!("graph input '{i}'"));
            }
        }
        for o in &ir.outputs {
            if let Some(&v) = self.ids.get(o.as_str()) {
                spaces.entry(self.space_of[v]).or_default().pin(format!("graph output '{o}'"));
            }
        }
        // Pointwise constraints need the space's axis and width, known only now.
        for &n in &ir.order {
            let Role::Pointwise(p) = &self.roles[n] else {
                continue;
            };
            let node = &g.node[n];
            let root = self.space_of[self.ids[node.output[0].as_str()]];
            let s = spaces.entry(root).or_default();
            let (Some(axis), Some(width)) = (s.axis, s.width) else {
                continue;
            };
            match self.check_pointwise(n, p, axis, width) {
                Ok(params) => self.params.extend(params),
                Err(why) => s.pin(format!("{}: {why}", self.node_label(n))),
            }
        }
        // A pinned space whose width is ambiguous cannot carry per-channel facts.
        for s in spaces.values_mut() {
            if s.pins.iter().any(|p| p.contains("disagrees")) {
                s.width = None;
            }
        }
        self.spaces = spaces;
    }

    fn check_pointwise(
        &self,
        n: usize,
        p: &Pointwise,
        axis: isize,
        width: usize,
    ) -> Result<Vec<(ParamKey, Param<'g>)>, String> {
        let node = &self.cx.graph.node[n];
        if p.requires_axis.is_some_and(|a| a != axis) {
            return Err("it only keeps the last axis intact, and the channels are on another".into());
        }
        if let Some(slot) = p.shape_slot {
            let shape = int64s(self.cx.const_tensor(&node.input[slot]).expect("checked by the rule"));
            if shape.last() != Some(&(width as i64)) {
                return Err(format!("its target shape {shape:?} does not end in the channel width {width}"));
            }
        }
        let mut out = vec![];
        for &slot in &p.params {
            let t = self.cx.const_tensor(&node.input[slot]).expect("checked by the rule");
            let values = Values::of(t).map_err(|e| e.to_string())?;
            let dims = values.dims;
            let pos = dims.len() as isize + axis;
            let others_one = dims.iter().enumerate().all(|(i, &d)| d == 1 || i as isize == pos);
            let at = if pos >= 0 { dims[pos as usize] } else { 1 };
            if !others_one || (at != 1 && at != width as i64) {
                return Err(format!(
                    "its constant '{}' of shape {dims:?} varies along more than the channel axis",
                    node.input[slot]
                ));
            }
            let channel_dim = (at != 1).then_some(pos as usize);
            out.push(((n, slot), Param { values, channel_dim }));
        }
        Ok(out)
    }

    fn width(&self, v: usize) -> Option<usize> {
        self.spaces.get(&self.space_of[v]).and_then(|s| s.width)
    }

    fn value(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }

    /// The constant value of a pointwise node's operand at channel `c`, if it has one.
    fn operand(&self, n: usize, p: &Pointwise, slot: usize, c: usize) -> Option<f64> {
        match self.value(&self.cx.graph.node[n].input[slot]) {
            Some(a) if p.acts.contains(&slot) => self.consts[a].get(c).copied().flatten(),
            _ => self.params.get(&(n, slot)).map(|pr| pr.at(c)),
        }
    }

    fn forward(&mut self) {
        let g = self.cx.graph;
        self.consts = (0..self.names.len()).map(|v| vec![None; self.width(v).unwrap_or(0)]).collect();
        for &n in &self.cx.ir.order {
            let node = &g.node[n];
            let Some(out) = node.output.first().and_then(|o| self.value(o)) else {
                continue;
            };
            let width = self.consts[out].len();
            let result: Vec<Option<f64>> = match &self.roles[n] {
                Role::Pointwise(p) => (0..width)
                    .map(|c| {
                        let mut args = Vec::with_capacity(node.input.len());
                        let mut zero = false;
                        for slot in 0..node.input.len() {
                            let v = self.operand(n, p, slot, c);
                            zero |= v == Some(0.0);
                            if p.acts.contains(&slot) || p.params.contains(&slot) {
                                args.push(v);
                            }
                        }
                        if p.zero_absorbs && zero {
                            Some(0.0)
                        } else {
                            args.into_iter().collect::<Option<Vec<f64>>>().map(|a| (p.eval)(&a))
                        }
                    })
                    .collect(),
                Role::Linear(l) => {
                    let w = l.weight();
                    let x = self.value(&node.input[l.input_slot()]).expect("activation");
                    let xc = &self.consts[x];
                    if xc.len() != w.k || width != w.n {
                        vec![None; width]
                    } else {
                        let mut acc = vec![0.0; w.n];
                        let mut varies = vec![false; w.n];
                        w.for_each_nonzero(|c, j, wv| match xc[c] {
                            Some(k) => acc[j] += wv * k,
                            None => varies[j] = true,
                        });
                        (self.cx.release)(w.values.raw());
                        (0..w.n)
                            .map(|j| if varies[j] { None } else { l.bias(j).map(|b| l.alpha() * acc[j] + b) })
                            .collect()
                    }
                }
                Role::Opaque(_) => continue,
            };
            if result.len() == width {
                self.consts[out] = result;
            }
        }
    }

    fn backward(&mut self) {
        let g = self.cx.graph;
        self.needed = self.consts.iter().map(|c| vec![false; c.len()]).collect();
        // Values of unknown width are all needed; they are pinned and read as such.
        for o in &self.cx.ir.outputs {
            if let Some(v) = self.value(o) {
                self.needed[v].iter_mut().for_each(|x| *x = true);
            }
        }
        for &n in self.cx.ir.order.iter().rev() {
            let node = &g.node[n];
            match &self.roles[n] {
                Role::Opaque(_) => {
                    let reads: Vec<usize> = node.input.iter().filter_map(|i| self.value(i)).collect();
                    for v in reads {
                        self.needed[v].iter_mut().for_each(|x| *x = true);
                    }
                }
                Role::Pointwise(p) => {
                    let Some(out) = self.value(&node.output[0]) else {
                        continue;
                    };
                    let mut marks = vec![];
                    for c in (0..self.needed[out].len()).filter(|&c| self.needed[out][c]) {
                        for &slot in &p.acts {
                            let a = self.value(&node.input[slot]).expect("activation");
                            let other_zero = p.zero_absorbs
                                && (0..node.input.len()).any(|s| s != slot && self.operand(n, p, s, c) == Some(0.0));
                            if c < self.needed[a].len() && self.consts[a][c].is_none() && !other_zero {
                                marks.push((a, c));
                            }
                        }
                    }
                    for (a, c) in marks {
                        self.needed[a][c] = true;
                    }
                }
                Role::Linear(l) => {
                    let w = l.weight();
                    let (Some(x), Some(y)) = (self.value(&node.input[l.input_slot()]), self.value(&node.output[0]))
                    else {
                        continue;
                    };
                    if self.needed[x].len() != w.k || self.needed[y].len() != w.n {
                        self.needed[x].iter_mut().for_each(|v| *v = true);
                        continue;
                    }
                    let ny = std::mem::take(&mut self.needed[y]);
                    let xc = &self.consts[x];
                    let nx = &mut self.needed[x];
                    w.for_each_nonzero(|c, j, _| {
                        if ny[j] && xc[c].is_none() {
                            nx[c] = true;
                        }
                    });
                    (self.cx.release)(w.values.raw());
                    self.needed[y] = ny;
                }
            }
        }
    }

    fn decide(&mut self) {
        let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
        for v in 0..self.names.len() {
            members.entry(self.space_of[v]).or_default().push(v);
        }
        for (root, s) in &self.spaces {
            let Some(width) = s.width else { continue };
            if !s.pins.is_empty() {
                continue;
            }
            let vs = &members[root];
            let mut keep: Vec<usize> =
                (0..width).filter(|&c| vs.iter().any(|&v| self.needed[v].get(c).copied().unwrap_or(true))).collect();
            if keep.len() == width {
                continue;
            }
            // A zero-width tensor is legal ONNX but not every runtime takes it: keep one channel,
            // which costs nothing in exactness (unneeded channels only reach unneeded places).
            if keep.is_empty() {
                keep.push(0);
            }
            self.keep.insert(*root, keep);
        }
    }

    fn kept(&self, v: usize, width: usize) -> Vec<usize> {
        self.keep.get(&self.space_of[v]).cloned().unwrap_or_else(|| (0..width).collect())
    }

    /// Turns the decision into edits, and reports per layer and per block.
    pub fn plan(&self) -> crate::error::Result<Plan> {
        let g = self.cx.graph;
        let mut edits = vec![];
        let mut layers = vec![];
        for &n in &self.cx.ir.order {
            let node = &g.node[n];
            match &self.roles[n] {
                Role::Linear(l) => {
                    let w = l.weight();
                    let x = self.value(&node.input[l.input_slot()]).expect("activation");
                    let y = self.value(&node.output[0]).expect("activation");
                    let keep_in = self.kept(x, w.k);
                    let keep_out = self.kept(y, w.n);
                    let mut fold = vec![0.0; w.n];
                    if keep_in.len() < w.k {
                        let mut removed = vec![true; w.k];
                        keep_in.iter().for_each(|&c| removed[c] = false);
                        let xc = &self.consts[x];
                        w.for_each_nonzero(|c, j, wv| {
                            if let (true, Some(Some(k))) = (removed[c], xc.get(c)) {
                                fold[j] += wv * k;
                            }
                        });
                    }
                    let fold: Vec<f64> = keep_out.iter().map(|&j| l.alpha() * fold[j]).collect();
                    if keep_in.len() < w.k || keep_out.len() < w.n {
                        l.rewrite(n, &keep_in, &keep_out, &fold, &mut edits)?;
                    }
                    (self.cx.release)(w.values.raw());
                    let mut kept = vec![false; w.n];
                    keep_out.iter().for_each(|&j| kept[j] = true);
                    let constant = (0..w.n).filter(|&j| !kept[j] && self.consts[y][j].is_some()).count();
                    layers.push(LayerReport {
                        node: node.name().to_string(),
                        op: node.op_type().to_string(),
                        inputs_before: w.k,
                        inputs_after: keep_in.len(),
                        outputs_before: w.n,
                        outputs_after: keep_out.len(),
                        removed_constant: constant,
                        removed_dead: w.n - keep_out.len() - constant,
                    });
                }
                Role::Pointwise(p) => {
                    let out = self.value(&node.output[0]).expect("activation");
                    let Some(keep) = self.keep.get(&self.space_of[out]) else {
                        continue;
                    };
                    for &slot in &p.params {
                        let prm = &self.params[&(n, slot)];
                        if let Some(dim) = prm.channel_dim {
                            let t = self.cx.const_tensor(&node.input[slot]).expect("constant");
                            let mut dims = t.dims.clone();
                            dims[dim] = keep.len() as i64;
                            let raw = prm.values.gather(keep.iter().copied());
                            edits.push(Edit::Const {
                                node: n,
                                slot,
                                tensor: with_data(t, dims, prm.values.dtype, raw),
                            });
                        }
                    }
                    if let Some(slot) = p.shape_slot {
                        let t = self.cx.const_tensor(&node.input[slot]).expect("constant");
                        let mut shape = int64s(t);
                        *shape.last_mut().expect("checked") = keep.len() as i64;
                        edits.push(Edit::Const { node: n, slot, tensor: with_int64s(t, &shape) });
                    }
                }
                Role::Opaque(_) => {}
            }
        }
        let mut gathered = vec![];
        for (v, name) in self.names.iter().enumerate() {
            let Some(keep) = self.keep.get(&self.space_of[v]) else {
                continue;
            };
            let s = &self.spaces[&self.space_of[v]];
            if self.gathered.contains_key(*name) {
                let axis = s.axis.expect("decided");
                edits.push(Edit::GatherInput { input: name.to_string(), axis, keep: keep.clone() });
                gathered.push(GatheredInput {
                    input: name.to_string(),
                    features: s.width.expect("decided"),
                    kept: keep.len(),
                });
                continue;
            }
            edits.push(Edit::Width {
                value: name.to_string(),
                axis: s.axis.expect("decided"),
                from: s.width.expect("decided"),
                to: keep.len(),
            });
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

    /// Spaces that hold removable channels but are pinned, and why: the report's answer to
    /// "why did this not shrink?".
    fn blocked(&self) -> Vec<Blocked> {
        let mut out = vec![];
        let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
        for v in 0..self.names.len() {
            members.entry(self.space_of[v]).or_default().push(v);
        }
        let mut roots: Vec<_> = self.spaces.keys().copied().collect();
        roots.sort();
        for root in roots {
            let s = &self.spaces[&root];
            let (Some(width), false) = (s.width, s.pins.is_empty()) else {
                continue;
            };
            let vs = &members[&root];
            // Opaque readers mark everything needed, so count what is constant as well.
            let free = |v: usize, c: usize| {
                !self.needed[v].get(c).copied().unwrap_or(true) || self.consts[v].get(c).copied().flatten().is_some()
            };
            let removable = (0..width).filter(|&c| vs.iter().all(|&v| free(v, c))).count();
            if removable == 0 {
                continue;
            }
            let mut values: Vec<String> = vs.iter().map(|&v| self.names[v].to_string()).collect();
            values.sort();
            out.push(Blocked { values, width, removable, reasons: s.pins.clone() });
        }
        out
    }
}
