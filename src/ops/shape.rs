//! Operators that move channels between axes without mixing them: reshapes, flattening and
//! transposes. A reshape may split the channel axis into heads and head dimensions, or merge
//! them back: a channel space over two axes.

use super::per_channel::{AxisMap, PerChannel};
use super::{Ctx, OpRule, Role};
use crate::analysis::layout::Heads;
use crate::analysis::plan::heads_kept;
use crate::analysis::reasons::{Opaque, Why};
use crate::analysis::{CheckCx, Graph, LayoutCx, NodeId, PlanCx, TieCx, ValueId};
use crate::ir::NodeExt;
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::onnx::tensor::{int64s, with_int64s};
use crate::rewrite::Edit;

pub(crate) struct Reshape;
pub(crate) struct Flatten;
pub(crate) struct Transpose;
pub(crate) struct Squeeze;

impl OpRule for Reshape {
    fn op_types(&self) -> &'static [&'static str] {
        &["Reshape"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let Some(shape) = node.input.get(1).and_then(|s| cx.const_tensor(s)) else {
            return match computed_last(node, cx) {
                Some(last) => {
                    let split = last.and_then(|(m, s)| computed_split(cx, m, s));
                    let leading = last.and_then(|(m, s)| shape_reads(cx, m, s));
                    let rank = node.input.get(1).and_then(|t| target_length(cx, t));
                    let keeps_leading = leading_kept(node, cx);
                    let pieces = if last.is_none() { Pieces::of(cx, node) } else { None };
                    // Both may hold: `[B, H, T, D]` ends in two constants once `T` is folded.
                    let batch = last.and_then(|(m, s)| BatchHeads::of(cx, m, s));
                    let parts = only_parts(cx, &node.output[0], 0);
                    let partner = last.is_none().then(|| read_back_partner(node, cx)).flatten().map(str::to_string);
                    let concat = node.input.get(1).and_then(|t| cx.ir.producer.get(t)).map(|&c| &cx.graph.node[c]);
                    let merges_last_two =
                        concat.and_then(|c| last_two(cx, c.input.last()?)) == node.input.first().map(String::as_str);
                    let reshape = ReshapeLast {
                        last,
                        split,
                        leading,
                        rank,
                        keeps_leading,
                        pieces,
                        batch,
                        parts,
                        partner,
                        merges_last_two,
                    };
                    Role::Op(Box::new(PerChannel::identity(Box::new(reshape))))
                }
                None => {
                    Role::Opaque(Opaque::NotConstant("its target shape is computed, and its last entry is not known"))
                }
            };
        };
        if shape.data_type() != DataType::Int64 as i32 || shape.dims.len() != 1 {
            return Role::Opaque(Opaque::Shape("its shape is not a 1-D int64 constant"));
        }
        let target = int64s(shape);
        if node.attr_i("allowzero", 0) != 0 && target.contains(&0) {
            return Role::Opaque(Opaque::Unsupported("it has allowzero with a zero dimension".into()));
        }
        let parts = only_parts(cx, &node.output[0], 0);
        let batch = BatchHeads::constant(&target);
        Role::Op(Box::new(PerChannel::identity(Box::new(Reshaped { target, parts, batch }))))
    }
}

/// Whether `value` is read only by axis moves (Unsqueeze, Squeeze, Transpose) that end in
/// Gathers of one index, or by Splits of its heads axis: a split into heads there is a packed
/// projection's parts, each read alone, which may keep entries of their own ([`Heads::ragged`]).
fn only_parts(cx: &Ctx, value: &str, depth: usize) -> bool {
    let readers = cx.ir.readers(value);
    let read = |&(n, slot): &(usize, usize)| {
        let node = &cx.graph.node[n];
        slot == 0
            && match node.op_type() {
                "Unsqueeze" | "Squeeze" | "Transpose" => only_parts(cx, &node.output[0], depth + 1),
                "Gather" => node.input.get(1).and_then(|i| cx.const_tensor(i)).is_some_and(|t| t.dims.is_empty()),
                // Query, key and value heads split apart (Falcon's multi-query projection).
                "Split" => depth == 0 && super::concat::heads_axis_split(cx, node),
                _ => false,
            }
    };
    depth < 8 && !readers.is_empty() && !cx.ir.outputs.contains(value) && readers.iter().all(read)
}

/// A reshape to a constant shape: leading axes merge or split while the channel axis stays
/// last and whole; or the channel axis splits into heads x entries (or merges back); or a
/// feature map flattens into `[batch, features]`.
struct Reshaped {
    target: Vec<i64>,
    /// Heads it splits are parts only read one by one ([`only_parts`]).
    parts: bool,
    /// What the target may say of heads merged with the batch.
    batch: Option<BatchHeads>,
}

impl Reshaped {
    /// The heads a split of `x`'s last axis into the target's last two makes, if it is one.
    fn split(&self, x: crate::analysis::Layout) -> Option<Heads> {
        let (&d, &h) = (self.target.last()?, self.target.get(self.target.len().checked_sub(2)?)?);
        let w = x.width? as i64;
        let splits = x.axis == Some(-1)
            && x.heads.is_none()
            && x.block == Some(1)
            && x.rank? + 1 == self.target.len()
            && h > 1
            && d > 0
            && h.checked_mul(d) == Some(w);
        splits.then_some(Heads { ragged: self.parts, ..Heads::plain(-2, h as usize) })
    }

    /// The output's channel axis from the start when it is not the last (a channels-first
    /// layout [`Reshaped::keeps_channels_first`] laid out).
    fn channels_first(&self, l: crate::analysis::Layout) -> Option<usize> {
        let a = l.axis.filter(|&a| a < -1)?;
        usize::try_from(self.target.len() as isize + a).ok()
    }

    /// Whether a last entry of -1 still names the channel axis whole: only when every other
    /// entry copies x's own dimension (0) and the rank stays; an explicit number is checked
    /// against the width later.
    fn last_is_whole(&self, x: crate::analysis::Layout) -> bool {
        let Some((&last, leading)) = self.target.split_last() else { return false };
        // A last entry that is not the channel entries splits them (Bloom's `[B, T, H, 3, D]`):
        // laying the output out as if it were whole would tie whatever reads it to channels it
        // does not hold.
        let entries = x.entries().map(|e| e as i64);
        (last != -1 && entries.is_none_or(|e| e == last))
            || (x.rank == Some(self.target.len()) && leading.iter().all(|&e| e == 0))
    }

    /// The channel axis' position when the target keeps a channels-first axis where it is and
    /// only merges (or splits) the axes after it, as a ViT's patch embedding writes
    /// `flatten(2)`: `[B, C, H, W] -> [-1, C, H * W]`. The entry there is the width; the axes
    /// after it hold what `x`'s declared ones do, so the one `-1` before it is the batch.
    fn keeps_channels_first(&self, g: &Graph, name: &str, x: crate::analysis::Layout) -> Option<usize> {
        let (p, r, w) = (x.position()?, x.rank?, x.width? as i64);
        if x.block != Some(1) || x.heads.is_some() || p + 1 >= r || p + 1 >= self.target.len() {
            return None;
        }
        // The axes before copy x's own sizes (0) and a -1 merges every axis after (GroupNorm's
        // export with as many groups as channels, `[0, C, -1]`), or, at the same rank, every
        // other entry copies x's size but for one -1 standing for the one left.
        let (before, after) = (&self.target[..p], &self.target[p + 1..]);
        let copies = |d: &[i64]| d.iter().all(|&e| e == 0);
        if self.target[p] == w && copies(before) {
            let merged = after == [-1];
            let same = self.target.len() == r
                && after.iter().all(|&e| e == 0 || e == -1)
                && after.iter().filter(|&&e| e == -1).count() <= 1;
            if merged || same {
                return Some(p);
            }
        }
        let after = (1..(r - p) as isize).try_fold(1u64, |n, k| n.checked_mul(g.ir.dim_from_end(g.proto, name, -k)?));
        let target_after = self.target[p + 1..].iter().try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?));
        let prefix = &self.target[..p];
        let fits = self.target[p] == w
            && after.is_some()
            && after == target_after
            && prefix.iter().filter(|&&d| d == -1).count() <= 1
            && (prefix.contains(&-1)
                || (0..p).all(|i| g.ir.dim_from_end(g.proto, name, i as isize - r as isize) == Some(prefix[i] as u64)));
        fits.then_some(p)
    }

    /// Entries per channel when the target's explicit last entry is a multiple of the channels
    /// of a channels-last `x` (rank 3 and up, block 1): the reshape folds axes before the
    /// channels into the last axis, which keeps the channel of entry `e` at `e % width`.
    fn interleaves(&self, g: &Graph, name: &str, x: crate::analysis::Layout) -> Option<usize> {
        let (last, w) = (*self.target.last()?, x.width? as i64);
        let folds = x.axis == Some(-1)
            && x.block == Some(1)
            && x.interleaved != Some(true)
            && x.heads.is_none()
            && x.rank? >= 3;
        (folds && last > w && last % w == 0 && self.merges_trailing(g, name, x.rank?, last))
            .then_some((last / w) as usize)
    }

    /// Whether `last` entries can be `x`'s trailing axes merged, as far as its declared
    /// dimensions tell (a target that cannot be is a wrong shape, not a layout to follow).
    fn merges_trailing(&self, g: &Graph, name: &str, rank: usize, last: i64) -> bool {
        let mut entries = 1u64;
        for axis in 1..rank as isize {
            let Some(d) = g.ir.dim_from_end(g.proto, name, -axis) else { return true };
            entries = entries.saturating_mul(d);
            if entries == last as u64 {
                return true;
            }
        }
        false
    }

    /// Whether the target rewrites only the axes before `x`'s heads: the same rank, and from the
    /// heads axis on the very sizes `x` has (heads, head dimensions and, between them, what
    /// `x` declares), so in row-major order every `(h, d)` stays where it was (the dynamo
    /// exporter's `view` of SDPA's output to its own shape).
    fn keeps_heads(&self, g: &Graph, x: &str, l: crate::analysis::Layout) -> bool {
        let (Some(h), Some(per), Some(rank)) = (l.heads, l.per_head(), l.rank) else { return false };
        if l.axis != Some(-1) || rank != self.target.len() || h.axis >= -1 {
            return false;
        }
        (1..=h.axis.unsigned_abs()).all(|k| {
            let want = match -(k as isize) {
                -1 => Some(per as u64),
                a if a == h.axis => Some(h.count as u64),
                a => g.ir.dim_from_end(g.proto, x, a),
            };
            want.is_some_and(|w| self.target[rank - k] == w as i64)
        })
    }

    /// Whether the target merges `x`'s heads (just before its channel axis) back into one axis.
    fn merges(&self, x: crate::analysis::Layout) -> bool {
        let (Some(heads), Some(w)) = (x.heads, x.width) else { return false };
        let (last, n) = (self.target.last().copied(), self.target.len());
        // An explicit last entry of the whole width (with -1 the heads axis could stay apart):
        // in row-major order the last axis then holds exactly `[H, D]`, entry `h * D + d`,
        // however the axes before merge (`[B, T, H, D] -> [B * T, H * D]` too). A -1 after
        // copies (0) of every axis but the last two merges exactly those (TorchScript's
        // bidirectional RNN output, `[T, B, 2, H] -> [0, 0, -1]`).
        let copies_all_but_two =
            last == Some(-1) && x.rank == Some(n + 1) && self.target[..n - 1].iter().all(|&e| e == 0);
        x.axis == Some(-1) && heads.axis == -2 && (last == Some(w as i64) || copies_all_but_two)
    }
}

impl AxisMap for Reshaped {
    fn seed(&self, cx: &mut LayoutCx, o: ValueId) {
        // Blocks of flattened feature maps are unknown until a Gemm reads them.
        cx.unknown_block(o);
    }

    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let x = acts[0];
        let lx = cx.get(x);
        let batch = self.batch.as_ref().and_then(|b| b.either(cx.graph, x, o, lx));
        if let Some(heads) = self.split(lx).or(batch) {
            cx.set_axis(o, -1);
            cx.set_rank(o, self.target.len());
            cx.same_width(x, o);
            cx.set_block(o, 1);
            cx.set_heads(o, heads);
        } else if let (Some(h), true) = (lx.heads, self.keeps_heads(cx.graph, cx.graph.name(x), lx)) {
            cx.set_axis(o, -1);
            cx.set_rank(o, self.target.len());
            cx.same_width(x, o);
            cx.set_block(o, 1);
            cx.set_heads(o, h);
        } else if lx.heads.is_some() {
            if self.merges(lx) {
                cx.set_axis(o, -1);
                cx.set_rank(o, self.target.len());
                cx.same_width(x, o);
                cx.set_block(o, 1);
            } else {
                cx.force_both(x, o, Why::ReshapesChannelAxis);
            }
        } else if let Some(entries) = self.interleaves(cx.graph, cx.graph.name(x), lx) {
            // Channels last, flattened with the axes before them: channel `c` owns every
            // `width`-th entry of the new last axis.
            cx.set_axis(o, -1);
            cx.set_rank(o, self.target.len());
            cx.same_width(x, o);
            cx.set_block(o, entries);
            cx.set_interleaved(o, true);
        } else if let Some(p) = self.keeps_channels_first(cx.graph, cx.graph.name(x), lx) {
            cx.set_axis(o, p as isize - self.target.len() as isize);
            cx.set_rank(o, self.target.len());
            cx.same_width(x, o);
            cx.set_block(o, 1);
        } else if lx.axis == Some(-1) && self.last_is_whole(lx) {
            cx.set_axis(o, -1);
            cx.set_rank(o, self.target.len());
            if let Some(w) = lx.width {
                cx.set_width(o, w);
            }
            cx.carry_block(x, o);
        } else if self.target.len() == 2 && lx.position() == Some(1) {
            cx.flatten(x, o, None);
        } else if lx.axis.is_some() {
            cx.force_both(x, o, Why::ReshapesChannelAxis);
        }
    }

    fn check(&self, cx: &CheckCx, o: ValueId) -> Result<(), Why> {
        let l = cx.layout(o);
        if l.heads.is_some() {
            // A split matched its last two entries to the width, or the heads pass through
            // untouched; heads from elsewhere did not.
            let (x, lx) = (cx.input(0), cx.layout(cx.input(0)));
            let kept = self.keeps_heads(cx.graph, cx.graph.name(x), lx);
            let batch = self.batch.as_ref().and_then(|b| b.either(cx.graph, x, o, lx));
            let moved = batch.is_some() && batch == l.heads;
            return if kept || moved || self.split(lx).is_some() { Ok(()) } else { Err(Why::ReshapesChannelAxis) };
        }
        let entries = l.entries().map(|e| e as i64);
        if let Some(p) = self.channels_first(l) {
            // Channels first, the axes after them merged: the entry at the axis is the width.
            return if Some(self.target[p]) == entries { Ok(()) } else { Err(Why::TargetShape(self.target.clone())) };
        }
        let last = *self.target.last().unwrap_or(&0);
        if last != -1 && Some(last) != entries {
            return Err(Why::TargetShape(self.target.clone()));
        }
        Ok(())
    }

    fn rewrite(&self, cx: &mut PlanCx, o: ValueId, keep: &[usize]) {
        let node = cx.node_proto();
        let t = cx.const_tensor(&node.input[1]).expect("a constant target shape");
        let l = cx.layout(o);
        let mut shape = self.target.clone();
        let n = shape.len();
        if let Some(h) = l.heads {
            let (rows, cols) = heads_kept(l, keep);
            shape[n - 1] = cols.len() as i64;
            // Merged with the batch, the axis holds the batch too: a -1 there follows the heads.
            if !h.merged {
                shape[(n as isize + h.axis) as usize] = rows.len() as i64;
            }
        } else if let Some(p) = self.channels_first(l) {
            shape[p] = keep.len() as i64;
        } else if shape[n - 1] != -1 {
            shape[n - 1] = (keep.len() * l.block.expect("checked")) as i64;
        } else {
            return;
        }
        let node = cx.node.0;
        cx.push(Edit::Const { node, slot: 1, tensor: with_int64s(t, &shape) });
    }

    fn same_entries_in_heads(&self) -> bool {
        false
    }
    fn follows_heads(&self) -> bool {
        true
    }
}

/// A reshape whose target shape is computed (`Concat` of dimensions, as exporters build
/// `x.view(B, T, C)`) but whose last entry is the channel entries, kept whole: a constant at
/// (node, slot), rewritten with the width, or `None` when it is the input's own last dimension
/// read back with `Shape`.
struct ReshapeLast {
    last: Option<(NodeId, usize)>,
    /// When the entry before the last is a constant too (at this slot of the same Concat, which
    /// only this reshape reads): the target may split the channels into `[.., H, D]` heads
    /// (`H` may be -1: as many heads as `D` divides the width into).
    split: Option<(usize, i64, i64)>,
    /// When the last entry is -1 and every entry before it is a dimension read back from a
    /// tensor's shape (`Unsqueeze(Gather(Shape(t), i))`, TorchScript's `reshape(*size, -1)`):
    /// the tensors read. The target then merges heads into the channels if it has one entry
    /// fewer than the input has axes and none of those tensors is split into heads.
    leading: Option<Vec<String>>,
    /// The target's length, when every piece of its Concat has a known length.
    rank: Option<usize>,
    /// The target is `Concat(Slice(Shape(x), 0, k), [-1])` (`x.flatten(k)` in TorchScript): the
    /// first `k` axes stay as they are, the rest merge; a channel axis among the first stays.
    keeps_leading: Option<usize>,
    /// When the last entry is read back: every entry, for a target that keeps x's heads.
    pieces: Option<Pieces>,
    /// When the last entry is a constant and the one before is not: what the target may say
    /// of heads merged with the batch.
    batch: Option<BatchHeads>,
    /// Heads it splits are parts only read one by one ([`only_parts`]).
    parts: bool,
    /// The tensor whose last dimension the last entry reads back, when not x's own.
    partner: Option<String>,
    /// The last entry is x's own last two dimensions read back and multiplied ([`last_two`]).
    merges_last_two: bool,
}

/// A computed target `[.., M, D]` (`D` constant) as `nn.MultiheadAttention` writes its head
/// split, `q.view(T, B * H, D)`, and its inverse `[B, H, T, D]`: the constant entries, and a
/// number `M` is known to be a multiple of.
struct BatchHeads {
    entries: Vec<Option<i64>>,
    multiple: i64,
    /// `M` computed as `B * H` by one `Mul` with a constant (the dynamo exporter with a dynamic
    /// sequence): that Mul, the constant's slot and value, which a rewrite may change.
    factor: Option<(NodeId, usize, i64)>,
}

impl BatchHeads {
    fn of(cx: &Ctx, concat: NodeId, last: usize) -> Option<BatchHeads> {
        let c = &cx.graph.node[concat.0];
        let one = |name: &String| cx.const_tensor(name).map(int64s).filter(|v| v.len() == 1).map(|v| v[0]);
        let entries = c.input.iter().map(one).collect();
        let m = c.input.get(last.checked_sub(1)?)?;
        Some(BatchHeads { entries, multiple: multiple_of(cx, m, 8), factor: factor_of(cx, m, 4) })
    }

    fn constant(target: &[i64]) -> Option<BatchHeads> {
        let m = *target.get(target.len().checked_sub(2)?)?;
        Some(BatchHeads { entries: target.iter().map(|&e| Some(e)).collect(), multiple: m.max(1), factor: None })
    }

    /// The heads of `o = reshape(x)`, merged into the batch or split out of it, if the target
    /// does either.
    fn either(&self, g: &Graph, x: ValueId, o: ValueId, l: crate::analysis::Layout) -> Option<Heads> {
        let (x, o) = (g.name(x), g.name(o));
        self.merges_into_batch(g, x, o, l).or_else(|| self.splits_out_of_batch(g, x, o, l))
    }

    /// `[.., M, D]` with `M` a multiple of `x`'s width over `D`: in row-major order entry
    /// `h * D + d` of row `i` lands in row `i * H + h` (and `M`'s multiple of `H` keeps the head
    /// `h` the row's index modulo `H`, whatever the axes before), entry `d`.
    /// An `M` of -1 is a multiple of `H` too when the entries before it are x's own sizes.
    fn merges_into_batch(&self, g: &Graph, x: &str, o: &str, l: crate::analysis::Layout) -> Option<Heads> {
        let (d, w, r) = ((*self.entries.last()?)?, l.width? as i64, self.entries.len());
        let plain = l.axis == Some(-1) && l.heads.is_none() && l.block == Some(1);
        let own = |i: usize| {
            self.entries[i].is_some_and(|e| g.ir.shape(x).and_then(|s| s.get(i).copied().flatten()) == Some(e as u64))
        };
        let inferred = self.entries[r - 2] == Some(-1) && l.rank == Some(r) && (0..r - 2).all(own);
        let count =
            (d > 0 && w % d == 0).then_some(w / d).filter(|&h| h > 1 && (self.multiple % h == 0 || inferred))?;
        // The size follows the heads where it is inferred, or where the one factor written is H,
        // and the heads only move until a reshape splits them back out: attention computed on
        // merged heads (`need_weights`) reshapes its weights with a heads count of its own.
        let follows = self.entries[r - 2] == Some(-1) || self.factor.is_some_and(|f| f.2 == count);
        let counted = !follows || !split_back_out(g, o, 4);
        plain.then_some(Heads { merged: true, counted, ..Heads::plain(-2, count as usize) })
    }

    /// `[.., B, H, .., D]` from `x`'s heads merged with the batch at `[.., B * H, .., D]`: the
    /// heads split back out where the other axes are declared to keep their sizes.
    fn splits_out_of_batch(&self, g: &Graph, x: &str, o: &str, l: crate::analysis::Layout) -> Option<Heads> {
        let (h, r, per) = (l.heads.filter(|h| h.merged)?, l.rank?, l.per_head()? as i64);
        let p = usize::try_from(r as isize + h.axis).ok()?;
        let fits = l.axis == Some(-1)
            && self.entries.len() == r + 1
            && self.entries[p + 1] == Some(h.count as i64)
            && self.entries[r] == Some(per)
            && (0..p).all(|i| g.ir.same_dim(x, i, o, i))
            && (p + 1..r - 1).all(|i| g.ir.same_dim(x, i, o, i + 1));
        fits.then_some(Heads::plain(p as isize - r as isize, h.count))
    }
}

/// Whether everything that reads `value` only moves axes (`Transpose`) until a `Reshape` takes it.
fn split_back_out(g: &Graph, value: &str, depth: usize) -> bool {
    let readers = g.ir.readers(value);
    !readers.is_empty()
        && !g.ir.outputs.contains(value)
        && readers.iter().all(|&(n, slot)| {
            let node = &g.proto.node[n];
            match node.op_type() {
                "Reshape" => slot == 0,
                "Transpose" if depth > 0 => node.output.first().is_some_and(|t| split_back_out(g, t, depth - 1)),
                _ => false,
            }
        })
}

/// The `Mul` of a scalar by a constant that computes `name` (through reshapes to one entry), its
/// constant's slot and value, within `depth` steps.
fn factor_of(cx: &Ctx, name: &str, depth: usize) -> Option<(NodeId, usize, i64)> {
    let n = *cx.ir.producer.get(name)?;
    let node = &cx.graph.node[n];
    match node.op_type() {
        "Reshape" | "Unsqueeze" | "Squeeze" | "Identity" if depth > 0 => factor_of(cx, node.input.first()?, depth - 1),
        "Mul" if node.input.len() == 2 => {
            let constant = |s: usize| cx.ints(node, s).filter(|v| v.len() == 1).map(|v| v[0]);
            match (constant(0), constant(1)) {
                (None, Some(f)) => Some((NodeId(n), 1, f)),
                (Some(f), None) => Some((NodeId(n), 0, f)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A number the int64 scalar `name` is a multiple of, as far as `Mul`s by constants tell (1 when
/// nothing does), through at most `depth` steps.
fn multiple_of(cx: &Ctx, name: &str, depth: usize) -> i64 {
    if let Some(v) = cx.const_tensor(name).map(int64s).filter(|v| v.len() == 1) {
        return if v[0] > 0 { v[0] } else { 1 };
    }
    let Some(node) = cx.ir.producer.get(name).map(|&n| &cx.graph.node[n]).filter(|_| depth > 0) else { return 1 };
    let of = |slot: usize| node.input.get(slot).map_or(1, |s| multiple_of(cx, s, depth - 1));
    match node.op_type() {
        "Mul" => of(0).saturating_mul(of(1)),
        "Reshape" | "Unsqueeze" | "Squeeze" | "Identity" => of(0),
        _ => 1,
    }
}

/// The entries of a computed target, one by one.
struct Pieces(Vec<Piece>);

enum Piece {
    Constant(i64),
    /// Dimension `axis` (from the start) of a tensor, read back at run time.
    Read(String, usize),
    Other,
}

impl Pieces {
    fn of(cx: &Ctx, node: &NodeProto) -> Option<Pieces> {
        let shape = ShapeInput::of(cx, node, 1)?;
        let piece = |k: usize| match (shape.get(cx, k), shape.read_back(cx, k)) {
            (Some(v), _) => Piece::Constant(v),
            (None, Some(r)) if r.factor == 1 => Piece::Read(r.tensor.to_string(), r.axis),
            _ => Piece::Other,
        };
        Some(Pieces((0..shape.len()).map(piece).collect()))
    }

    /// Whether the target keeps x's heads where they are (`x.view(B, -1, T, D)` as TorchScript's
    /// GPT-2 writes it): x's rank, -1 at the heads axis, the last entry x's own (read back),
    /// every other entry a number or a dimension read back from an axis `stays` accepts (so the
    /// -1 is the heads count, before and after any rewrite).
    fn keep_heads(&self, x: crate::analysis::Layout, stays: impl Fn(&str, usize) -> bool) -> bool {
        let (Some(h), Some(rank)) = (x.heads, x.rank) else { return false };
        let heads_at = rank as isize + h.axis;
        let n = self.0.len();
        x.axis == Some(-1)
            && n == rank
            && self.0.iter().enumerate().all(|(k, p)| match p {
                _ if k + 1 == n => true,
                Piece::Constant(-1) => k as isize == heads_at,
                Piece::Constant(v) => *v > 0 && k as isize != heads_at,
                Piece::Read(t, axis) => k as isize != heads_at && stays(t, *axis),
                Piece::Other => false,
            })
    }
}

impl ReshapeLast {
    /// Whether the last entry is the channel axis whole: the number of channel entries (or one
    /// not known yet, checked against the width later), x's own last dimension read back, or -1 after x's own other dimensions read back
    /// in order (or a proven merge of heads).
    fn last_is_whole(&self, cx: &LayoutCx, x: crate::analysis::Layout) -> bool {
        let last = self.last.and_then(|(m, s)| cx.const_of(m, s)).map(int64s);
        if last != Some(vec![-1]) {
            // A number other than the channel entries splits them (as in `Reshaped`).
            let entries = x.entries().map(|e| vec![e as i64]);
            return last.is_none() || entries.is_none() || last == entries;
        }
        let me = cx.input(0);
        let own = self
            .leading
            .as_ref()
            .is_some_and(|ts| x.rank == Some(ts.len() + 1) && ts.iter().all(|t| cx.value(t) == Some(me)));
        own || x.heads.is_some() && self.merges(cx, x)
    }

    /// Whether the target merges heads just before the channel axis back into it: its last
    /// entry is the whole width, written out.
    fn merges(&self, cx: &LayoutCx, x: crate::analysis::Layout) -> bool {
        let last = self.last.and_then(|(m, s)| cx.const_of(m, s)).map(int64s);
        let heads_last = x.axis == Some(-1) && x.heads.is_some_and(|h| h.axis == -2);
        let whole = last == x.width.map(|w| vec![w as i64]);
        // `[d_0, .., d_k, -1]` with each d_i a dimension of a tensor without heads and one entry
        // fewer than x's axes: the heads axis cannot be one of the d_i, so it merges into -1.
        let read_back = last == Some(vec![-1])
            && self.leading.as_ref().is_some_and(|ts| {
                x.rank == Some(ts.len() + 2)
                    && ts.iter().all(|t| cx.value(t).is_none_or(|v| cx.get(v).heads.is_none() || v == cx.input(0)))
            });
        // `[.., -1]` with one entry fewer than x's axes, whose output a reader holds to x's
        // width (a projection's weight): row-major order puts head h's entry d at `h * D + d`.
        let held = self.held(cx, x) && cx.output(0).is_some_and(|o| cx.get(o).width == x.width);
        heads_last && (whole || read_back || held || self.merges_last_two)
    }

    /// Whether the target is `[.., -1]` with one entry fewer than x's axes: a merge of heads
    /// once a reader fixes the output's width (until then, not a reason to keep x whole).
    fn held(&self, cx: &LayoutCx, x: crate::analysis::Layout) -> bool {
        let last = self.last.and_then(|(m, s)| cx.const_of(m, s)).map(int64s);
        last == Some(vec![-1]) && self.rank.is_some() && self.rank == x.rank.map(|r| r - 1)
    }
}

impl AxisMap for ReshapeLast {
    /// A partner read back for the last entry keeps x's channels: the entry is its width.
    fn ties(&self, cx: &mut TieCx, x: ValueId) {
        let Some(t) = self.partner.as_deref().and_then(|t| cx.value(t)) else { return };
        let (lx, lt) = (cx.layout(x), cx.layout(t));
        let plain = |l: crate::analysis::Layout| l.axis == Some(-1) && l.block == Some(1) && l.heads.is_none();
        match (lx.width, lt.width) {
            (Some(w), Some(v)) if w == v && plain(lx) && plain(lt) => cx.tie(x, 0, t, 0, w),
            _ => {
                cx.force(x, Why::ShapeRead);
                cx.force(t, Why::ShapeRead);
            }
        }
    }

    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let x = acts[0];
        let lx = cx.get(x);
        if let Some(r) = self.rank {
            cx.set_rank(o, r);
        }
        let heads = self.split.and_then(|(_, h, d)| {
            let w = lx.width? as i64;
            let count = if h == -1 && w % d == 0 { w / d } else { h };
            // With H = -1 the target must add exactly one axis, or -1 could absorb leading ones.
            let one_more = h != -1 || (self.rank.is_some() && self.rank == lx.rank.map(|r| r + 1));
            let fits = count.checked_mul(d) == Some(w) && one_more;
            let splits = lx.axis == Some(-1) && lx.heads.is_none() && lx.block == Some(1) && count > 1 && fits;
            splits.then_some(Heads { ragged: self.parts, ..Heads::plain(-2, count as usize) })
        });
        let kept_axis =
            self.keeps_leading.zip(lx.position()).filter(|&(k, p)| p < k && lx.rank.is_some_and(|r| k <= r));
        // Dimensions read back of axes that do not carry channels (the layout may not know yet).
        let stays = |t: &str, axis: usize| {
            cx.value(t).is_none_or(|v| {
                let l = cx.get(v);
                l.position() != Some(axis)
                    && l.heads.zip(l.rank).is_none_or(|(h, r)| r as isize + h.axis != axis as isize)
            })
        };
        let batch = self.batch.as_ref().and_then(|b| b.either(cx.graph, x, o, lx));
        if let Some(heads) = heads.or(batch) {
            cx.set_axis(o, -1);
            cx.same_width(x, o);
            cx.set_block(o, 1);
            cx.set_heads(o, heads);
        } else if let (Some(h), true) = (lx.heads, self.pieces.as_ref().is_some_and(|p| p.keep_heads(lx, stays))) {
            cx.set_axis(o, -1);
            cx.same_width(x, o);
            cx.set_block(o, 1);
            cx.set_heads(o, h);
        } else if let (Some((k, p)), None, Some(1)) = (kept_axis, lx.heads, lx.block) {
            // The channel axis is one of the axes kept as they are.
            cx.set_axis(o, p as isize - (k as isize + 1));
            cx.set_rank(o, k + 1);
            cx.same_width(x, o);
            cx.set_block(o, 1);
        } else if lx.heads.is_some() && !self.merges(cx, lx) {
            if !self.held(cx, lx) || cx.get(o).width.is_some() {
                cx.force_both(x, o, Why::ReshapesChannelAxis);
            }
        } else if lx.axis == Some(-1) && self.last_is_whole(cx, lx) {
            // Leading axes merge or split (heads just before the channels merge into them).
            cx.set_axis(o, -1);
            cx.same_width(x, o);
            cx.carry_block(x, o);
        } else if lx.axis.is_some() {
            cx.force_both(x, o, Why::ReshapesChannelAxis);
        }
    }

    fn check(&self, cx: &CheckCx, o: ValueId) -> Result<(), Why> {
        let Some((m, s)) = self.last else {
            // Read back, the last entry follows x; kept heads need every other entry to stay.
            if cx.layout(o).heads.is_none() || self.split.is_some() {
                return Ok(());
            }
            let stays = |t: &str, axis: usize| {
                cx.value(t).is_some_and(|v| {
                    let l = cx.layout(v);
                    let heads_at = l.heads.zip(l.rank).map(|(h, r)| r as isize + h.axis);
                    l.position().is_some_and(|p| p != axis) && heads_at != Some(axis as isize)
                        || l.axis.is_none() && l.width.is_none()
                })
            };
            let kept = self.pieces.as_ref().is_some_and(|p| p.keep_heads(cx.layout(cx.input(0)), stays));
            return if kept { Ok(()) } else { Err(Why::ReshapesChannelAxis) };
        };
        let l = cx.layout(o);
        if l.heads.is_some() {
            // A split matched its last two entries to the width, or heads moved into or out of
            // the batch; heads from elsewhere did not.
            let (x, lx) = (cx.input(0), cx.layout(cx.input(0)));
            let batch = self.batch.as_ref().and_then(|b| b.either(cx.graph, x, o, lx));
            let split = self.split.is_some() && lx.heads.is_none();
            return if split || batch == l.heads { Ok(()) } else { Err(Why::ReshapesChannelAxis) };
        }
        let last = int64s(cx.const_of(m, s).expect("checked by the rule"))[0];
        if last != -1 && Some(last) != l.entries().map(|e| e as i64) {
            return Err(Why::TargetShapeEnd(last));
        }
        Ok(())
    }

    fn rewrite(&self, cx: &mut PlanCx, o: ValueId, keep: &[usize]) {
        let Some((m, s)) = self.last else { return };
        let t = cx.const_of(m, s).expect("checked by the rule");
        let splits_here = cx.layout(o).heads.is_some() && cx.layout(cx.input(0)).heads.is_none();
        if let (Some((h_slot, h, _)), true) = (self.split, splits_here) {
            let (rows, cols) = heads_kept(cx.layout(o), keep);
            let mut entries = vec![(s, with_int64s(t, &[cols.len() as i64]))];
            if h != -1 {
                let t = cx.const_of(m, h_slot).expect("checked by the rule");
                entries.push((h_slot, with_int64s(t, &[rows.len() as i64])));
            }
            return cx.rewrite_producer(m, entries);
        }
        if let Some(h) = cx.layout(o).heads {
            // Into or out of the batch. Merged heads that leave shrink an inferred -1; split back
            // out, the heads entry (a constant, `BatchHeads::splits_out_of_batch`) is rewritten.
            let (rows, cols) = heads_kept(cx.layout(o), keep);
            let mut entries = vec![(s, with_int64s(t, &[cols.len() as i64]))];
            if let (true, Some((mul, slot, _))) =
                (h.merged && rows.len() < h.count, self.batch.as_ref().and_then(|b| b.factor))
            {
                let factor = cx.const_of(mul, slot).expect("a constant factor");
                cx.set_shared_const(mul, slot, with_int64s(factor, &[rows.len() as i64]));
            }
            if !h.merged && rows.len() < h.count {
                let n = self.batch.as_ref().map_or(0, |b| b.entries.len());
                let slot = (n as isize + h.axis) as usize;
                let count = cx.const_of(m, slot).expect("splits_out_of_batch checked the heads entry");
                entries.push((slot, with_int64s(count, &[rows.len() as i64])));
            }
            return cx.rewrite_producer(m, entries);
        }
        if int64s(t)[0] == -1 {
            return;
        }
        let entries = (keep.len() * cx.layout(o).block.expect("checked")) as i64;
        cx.rewrite_producer(m, vec![(s, with_int64s(t, &[entries]))]);
    }

    fn same_entries_in_heads(&self) -> bool {
        false
    }
    fn follows_heads(&self) -> bool {
        true
    }
}

/// `k` when the target of `node` is `Concat(Slice(Shape(x), 0, k), [-1])`, x being the tensor
/// it reshapes.
fn leading_kept(node: &NodeProto, cx: &Ctx) -> Option<usize> {
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).map(|&n| &g.node[n]);
    let concat = producer(node.input.get(1)?).filter(|c| c.op_type() == "Concat" && c.input.len() == 2)?;
    (cx.ints(concat, 1)? == [-1]).then_some(())?;
    let slice = producer(&concat.input[0]).filter(|s| s.op_type() == "Slice")?;
    let plain = cx.absent_or(slice, 3, &[0]) && cx.absent_or(slice, 4, &[1]);
    let (start, end) = (cx.ints(slice, 1)?, cx.ints(slice, 2)?);
    let shape = producer(slice.input.first()?).filter(|s| s.op_type() == "Shape" && s.attribute.is_empty())?;
    let of_x = shape.input.first() == node.input.first();
    (plain && of_x && start == [0] && end.len() == 1 && end[0] > 0).then_some(end[0] as usize)
}

/// The number of entries of a computed target `Concat(..)`: constants count their elements, a
/// scalar turned into one entry (`Unsqueeze` of a `Gather` of one index, or of a `Squeeze`)
/// counts one.
fn target_length(cx: &Ctx, target: &str) -> Option<usize> {
    if let Some(&[Some(n)]) = cx.ir.shape(target) {
        return usize::try_from(n).ok();
    }
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).map(|&n| &g.node[n]);
    let concat = producer(target).filter(|c| c.op_type() == "Concat")?;
    concat
        .input
        .iter()
        .map(|piece| {
            if let Some(t) = cx.const_tensor(piece) {
                return (t.dims.len() == 1).then(|| usize::try_from(t.dims[0]).ok()).flatten();
            }
            let unsqueeze = producer(piece).filter(|n| n.op_type() == "Unsqueeze")?;
            let scalar = producer(unsqueeze.input.first()?)?;
            let one = match scalar.op_type() {
                "Gather" => cx.const_tensor(scalar.input.get(1)?).is_some_and(|t| t.dims.is_empty()),
                "Squeeze" => true,
                _ => false,
            };
            one.then_some(1)
        })
        .try_fold(0usize, |total, n| total.checked_add(n?))
}

/// For a target `Concat(p_0, .., p_k, last)` with `last` at `slot`: the tensors whose dimensions
/// the `p_i` read back, when each is `Unsqueeze(Gather(Shape(t), i))`, dimension `i` for entry `i`.
fn shape_reads(cx: &Ctx, concat: NodeId, slot: usize) -> Option<Vec<String>> {
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).map(|&n| &g.node[n]);
    g.node[concat.0].input[..slot]
        .iter()
        .enumerate()
        .map(|(position, piece)| {
            let unsqueeze = producer(piece).filter(|n| n.op_type() == "Unsqueeze")?;
            let gather = producer(unsqueeze.input.first()?).filter(|n| n.op_type() == "Gather")?;
            let index = cx.const_tensor(gather.input.get(1)?).map(int64s).filter(|i| i.len() == 1)?;
            let shape = producer(gather.input.first()?).filter(|n| n.op_type() == "Shape" && n.attribute.is_empty())?;
            // Dimension i read back for entry i: the leading axes keep their sizes.
            shape.input.first().filter(|_| index[0] == position as i64).cloned()
        })
        .collect()
}

/// For a target `Concat(.., H, D)` (TorchScript's `x.view(x.size()[:-1] + (H, D))`, `H` often
/// -1), with `D` a constant at `slot`: the slot of `H`, `H` and `D`. A target other reshapes
/// share (the dynamo exporter computes one for Q, K and V) gets a private copy when rewritten.
fn computed_split(cx: &Ctx, concat: NodeId, slot: usize) -> Option<(usize, i64, i64)> {
    let c = &cx.graph.node[concat.0];
    let one = |s: usize| {
        let t = cx.const_tensor(c.input.get(s)?)?;
        let v = (t.data_type() == DataType::Int64 as i32).then(|| int64s(t))?;
        (v.len() == 1).then_some(v[0])
    };
    let (h, d) = (one(slot.checked_sub(1)?)?, one(slot)?);
    ((h > 1 || h == -1) && d > 0).then_some((slot - 1, h, d))
}

/// For a shape built as `Concat(..., last)`: `Some(Some(loc))` when `last` is a one-element
/// constant (at node, slot), `Some(None)` when it is a tensor's last dimension read back with
/// `Shape` (the reshaped tensor's own, or a partner's: [`read_back_partner`]), `None` otherwise.
pub(crate) fn computed_last(node: &NodeProto, cx: &Ctx) -> Option<Option<(NodeId, usize)>> {
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).copied();
    let target = node.input.get(1)?;
    let concat = producer(target)?;
    let c = &g.node[concat];
    // A target shape shared by other reshapes (exporters compute one and reuse it) gets a copy
    // of its Concat for this reshape when rewritten.
    if c.op_type() != "Concat" || c.attr_i("axis", 0) != 0 {
        return None;
    }
    let slot = c.input.len().checked_sub(1)?;
    let last = &c.input[slot];
    if let Some(t) = cx.const_tensor(last) {
        return (t.data_type() == DataType::Int64 as i32 && int64s(t).len() == 1)
            .then_some(Some((NodeId(concat), slot)));
    }
    last_read_back(cx, last).map(|_| None)
}

/// The tensor `t` when `last` is its last dimension read back: `Gather(Shape(t), -1)` or
/// `Slice(Shape(t), -1, end)`, through Unsqueeze/Squeeze (TorchScript adds both) and a reshape
/// to one entry; or that times a dimension of `t` declared 1 (the dynamo exporter flattens a
/// recurrent layer's `[T, B, 1, H]` output with `Shape(y)[2] * Shape(y)[3]`).
pub(crate) fn last_read_back<'g>(cx: &Ctx<'g>, last: &str) -> Option<&'g str> {
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).copied();
    let mut at = producer(last)?;
    loop {
        let node = &g.node[at];
        let one_entry = node.op_type() == "Reshape" && cx.ints(node, 1).is_some_and(|t| t == [-1] || t == [1]);
        if !matches!(node.op_type(), "Unsqueeze" | "Squeeze") && !one_entry {
            break;
        }
        at = producer(node.input.first()?)?;
    }
    let node = &g.node[at];
    if node.op_type() == "Mul" {
        let (a, b) = factors(cx, node)?;
        let unit =
            |p: &Pick| p.axis.is_some_and(|axis| cx.ir.shape(p.of).and_then(|s| s.get(axis).copied()) == Some(Some(1)));
        return (a.of == b.of && (a.last && unit(&b) || b.last && unit(&a))).then_some(a.of).or(last_two(cx, last));
    }
    picked(cx, last).filter(|p| p.last).map(|p| p.of)
}

/// The tensor `t` when `last` is the product of its last two dimensions read back,
/// `Shape(t)[-2] * Shape(t)[-1]` (the dynamo exporter flattens a bidirectional recurrent
/// layer's `[T, B, 2, H]` so): a reshape to it merges heads before the channels into them.
pub(crate) fn last_two<'g>(cx: &Ctx<'g>, last: &str) -> Option<&'g str> {
    let g = cx.graph;
    let mut at = *cx.ir.producer.get(last)?;
    while g.node[at].op_type() == "Reshape" && cx.ints(&g.node[at], 1).is_some_and(|t| t == [-1] || t == [1]) {
        at = *cx.ir.producer.get(g.node[at].input.first()?)?;
    }
    let node = &g.node[at];
    let (a, b) = factors(cx, node)?;
    let before = |p: &Pick, q: &Pick| p.axis.zip(q.axis).is_some_and(|(p, q)| p + 1 == q);
    let pair = a.last && before(&b, &a) || b.last && before(&a, &b);
    (node.op_type() == "Mul" && a.of == b.of && pair).then_some(a.of)
}

/// The dimensions read back that a product of two multiplies.
fn factors<'g>(cx: &Ctx<'g>, product: &NodeProto) -> Option<(Pick<'g>, Pick<'g>)> {
    Some((picked(cx, product.input.first()?)?, picked(cx, product.input.get(1)?)?))
}

/// One dimension of a tensor read back (see [`picked`]).
struct Pick<'g> {
    of: &'g str,
    /// From the start, where the rank is known.
    axis: Option<usize>,
    last: bool,
}

/// The dimension `value` reads back: `Gather(Shape(t), i)` or `Slice(Shape(t), i, i + 1)` (to
/// the end for the last), through Unsqueeze/Squeeze.
fn picked<'g>(cx: &Ctx<'g>, value: &str) -> Option<Pick<'g>> {
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).copied();
    let mut at = producer(value)?;
    while matches!(g.node[at].op_type(), "Unsqueeze" | "Squeeze") {
        at = producer(g.node[at].input.first()?)?;
    }
    let pick = &g.node[at];
    let shape = &g.node[producer(pick.input.first()?)?];
    let of = shape.input.first().filter(|t| !cx.ir.is_const(t))?;
    if !(shape.op_type() == "Shape" && whole_shape(shape)) {
        return None;
    }
    let rank = cx.ir.rank(of).map(|r| r as i64);
    let ints = |slot: usize| cx.ints(pick, slot).filter(|v| v.len() == 1).map(|v| v[0]);
    let from_start = |i: i64| if i < 0 { rank.map(|r| i + r) } else { Some(i) };
    let axis = match pick.op_type() {
        "Gather" if pick.attr_i("axis", 0) == 0 => ints(1)?,
        "Slice" if cx.absent_or(pick, 3, &[0]) && cx.absent_or(pick, 4, &[1]) => {
            let (from, to) = (ints(1)?, ints(2)?);
            let to_end = to >= i32::MAX as i64 || rank.is_some_and(|r| to >= r);
            let one = to_end && (from == -1 || rank.is_some_and(|r| from == r - 1))
                || from_start(from).zip(from_start(to)).is_some_and(|(f, t)| t == f + 1);
            one.then_some(from)?
        }
        _ => return None,
    };
    let last = axis == -1 || rank.is_some_and(|r| axis == r - 1);
    let axis = from_start(axis).and_then(|a| usize::try_from(a).ok());
    Some(Pick { of: of.as_str(), axis, last })
}

/// Whether a `Shape` node returns every dimension (no range, or one from 0 to the end).
pub(crate) fn whole_shape(shape: &NodeProto) -> bool {
    shape.attr_i("start", 0) == 0 && shape.attribute.iter().all(|a| a.name() != "end")
}

/// The tensor whose last dimension a computed target reads back for its last entry, when it is
/// not the reshaped tensor's own ([`same_last_dim`]): TorchScript's GPT-2 reshapes the final
/// norm's output to a size read from the embeddings. The reshape ties the two, so that they
/// keep the same channels.
fn read_back_partner<'g>(node: &'g NodeProto, cx: &Ctx<'g>) -> Option<&'g str> {
    let concat = &cx.graph.node[*cx.ir.producer.get(node.input.get(1)?)?];
    let t = last_read_back(cx, concat.input.last()?)?;
    (!same_last_dim(cx, t, node.input.first()?)).then_some(t)
}

/// Whether `t`'s last dimension is `x`'s whatever channels leave: `t` is `x`, or the right
/// operand of the MatMul that computes `x` (attention's `P @ V`: TorchScript's GPT-2 reads the
/// head dimension back from V to reshape the output).
pub(crate) fn same_last_dim(cx: &Ctx, t: &str, x: &str) -> bool {
    let product = cx.ir.producer.get(x).map(|&n| &cx.graph.node[n]);
    t == x || product.is_some_and(|m| m.op_type() == "MatMul" && m.input.get(1).map(String::as_str) == Some(t))
}

impl OpRule for Flatten {
    fn op_types(&self) -> &'static [&'static str] {
        &["Flatten"]
    }

    fn role<'g>(&self, node: &'g NodeProto, _: &Ctx<'g>) -> Role<'g> {
        Role::Op(Box::new(PerChannel::identity(Box::new(Flattened { from: node.attr_i("axis", 1) }))))
    }
}

/// Flatten from axis `from`: keeps a last channel axis whole, or turns a channel axis at `from`
/// into blocks of the flat axis (a feature map into a Gemm).
struct Flattened {
    from: i64,
}

impl AxisMap for Flattened {
    fn seed(&self, cx: &mut LayoutCx, o: ValueId) {
        cx.unknown_block(o);
    }

    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        cx.flatten(acts[0], o, Some(self.from));
    }
}

impl OpRule for Transpose {
    fn op_types(&self) -> &'static [&'static str] {
        &["Transpose"]
    }

    fn role<'g>(&self, node: &'g NodeProto, _: &Ctx<'g>) -> Role<'g> {
        // Without `perm` the axes are reversed, which needs the rank: known only later.
        let Some(perm) = node.attr_ints("perm") else {
            return Role::Opaque(Opaque::Malformed("it has no perm attribute"));
        };
        Role::Op(Box::new(PerChannel::identity(Box::new(Permuted { perm }))))
    }
}

/// A permutation of the axes: the channel axis (and the heads axis) move where `perm` puts them.
struct Permuted {
    perm: Vec<i64>,
}

impl AxisMap for Permuted {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let x = acts[0];
        // `perm` names every axis: the rank is its length.
        let r = self.perm.len();
        cx.set_rank(x, r);
        cx.set_rank(o, r);
        let (ri, perm) = (r as isize, &self.perm);
        // Output axis q is input axis perm[q].
        let forward = |a: isize| perm.iter().position(|&p| p as isize == ri + a).map(|q| q as isize - ri);
        let back = |a: isize| usize::try_from(ri + a).ok().and_then(|q| perm.get(q)).map(|&p| p as isize - ri);
        if let Some(p) = cx.get(x).position() {
            let q = perm.iter().position(|&a| a == p as i64).unwrap_or(p);
            cx.set_axis(o, q as isize - ri);
        } else if let Some(&p) = cx.get(o).position().and_then(|q| perm.get(q)) {
            cx.set_axis(x, p as isize - ri);
        }
        if let Some(h) = cx.get(x).heads {
            forward(h.axis).inspect(|&axis| cx.set_heads(o, Heads { axis, ..h }));
        } else if let Some(h) = cx.get(o).heads {
            back(h.axis).inspect(|&axis| cx.set_heads(x, Heads { axis, ..h }));
        }
        cx.same_width(x, o);
        if cx.get(x).block.is_some_and(|b| b != 1) {
            cx.force(x, Why::MovesFlattenedAxis);
        }
    }

    fn same_entries_in_heads(&self) -> bool {
        false
    }
    fn follows_heads(&self) -> bool {
        true
    }
}

impl OpRule for Squeeze {
    fn op_types(&self) -> &'static [&'static str] {
        &["Squeeze", "Unsqueeze"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        // Axes: an input from opset 13, an attribute before.
        let axes = match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(a) => match cx.const_tensor(a).filter(|t| t.data_type() == DataType::Int64 as i32) {
                Some(t) => int64s(t),
                None => return Role::Opaque(Opaque::NotConstant("its axes are not int64 constants")),
            },
            None => match node.attr_ints("axes") {
                Some(axes) => axes,
                // Which axes a bare Squeeze drops depends on the shapes.
                None => return Role::Opaque(Opaque::Unsupported("it has no axes".into())),
            },
        };
        let insert = node.op_type() == "Unsqueeze";
        Role::Op(Box::new(PerChannel::identity(Box::new(Squeezed { axes, insert }))))
    }
}

/// Axes of size 1 removed (`insert`: added) at `axes`: the channel axis moves past them.
struct Squeezed {
    axes: Vec<i64>,
    insert: bool,
}

impl AxisMap for Squeezed {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let x = acts[0];
        let lx = cx.get(x);
        let (Some(r), Some(p)) = (lx.rank, lx.position()) else { return };
        let out_rank = if self.insert { r + self.axes.len() } else { r.saturating_sub(self.axes.len()) };
        let within = if self.insert { out_rank } else { r } as i64;
        let axes: Vec<i64> = self.axes.iter().map(|&a| if a < 0 { a + within } else { a }).collect();
        // Where input axis `p` lands: output positions not inserted take the input axes in order.
        let moved = |p: usize| {
            if self.insert {
                (0..out_rank as i64).filter(|q| !axes.contains(q)).nth(p).map(|q| q as usize)
            } else if axes.contains(&(p as i64)) {
                None
            } else {
                Some(p - axes.iter().filter(|&&a| a < p as i64).count())
            }
        };
        let from_end = |q: usize| q as isize - out_rank as isize;
        let heads = lx.heads.map(|h| (h, usize::try_from(r as isize + h.axis).ok().and_then(moved)));
        let (Some(q), None | Some((_, Some(_)))) = (moved(p), heads) else {
            cx.force_both(x, o, Why::ReshapesChannelAxis);
            return;
        };
        cx.set_axis(o, from_end(q));
        cx.set_rank(o, out_rank);
        cx.same_width(x, o);
        cx.carry_block(x, o);
        if let Some((h, Some(at))) = heads {
            cx.set_heads(o, Heads { axis: from_end(at), ..h });
        }
    }

    fn same_entries_in_heads(&self) -> bool {
        false
    }
    fn follows_heads(&self) -> bool {
        true
    }
}

pub(crate) struct Expand;

impl OpRule for Expand {
    fn op_types(&self) -> &'static [&'static str] {
        &["Expand"]
    }

    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
        let Some(shape) = ShapeInput::of(cx, node, 1) else {
            return Role::Opaque(Opaque::Unsupported("its shape is computed in a way not followed".into()));
        };
        let entries = (0..shape.len()).map(|k| shape.get(cx, k)).collect();
        let op = PerChannel::identity(Box::new(Expanded { shape, entries }));
        // A constant expanded (a class token broadcast over the batch) is a per-channel constant
        // of the output, sliced with its channels; an activation passes its channels through.
        match cx.const_tensor(&node.input[0]) {
            Some(_) => Role::Op(Box::new(PerChannel { acts: vec![], params: vec![0], ..op })),
            None => Role::Op(Box::new(op)),
        }
    }
}

/// Expand's numpy broadcast, right-aligned: the channel axis (counted from the end) stays where
/// it is, and the shape's entry there must keep it: 1 (the input's own size) or the width
/// itself (rewritten with the kept count); the other entries repeat the input along other axes.
struct Expanded {
    shape: ShapeInput,
    /// The shape's constant entries.
    entries: Vec<Option<i64>>,
}

impl Expanded {
    /// The shape's entry on the channel axis, if the shape reaches it.
    fn entry(&self, axis: isize) -> Option<(usize, Option<i64>)> {
        let k = usize::try_from(self.entries.len() as isize + axis).ok()?;
        Some((k, self.entries[k]))
    }
}

impl AxisMap for Expanded {
    fn layout(&self, cx: &mut LayoutCx, acts: &[ValueId], o: ValueId, _: &[usize]) {
        let Some(&x) = acts.first() else {
            // An expanded constant: its readers place the channel axis, and its size there is
            // the width (a size of 1 is broadcast over the channels, not a vector of them, unless
            // the shape keeps the axis at 1: one channel, as a CompensatedLayerNorm that removed
            // one writes it).
            let (Some(axis), Some(t)) = (cx.get(o).axis, cx.const_input(0)) else { return };
            let dim = usize::try_from(t.dims.len() as isize + axis).ok().and_then(|i| t.dims.get(i).copied());
            let one = self.entry(axis).is_some_and(|(_, e)| e == Some(1));
            if let Some(w) = dim.filter(|&d| d > 1 || (d == 1 && one)) {
                cx.set_width(o, w as usize);
                cx.set_block(o, 1);
            }
            return;
        };
        let lx = cx.get(x);
        let Some(axis) = lx.axis else { return };
        cx.set_axis(o, axis);
        if let Some(r) = lx.rank {
            cx.set_rank(o, r.max(self.entries.len()));
        }
        cx.same_width(x, o);
        cx.carry_block(x, o);
    }

    fn check(&self, cx: &CheckCx, o: ValueId) -> Result<(), Why> {
        let l = cx.layout(o);
        let (Some(axis), Some(w)) = (l.axis, l.width) else { return Ok(()) };
        match self.entry(axis) {
            None | Some((_, Some(1))) => Ok(()),
            Some((_, Some(e))) if e == w as i64 && l.block == Some(1) && self.shape.writable() => Ok(()),
            _ => Err(Why::Broadcasts),
        }
    }

    fn rewrite(&self, cx: &mut PlanCx, o: ValueId, keep: &[usize]) {
        let axis = cx.layout(o).axis.expect("checked");
        if let Some((k, Some(_))) = self.entry(axis).filter(|&(_, e)| e != Some(1)) {
            let node = cx.node;
            self.shape.rewrite(cx, node, 1, &[(k, keep.len() as i64)]);
        }
    }
}

/// A shape entry read back at run time (see [`ShapeInput::read_back`]).
pub(crate) struct ReadBack<'g> {
    pub tensor: &'g str,
    pub axis: usize,
    pub factor: i64,
    /// The nodes between the `Shape` and the entry (Gather, Mul, Unsqueeze).
    pub steps: Vec<NodeId>,
    /// The `Shape` of `tensor`.
    pub shape: NodeId,
}

/// `Gather(Shape(t), i)` with one constant index, along the shape's only axis: `t`, `i` as
/// written, the Gather and the Shape: a dimension of `t` read back at run time.
pub(crate) fn dimension_read<'g>(cx: &Ctx<'g>, scalar: &str) -> Option<(&'g str, i64, NodeId, NodeId)> {
    let g = cx.graph;
    let gather = *cx.ir.producer.get(scalar)?;
    let node = &g.node[gather];
    let along = node.op_type() == "Gather" && node.attr_i("axis", 0) == 0;
    let index = cx.ints(node, 1).filter(|i| i.len() == 1 && along)?[0];
    let shape = *cx.ir.producer.get(node.input.first()?)?;
    let plain = g.node[shape].op_type() == "Shape" && g.node[shape].attribute.is_empty();
    let tensor = g.node[shape].input.first().filter(|_| plain)?;
    Some((tensor.as_str(), index, NodeId(gather), NodeId(shape)))
}

/// A shape operand (Expand's or Reshape's) whose entries the rules read one by one: a 1-D
/// int64 constant, or a `Concat` of one-entry pieces (the exporters' computed shapes), some of
/// them constants.
pub(crate) enum ShapeInput {
    Constant(Vec<i64>),
    /// `guarded`: the Concat is read through TorchScript's guard of an `expand` target (see
    /// [`unguarded`]), so its -1 entries read as 1, and it cannot be rewritten in place.
    Pieces {
        concat: NodeId,
        /// Entries of each piece, in order (1 but for pieces of known length, such as the
        /// leading dimensions `Slice(Shape(x), 0, -1)`).
        lens: Vec<usize>,
        guarded: bool,
    },
}

/// `t` when `name` is TorchScript's guard of an `expand` target, `Where(Equal(t, -1s), 1s, t)`
/// (torch's -1 keeps a dimension, as ONNX's 1 does), `t` maybe reshaped to `[-1]` first (the
/// identity on a 1-D tensor); with the guard's nodes.
fn unguarded<'g>(cx: &Ctx<'g>, name: &str) -> Option<(&'g str, Vec<NodeId>)> {
    let g = cx.graph;
    let producer = |name: &str| cx.ir.producer.get(name).map(|&n| &g.node[n]);
    let filled = |name: &str, v: i64| {
        let c = producer(name).filter(|n| n.op_type() == "ConstantOfShape");
        c.and_then(|c| c.attr("value"))
            .and_then(|a| a.t.as_ref())
            .is_some_and(|t| t.data_type() == DataType::Int64 as i32 && int64s(t) == [v])
    };
    let scalar = |name: &str, v: i64| {
        cx.const_tensor(name).is_some_and(|t| t.data_type() == DataType::Int64 as i32 && int64s(t) == [v])
    };
    let minus_ones = |name: &str| {
        producer(name).is_some_and(|m| {
            m.op_type() == "Mul" && m.input.len() == 2 && {
                let (a, b) = (&m.input[0], &m.input[1]);
                (filled(a, 1) && scalar(b, -1)) || (filled(b, 1) && scalar(a, -1))
            }
        })
    };
    let w = producer(name).filter(|n| n.op_type() == "Where")?;
    let [c, ones, t] = &w.input[..] else { return None };
    let eq = producer(c).filter(|n| n.op_type() == "Equal" && n.input.len() == 2)?;
    let other = if &eq.input[0] == t {
        &eq.input[1]
    } else if &eq.input[1] == t {
        &eq.input[0]
    } else {
        return None;
    };
    (filled(ones, 1) && minus_ones(other)).then_some(())?;
    let t = match producer(t) {
        Some(r) if r.op_type() == "Reshape" && cx.ints(r, 1).as_deref() == Some(&[-1]) => r.input[0].as_str(),
        _ => t.as_str(),
    };
    // The guard's nodes: everything between the Where and `t`, all of it integer steps.
    let (mut nodes, mut stack) = (vec![], vec![name]);
    while let Some(v) = stack.pop() {
        if v == t || cx.ir.is_const(v) {
            continue;
        }
        let n = *cx.ir.producer.get(v)?;
        let step = ["Where", "Equal", "Mul", "ConstantOfShape", "Shape", "Reshape"].contains(&g.node[n].op_type());
        if !step || nodes.len() > 16 {
            return None;
        }
        if !nodes.contains(&NodeId(n)) {
            nodes.push(NodeId(n));
            stack.extend(g.node[n].input.iter().map(String::as_str).filter(|s| !s.is_empty()));
        }
    }
    Some((t, nodes))
}

impl ShapeInput {
    /// Input `slot` of `node`, when it is one of the two forms.
    pub fn of(cx: &Ctx, node: &NodeProto, slot: usize) -> Option<ShapeInput> {
        let name = node.input.get(slot)?;
        if let Some(t) = cx.const_tensor(name) {
            return (t.data_type() == DataType::Int64 as i32 && t.dims.len() == 1).then(|| Self::Constant(int64s(t)));
        }
        let inner = unguarded(cx, name).map(|(t, _)| t);
        let concat = *cx.ir.producer.get(inner.unwrap_or(name))?;
        let c = &cx.graph.node[concat];
        let len = |piece: &String| match cx.const_tensor(piece) {
            Some(t) => (t.dims.len() == 1).then(|| t.dims[0] as usize),
            None => match cx.ir.shape(piece) {
                Some(&[Some(n)]) => Some(n as usize),
                _ => None,
            },
        };
        let lens = c.input.iter().map(len).collect::<Option<Vec<usize>>>()?;
        (c.op_type() == "Concat" && c.attr_i("axis", 0) == 0).then_some(Self::Pieces {
            concat: NodeId(concat),
            lens,
            guarded: inner.is_some(),
        })
    }

    /// The piece holding entry `k`, and where in it, for pieces of one entry each or more.
    fn locate(lens: &[usize], k: usize) -> Option<(usize, usize)> {
        let mut at = 0;
        for (p, &n) in lens.iter().enumerate() {
            if k < at + n {
                return Some((p, k - at));
            }
            at += n;
        }
        None
    }

    /// Entry `k` when it is dimension `i` of a tensor `t` read back at run time, times a
    /// constant `f` (`Unsqueeze(Gather(Shape(t), i))`, or `Unsqueeze(Mul(Gather(..), f))` as
    /// TorchScript writes `t.shape[i] * f`): `t`, `i` from the start, `f`, and the nodes that
    /// compute it.
    pub fn read_back<'g>(&self, cx: &Ctx<'g>, k: usize) -> Option<ReadBack<'g>> {
        let Self::Pieces { concat, lens, .. } = self else { return None };
        let g = cx.graph;
        let id = |name: &str| cx.ir.producer.get(name).map(|&n| NodeId(n));
        let p = Self::locate(lens, k).filter(|&(p, _)| lens[p] == 1)?.0;
        let piece = g.node[concat.0].input.get(p)?;
        let unsqueeze = id(piece).filter(|n| g.node[n.0].op_type() == "Unsqueeze")?;
        let mut steps = vec![unsqueeze];
        let mut scalar = g.node[unsqueeze.0].input.first()?;
        let mut factor = 1;
        if let Some(mul) = id(scalar).filter(|n| g.node[n.0].op_type() == "Mul" && g.node[n.0].input.len() == 2) {
            let m = &g.node[mul.0];
            let constant = |s: usize| cx.ints(m, s).filter(|v| v.len() == 1).map(|v| v[0]);
            (factor, scalar) = match (constant(0), constant(1)) {
                (None, Some(f)) => (f, &m.input[0]),
                (Some(f), None) => (f, &m.input[1]),
                _ => return None,
            };
            steps.push(mul);
        }
        let (tensor, index, gather, shape) = dimension_read(cx, scalar)?;
        steps.push(gather);
        let rank = cx.ir.rank(tensor)? as i64;
        let axis = usize::try_from(if index < 0 { index + rank } else { index }).ok().filter(|&a| (a as i64) < rank)?;
        (factor > 0).then_some(ReadBack { tensor, axis, factor, steps, shape })
    }

    /// The nodes that compute the shape from its pieces: the Concat, and the guard around it.
    pub fn assembly(&self, cx: &Ctx, reader: &NodeProto, slot: usize) -> Vec<NodeId> {
        let Self::Pieces { concat, guarded, .. } = self else { return vec![] };
        let guard = match guarded {
            true => reader.input.get(slot).and_then(|s| unguarded(cx, s)).map(|(_, nodes)| nodes).unwrap_or_default(),
            false => vec![],
        };
        [vec![*concat], guard].concat()
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Constant(v) => v.len(),
            Self::Pieces { lens, .. } => lens.iter().sum(),
        }
    }

    /// Entry `k` when it is a constant.
    pub fn get(&self, cx: &Ctx, k: usize) -> Option<i64> {
        match self {
            Self::Constant(v) => v.get(k).copied(),
            Self::Pieces { concat, guarded, lens } => {
                let (p, j) = Self::locate(lens, k)?;
                let t = cx.const_tensor(cx.graph.node[concat.0].input.get(p)?)?;
                let v = (t.data_type() == DataType::Int64 as i32).then(|| int64s(t).get(j).copied()).flatten()?;
                Some(if *guarded && v == -1 { 1 } else { v })
            }
        }
    }

    /// Whether [`ShapeInput::rewrite`] can write its entries.
    pub fn writable(&self) -> bool {
        !matches!(self, Self::Pieces { guarded: true, .. })
    }

    /// Rewrites constant entries (position, value) of the shape that input `slot` of `reader`
    /// reads; every position named holds a constant, and the shape is [`ShapeInput::writable`].
    pub fn rewrite(&self, cx: &mut PlanCx, reader: NodeId, slot: usize, changes: &[(usize, i64)]) {
        match self {
            Self::Constant(v) => {
                let mut v = v.clone();
                changes.iter().for_each(|&(k, x)| v[k] = x);
                let t = cx.const_of(reader, slot).expect("a constant shape");
                cx.push(Edit::Const { node: reader.0, slot, tensor: with_int64s(t, &v) });
            }
            Self::Pieces { concat, lens, .. } => {
                // Each piece changed once, all its entries together.
                let mut pieces: Vec<(usize, Vec<i64>)> = vec![];
                for &(k, x) in changes {
                    let (p, j) = Self::locate(lens, k).expect("an entry of the shape");
                    if !pieces.iter().any(|(q, _)| *q == p) {
                        pieces.push((p, int64s(cx.const_of(*concat, p).expect("a constant entry"))));
                    }
                    pieces.iter_mut().find(|(q, _)| *q == p).expect("pushed").1[j] = x;
                }
                let entries = pieces
                    .into_iter()
                    .map(|(p, v)| (p, with_int64s(cx.const_of(*concat, p).expect("checked"), &v)))
                    .collect();
                cx.rewrite_producer_of(reader, slot, *concat, entries);
            }
        }
    }
}
