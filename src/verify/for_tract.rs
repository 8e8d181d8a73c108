//! Copies of a model that tract can run, for verification only: each rewrite here computes the
//! same values as the operators it replaces, and both models get the same ones.
//!
//! - tract does not run every operator in float16, bfloat16 or float64 (Gemm among them): a
//!   float32 copy is exact for the weights, and the report says `as_float32`.
//! - tract types every int64 a `Cast` produces as a symbolic dimension, which its `CumSum` cannot
//!   add up ("TDim is not a number"): RoBERTa-style position ids as the dynamo exporter writes
//!   them, `CumSum(Cast(Not(Equal(ids, pad)), int64), 1)` (XLM-R, CamemBERT, MPNet, M2M-100, ...).
//!   Such a sum is taken in float64 and cast back, exact for sums below 2^53.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::onnx::build::attr_int;
use crate::onnx::proto::{tensor_proto::DataType, type_proto, GraphProto, NodeProto};

fn is_other_float(dt: i32) -> bool {
    [DataType::Float16 as i32, DataType::Bfloat16 as i32, DataType::Double as i32].contains(&dt)
}

pub(super) fn has_non_f32_floats(g: &GraphProto) -> bool {
    g.initializer.iter().any(|t| is_other_float(t.data_type()))
}

/// Whether `g` has a form tract cannot run whatever its types (see the module's list).
pub(super) fn has_quirks(g: &GraphProto) -> bool {
    int64_cumsums(g).next().is_some()
}

/// `g` rewritten for tract: the forms of the module's list, and float32 everywhere if `f32`.
pub(super) fn prepare(g: &mut GraphProto, f32: bool) {
    // First: the float32 copy would turn the sums' float64 casts into float32 ones.
    if f32 {
        graph_to_f32(g);
    }
    sum_int64_in_f64(g);
}

/// A copy of the model at `path`, [`prepare`]d, written to `to` (its weights beside it past
/// 1 GiB: protobuf cannot encode a message of 2 GiB).
pub(super) fn copy(path: &Path, to: &Path, f32: bool) -> Result<(crate::Model, PathBuf)> {
    let mut m = crate::Model::load(path)?;
    prepare(m.graph_mut(), f32);
    m.write(to, m.encoded_len() > 1 << 30)?;
    Ok((m, to.to_path_buf()))
}

/// The element type of `value`, where the graph declares it or a `Cast` or constant fixes it.
fn elem_type(g: &GraphProto, value: &str) -> Option<i32> {
    let declared =
        g.input.iter().chain(&g.value_info).chain(&g.output).find(|v| v.name() == value).and_then(|v| {
            match v.r#type.as_ref()?.value.as_ref()? {
                type_proto::Value::TensorType(t) => t.elem_type.filter(|&e| e != 0),
                _ => None,
            }
        });
    let initializer = || g.initializer.iter().find(|t| t.name() == value).map(|t| t.data_type());
    let cast = || {
        let n = g.node.iter().find(|n| n.output.iter().any(|o| o == value))?;
        (n.op_type() == "Cast").then(|| n.attribute.iter().find(|a| a.name() == "to")?.i.map(|i| i as i32))?
    };
    declared.or_else(initializer).or_else(cast)
}

/// The `CumSum` nodes of `g` over an int64 tensor.
fn int64_cumsums(g: &GraphProto) -> impl Iterator<Item = usize> + '_ {
    (0..g.node.len()).filter(|&n| {
        let node = &g.node[n];
        node.op_type() == "CumSum"
            && node.domain.as_deref().unwrap_or("").is_empty()
            && node.input.first().is_some_and(|x| elem_type(g, x) == Some(DataType::Int64 as i32))
    })
}

/// `CumSum(x: int64)` becomes `Cast(CumSum(Cast(x, double)), int64)`.
fn sum_int64_in_f64(g: &mut GraphProto) {
    let sums: Vec<usize> = int64_cumsums(g).collect();
    let cast = |input: &str, output: &str, to: DataType| NodeProto {
        name: Some(format!("{output}_cast")),
        op_type: Some("Cast".into()),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![attr_int("to", to as i64)],
        ..Default::default()
    };
    // Inserted from the last, so earlier positions stay put; each pair is placed around its sum.
    for &n in sums.iter().rev() {
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
