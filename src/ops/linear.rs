//! Linear layers (Gemm, MatMul with a constant weight, Conv): a weight matrix mixes input
//! channels into output channels. The semantics are shared; each operator says only how its
//! weight, bias and axes are stored, through [`Linear`].

use super::{Activations, ChannelOp};
use crate::analysis::reasons::Why;
use crate::analysis::{CheckCx, ConstCx, LayoutCx, NeedCx, PlanCx};
use crate::error::Result;
use crate::onnx::proto::TensorProto;
use crate::onnx::tensor::{Data, Values};
use crate::report::LayerReport;
use crate::rewrite::Edit;

/// What a rewrite of a linear layer may add: the bias `Add` after a MatMul.
pub(crate) const EMITS: &[&str] = &["Add"];

/// A weight matrix `W[c, j]` (input channel `c`, output channel `j`) as stored in the model.
pub(crate) struct Weight<'g> {
    pub values: Values<'g>,
    /// The stored tensor, read at input `slot` of its node.
    pub tensor: &'g TensorProto,
    pub slot: usize,
    pub k: usize,
    pub n: usize,
    /// Stored as `[N, K, ...]` rather than `[K, N, ...]` (Gemm with `transB`, Conv, `W @ x`).
    pub transposed: bool,
    /// Kernel elements per (input, output) pair: 1, or `kh * kw` for Conv (`[N, K, kh, kw]`)
    /// and ConvTranspose (`[K, N, kh, kw]`).
    pub spatial: usize,
    /// A grouped Conv (`[N, K / groups, kh, kw]`, transposed): output `j` reads only the inputs
    /// of its group, `(j / (N / groups)) * (K / groups) ..` onwards. 1 for every other layer.
    pub groups: usize,
}

impl Weight<'_> {
    fn rows(&self) -> usize {
        if self.transposed {
            self.n
        } else {
            self.k
        }
    }

    /// Stored inputs per output row, and where output `j`'s group starts among the inputs.
    fn group_of(&self, j: usize) -> (usize, usize) {
        let per_in = self.k / self.groups;
        (per_in, j / (self.n / self.groups) * per_in)
    }

    /// Calls `f(c, j, w)` for every non-zero weight of the stored rows `rows` (no division per
    /// element: this runs over every weight of the model).
    fn for_each_nonzero_in_rows(&self, rows: std::ops::Range<usize>, mut f: impl FnMut(usize, usize, f64)) {
        let (k, n, s) = (self.k, self.n, self.spatial);
        for r in rows {
            match (self.transposed, s) {
                (true, _) if self.groups > 1 => {
                    let (per_in, base) = self.group_of(r);
                    self.values.for_each_nonzero_in(r * per_in * s, per_in * s, |e, w| f(base + e / s, r, w))
                }
                (true, 1) => self.values.for_each_nonzero_in(r * k, k, |c, w| f(c, r, w)),
                (true, _) => self.values.for_each_nonzero_in(r * k * s, k * s, |e, w| f(e / s, r, w)),
                (false, 1) => self.values.for_each_nonzero_in(r * n, n, |j, w| f(r, j, w)),
                (false, _) => self.values.for_each_nonzero_in(r * n * s, n * s, |e, w| f(r, e / s, w)),
            }
        }
    }

    /// Folds `f(state, c, j, w)` over every non-zero weight, splitting large matrices by rows
    /// across the machine's cores and merging the per-thread states. The weight's pages are
    /// released afterwards (see [`Values::release`]): a scan reads each weight once.
    pub fn fold_nonzero<T: Send>(
        &self,
        init: impl Fn() -> T + Sync,
        f: impl Fn(&mut T, usize, usize, f64) + Sync,
        merge: impl Fn(T, T) -> T,
    ) -> T {
        self.scan(init, f, merge, None, &|_| false).0
    }

    /// [`Weight::fold_nonzero`], recording on the way which (input, output) pairs are non-zero.
    /// Stored rows for which `only_bits` holds are only recorded, without calling `f`: a dense
    /// row is then eight times faster to read.
    pub fn fold_nonzero_recording<T: Send>(
        &self,
        init: impl Fn() -> T + Sync,
        f: impl Fn(&mut T, usize, usize, f64) + Sync,
        merge: impl Fn(T, T) -> T,
        only_bits: &(dyn Fn(usize) -> bool + Sync),
    ) -> (T, NonZero) {
        let (rows, cols) = if self.transposed { (self.n, self.k) } else { (self.k, self.n) };
        let stride = cols.div_ceil(64);
        let mut words = vec![0; rows * stride];
        let (state, non_finite) = self.scan(init, f, merge, Some((&mut words, stride)), only_bits);
        (state, NonZero { transposed: self.transposed, stride, words, slot: self.slot, non_finite })
    }

    /// The scan behind both folds; `bits` (words, words per stored row) gets a bit per non-zero
    /// (stored row, input channel or output) pair, each thread writing only its own rows. Also
    /// says whether a weight is Inf or NaN, which costs nothing while every weight passes by.
    fn scan<T: Send>(
        &self,
        init: impl Fn() -> T + Sync,
        f: impl Fn(&mut T, usize, usize, f64) + Sync,
        merge: impl Fn(T, T) -> T,
        bits: Option<(&mut [u64], usize)>,
        only_bits: &(dyn Fn(usize) -> bool + Sync),
    ) -> (T, bool) {
        const PARALLEL_FROM: usize = 1 << 22;
        let rows = self.rows();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(rows).max(1);
        let threads = if self.values.len() < PARALLEL_FROM { 1 } else { threads };
        let chunk = rows.div_ceil(threads).max(1);
        // Rows that only need their bits (only with bits; the caller said so) skip the callbacks.
        let recording = bits.is_some();
        let bits_only = |r: usize| recording && self.spatial == 1 && self.groups == 1 && only_bits(r);
        let (words, stride) = match bits {
            Some((w, s)) => (Some(w), s),
            None => (None, 0),
        };
        // One slice of pattern words per thread, matching its rows.
        let mut slices: Vec<Option<&mut [u64]>> = match words {
            Some(w) => w.chunks_mut((chunk * stride).max(1)).map(Some).collect(),
            None => vec![],
        };
        slices.resize_with(threads, || None);
        let run = |t: usize, mut mine: Option<&mut [u64]>| {
            let (f, transposed) = (&f, self.transposed);
            let start = t * chunk;
            let (mut state, mut non_finite) = (init(), false);
            let mine_rows: Vec<usize> = (start..((t + 1) * chunk).min(rows)).collect();
            let row_bytes = self.values.raw().len() / rows.max(1);
            let row_len = self.values.len() / rows.max(1);
            crate::onnx::io::in_windows(self.values.raw(), row_bytes, &mine_rows, |window| {
                for &r in window {
                    if let (true, Some(bits)) = (bits_only(r), mine.as_deref_mut()) {
                        let words = &mut bits[(r - start) * stride..(r - start + 1) * stride];
                        non_finite |= self.values.nonzero_bits(r * row_len, row_len, words);
                        continue;
                    }
                    self.for_each_nonzero_in_rows(r..r + 1, |c, j, w| {
                        if let Some(bits) = mine.as_deref_mut() {
                            let (r, col) = if transposed { (j, c) } else { (c, j) };
                            bits[(r - start) * stride + col / 64] |= 1 << (col % 64);
                        }
                        non_finite |= !w.is_finite();
                        f(&mut state, c, j, w)
                    })
                }
            });
            (state, non_finite)
        };
        let state = if threads == 1 {
            run(0, slices.pop().flatten())
        } else {
            std::thread::scope(|scope| {
                let workers: Vec<_> = slices
                    .into_iter()
                    .enumerate()
                    .map(|(t, mine)| {
                        let run = &run;
                        scope.spawn(move || run(t, mine))
                    })
                    .collect();
                let states = workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                states.reduce(|(a, x), (b, y)| (merge(a, b), x || y)).expect("at least one thread")
            })
        };
        self.values.release();
        state
    }

    /// `sum_e W[c, j, e]` over the kernel: what a constant input `c` contributes to output `j`.
    pub fn sum(&self, c: usize, j: usize) -> f64 {
        let (k, n, s) = (self.k, self.n, self.spatial);
        let (per_in, base) = self.group_of(j);
        if self.groups > 1 && !(base..base + per_in).contains(&c) {
            return 0.0;
        }
        let at = match self.transposed {
            true if self.groups > 1 => (j * per_in + c - base) * s,
            true => (j * k + c) * s,
            false => (c * n + j) * s,
        };
        (at..at + s).map(|i| self.values.get(i)).sum()
    }

    /// `fold[j] = sum over (c, k) in folded of sum(c, j) * k` for each `j` in `outputs`, reading
    /// only the stored rows involved, a window at a time (a column read touches every page).
    fn fold_columns(&self, folded: &[(usize, f64)], outputs: &[usize], fold: &mut [f64]) {
        let row_bytes = self.values.raw().len() / self.rows().max(1);
        if self.transposed {
            crate::onnx::io::in_windows(self.values.raw(), row_bytes, outputs, |rows| {
                for &j in rows {
                    fold[j] = folded.iter().map(|&(c, k)| self.sum(c, j) * k).sum();
                }
            });
        } else {
            // Summed in the same order, input by input, from -0.0 as `Sum` does: the same bits.
            outputs.iter().for_each(|&j| fold[j] = -0.0);
            let inputs: Vec<usize> = folded.iter().map(|&(c, _)| c).collect();
            let mut at = 0;
            crate::onnx::io::in_windows(self.values.raw(), row_bytes, &inputs, |rows| {
                for (&c, &(_, k)) in rows.iter().zip(&folded[at..]) {
                    outputs.iter().for_each(|&j| fold[j] += self.sum(c, j) * k);
                }
                at += rows.len();
            });
        }
    }

    /// The kept sub-matrix, in the stored layout and type, bit for bit. A grouped weight keeps
    /// the same inputs in every group (the decision keeps its channels a product), so the
    /// columns are the first group's.
    pub fn slice(&self, keep_in: &[usize], keep_out: &[usize]) -> Data {
        let (k, n, s) = (self.k, self.n, self.spatial);
        let local: Vec<usize>;
        let (rows, inner, cols) = if self.groups > 1 {
            let per_in = k / self.groups;
            local = keep_in.iter().copied().filter(|&c| c < per_in).collect();
            (keep_out, per_in, local.as_slice())
        } else if self.transposed {
            (keep_out, k, keep_in)
        } else {
            (keep_in, n, keep_out)
        };
        let cols: Vec<usize> = cols.iter().flat_map(|&c| (0..s).map(move |e| c * s + e)).collect();
        self.values.slice_rows(rows, inner * s, &cols)
    }

    /// The edit that keeps only `keep_in`/`keep_out`, if that drops anything.
    pub fn slice_edit(&self, node: usize, keep_in: &[usize], keep_out: &[usize]) -> Option<Edit> {
        (keep_in.len() != self.k || keep_out.len() != self.n).then(|| {
            let dims = self.sliced_dims(keep_in.len(), keep_out.len());
            Edit::sliced(node, self.slot, self.tensor, dims, self.values.dtype, self.slice(keep_in, keep_out))
        })
    }

    fn sliced_dims(&self, keep_in: usize, keep_out: usize) -> Vec<i64> {
        let mut dims = self.values.dims.to_vec();
        let keep_in = keep_in / self.groups;
        let (first, second) = if self.transposed { (keep_out, keep_in) } else { (keep_in, keep_out) };
        (dims[0], dims[1]) = (first as i64, second as i64);
        dims
    }
}

/// Which (input, output) pairs of a weight are non-zero: one bit each, in the stored
/// orientation. The forward pass records it while it reads the weight, so the backward pass
/// reads `K * N` bits instead of the weight's bytes again.
pub(crate) struct NonZero {
    transposed: bool,
    /// Words per stored row.
    stride: usize,
    words: Vec<u64>,
    /// The node's input slot the weight was read at.
    pub slot: usize,
    /// A weight is Inf or NaN.
    pub non_finite: bool,
}

impl NonZero {
    /// Marks in `reaches` every output that reads an input for which `inputs` holds with a
    /// non-zero weight.
    fn mark_reached(&self, inputs: &dyn Fn(usize) -> bool, reaches: &mut [bool]) {
        let stride = self.stride.max(1);
        let rows = self.words.chunks_exact(stride).enumerate();
        if self.transposed {
            let mut mask = vec![0u64; stride];
            (0..stride * 64).filter(|&c| inputs(c)).for_each(|c| mask[c / 64] |= 1 << (c % 64));
            for (j, row) in rows {
                reaches[j] |= row.iter().zip(&mask).any(|(r, m)| r & m != 0);
            }
        } else {
            let mut union = vec![0u64; stride];
            for (_, row) in rows.filter(|&(c, _)| inputs(c)) {
                union.iter_mut().zip(row).for_each(|(u, r)| *u |= r);
            }
            reaches.iter_mut().enumerate().for_each(|(j, r)| *r |= union[j / 64] >> (j % 64) & 1 == 1);
        }
    }

    /// The input rows (`k` of them) that a needed output (`needed`) reads with a non-zero weight.
    pub fn read_by(&self, needed: &[bool], k: usize) -> Vec<bool> {
        if self.stride == 0 {
            return vec![false; k]; // no outputs: nothing reads any input
        }
        let rows = self.words.chunks_exact(self.stride.max(1));
        if self.transposed {
            // Rows are outputs: the inputs read are the union of the needed rows.
            let mut union = vec![0u64; self.stride];
            for (row, _) in rows.zip(needed).filter(|(_, &n)| n) {
                union.iter_mut().zip(row).for_each(|(u, r)| *u |= r);
            }
            (0..k).map(|c| union[c / 64] >> (c % 64) & 1 == 1).collect()
        } else {
            let mut wanted = vec![0u64; self.stride];
            needed.iter().enumerate().filter(|(_, &n)| n).for_each(|(j, _)| wanted[j / 64] |= 1 << (j % 64));
            rows.take(k).map(|row| row.iter().zip(&wanted).any(|(r, w)| r & w != 0)).collect()
        }
    }
}

/// `y[.., j] = alpha * sum_c x[.., c] W[c, j] + bias[j]`, as one operator stores it.
pub(crate) trait Linear {
    /// The input slot of the activation `x`.
    fn input_slot(&self) -> usize;
    /// Channel axes (negative, counted from the end) of `x` and `y`.
    fn axes(&self) -> (isize, isize);
    /// Ranks of `x` and `y`, where the operator fixes them.
    fn ranks(&self) -> (Option<usize>, Option<usize>);
    /// Whether a constant input contributes the same to every output position, so it folds into
    /// the bias. Not so for a Conv whose kernel can see zero padding: at the borders the padding
    /// reads 0, not the constant.
    fn folds_constants(&self) -> bool {
        true
    }
    /// Whether constants the bias cannot take can still leave, through
    /// [`Linear::border_correction`].
    fn corrects_borders(&self) -> bool {
        false
    }
    /// Nodes that add back what the constant inputs `folded` (input channel, value) contributed,
    /// for a layer that cannot fold them into its bias (a Conv whose kernel sees zero padding):
    /// reading `$before` (the layer's output without them) and writing `$after`, for the kept
    /// outputs `keep_out`. Only where [`Linear::corrects_borders`].
    fn border_correction(&self, _folded: &[(usize, f64)], _keep_out: &[usize]) -> Option<Correction> {
        None
    }
    /// The least rank of `x` the channel axes hold for (`W @ x` reads axis -2); a value of
    /// unknown or smaller rank keeps its channels.
    fn min_rank(&self) -> usize {
        1
    }
    /// Whether the node carries its own bias to fold constants into (Gemm's C, Conv's B); a
    /// MatMul does not, and its folds go to the bias `Add` after it, or a new one.
    fn holds_bias(&self) -> bool {
        true
    }
    fn weight(&self) -> &Weight<'_>;
    fn alpha(&self) -> f64;
    /// The constant added to output `j`, or `None` where it varies along another axis.
    fn bias(&self, j: usize) -> Option<f64>;
    /// Whether the layer stores a bias that folded constants can join; one without gets a new
    /// bias (or a bias `Add` after it), which a quantized model cannot take as integers.
    fn has_bias(&self) -> bool {
        true
    }
    /// Emits the edits that keep the bias of the outputs `keep_out` only and add `fold[i]` to
    /// that of `keep_out[i]` (the weight itself is sliced by [`Weight::slice_edit`]).
    fn rewrite_bias(&self, node: usize, keep_out: &[usize], fold: &[f64], edits: &mut Vec<Edit>);
}

/// Nodes and constants a rewrite inserts after a layer (see [`Linear::border_correction`]).
pub(crate) type Correction = (Vec<crate::onnx::proto::NodeProto>, Vec<TensorProto>);

/// The channel semantics every linear layer shares: output channels start a new space, fixed by
/// the weight; an output channel is constant when its row reads nothing that varies; an input
/// channel is needed when a needed output reads it with a non-zero weight.
pub(crate) struct LinearOp<'g>(pub Box<dyn Linear + 'g>);

impl<'g> ChannelOp<'g> for LinearOp<'g> {
    fn activations(&self) -> Activations {
        Activations::new(vec![self.0.input_slot()], "its data operand is a constant or missing")
    }

    fn linear(&self) -> Option<&dyn Linear> {
        Some(self.0.as_ref())
    }

    fn layout(&self, cx: &mut LayoutCx<'_, 'g>) {
        let l = &self.0;
        let (x, Some(y)) = (cx.input(l.input_slot()), cx.output(0)) else { return };
        let ((ai, ao), (ri, ro)) = (l.axes(), l.ranks());
        let (k, width_out) = (l.weight().k, l.weight().n);
        cx.set_axis(x, ai);
        cx.set_axis(y, ao);
        cx.set_width(y, width_out);
        if l.weight().groups > 1 {
            cx.set_groups(x, l.weight().groups);
            cx.set_groups(y, l.weight().groups);
        }
        if let Some(r) = ri {
            cx.set_rank(x, r);
        }
        if let Some(r) = ro.or(cx.get(x).rank) {
            cx.set_rank(y, r);
        }
        match (cx.get(x).width, cx.get(x).block) {
            (_, Some(b)) if k % b == 0 => cx.set_width(x, k / b),
            (Some(w), None) if w > 0 && k % w == 0 => cx.set_block(x, k / w),
            (None, None) => {}
            _ => cx.force(x, Why::WidthNotDividingWeight),
        }
    }

    fn check(&self, cx: &mut CheckCx<'_, 'g>) {
        let l = self.0.as_ref();
        let (x, Some(y)) = (cx.input(l.input_slot()), cx.output(0)) else { return };
        if l.min_rank() > 1 && cx.layout(x).rank.is_none_or(|r| r < l.min_rank()) {
            cx.force(x, Why::UnknownRank);
            cx.force(y, Why::UnknownRank);
        }
    }

    fn constants(&self, cx: &mut ConstCx<'_, 'g>) {
        let l = self.0.as_ref();
        let (x, Some(y)) = (cx.input(l.input_slot()), cx.output(0)) else { return };
        let w = l.weight();
        // Input channels the layout cannot map to weight rows all count as varying: an output
        // whose row is zero is still the constant bias, whatever its input is.
        if cx.consts(y).len() != w.n {
            return;
        }
        let xc = cx.linear_inputs(x, l).unwrap_or_else(|| vec![None; w.k]);
        // A varying input makes every output it reaches vary: that follows from the pattern, so
        // the rows of varying inputs (of every input, transposed, when all vary) need only it.
        let all_vary = xc.iter().all(Option::is_none);
        let only_bits = |r: usize| if w.transposed { all_vary } else { xc[r].is_none() };
        let ((acc, mut varies), pattern) = w.fold_nonzero_recording(
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
            &only_bits,
        );
        if w.spatial == 1 && w.groups == 1 {
            pattern.mark_reached(&|c| c < w.k && xc[c].is_none(), &mut varies);
        }
        cx.record(pattern);
        let r = (0..w.n).map(|j| if varies[j] { None } else { l.bias(j).map(|b| l.alpha() * acc[j] + b) }).collect();
        cx.set(y, r);
    }

    fn needs(&self, cx: &mut NeedCx<'_, 'g>) {
        let l = self.0.as_ref();
        let (x, Some(y)) = (cx.input(l.input_slot()), cx.output(0)) else { return };
        let w = l.weight();
        match (cx.linear_inputs(x, l), cx.pattern()) {
            (Some(xc), Some(pattern)) if cx.needed(y).len() == w.n => {
                let (lx, width) = (cx.layout(x), cx.needed(x).len());
                let read = pattern.read_by(cx.needed(y), w.k);
                (0..w.k).filter(|&kc| read[kc] && xc[kc].is_none()).for_each(|kc| cx.mark(x, lx.channel_of(kc, width)));
            }
            _ => cx.mark_all(x),
        }
    }

    fn rewrite(&self, cx: &mut PlanCx<'_, 'g>) -> Result<()> {
        let l = self.0.as_ref();
        let node = cx.node_proto();
        let w = l.weight();
        let (x, Some(y)) = (cx.input(l.input_slot()), cx.output(0)) else { return Ok(()) };
        let lx = cx.layout(x);
        let b = lx.block.filter(|b| lx.width.map(|wx| wx * b) == Some(w.k));
        // Input entries kept: every entry of a kept channel (whole blocks, or interleaved).
        let keep_in: Vec<usize> = match b {
            Some(b) => {
                let width = w.k / b;
                let mut kept = vec![false; width];
                cx.kept(x, width).iter().for_each(|&c| kept[c] = true);
                lx.entries_where(width, w.k, |c| kept[c])
            }
            None => (0..w.k).collect(),
        };
        let keep_out = cx.kept(y, w.n);
        let mut fold = vec![0.0; w.n];
        if keep_in.len() < w.k {
            let mut removed = vec![true; w.k];
            keep_in.iter().for_each(|&c| removed[c] = false);
            let xc = crate::analysis::constancy::foldable_inputs(lx, cx.consts(x), l)
                .expect("a block means known constants");
            let folded: Vec<(usize, f64)> =
                (0..w.k).filter(|&c| removed[c]).filter_map(|c| xc[c].filter(|&k| k != 0.0).map(|k| (c, k))).collect();
            // Constants the bias cannot take (zero padding at the borders) come back through a
            // correction after the layer.
            if !folded.is_empty() && !l.folds_constants() {
                let (nodes, initializers) =
                    l.border_correction(&folded, &keep_out).expect("only corrected constants leave");
                if !nodes.is_empty() {
                    let node = cx.node.0;
                    cx.push(Edit::Follow { node, nodes, initializers });
                }
            }
            let folded = if l.folds_constants() { folded } else { vec![] };
            // Reading the few folded columns directly beats scanning the whole matrix.
            if folded.len() * w.spatial * keep_out.len() < w.k * w.n * w.spatial / 4 {
                w.fold_columns(&folded, &keep_out, &mut fold);
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
        let folds = !l.holds_bias() && fold.iter().any(|&f| f != 0.0);
        let fold: Vec<f64> =
            if folds && cx.fold_into_reader(y, w.values.dtype, fold.iter().map(|f| l.alpha() * f).collect()) {
                vec![0.0; keep_out.len()]
            } else {
                keep_out.iter().map(|&j| l.alpha() * fold[j]).collect()
            };
        if keep_in.len() < w.k || keep_out.len() < w.n {
            let n = cx.node.0;
            cx.extend(w.slice_edit(n, &keep_in, &keep_out));
            let mut edits = vec![];
            l.rewrite_bias(n, &keep_out, &fold, &mut edits);
            cx.extend(edits);
        }
        w.values.release();
        let mut kept = vec![false; w.n];
        keep_out.iter().for_each(|&j| kept[j] = true);
        let constant = (0..w.n).filter(|&j| !kept[j] && cx.consts(y).get(j).copied().flatten().is_some()).count();
        cx.layer(LayerReport {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            inputs_before: w.k,
            inputs_after: keep_in.len(),
            outputs_before: w.n,
            outputs_after: keep_out.len(),
            removed_constant: constant,
            removed_dead: w.n - keep_out.len() - constant,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::f32_tensor;

    /// Large enough to be scanned by several threads, each recording its own rows' pattern.
    #[test]
    fn the_recorded_pattern_answers_what_the_weights_would() {
        let (rows, cols) = (2048usize, 2051usize);
        let vals: Vec<f32> =
            (0..rows * cols).map(|i| if (i * 7919) % 13 < 11 { 0.0 } else { (i % 5) as f32 + 1.0 }).collect();
        let t = f32_tensor("w", &[rows, cols], &vals);
        for transposed in [false, true] {
            let values = Values::of(&t).expect("f32");
            let (k, n) = if transposed { (cols, rows) } else { (rows, cols) };
            let w = Weight { values, tensor: &t, slot: 1, k, n, transposed, spatial: 1, groups: 1 };
            let at = |c: usize, j: usize| if transposed { vals[j * cols + c] } else { vals[c * cols + j] };
            let (count, pattern) = w.fold_nonzero_recording(|| 0usize, |s, _, _, _| *s += 1, |a, b| a + b, &|_| false);
            assert_eq!(count, vals.iter().filter(|&&v| v != 0.0).count());
            // Rows that only record their bits record the same bits, without a call per weight.
            let even = |r: usize| r.is_multiple_of(2);
            let (odd, fast) = w.fold_nonzero_recording(|| 0usize, |s, _, _, _| *s += 1, |a, b| a + b, &even);
            assert_eq!(fast.words, pattern.words);
            assert_eq!(odd, vals.chunks(cols).skip(1).step_by(2).flatten().filter(|&&v| v != 0.0).count());
            let mut reached = vec![false; n];
            fast.mark_reached(&even, &mut reached);
            let expected: Vec<bool> = (0..n).map(|j| (0..k).any(|c| even(c) && at(c, j) != 0.0)).collect();
            assert_eq!(reached, expected);
            let needed: Vec<bool> = (0..n).map(|j| j % 97 == 3).collect();
            let expected: Vec<bool> = (0..k).map(|c| (0..n).any(|j| needed[j] && at(c, j) != 0.0)).collect();
            assert_eq!(pattern.read_by(&needed, k), expected, "transposed: {transposed}");
        }
    }
}
