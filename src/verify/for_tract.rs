//! Copies of a model that tract can run, for verification only: each rewrite here computes the
//! same values as the operators it replaces, and both models get the same ones.
//!
//! - tract does not run every operator in float16, bfloat16 or float64 (Gemm among them): a
//!   float32 copy is exact for the weights, and the report says `as_float32`.
//! - tract types every int64 a `Cast` produces as a symbolic dimension, which its `CumSum` cannot
//!   add up ("TDim is not a number"): RoBERTa-style position ids as the dynamo exporter writes
//!   them, `CumSum(Cast(Not(Equal(ids, pad)), int64), 1)` (XLM-R, CamemBERT, MPNet, M2M-100, ...).
//!   Such a sum is taken in float64 and cast back, exact for sums below 2^53.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::ir::{Ir, NodeExt};
use crate::onnx::build::{attr_int, node};
use crate::onnx::proto::{tensor_proto::DataType, type_proto, GraphProto};

fn is_other_float(dt: i32) -> bool {
    [DataType::Float16 as i32, DataType::Bfloat16 as i32, DataType::Double as i32].contains(&dt)
}

pub(super) fn has_non_f32_floats(g: &GraphProto) -> bool {
    g.initializer.iter().any(|t| is_other_float(t.data_type()))
}

/// The outputs of `g`'s `CumSum`s over an int64 tensor (the module's list), found once per model
/// on its index: its pieces are rewritten by these names.
pub(super) fn int64_sums(g: &GraphProto, ir: &Ir) -> HashSet<String> {
    let int64 = |x: &String| ir.elem_type(g, x) == Some(DataType::Int64 as i32);
    let sums =
        g.node.iter().filter(|n| n.op_type() == "CumSum" && n.default_domain() && n.input.first().is_some_and(int64));
    sums.filter_map(|n| n.output.first().cloned()).collect()
}

/// `g` rewritten for tract: the `CumSum`s writing `sums`, and float32 everywhere if `f32`.
pub(super) fn prepare(g: &mut GraphProto, sums: &HashSet<String>, f32: bool) {
    // First: the float32 copy would turn the sums' float64 casts into float32 ones.
    if f32 {
        graph_to_f32(g);
    }
    sum_in_f64(g, sums);
}

/// A copy of the model at `path`, [`prepare`]d, written to `to` (its weights beside it past
/// 1 GiB: protobuf cannot encode a message of 2 GiB).
pub(super) fn copy(path: &Path, to: &Path, f32: bool) -> Result<(crate::Model, PathBuf)> {
    let mut m = crate::Model::load(path)?;
    let sums = int64_sums(m.graph(), &m.ir()?);
    prepare(m.graph_mut(), &sums, f32);
    m.write(to, m.encoded_len() > 1 << 30)?;
    Ok((m, to.to_path_buf()))
}

/// `CumSum(x)` writing one of `sums` becomes `Cast(CumSum(Cast(x, double)), int64)`.
fn sum_in_f64(g: &mut GraphProto, sums: &HashSet<String>) {
    let at: Vec<usize> =
        (0..g.node.len()).filter(|&n| g.node[n].output.first().is_some_and(|y| sums.contains(y))).collect();
    let cast = |input: &str, output: &str, to: DataType| {
        node("Cast", &format!("{output}_cast"), &[input], &[output], vec![attr_int("to", to as i64)])
    };
    // Inserted from the last, so earlier positions stay put; each pair is placed around its sum.
    for &n in at.iter().rev() {
        let (x, y) = (g.node[n].input[0].clone(), g.node[n].output[0].clone());
        let (wide_in, wide_out) = (format!("{x}__for_tract_f64"), format!("{y}__for_tract_f64"));
        g.node[n].input[0] = wide_in.clone();
        g.node[n].output[0] = wide_out.clone();
        g.node.insert(n + 1, cast(&wide_out, &y, DataType::Int64));
        g.node.insert(n, cast(&x, &wide_in, DataType::Double));
    }
}

/// Makes every float tensor, declared type and float cast of `g` float32.
fn graph_to_f32(g: &mut GraphProto) {
    use crate::onnx::tensor::{with_data, FloatType, Values};
    let convert = |t: &mut crate::onnx::proto::TensorProto| {
        if let (true, Ok(v)) = (is_other_float(t.data_type()), Values::of(t)) {
            *t = with_data(t, t.dims.clone(), FloatType::F32, v.to_f32_bytes());
        }
    };
    g.initializer.iter_mut().for_each(convert);
    for a in g.node.iter_mut().flat_map(|n| n.attribute.iter_mut()) {
        if let Some(t) = a.t.as_mut() {
            convert(t);
        }
        if a.name() == "to" && a.i.is_some_and(|i| is_other_float(i as i32)) {
            a.i = Some(DataType::Float as i64);
        }
    }
    for vi in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
        if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if is_other_float(t.elem_type()) {
                t.elem_type = Some(DataType::Float as i32);
            }
        }
    }
}
