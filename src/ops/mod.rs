//! Operator rules: what each ONNX operator means for channels.
//!
//! A rule classifies one node into a [`Role`] the channel analysis understands:
//! - [`Pointwise`]: output channel `c` depends only on input channel `c` (activations, bias adds,
//!   layer scales, residual adds, gating, reshapes that keep the channel axis);
//! - [`Linear`]: a weight matrix mixes input channels into output channels (Gemm, MatMul, Conv);
//! - [`Channelwise`]: channel `c` of the output reads channel `c` of the input through its own
//!   filter (depthwise Conv);
//! - [`Role::Concat`], [`Role::Split`]: channels laid end to end;
//! - [`Role::Opaque`]: anything else. Its channels are kept, and the reason is reported.
//!
//! Adding an operator means adding one rule to the file of its family and listing it in [`RULES`].

mod conv;
mod gemm;
mod matmul;
mod norm;

pub use norm::{decomposed, ClnForm};
mod pointwise;
mod shape;

use crate::error::Result;
use crate::ir::Ir;
use crate::onnx::proto::{GraphProto, NodeProto, TensorProto};
use crate::onnx::tensor::{with_data, Values};
use crate::rewrite::Edit;

pub struct Ctx<'g> {
    pub graph: &'g GraphProto,
    pub ir: &'g Ir,
    /// Called with weight bytes the analysis has finished reading.
    pub release: &'g dyn Fn(&[u8]),
}

impl<'g> Ctx<'g> {
    pub fn const_tensor(&self, name: &str) -> Option<&'g TensorProto> {
        self.ir.const_tensor(self.graph, name)
    }
}

pub trait OpRule: Sync {
    fn op_types(&self) -> &'static [&'static str];
    fn role<'g>(&self, node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g>;
}

pub enum Role<'g> {
    Pointwise(Pointwise),
    Linear(Box<dyn Linear + 'g>),
    Channelwise(Box<dyn Channelwise + 'g>),
    /// A LayerNormalization (or RMSNorm, or a decomposed LayerNorm ending here) over the channels.
    Norm(norm::Norm<'g>),
    /// Part of a decomposed LayerNorm, analysed as the [`Role::Norm`] of its last node.
    Inner,
    /// Output channels are the inputs' channels in order, along `axis` (as in the attribute).
    Concat {
        axis: i64,
    },
    /// Output `i` holds `sizes[i]` consecutive input channels along `axis`; `sizes` empty means
    /// equal parts. `sizes_slot` is where the sizes live as a constant input, if they do.
    Split {
        axis: i64,
        sizes: Vec<usize>,
        sizes_slot: Option<usize>,
    },
    /// Output channel `k` is input channel `indices[k]` along the last axis (a Gather): the output
    /// is a channel space of its own, the input is read whole; removing output channels removes
    /// their indices.
    Select {
        indices: Vec<i64>,
    },
    Opaque(String),
}

/// Scalar semantics of a pointwise operator on one channel: the values of all its inputs, in
/// slot order (activations and per-channel constants alike), to its output; `None` when the
/// output is not constant even though the inputs are (an average pool that counts padding).
pub type Eval = Box<dyn Fn(&[f64]) -> Option<f64> + Sync>;

/// How a pointwise operator's output is laid out relative to its input.
#[derive(Debug, Clone)]
pub enum Layout {
    /// Same channel axis (counted from the end, so broadcasting keeps it).
    Same,
    /// Flatten from axis `from`: keeps a last channel axis whole, or turns a channel axis at `from`
    /// into blocks of the flat axis (a feature map into a Gemm).
    Flatten { from: i64 },
    /// Reshape to the constant shape at `slot`: either keeps the last axis, or flattens a feature
    /// map into `[batch, features]`.
    Reshape { slot: usize },
    /// A reshape whose target shape is computed (`Concat` of dimensions, as exporters build
    /// `x.view(B, T, C)`) but whose last entry is the channel entries, kept whole: a constant at
    /// (node, slot), rewritten with the width, or `None` when it is the input's own last
    /// dimension read back with `Shape`.
    ReshapeLast { last: Option<(usize, usize)> },
    /// A reduction over `axes`, which must not include the channel axis.
    Reduce { axes: Vec<i64>, keepdims: bool },
    /// A permutation of the axes: the channel axis moves to where `perm` puts it.
    Transpose { perm: Vec<i64> },
}

pub struct Pointwise {
    /// Input slots holding activations; they share a channel space with output 0.
    pub acts: Vec<usize>,
    /// Input slots holding constants that broadcast along the channel axis (size 1 or the width);
    /// sliced with the channels.
    pub params: Vec<usize>,
    pub eval: Eval,
    /// `x * 0 == 0` whatever `x` is, so a zero operand makes the channel constant and its other
    /// operand unused.
    pub zero_absorbs: bool,
    pub layout: Layout,
    /// The constants are 1-D vectors indexed by channel whatever the axis (BatchNormalization),
    /// rather than tensors broadcast against the activation.
    pub channel_params: bool,
}

impl Pointwise {
    pub fn new(acts: Vec<usize>, params: Vec<usize>, eval: Eval) -> Self {
        Pointwise { acts, params, eval, zero_absorbs: false, layout: Layout::Same, channel_params: false }
    }

    /// A pointwise operator whose constant output is its constant input.
    pub fn identity() -> Self {
        Pointwise::new(vec![0], vec![], Box::new(|x| Some(x[0])))
    }
}

/// A weight matrix `W[c, j]` (input channel `c`, output channel `j`) as stored in the model.
pub struct Weight<'g> {
    pub values: Values<'g>,
    /// The stored tensor, always read at input slot 1 of its node.
    pub tensor: &'g TensorProto,
    pub k: usize,
    pub n: usize,
    /// Stored as `[N, K]` rather than `[K, N]` (Gemm with `transB`, Conv).
    pub transposed: bool,
    /// Kernel elements per (input, output) pair: 1, or `kh * kw` for Conv (`[N, K, kh, kw]`).
    pub spatial: usize,
}

impl Weight<'_> {
    /// Calls `f(c, j, w)` for every non-zero weight, row by row of the stored layout (no
    /// division per element: this runs over every weight of the model, several times).
    pub fn for_each_nonzero(&self, f: impl FnMut(usize, usize, f64)) {
        self.for_each_nonzero_in_rows(0..self.rows(), f)
    }

    fn rows(&self) -> usize {
        if self.transposed {
            self.n
        } else {
            self.k
        }
    }

    fn for_each_nonzero_in_rows(&self, rows: std::ops::Range<usize>, mut f: impl FnMut(usize, usize, f64)) {
        let (k, n, s) = (self.k, self.n, self.spatial);
        for r in rows {
            match (self.transposed, s) {
                (true, 1) => self.values.for_each_nonzero_in(r * k, k, |c, w| f(c, r, w)),
                (true, _) => self.values.for_each_nonzero_in(r * k * s, k * s, |e, w| f(e / s, r, w)),
                (false, _) => self.values.for_each_nonzero_in(r * n, n, |j, w| f(r, j, w)),
            }
        }
    }

    /// Folds `f(state, c, j, w)` over every non-zero weight, splitting large matrices by rows
    /// across the machine's cores and merging the per-thread states.
    pub fn fold_nonzero<T: Send>(
        &self,
        init: impl Fn() -> T + Sync,
        f: impl Fn(&mut T, usize, usize, f64) + Sync,
        merge: impl Fn(T, T) -> T,
    ) -> T {
        const PARALLEL_FROM: usize = 1 << 22;
        let rows = self.rows();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(rows);
        if threads <= 1 || self.values.len() < PARALLEL_FROM {
            let mut state = init();
            self.for_each_nonzero(|c, j, w| f(&mut state, c, j, w));
            return state;
        }
        let chunk = rows.div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (init, f) = (&init, &f);
                    scope.spawn(move || {
                        let mut state = init();
                        self.for_each_nonzero_in_rows(t * chunk..((t + 1) * chunk).min(rows), |c, j, w| {
                            f(&mut state, c, j, w)
                        });
                        state
                    })
                })
                .collect();
            let states = workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            states.reduce(merge).expect("at least one thread")
        })
    }

    /// `sum_e W[c, j, e]` over the kernel: what a constant input `c` contributes to output `j`.
    pub fn sum(&self, c: usize, j: usize) -> f64 {
        let (k, n, s) = (self.k, self.n, self.spatial);
        let at = if self.transposed { (j * k + c) * s } else { c * n + j };
        (at..at + s).map(|i| self.values.get(i)).sum()
    }

    /// The kept sub-matrix, in the stored layout and type, bit for bit.
    pub fn slice(&self, keep_in: &[usize], keep_out: &[usize]) -> Vec<u8> {
        let (k, n, s) = (self.k, self.n, self.spatial);
        if self.transposed {
            let cols: Vec<usize> = keep_in.iter().flat_map(|&c| (0..s).map(move |e| c * s + e)).collect();
            self.values.gather_rows(keep_out, k * s, &cols)
        } else {
            self.values.gather_rows(keep_in, n, keep_out)
        }
    }

    /// The edit that keeps only `keep_in`/`keep_out`, if that drops anything.
    pub fn slice_edit(&self, node: usize, keep_in: &[usize], keep_out: &[usize]) -> Option<Edit> {
        (keep_in.len() != self.k || keep_out.len() != self.n).then(|| {
            let dims = self.sliced_dims(keep_in.len(), keep_out.len());
            let raw = self.slice(keep_in, keep_out);
            Edit::Const { node, slot: 1, tensor: with_data(self.tensor, dims, self.values.dtype, raw) }
        })
    }

    fn sliced_dims(&self, keep_in: usize, keep_out: usize) -> Vec<i64> {
        if self.transposed {
            let mut dims = self.values.dims.to_vec();
            dims[0] = keep_out as i64;
            dims[1] = keep_in as i64;
            dims
        } else {
            vec![keep_in as i64, keep_out as i64]
        }
    }
}

/// `y[.., j] = alpha * sum_c x[.., c] W[c, j] + bias[j]`.
pub trait Linear {
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
    /// Whether the node carries its own bias to fold constants into (Gemm's C, Conv's B); a
    /// MatMul does not, and its folds go to the bias `Add` after it, or a new one.
    fn holds_bias(&self) -> bool {
        true
    }
    fn weight(&self) -> &Weight<'_>;
    fn alpha(&self) -> f64;
    /// The constant added to output `j`, or `None` where it varies along another axis.
    fn bias(&self, j: usize) -> Option<f64>;
    /// Emits the edits that keep the bias of the outputs `keep_out` only and add `fold[i]` to
    /// that of `keep_out[i]` (the weight itself is sliced by [`Weight::slice_edit`]).
    fn rewrite_bias(&self, node: usize, keep_out: &[usize], fold: &[f64], edits: &mut Vec<Edit>);
}

/// Output channel `c` = a per-channel function of input channel `c` (a depthwise Conv).
pub trait Channelwise {
    fn input_slot(&self) -> usize;
    fn axis(&self) -> isize;
    fn rank(&self) -> usize;
    fn width(&self) -> usize;
    /// The output channel's constant, if it has one, given the input channel's.
    fn constant(&self, c: usize, input: Option<f64>) -> Option<f64>;
    /// Whether output channel `c` reads input channel `c` (given its constant, if any) in a way
    /// that needs its value.
    fn reads(&self, c: usize, input: Option<f64>) -> bool;
    fn rewrite(&self, node: usize, keep: &[usize], edits: &mut Vec<Edit>) -> Result<()>;
}

static RULES: &[&dyn OpRule] = &[
    &gemm::Gemm,
    &matmul::MatMul,
    &conv::Conv,
    &pointwise::Unary,
    &pointwise::Binary,
    &pointwise::BatchNorm,
    &norm::LayerNorm,
    &pointwise::Pool,
    &pointwise::Reduce,
    &shape::PassThrough,
    &shape::Reshape,
    &shape::Flatten,
    &shape::Concat,
    &shape::Split,
    &shape::Transpose,
    &shape::Select,
];

/// The reason given for nodes that only produce constants; they are not reported as blockers.
pub const CONSTANT: &str = "it computes a constant";

/// The role of a node; operators without a rule, or outside the default domain, are opaque.
pub fn role<'g>(node: &'g NodeProto, cx: &Ctx<'g>) -> Role<'g> {
    match node.output.first() {
        None => return Role::Opaque("it has no output".into()),
        Some(o) if o.is_empty() => return Role::Opaque("its first output is unnamed".into()),
        // Identity of a weight, Constant: resolved as constants by the IR, no activation here.
        Some(o) if cx.ir.is_const(o) => return Role::Opaque(CONSTANT.into()),
        _ => {}
    }
    let domain = node.domain();
    if !(domain.is_empty() || domain == "ai.onnx") {
        return Role::Opaque(format!("operator {}::{} has no channel rule", domain, node.op_type()));
    }
    let role = match RULES.iter().find(|r| r.op_types().contains(&node.op_type())) {
        Some(rule) => rule.role(node, cx),
        None => return Role::Opaque(format!("operator {} has no channel rule", node.op_type())),
    };
    // The analysis relies on activation slots naming activations; malformed or constant-only
    // nodes are opaque rather than trusted.
    let is_act = |slot: usize| node.input.get(slot).is_some_and(|s| !s.is_empty() && !cx.ir.is_const(s));
    match &role {
        Role::Pointwise(p) if p.acts.is_empty() || !p.acts.iter().all(|&s| is_act(s)) => {
            Role::Opaque("its operands are constants or missing".into())
        }
        Role::Linear(l) if !is_act(l.input_slot()) => Role::Opaque("its data operand is a constant or missing".into()),
        Role::Channelwise(c) if !is_act(c.input_slot()) => {
            Role::Opaque("its data operand is a constant or missing".into())
        }
        Role::Norm(_) if !is_act(0) => Role::Opaque("it normalizes a constant".into()),
        Role::Concat { .. } if !(0..node.input.len()).all(is_act) => Role::Opaque("it concatenates constants".into()),
        Role::Split { .. } if !is_act(0) => Role::Opaque("it splits a constant".into()),
        Role::Select { .. } if !is_act(0) => Role::Opaque("it gathers from a constant".into()),
        _ => role,
    }
}

/// Every operator type with a rule, for `--help` and the README.
pub fn supported() -> Vec<&'static str> {
    let mut v: Vec<_> = RULES.iter().flat_map(|r| r.op_types().iter().copied()).collect();
    v.sort();
    v
}
