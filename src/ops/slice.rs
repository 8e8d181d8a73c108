//! Slice: along other axes, channel `c` out is channel `c` in; along the channel axis (step 1),
//! output channel `k` is input channel `start + k`, and the bounds are rewritten when channels
//! before or inside the range leave.

use super::shape::dimension_read;
use super::{Activations, ChannelOp, Ctx, OpRule, Role};
use crate::analysis::plan::heads_kept;
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{ConstCx, Layout, LayoutCx, NeedCx, PlanCx, TieCx};
use crate::error::Result;
use crate::ir::NodeExt;
use crate::onnx::build::{attr_ints, int64_tensor};
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
    /// Starts and ends computed from the sliced tensor's own size, `x.shape[a] // c` (as
    /// TorchScript writes rotary embeddings' halves): `(a, c)`, the bound one entry, evaluated
    /// on the layout and written as a constant when the channels change.
    derived: [Option<(i64, i64)>; 2],
    /// As written (may be negative); absent means `0..starts.len()`.
    axes: Vec<i64>,
    steps: Vec<i64>,
    bounds: Bounds,
    /// It takes nothing ([`stays_empty`]): it reads no channel, and what reads it none.
    empty: bool,
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
                Some(s) => match cx.const_tensor(s) {
                    Some(t) => (t.data_type() == DataType::Int64 as i32 && t.dims.len() == 1).then(|| Some(int64s(t))),
                    // Computed from sizes the graph fixes (TorchScript's `q[..., :cos.shape[-1]]`
                    // with a declared last axis): the same for every input, as `fold::sizes`
                    // argues; written as a constant when the channels change.
                    None => cx.ir.computed_ints(s).filter(|_| cx.ir.rank(s) == Some(1)).map(|v| Some(v.to_vec())),
                },
            }
        };
        let x = node.input.first().map(String::as_str).unwrap_or("");
        let mut derived = [None, None];
        let mut bound = |slot: usize| match input(slot) {
            Some(v) => v,
            None => {
                derived[slot - 1] = own_size(cx, node.input.get(slot)?, x);
                derived[slot - 1].map(|_| vec![0])
            }
        };
        let parsed = if node.input.len() > 1 {
            (|| {
                let (starts, ends) = (bound(1)?, bound(2)?);
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
        // Bounds read from x's size are placeholders here.
        let empty = derived.iter().all(Option::is_none) && stays_empty(cx, x, &starts, &ends, &axes);
        Role::Op(Box::new(Sliced { starts, ends, derived, axes, steps, bounds, empty }))
    }
}

/// Whether the slice takes nothing along some axis and still takes nothing once that axis
/// shrinks: a start from the beginning at or past the axis' declared size, or an end before the
/// start (TorchScript's pass-through `x[.., rotary_dim:]` when the rotation takes every entry).
fn stays_empty(cx: &Ctx, x: &str, starts: &[i64], ends: &[i64], axes: &[i64]) -> bool {
    let Some(dims) = cx.ir.shape(x) else { return false };
    (0..starts.len()).any(|i| {
        let n = crate::ir::normalize(axes[i], dims.len()).and_then(|a| dims[a]);
        let (s, e) = (starts[i], ends[i]);
        s >= 0 && (n.is_some_and(|n| s as u64 >= n) || (0..=s).contains(&e))
    })
}

/// `(a, c)` when `bound` is `x.shape[a] // c` as one entry: `Unsqueeze(Div(Gather(Shape(x), a),
/// c))`, through Casts to int64 (or without the division, `c = 1`).
fn own_size(cx: &Ctx, bound: &str, x: &str) -> Option<(i64, i64)> {
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).map(|&n| &g.node[n]);
    let unsqueeze = producer(bound).filter(|n| n.op_type() == "Unsqueeze")?;
    let mut at = producer(unsqueeze.input.first()?)?;
    while at.op_type() == "Cast" && at.attr_i("to", 0) == DataType::Int64 as i64 {
        at = producer(at.input.first()?)?;
    }
    let mut divisor = 1;
    if at.op_type() == "Div" {
        divisor = cx.ints(at, 1).filter(|c| c.len() == 1 && c[0] > 0)?[0];
        at = producer(at.input.first()?)?;
    }
    let (tensor, index, ..) = dimension_read(cx, at.output.first()?)?;
    (tensor == x).then_some((index, divisor))
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
        let value = |k: usize, written: i64| self.derived[k].map_or(written, |(_, c)| w / c);
        let (s, e) = (clamp(value(0, self.starts[i])), clamp(value(1, self.ends[i])));
        (self.steps[i] == 1).then_some((s as usize, (e - s).max(0) as usize))
    }

    /// `Some((start, count))` when the channel axis is sliced (step 1; within each head, for
    /// channels split into heads: rotary embeddings take halves of every head), `None` when it
    /// is not; `Err` when it is sliced in a way this rule does not follow.
    fn channels(&self, x: Layout) -> Option<Result<Option<(usize, usize)>, Why>> {
        let entry = self.channel_entry(x)?;
        let r = x.rank? as i64;
        let on_heads =
            x.heads.is_some_and(|h| self.axes.iter().any(|&a| (if a < 0 { a + r } else { a }) == r + h.axis as i64));
        if on_heads {
            return Some(Err(Why::SplitsHeads));
        }
        // A bound read from x's size: of the channel axis, which it slices, and per head.
        let axis = |a: i64| if a < 0 { a + r } else { a };
        let own = self.derived.iter().flatten().all(|&(a, _)| Some(axis(a)) == x.position().map(|p| p as i64));
        if !own || self.derived.iter().any(Option::is_some) && entry.is_none() {
            return Some(Err(Why::ShapeRead));
        }
        Some(match entry {
            None => Ok(None),
            Some(i) if x.block == Some(1) => {
                x.per_head().map(|d| self.range(i, d).ok_or(Why::StridedChannelSlice).map(Some))?
            }
            Some(_) => Err(Why::StridedChannelSlice),
        })
    }
}

impl<'g> ChannelOp<'g> for Sliced {
    fn activations(&self) -> Activations {
        Activations::new(vec![0], "it slices a constant")
    }

    fn output_channels(&self) -> bool {
        !self.empty
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if self.empty {
            return;
        }
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
                if let Some(h) = lx.heads {
                    cx.set_heads(o, h);
                }
            }
            Some(Ok(Some((_, count)))) => {
                let heads = lx.heads.map_or(1, |h| h.count);
                cx.set_width(o, heads * count);
                cx.set_block(o, 1);
                if let Some(h) = lx.heads {
                    cx.set_heads(o, h);
                }
            }
            Some(Err(why)) => {
                cx.force_both(x, o, why);
            }
        }
    }

    fn follows_heads(&self) -> bool {
        true
    }

    fn ties(&self, cx: &mut TieCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let (Some(runs), Some(_)) = (self.mapped(cx.layout(x), cx.width(o)), cx.width(x)) {
            runs.into_iter().for_each(|(from, to, count)| cx.tie(x, from, o, to, count));
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if let Some(runs) = self.mapped(cx.layout(x), Some(cx.consts(o).len())) {
            let xs = cx.consts(x);
            let r = runs.iter().flat_map(|&(from, _, count)| xs.get(from..from + count).unwrap_or_default().to_vec());
            let r: Vec<_> = r.collect();
            cx.set(o, r);
        }
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return };
        if self.empty {
            return;
        }
        match self.mapped(cx.layout(x), Some(cx.needed(o).len())) {
            Some(runs) => {
                let needed = cx.needed(o);
                let marks: Vec<usize> = runs
                    .iter()
                    .flat_map(|&(from, to, count)| (0..count).filter(move |&k| needed[to + k]).map(move |k| from + k))
                    .collect();
                marks.into_iter().for_each(|c| cx.mark(x, c));
            }
            None => cx.mark_all(x),
        }
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let (x, Some(o)) = (cx.input(0), cx.output(0)) else { return Ok(()) };
        if self.empty {
            return Ok(());
        }
        let (lx, Some(w)) = (cx.layout(x), cx.layout(x).width) else { return Ok(()) };
        let (Some(Some(i)), Some(Ok(Some((start, count))))) = (self.channel_entry(lx), self.channels(lx)) else {
            return Ok(());
        };
        let heads = lx.heads.map_or(1, |h| h.count);
        let (kept_in, kept_out) = (cx.kept(x, w), cx.kept(o, heads * count));
        if kept_in.len() == w {
            return Ok(());
        }
        // Every kept head keeps the same entries: count them in the first kept head.
        let (entries_in, entries_out) = match lx.heads {
            Some(_) => (heads_kept(lx, &kept_in).1, heads_kept(cx.layout(o), &kept_out).1),
            None => (kept_in, kept_out),
        };
        let new_start = entries_in.iter().filter(|&&c| c < start).count() as i64;
        let (mut starts, mut ends) = (self.starts.clone(), self.ends.clone());
        (starts[i], ends[i]) = (new_start, new_start + entries_out.len() as i64);
        let node = cx.node.0;
        match self.bounds {
            Bounds::Inputs => {
                for (slot, vals) in [(1, &starts), (2, &ends)] {
                    cx.push(match cx.const_input(slot) {
                        Some(like) => Edit::Const { node, slot, tensor: with_int64s(like, vals) },
                        // Read from a size (x's own, or one the graph fixes): the bound becomes
                        // the number.
                        None => Edit::SetInput { node, slot, tensor: int64_tensor("", vals) },
                    });
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
    /// Runs `(input channel, output channel, count)`: input channels `start..start + count` of
    /// each head are its output channels, when both widths agree with the bounds (the identity
    /// when the channel axis is not sliced).
    fn mapped(&self, x: Layout, out_width: Option<usize>) -> Option<Vec<(usize, usize, usize)>> {
        let w = x.width?;
        match self.channels(x)? {
            Ok(None) => (out_width == Some(w)).then(|| vec![(0, 0, w)]),
            Ok(Some((start, count))) => {
                let (heads, per) = (x.heads.map_or(1, |h| h.count), x.per_head()?);
                (out_width == Some(heads * count))
                    .then(|| (0..heads).map(|h| (h * per + start, h * count, count)).collect())
            }
            Err(_) => None,
        }
    }
}
