//! Slice: along other axes, channel `c` out is channel `c` in; along the channel axis (step 1),
//! output channel `k` is input channel `start + k`, and the bounds are rewritten when channels
//! before or inside the range leave.

use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{ConstCx, Layout, LayoutCx, NeedCx, PlanCx, TieCx};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::attr_ints;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::onnx::tensor::{int64s, with_int64s};
use crate::rewrite::Edit;

pub(crate) struct Slice;

/// Where the bounds live: inputs from opset 10, attributes before.
#[derive(Clone, Copy, PartialEq)]
enum Bounds {
    Inputs,
    Attributes,
}

struct Sliced {
    starts: Vec<i64>,
    ends: Vec<i64>,
    /// As written (may be negative); absent means `0..starts.len()`.
    axes: Vec<i64>,
    steps: Vec<i64>,
    bounds: Bounds,
}

impl OpRule for Slice {
    fn op_types(&self) -> &'static [&'static str] {
        &["Slice"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let attr = |name: &str| node.attr_ints(name);
        let input = |slot: usize| -> Option<Option<Vec<i64>>> {
            match node.input.get(slot).filter(|s| !s.is_empty()) {
                None => Some(None),
                Some(s) => {
                    let t = cx.const_tensor(s)?;
                    (t.data_type() == DataType::Int64 as i32 && t.dims.len() == 1).then(|| Some(int64s(t)))
                }
            }
        };
        let parsed = if node.input.len() > 1 {
            (|| {
                let (starts, ends) = (input(1)??, input(2)??);
                Some((starts, ends, input(3)?, input(4)?, Bounds::Inputs))
            })()
        } else {
            Some((
                attr("starts").unwrap_or_default(),
                attr("ends").unwrap_or_default(),
                attr("axes"),
                None,
                Bounds::Attributes,
            ))
        };
        let Some((starts, ends, axes, steps, bounds)) = parsed else {
            return Role::Opaque(Opaque::NotConstant("its bounds are not 1-D int64 constants"));
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Role::Opaque(Opaque::Malformed("its starts, ends, axes and steps differ in length"));
        }
        Role::Op(Box::new(Sliced { starts, ends, axes, steps, bounds }))
    }
}

impl Sliced {
    /// The entry of the bounds that slices the channel axis of `x`, if one does.
    fn channel_entry(&self, x: Layout) -> Option<Option<usize>> {
        let (r, p) = (x.rank?, x.position()?);
        Some(self.axes.iter().position(|&a| (if a < 0 { a + r as i64 } else { a }) == p as i64))
    }

    /// The input channels `start..start + count` the entry `i` keeps of `width`, with step 1.
    fn range(&self, i: usize, width: usize) -> Option<(usize, usize)> {
        let w = width as i64;
        let clamp = |v: i64| (if v < 0 { v + w } else { v }).clamp(0, w);
        let (s, e) = (clamp(self.starts[i]), clamp(self.ends[i]));
        (self.steps[i] == 1).then_some((s as usize, (e - s).max(0) as usize))
    }

    /// `Some((start, count))` when the channel axis is sliced (step 1), `None` when it is not;
    /// `Err` when it is sliced in a way this rule does not follow.
    fn channels(&self, x: Layout) -> Option<Result<Option<(usize, usize)>, Why>> {
        let entry = self.channel_entry(x)?;
        Some(match entry {
            None => Ok(None),
            Some(i) if x.block == Some(1) && x.heads.is_none() => {
                x.width.map(|w| self.range(i, w).ok_or(Why::StridedChannelSlice).map(Some))?
            }
            Some(_) => Err(Why::StridedChannelSlice),
        })
    }
}

impl<'g> ChannelOp<'g> for Sliced {
    fn activations(&self) -> Activations {
        Activations { slots: vec![0], otherwise: "it slices a constant" }
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        let lx = cx.get(x);
        if let (Some(a), Some(r)) = (lx.axis, lx.rank) {
            cx.set_axis(o, a);
            cx.set_rank(o, r);
        }
        match self.channels(lx) {
            None => {}
            Some(Ok(None)) => {
                cx.same_width(x, o);
                cx.carry_block(x, o);
            }
            Some(Ok(Some((_, count)))) => cx.set_width(o, count),
            Some(Err(why)) => {
                cx.force_both(x, o, why);
            }
        }
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let (Some((start, count)), Some(_)) = (self.mapped(cx.layout(x), cx.width(o)), cx.width(x)) {
            cx.tie(x, start, o, 0, count);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let Some((start, count)) = self.mapped(cx.layout(x), Some(cx.consts(o).len())) {
            let r = cx.consts(x).get(start..start + count).map(<[_]>::to_vec).unwrap_or_default();
            cx.set(o, r);
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        match self.mapped(cx.layout(x), Some(cx.needed(o).len())) {
            Some((start, _)) => {
                let needed = cx.needed(o);
                (0..needed.len()).filter(|&c| needed[c]).for_each(|c| cx.mark(x, start + c));
            }
            None => cx.mark_all(x),
        }
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return Ok(()) };
        let (lx, Some(w)) = (cx.layout(x), cx.layout(x).width) else { return Ok(()) };
        let (Some(Some(i)), Some(Ok(Some((start, count))))) = (self.channel_entry(lx), self.channels(lx)) else {
            return Ok(());
        };
        let (kept_in, kept_out) = (cx.kept(x, w), cx.kept(o, count));
        if kept_in.len() == w {
            return Ok(());
        }
        let new_start = kept_in.iter().filter(|&&c| c < start).count() as i64;
        let (mut starts, mut ends) = (self.starts.clone(), self.ends.clone());
        (starts[i], ends[i]) = (new_start, new_start + kept_out.len() as i64);
        let node = cx.node.0;
        match self.bounds {
            Bounds::Inputs => {
                for (slot, vals) in [(1, &starts), (2, &ends)] {
                    let t = cx.const_input(slot).expect("constant bounds");
                    cx.push(Edit::Const { node, slot, tensor: with_int64s(t, vals) });
                }
            }
            Bounds::Attributes => {
                cx.push(Edit::Attr { node, attr: attr_ints("starts", &starts) });
                cx.push(Edit::Attr { node, attr: attr_ints("ends", &ends) });
            }
        }
        Ok(())
    }
}

impl Sliced {
    /// Input channels `start..start + count` are output channels `0..count`, when both widths
    /// agree with the bounds (the identity when the channel axis is not sliced).
    fn mapped(&self, x: Layout, out_width: Option<usize>) -> Option<(usize, usize)> {
        let (w, count) = match self.channels(x)? {
            Ok(None) => (x.width?, x.width?),
            Ok(Some((start, count))) => return (out_width == Some(count)).then_some((start, count)),
            Err(_) => return None,
        };
        (out_width == Some(w)).then_some((0, count))
    }
}
