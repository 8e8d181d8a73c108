//! Gather of a graph input's features by constant indices: how `--gather-inputs` reads an
//! input, so that a model minimized with it can be minimized again (the indices shrink).

use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::reasons::Opaque;
use crate::analysis::LayoutCx;
use crate::ir::NodeExt;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::onnx::tensor::int64s;

pub(crate) struct Select;

impl OpRule for Select {
    fn op_types(&self) -> &'static [&'static str] {
        &["Gather"]
    }

    /// Gathers of anything but a graph input's last axis may index shapes or tokens: opaque.
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let data = node.input.first().map(String::as_str).unwrap_or_default();
        let last = match node.attr_i("axis", 0) {
            -1 => true,
            a => cx.ir.rank(data).is_some_and(|r| a == r as i64 - 1),
        };
        let indices = node.input.get(1).and_then(|i| cx.const_tensor(i));
        match indices {
            Some(t)
                if t.dims.len() == 1
                    && t.data_type() == DataType::Int64 as i32
                    && last
                    && cx.ir.inputs.iter().any(|i| i == data) =>
            {
                Role::Op(Box::new(Selected { indices: int64s(t) }))
            }
            _ => Role::Opaque(Opaque::Unsupported(
                "it is not a Gather of a graph input's features by constant indices".into(),
            )),
        }
    }
}

/// Output channel `k` is input channel `indices[k]` along the last axis: the output is a
/// channel space of its own, the input is read whole (the default need); the plan removes the
/// indices of removed output channels.
struct Selected {
    indices: Vec<i64>,
}

impl<'g> ChannelOp<'g> for Selected {
    fn activations(&self) -> Activations {
        Activations { slots: vec![0], otherwise: "it gathers from a constant" }
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let Some(o) = cx.output(0) else { return };
        cx.set_axis(o, -1);
        cx.set_width(o, self.indices.len());
    }

    fn selected(&self) -> Option<&[i64]> {
        Some(&self.indices)
    }
}
