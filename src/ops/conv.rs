//! Conv: a linear layer over channels with a spatial kernel (`group == 1`), or a per-channel
//! filter (depthwise: `group == channels`, one filter per channel). ConvTranspose (`group == 1`)
//! is a linear layer too, with its weight stored inputs first.
//!
//! Exporters fold BatchNorm into the Conv, so a dead filter arrives as a zero filter with a
//! non-zero bias: a constant channel. A constant *input* channel folds into the next Conv's bias
//! when its kernel cannot see zero padding; otherwise an ungrouped Conv adds it back after itself
//! as the convolution of a map of ones (exact at the borders too), and a grouped one keeps it.

use super::linear::{Correction, LinearOp};
use super::{may_pad, Activations, ChannelOp, Ctx, Linear, OpRule, Role, Weight};
use crate::analysis::reasons::Opaque;
use crate::analysis::{ConstCx, LayoutCx, NeedCx, PlanCx, TieCx};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::{attr_int, attr_tensor, int64_tensor};
use crate::onnx::proto::{AttributeProto, NodeProto, TensorProto};
use crate::onnx::tensor::{encode, with_data, Values};
use crate::rewrite::Edit;

pub struct Conv;

struct ConvNode<'g> {
    node: &'g NodeProto,
    weight: Weight<'g>,
    bias: Option<(Values<'g>, &'g TensorProto)>,
    /// A constant input contributes the same to every output position: no zero padding in
    /// its view. Never for a transposed convolution, whose border outputs gather fewer taps.
    folds: bool,
    /// A padded, ungrouped Conv: what a constant input adds is the same convolution of a map of
    /// ones, computed after it ([`Linear::border_correction`]).
    corrects: bool,
}

struct Depthwise<'g> {
    filters: Values<'g>,
    w_tensor: &'g TensorProto,
    bias: Option<(Values<'g>, &'g TensorProto)>,
    padded: bool,
    channels: usize,
    kernel: usize,
}

impl OpRule for Conv {
    fn op_types(&self) -> &'static [&'static str] {
        &["Conv", "ConvTranspose"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let Some(w_tensor) = node.input.get(1).and_then(|w| cx.const_tensor(w)) else {
            return Role::Opaque(Opaque::NotConstant("its weight is not a constant"));
        };
        let values = match Values::of(w_tensor) {
            Ok(v) if v.dims.len() >= 3 => v,
            Ok(_) => return Role::Opaque(Opaque::Shape("its weight has fewer than 3 dimensions")),
            Err(e) => return Role::Opaque(Opaque::Tensor(e.to_string())),
        };
        let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
            None => None,
            Some(b) => match cx.const_tensor(b).map(|t| (Values::of(t), t)) {
                Some((Ok(v), t)) if v.dims.len() == 1 => Some((v, t)),
                _ => return Role::Opaque(Opaque::Shape("its bias is not a constant vector")),
            },
        };
        let dims: Vec<usize> = values.dims.iter().map(|&d| d as usize).collect();
        let group = node.attr_i("group", 1).max(0) as usize;
        let outputs = if node.op_type() == "ConvTranspose" { dims[1] * group } else { dims[0] };
        if bias.as_ref().is_some_and(|(b, _)| b.len() != outputs) {
            return Role::Opaque(Opaque::Malformed("its bias does not have one entry per output channel"));
        }
        let kernel: usize = dims[2..].iter().product();
        let padded = may_pad(node);
        if node.op_type() == "ConvTranspose" {
            if group != 1 {
                return Role::Opaque(Opaque::Unsupported(format!(
                    "it is a grouped transposed convolution (group {group})"
                )));
            }
            // Stored [C_in, C_out, k...]: input rows, output columns.
            let weight = Weight {
                values,
                tensor: w_tensor,
                slot: 1,
                k: dims[0],
                n: dims[1],
                transposed: false,
                spatial: kernel,
                groups: 1,
            };
            let conv = ConvNode { node, weight, bias, folds: false, corrects: false };
            return Role::Op(Box::new(LinearOp(Box::new(conv))));
        }
        if dims[1] == 1 && dims[0] == group && group > 1 {
            Role::Op(Box::new(Depthwise { filters: values, w_tensor, bias, padded, channels: group, kernel }))
        } else if group > 0 && dims[0].is_multiple_of(group) {
            // Grouped: input channels `K = group * dims[1]`, each output reading its group's.
            let (k, n) = (dims[1] * group, dims[0]);
            let weight =
                Weight { values, tensor: w_tensor, slot: 1, k, n, transposed: true, spatial: kernel, groups: group };
            let conv = ConvNode { node, weight, bias, folds: !padded, corrects: padded && group == 1 };
            Role::Op(Box::new(LinearOp(Box::new(conv))))
        } else {
            Role::Opaque(Opaque::Malformed("its group does not divide its filters"))
        }
    }
}

/// The bias kept for `keep`, plus `fold`; appended as input 2 when the node had none.
fn bias_edit(
    node: usize,
    bias: &Option<(Values, &TensorProto)>,
    w: &Values,
    keep: &[usize],
    fold: &[f64],
    edits: &mut Vec<Edit>,
) {
    let folds = fold.iter().any(|&f| f != 0.0);
    match bias {
        Some((b, t)) if folds || keep.len() != b.len() => {
            let vals: Vec<f64> = keep.iter().zip(fold).map(|(&j, f)| b.get(j) + f).collect();
            edits.push(Edit::Const {
                node,
                slot: 2,
                tensor: with_data(t, vec![keep.len() as i64], b.dtype, encode(b.dtype, &vals)),
            });
        }
        None if folds => {
            let tensor = with_data(&TensorProto::default(), vec![keep.len() as i64], w.dtype, encode(w.dtype, fold));
            edits.push(Edit::SetInput { node, slot: 2, tensor });
        }
        _ => {}
    }
}

impl Linear for ConvNode<'_> {
    fn input_slot(&self) -> usize {
        0
    }

    fn axes(&self) -> (isize, isize) {
        let a = -(self.weight.values.dims.len() as isize - 1);
        (a, a)
    }

    fn ranks(&self) -> (Option<usize>, Option<usize>) {
        let r = self.weight.values.dims.len();
        (Some(r), Some(r))
    }

    fn folds_constants(&self) -> bool {
        self.folds
    }

    fn weight(&self) -> &Weight<'_> {
        &self.weight
    }

    fn alpha(&self) -> f64 {
        1.0
    }

    fn bias(&self, j: usize) -> Option<f64> {
        Some(self.bias.as_ref().map_or(0.0, |(b, _)| b.get(j)))
    }

    fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    fn rewrite_bias(&self, node: usize, keep_out: &[usize], fold: &[f64], edits: &mut Vec<Edit>) {
        let w = &self.weight;
        bias_edit(node, &self.bias, &w.values, keep_out, fold, edits);
    }

    fn corrects_borders(&self) -> bool {
        self.corrects
    }

    /// `$after = $before + Conv(ones, sum_c k_c W[:, c])`, the ones shaped `[1, 1, spatial..]`
    /// after the input's spatial sizes: inside the image each removed input was `k_c`, in the
    /// padding 0, exactly as the ones map and its padding are. Nothing where the kept outputs
    /// read the removed constants through zero weights only (the kernel is zero).
    fn border_correction(&self, folded: &[(usize, f64)], keep_out: &[usize]) -> Option<Correction> {
        if !self.corrects {
            return None;
        }
        let w = &self.weight;
        let s = w.spatial;
        let kernel: Vec<f64> = keep_out
            .iter()
            .flat_map(|&j| {
                (0..s).map(move |e| folded.iter().map(|&(c, k)| k * w.values.get((j * w.k + c) * s + e)).sum())
            })
            .collect();
        if kernel.iter().all(|&v| v == 0.0) {
            return Some((vec![], vec![]));
        }
        let dtype = w.values.dtype;
        let mut dims = w.values.dims.to_vec();
        (dims[0], dims[1]) = (keep_out.len() as i64, 1);
        let mut weight = with_data(&TensorProto::default(), dims, dtype, encode(dtype, &kernel));
        weight.name = Some("$kernel".into());
        let mut one = with_data(&TensorProto::default(), vec![1], dtype, encode(dtype, &[1.0]));
        one.name = Some("$one".into());
        let int = |name: &str, v: &[i64]| int64_tensor(name, v);
        let initializers = vec![weight, int("$two", &[2]), int("$end", &[i64::MAX]), int("$unit", &[1, 1])];
        let step = |op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>| NodeProto {
            name: Some(format!("{output}_node")),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        };
        let x = self.node.input[0].as_str();
        // The original's window (kernel, pads, strides, dilations, auto_pad), over one channel.
        let window: Vec<AttributeProto> = self.node.attribute.iter().filter(|a| a.name() != "group").cloned().collect();
        let nodes = vec![
            step("Shape", &[x], "$shape", vec![]),
            step("Slice", &["$shape", "$two", "$end"], "$spatial", vec![]),
            step("Concat", &["$unit", "$spatial"], "$ones_shape", vec![attr_int("axis", 0)]),
            step("ConstantOfShape", &["$ones_shape"], "$ones", vec![attr_tensor("value", one)]),
            step("Conv", &["$ones", "$kernel"], "$correction", window),
            step("Add", &["$before", "$correction"], "$after", vec![]),
        ];
        Some((nodes, initializers))
    }
}

impl Depthwise<'_> {
    fn filter_sum(&self, c: usize) -> (bool, f64) {
        let k = self.kernel;
        let vals = (c * k..(c + 1) * k).map(|i| self.filters.get(i));
        vals.fold((false, 0.0), |(nz, s), v| (nz || v != 0.0, s + v))
    }
}

impl Depthwise<'_> {
    /// The output channel's constant, if it has one, given the input channel's.
    fn constant(&self, c: usize, input: Option<f64>) -> Option<f64> {
        let b = self.bias.as_ref().map_or(0.0, |(b, _)| b.get(c));
        let (nonzero, sum) = self.filter_sum(c);
        match input {
            _ if !nonzero => Some(b),
            Some(0.0) => Some(b),
            Some(k) if !self.padded => Some(k * sum + b),
            _ => None,
        }
    }

    /// Whether output channel `c` reads input channel `c` (given its constant, if any) in a way
    /// that needs its value.
    fn reads(&self, c: usize, input: Option<f64>) -> bool {
        self.filter_sum(c).0 && (input.is_none() || (self.padded && input != Some(0.0)))
    }
}

/// Output channel `c` is a per-channel filter of input channel `c`.
impl<'g> ChannelOp<'g> for Depthwise<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "its data operand is a constant or missing")
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (x, Some(y)) = (cx.input(0), cx.output(0)) else { return };
        let rank = self.filters.dims.len();
        for v in [x, y] {
            cx.set_axis(v, -(rank as isize - 1));
            cx.set_rank(v, rank);
            cx.set_width(v, self.channels);
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (x, Some(y)) = (cx.input(0), cx.output(0)) else { return };
        cx.tie(x, 0, y, 0, self.channels);
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (x, Some(y)) = (cx.input(0), cx.output(0)) else { return };
        let r = (0..cx.consts(y).len()).map(|c| self.constant(c, cx.consts(x).get(c).copied().flatten())).collect();
        cx.set(y, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (x, Some(y)) = (cx.input(0), cx.output(0)) else { return };
        let needed = cx.needed(y);
        for c in (0..needed.len()).filter(|&c| needed[c]) {
            if c < cx.needed(x).len() && self.reads(c, cx.consts(x)[c]) {
                cx.mark(x, c);
            }
        }
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let keep = cx.kept(cx.input(0), self.channels);
        if keep.len() == self.channels {
            return Ok(());
        }
        let node = cx.node.0;
        let k = self.kernel;
        let data = self.filters.slice_rows(&keep, k, &(0..k).collect::<Vec<_>>());
        let mut dims = self.filters.dims.to_vec();
        dims[0] = keep.len() as i64;
        let mut edits = vec![Edit::sliced(node, 1, self.w_tensor, dims, self.filters.dtype, data)];
        bias_edit(node, &self.bias, &self.filters, &keep, &vec![0.0; keep.len()], &mut edits);
        edits.push(Edit::Attr { node, attr: attr_int("group", keep.len() as i64) });
        cx.extend(edits);
        Ok(())
    }
}
