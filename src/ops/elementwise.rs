//! Elementwise operators: channel `c` of the output reads only channel `c` of the inputs.
//!
//! Their scalar semantics let the analysis push constants forward (`relu(b)`, `gelu(b)`,
//! `k * scale`). Exported GELU in its Erf form (`x * 0.5 * (1 + erf(x / sqrt 2))`) is a chain of
//! these, so it needs no pattern of its own.

use super::per_channel::{AxisMap, PerChannel};
use super::{Ctx, OpRule, Role};
use crate::analysis::reasons::Opaque;
use crate::analysis::{LayoutCx, ValueId};
use crate::ir::NodeExt;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::onnx::tensor::Values;

/// Scalar semantics that are defined for every constant input.
type Total = Box<dyn Fn(&[f64]) -> f64 + Sync>;

pub(crate) struct Unary;
pub(crate) struct Binary;
pub(crate) struct BatchNorm;
pub(crate) struct InstanceNorm;
pub(crate) struct PassThrough;
pub(crate) struct Logical;

fn scalar_input(node: &NodeProto, cx: &Ctx, slot: usize) -> Result<Option<f64>, ()> {
    match node.input.get(slot).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(name) => {
            let t = cx.const_tensor(name).ok_or(())?;
            let v = Values::of(t).map_err(|_| ())?;
            if v.len() == 1 {
                Ok(Some(v.get(0)))
            } else {
                Err(())
            }
        }
    }
}

fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

impl OpRule for Unary {
    fn op_types(&self) -> &'static [&'static str] {
        &[
            "Relu",
            "LeakyRelu",
            "Elu",
            "Selu",
            "Celu",
            "Sigmoid",
            "HardSigmoid",
            "HardSwish",
            "Tanh",
            "Softplus",
            "Softsign",
            "Exp",
            "Log",
            "Neg",
            "Abs",
            "Sqrt",
            "Reciprocal",
            "Erf",
            "Gelu",
            "Mish",
            "Sin",
            "Cos",
            "Floor",
            "Ceil",
            "Sign",
            "ThresholdedRelu",
            "Clip",
        ]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let a = |name: &str, d: f32| node.attr_f(name, d) as f64;
        let eval: Total = match node.op_type() {
            "Relu" => Box::new(|x| x[0].max(0.0)),
            "LeakyRelu" => {
                let alpha = a("alpha", 0.01);
                Box::new(move |x| if x[0] >= 0.0 { x[0] } else { alpha * x[0] })
            }
            "Elu" => {
                let alpha = a("alpha", 1.0);
                Box::new(move |x| if x[0] >= 0.0 { x[0] } else { alpha * (x[0].exp() - 1.0) })
            }
            "Celu" => {
                let alpha = a("alpha", 1.0);
                Box::new(move |x| x[0].max(0.0) + (alpha * ((x[0] / alpha).exp() - 1.0)).min(0.0))
            }
            "Selu" => {
                let (alpha, gamma) = (a("alpha", 1.673_263_2), a("gamma", 1.050_701));
                Box::new(move |x| gamma * if x[0] > 0.0 { x[0] } else { alpha * (x[0].exp() - 1.0) })
            }
            "Sigmoid" => Box::new(|x| 1.0 / (1.0 + (-x[0]).exp())),
            "HardSigmoid" => {
                let (alpha, beta) = (a("alpha", 0.2), a("beta", 0.5));
                Box::new(move |x| (alpha * x[0] + beta).clamp(0.0, 1.0))
            }
            "HardSwish" => Box::new(|x| x[0] * (x[0] / 6.0 + 0.5).clamp(0.0, 1.0)),
            "Tanh" => Box::new(|x| x[0].tanh()),
            "Softplus" => Box::new(|x| x[0].exp().ln_1p()),
            "Softsign" => Box::new(|x| x[0] / (1.0 + x[0].abs())),
            "Exp" => Box::new(|x| x[0].exp()),
            "Log" => Box::new(|x| x[0].ln()),
            "Neg" => Box::new(|x| -x[0]),
            "Abs" => Box::new(|x| x[0].abs()),
            "Sqrt" => Box::new(|x| x[0].sqrt()),
            "Reciprocal" => Box::new(|x| 1.0 / x[0]),
            "Erf" => Box::new(|x| libm::erf(x[0])),
            "Gelu" => match node.attr_s("approximate", "none").as_str() {
                "tanh" => Box::new(|x| gelu_tanh(x[0])),
                _ => Box::new(|x| gelu_erf(x[0])),
            },
            "Mish" => Box::new(|x| x[0] * x[0].exp().ln_1p().tanh()),
            "Sin" => Box::new(|x| x[0].sin()),
            "Cos" => Box::new(|x| x[0].cos()),
            "Floor" => Box::new(|x| x[0].floor()),
            "Ceil" => Box::new(|x| x[0].ceil()),
            "Sign" => Box::new(|x| if x[0] == 0.0 { 0.0 } else { x[0].signum() }),
            "ThresholdedRelu" => {
                let alpha = a("alpha", 1.0);
                Box::new(move |x| if x[0] > alpha { x[0] } else { 0.0 })
            }
            "Clip" => {
                // opset < 11 keeps the bounds in attributes, later opsets in optional inputs.
                let (lo, hi) = match (scalar_input(node, cx, 1), scalar_input(node, cx, 2)) {
                    (Ok(lo), Ok(hi)) => (lo.unwrap_or(a("min", f32::MIN)), hi.unwrap_or(a("max", f32::MAX))),
                    _ => return Role::Opaque(Opaque::NotConstant("its bounds are not scalar constants")),
                };
                Box::new(move |x| x[0].max(lo).min(hi))
            }
            other => unreachable!("{other} is listed in op_types"),
        };
        // Clip's bound inputs are scalars: the channel rule never slices them.
        Role::Op(Box::new(PerChannel::new(vec![0], vec![], Box::new(move |x| Some(eval(x))))))
    }
}

impl OpRule for Binary {
    fn op_types(&self) -> &'static [&'static str] {
        &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        if node.input.len() != 2 || node.input.iter().any(|s| s.is_empty()) {
            return Role::Opaque(Opaque::Malformed("it does not have exactly two operands"));
        }
        let (mut acts, mut params) = (vec![], vec![]);
        for (slot, name) in node.input.iter().enumerate() {
            if cx.ir.is_const(name) {
                if let Some(Err(e)) = cx.const_tensor(name).map(Values::of) {
                    return Role::Opaque(Opaque::Tensor(e.to_string()));
                }
                params.push(slot);
            } else {
                acts.push(slot);
            }
        }
        if acts.is_empty() {
            return Role::Opaque(Opaque::ConstantOperand("all its operands are constants"));
        }
        let op = node.op_type();
        let eval: Total = match op {
            "Add" => Box::new(|x| x[0] + x[1]),
            "Sub" => Box::new(|x| x[0] - x[1]),
            "Mul" => Box::new(|x| x[0] * x[1]),
            "Div" => Box::new(|x| x[0] / x[1]),
            "Pow" => Box::new(|x| x[0].powf(x[1])),
            "Max" => Box::new(|x| x[0].max(x[1])),
            "Min" => Box::new(|x| x[0].min(x[1])),
            "PRelu" => Box::new(|x| if x[0] < 0.0 { x[1] * x[0] } else { x[0] }),
            other => unreachable!("{other} is listed in op_types"),
        };
        let mut p = PerChannel::new(acts, params, Box::new(move |x| Some(eval(x))));
        if op == "Mul" {
            p.absorb = Some(|x| x.contains(&Some(0.0)).then_some(0.0));
        }
        Role::Op(Box::new(p))
    }
}

impl OpRule for BatchNorm {
    fn op_types(&self) -> &'static [&'static str] {
        &["BatchNormalization"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        // Inference form only: the training outputs (running statistics) must be unused.
        if node.output.iter().skip(1).any(|o| !o.is_empty()) || node.attr_i("training_mode", 0) != 0 {
            return Role::Opaque(Opaque::AuxiliaryOutput("it runs in training mode"));
        }
        if node.input.len() != 5 || !node.input[1..].iter().all(|i| cx.ir.is_const(i)) {
            return Role::Opaque(Opaque::NotConstant("its scale, bias, mean and variance are not all constants"));
        }
        let eps = node.attr_f("epsilon", 1e-5) as f64;
        let mut p = PerChannel::new(
            vec![0],
            vec![1, 2, 3, 4],
            Box::new(move |x| Some(x[1] * (x[0] - x[3]) / (x[4] + eps).sqrt() + x[2])),
        );
        p.channel_params = true;
        // A zero scale makes the output the bias, whatever the input is.
        p.absorb = Some(|x| if x[1] == Some(0.0) { x[2] } else { None });
        Role::Op(Box::new(p))
    }
}

/// InstanceNormalization normalizes each channel of each sample over its own positions: output
/// channel `c` reads input channel `c` alone (the statistics of no other channel), so it is a
/// per-channel operator on the axis after the batch. A constant channel normalizes to 0, so its
/// output is the bias, as is every output whose scale is zero. (GroupNorm as exporters write it,
/// a reshape into `[N, G, -1]` around it, merges channels unless `G` is the channel count: the
/// reshape keeps those whole.)
impl OpRule for InstanceNorm {
    fn op_types(&self) -> &'static [&'static str] {
        &["InstanceNormalization"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        if node.input.len() != 3 || !node.input[1..].iter().all(|i| cx.ir.is_const(i)) {
            return Role::Opaque(Opaque::NotConstant("its scale and bias are not constants"));
        }
        // (k - mean) is 0 for a constant channel: only the bias is left (up to the rounding of
        // the mean, which the division by sqrt(eps) magnifies: verification bounds it).
        let mut p = PerChannel::new(vec![0], vec![1, 2], Box::new(|x| Some(x[2])));
        p.channel_params = true;
        p.absorb = Some(|x| if x[1] == Some(0.0) { x[2] } else { None });
        p.axes = Box::new(ChannelsFirst);
        Role::Op(Box::new(p))
    }
}

/// The output has the input's layout, whose channel axis is the one after the batch (the
/// statistics run over the axes after it, which must not be taken for channels).
struct ChannelsFirst;

impl AxisMap for ChannelsFirst {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _params: &[usize]) {
        let x = acts[0];
        cx.copy(x, o);
        cx.copy(o, x);
        if let Some(r) = cx.get(x).rank.or(cx.get(o).rank).filter(|&r| r >= 2) {
            for v in [x, o] {
                cx.set_rank(v, r);
                cx.set_axis(v, 1 - r as isize);
            }
        }
    }
}

impl OpRule for PassThrough {
    fn op_types(&self) -> &'static [&'static str] {
        &["Identity", "Dropout", "Cast"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        match node.op_type() {
            // Dropout is the identity at inference; its mask output is another matter.
            "Dropout"
                if node
                    .output
                    .get(1)
                    .is_some_and(|m| !m.is_empty() && (!cx.ir.readers(m).is_empty() || cx.ir.outputs.contains(m))) =>
            {
                Role::Opaque(Opaque::AuxiliaryOutput("its mask output is used"))
            }
            "Cast" => {
                let to = node.attr_i("to", 0) as i32;
                let round: fn(f64) -> f64 = match DataType::try_from(to) {
                    Ok(DataType::Float) => |x| x as f32 as f64,
                    Ok(DataType::Double) => |x| x,
                    Ok(DataType::Float16) => |x| half::f16::from_f64(x).to_f64(),
                    Ok(DataType::Bfloat16) => |x| half::bf16::from_f64(x).to_f64(),
                    _ => return Role::Opaque(Opaque::Unsupported("it casts to a non-float type".into())),
                };
                Role::Op(Box::new(PerChannel::new(vec![0], vec![], Box::new(move |x| Some(round(x[0]))))))
            }
            _ => Role::Op(Box::new(PerChannel::identity(Box::new(super::per_channel::Same)))),
        }
    }
}

/// The operators of [`Logical`].
pub(crate) const LOGICAL: &[&str] =
    &["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Where"];

impl OpRule for Logical {
    fn op_types(&self) -> &'static [&'static str] {
        LOGICAL
    }

    /// Comparisons and boolean logic per channel (true is 1, false 0), and `Where` choosing per
    /// element (`masked_fill` of an activation, `nan_to_num`): each output channel reads the same
    /// channel of every operand, or an operand broadcast over the channels (a padding mask).
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let op = node.op_type();
        let arity = match op {
            "Not" => 1,
            "Where" => 3,
            _ => 2,
        };
        if node.input.len() != arity || node.input.iter().any(|s| s.is_empty()) {
            return Role::Opaque(Opaque::Malformed("it does not have its operands"));
        }
        let (mut acts, mut params) = (vec![], vec![]);
        for (slot, name) in node.input.iter().enumerate() {
            if !cx.ir.is_const(name) {
                acts.push(slot);
            } else if cx.const_tensor(name).is_some_and(|t| Values::of(t).is_ok()) {
                params.push(slot);
            } else {
                // A boolean or integer constant: no per-channel values to slice.
                return Role::Opaque(Opaque::Unsupported("a constant operand is not a float tensor".into()));
            }
        }
        if acts.is_empty() {
            return Role::Opaque(Opaque::ConstantOperand("all its operands are constants"));
        }
        let truth = |b: bool| if b { 1.0 } else { 0.0 };
        let eval: Total = match op {
            "Equal" => Box::new(move |x| truth(x[0] == x[1])),
            "Less" => Box::new(move |x| truth(x[0] < x[1])),
            "LessOrEqual" => Box::new(move |x| truth(x[0] <= x[1])),
            "Greater" => Box::new(move |x| truth(x[0] > x[1])),
            "GreaterOrEqual" => Box::new(move |x| truth(x[0] >= x[1])),
            "And" => Box::new(move |x| truth(x[0] != 0.0 && x[1] != 0.0)),
            "Or" => Box::new(move |x| truth(x[0] != 0.0 || x[1] != 0.0)),
            "Not" => Box::new(move |x| truth(x[0] == 0.0)),
            "Where" => Box::new(|x| if x[0] != 0.0 { x[1] } else { x[2] }),
            other => unreachable!("{other} is listed in op_types"),
        };
        let mut p = PerChannel::new(acts, params, Box::new(move |x| Some(eval(x))));
        if op == "Where" {
            // A known condition picks its branch's constant; equal constant branches need no
            // condition.
            p.absorb = Some(|x| match x {
                [Some(c), a, b] => {
                    if *c != 0.0 {
                        *a
                    } else {
                        *b
                    }
                }
                [None, Some(a), Some(b)] if a == b => Some(*a),
                _ => None,
            });
        }
        Role::Op(Box::new(p))
    }
}
