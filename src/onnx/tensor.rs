//! Element access to initializer data in its stored type, without converting whole tensors.
//!
//! Weights stay in the bytes they were read in (a slice of the memory-mapped file); analysis reads
//! elements one at a time as `f64`, and rewriting copies kept elements byte for byte, so a tensor
//! that is only sliced is bit-identical to the original. Only folded biases are re-encoded.

use std::io::Write;

use bytes::Bytes;

use super::proto::{tensor_proto::DataType, TensorProto};
use crate::error::Error;

/// Elements of a tensor of these dimensions; `None` for a negative dimension or a count past
/// `u64` (a model's dimensions are untrusted input: nothing multiplies them unchecked).
pub fn numel(dims: &[i64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
}

/// Floating-point element types whose zeros and constants we can reason about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
    F64,
}

impl FloatType {
    pub fn from_onnx(data_type: i32) -> Option<Self> {
        match DataType::try_from(data_type).ok()? {
            DataType::Float => Some(Self::F32),
            DataType::Float16 => Some(Self::F16),
            DataType::Bfloat16 => Some(Self::Bf16),
            DataType::Double => Some(Self::F64),
            _ => None,
        }
    }

    pub fn onnx(self) -> i32 {
        (match self {
            Self::F32 => DataType::Float,
            Self::F16 => DataType::Float16,
            Self::Bf16 => DataType::Bfloat16,
            Self::F64 => DataType::Double,
        }) as i32
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::F64 => 8,
        }
    }

    /// Rounds a value to this type, the way the runtime would store it.
    pub fn round(self, v: f64) -> f64 {
        match self {
            Self::F32 => v as f32 as f64,
            Self::F16 => half::f16::from_f64(v).to_f64(),
            Self::Bf16 => half::bf16::from_f64(v).to_f64(),
            Self::F64 => v,
        }
    }

    fn encode_into(self, v: f64, out: &mut Vec<u8>) {
        match self {
            Self::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Self::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            Self::Bf16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            Self::F64 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Where a tensor's elements live: packed little-endian bytes, or one of ONNX's typed fields.
#[derive(Clone, Copy)]
enum Repr<'a> {
    Raw(&'a Bytes),
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// float16 and bfloat16 in `int32_data`, one element per int32, low 16 bits.
    Bits16(&'a [i32]),
}

/// A read-only view of a float initializer's elements.
#[derive(Clone, Copy)]
pub struct Values<'a> {
    pub dtype: FloatType,
    pub dims: &'a [i64],
    repr: Repr<'a>,
}

impl<'a> Values<'a> {
    /// Views the tensor, or explains why it cannot be read as float weights.
    pub fn of(t: &'a TensorProto) -> Result<Self, Error> {
        let dtype = FloatType::from_onnx(t.data_type()).ok_or_else(|| Error::UnsupportedTensor {
            tensor: t.name.clone().unwrap_or_default(),
            why: format!(
                "element type {} is not a float type (float32/16, bfloat16, float64)",
                DataType::try_from(t.data_type())
                    .map(|d| d.as_str_name().to_string())
                    .unwrap_or_else(|_| t.data_type().to_string())
            ),
        })?;
        if t.dims.iter().any(|&d| d < 0) {
            return Err(Error::UnsupportedTensor {
                tensor: t.name.clone().unwrap_or_default(),
                why: format!("its dimensions {:?} are negative", t.dims),
            });
        }
        let n = numel(&t.dims).filter(|&n| n <= usize::MAX as u64).ok_or_else(|| Error::UnsupportedTensor {
            tensor: t.name.clone().unwrap_or_default(),
            why: format!("its dimensions {:?} are too large to address", t.dims),
        })?;
        let repr = if let Some(raw) = t.raw_data.as_ref().filter(|r| !r.is_empty() || n == 0) {
            Repr::Raw(raw)
        } else {
            match dtype {
                FloatType::F32 => Repr::F32(&t.float_data),
                FloatType::F64 => Repr::F64(&t.double_data),
                FloatType::F16 | FloatType::Bf16 => Repr::Bits16(&t.int32_data),
            }
        };
        let v = Values { dtype, dims: &t.dims, repr };
        if v.len() as u64 != n {
            return Err(Error::UnsupportedTensor {
                tensor: t.name.clone().unwrap_or_default(),
                why: format!("holds {} elements but its dims {:?} need {n}", v.len(), t.dims),
            });
        }
        Ok(v)
    }

    /// The packed bytes, when the tensor is stored as raw data (empty otherwise).
    pub fn raw(&self) -> &'a [u8] {
        match self.repr {
            Repr::Raw(b) => b,
            _ => &[],
        }
    }

    /// Gives the pages of a memory-mapped tensor back to the kernel once a scan is done with
    /// them: the analysis reads each weight once per pass, and a model larger than RAM must not
    /// stay resident.
    pub fn release(&self) {
        super::io::release_pages(self.raw());
    }

    pub fn len(&self) -> usize {
        match self.repr {
            Repr::Raw(b) => b.len() / self.dtype.size(),
            Repr::F32(v) => v.len(),
            Repr::F64(v) => v.len(),
            Repr::Bits16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> f64 {
        match self.repr {
            Repr::Raw(b) => decode(self.dtype, &b[i * self.dtype.size()..]),
            Repr::F32(v) => v[i] as f64,
            Repr::F64(v) => v[i],
            Repr::Bits16(v) => bits16(self.dtype, v[i] as u16),
        }
    }

    /// Calls `f(index, value)` for every element that is not exactly zero, in order.
    pub fn for_each_nonzero(&self, f: impl FnMut(usize, f64)) {
        self.for_each_nonzero_in(0, self.len(), f)
    }

    /// Like [`Self::for_each_nonzero`] over elements `start..start + len`, with indices counted
    /// from `start`.
    ///
    /// Weight matrices are mostly zeros after pruning and can be gigabytes, so raw float32 and
    /// 16-bit tensors skip zeros eight bytes at a time with one 64-bit test (both signs of zero)
    /// and run at memory speed.
    pub fn for_each_nonzero_in(&self, start: usize, len: usize, mut f: impl FnMut(usize, f64)) {
        match (self.repr, self.dtype) {
            (Repr::Raw(b), FloatType::F32) => skip_zeros::<4>(&b[start * 4..(start + len) * 4], f, |e| {
                let v = f32::from_le_bytes(e);
                (v != 0.0).then_some(v as f64)
            }),
            (Repr::Raw(b), dtype @ (FloatType::F16 | FloatType::Bf16)) => {
                skip_zeros::<2>(&b[start * 2..(start + len) * 2], f, |e| {
                    let bits = u16::from_le_bytes(e);
                    (bits & 0x7fff != 0).then(|| bits16(dtype, bits))
                })
            }
            _ => (0..len).for_each(|i| {
                let v = self.get(start + i);
                if v != 0.0 {
                    f(i, v)
                }
            }),
        }
    }

    /// The elements as raw float32 bytes (exact for every 16-bit float), converted in bulk.
    pub fn to_f32_bytes(&self) -> Vec<u8> {
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        let mut wide = vec![0f32; self.len()];
        match (self.repr, self.dtype) {
            (Repr::Raw(b), FloatType::F16 | FloatType::Bf16) => {
                let bits: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                match self.dtype {
                    FloatType::F16 => bits.reinterpret_cast::<half::f16>().convert_to_f32_slice(&mut wide),
                    _ => bits.reinterpret_cast::<half::bf16>().convert_to_f32_slice(&mut wide),
                }
            }
            _ => wide.iter_mut().enumerate().for_each(|(i, x)| *x = self.get(i) as f32),
        }
        wide.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Sets bit `i` of `words` for every element `start + i` (of `len`) that is not zero: the
    /// same answer as [`Self::for_each_nonzero_in`], without a call per element. Says whether
    /// one of them is Inf or NaN (see `analysis::finite`).
    pub fn nonzero_bits(&self, start: usize, len: usize, words: &mut [u64]) -> bool {
        fn pack<const N: usize>(b: &[u8], words: &mut [u64], nonzero: impl Fn([u8; N]) -> bool) {
            for (w, chunk) in words.iter_mut().zip(b.chunks(64 * N)) {
                let mut word = 0u64;
                for (i, e) in chunk.chunks_exact(N).enumerate() {
                    word |= (nonzero(e.try_into().expect("N bytes")) as u64) << i;
                }
                *w |= word;
            }
        }
        match (self.repr, self.dtype) {
            // Dense rows are the common case for 16-bit weights: pack without branches, then test
            // the exponents in a second pass over the same (cached) bytes, which vectorizes.
            (Repr::Raw(b), dtype @ (FloatType::F16 | FloatType::Bf16)) => {
                let row = &b[start * 2..(start + len) * 2];
                pack::<2>(row, words, |e| u16::from_le_bytes(e) & 0x7fff != 0);
                non_finite_bits(row, dtype)
            }
            // Pruned float32 rows are mostly zero: the scan skips them eight bytes at a time.
            _ => {
                let mut any = false;
                self.for_each_nonzero_in(start, len, |i, v| {
                    words[i / 64] |= 1 << (i % 64);
                    any |= !v.is_finite();
                });
                any
            }
        }
    }

    /// Whether an element is Inf or NaN: the largest exponent, tested on the stored bits (a
    /// table of embeddings goes by at memory speed). The pages are released afterwards.
    pub fn any_non_finite(&self) -> bool {
        let any = match self.repr {
            Repr::Raw(b) => non_finite_bits(b, self.dtype),
            _ => (0..self.len()).any(|i| !self.get(i).is_finite()),
        };
        self.release();
        any
    }

    /// Elements `[r][c]` of a row-major matrix with rows of `row_len`, for the given rows and
    /// columns, in the same type, bit for bit.
    ///
    /// This is most of a pruned model's weights, so raw tensors are not copied here: the
    /// [`RowSlice`] is copied into the output file when the model is written, one buffer at a
    /// time, and memory follows that buffer rather than the rewritten weights.
    pub fn slice_rows(&self, rows: &[usize], row_len: usize, cols: &[usize]) -> Data {
        match self.repr {
            Repr::Raw(b) => Data::Rows(RowSlice::new(b.clone(), self.dtype.size(), rows.to_vec(), row_len, cols)),
            _ => Data::Bytes(self.gather(rows.iter().flat_map(|&r| cols.iter().map(move |&c| r * row_len + c)))),
        }
    }

    /// The raw bytes of the entries `keep` along axis `pos` (from the start), every other axis
    /// whole.
    pub fn gather_axis(&self, pos: usize, keep: &[usize]) -> Vec<u8> {
        let dims: Vec<usize> = self.dims.iter().map(|&d| d as usize).collect();
        let (outer, inner) = (dims[..pos].iter().product::<usize>(), dims[pos + 1..].iter().product::<usize>());
        let n = dims[pos];
        self.gather(
            (0..outer).flat_map(|o| keep.iter().flat_map(move |&k| (0..inner).map(move |i| (o * n + k) * inner + i))),
        )
    }

    /// Packs the elements at `indices` into raw bytes of the same type, bit for bit.
    pub fn gather(&self, indices: impl Iterator<Item = usize>) -> Vec<u8> {
        let size = self.dtype.size();
        let mut out = Vec::new();
        if let Repr::Raw(b) = self.repr {
            // Kept elements come in long runs (whole rows, spans of columns): copy runs, not elements.
            let mut run: Option<(usize, usize)> = None;
            for i in indices {
                run = match run {
                    Some((start, end)) if end == i => Some((start, i + 1)),
                    Some((start, end)) => {
                        out.extend_from_slice(&b[start * size..end * size]);
                        Some((i, i + 1))
                    }
                    None => Some((i, i + 1)),
                };
            }
            if let Some((start, end)) = run {
                out.extend_from_slice(&b[start * size..end * size]);
            }
            return out;
        }
        for i in indices {
            match self.repr {
                Repr::Raw(_) => unreachable!("handled above"),
                Repr::Bits16(v) => out.extend_from_slice(&(v[i] as u16).to_le_bytes()),
                _ => self.dtype.encode_into(self.get(i), &mut out),
            }
        }
        out
    }
}

/// Whether a stored element of `dtype` in `b` has the largest exponent (Inf or NaN). Eight bytes
/// at a time: each lane masked to its exponent and compared with the largest through the
/// zero-lane test (`(v - ones) & !v & highs`; the masked lanes never set their high bit).
fn non_finite_bits(b: &[u8], dtype: FloatType) -> bool {
    let (size, exponent): (usize, u64) = match dtype {
        FloatType::F32 => (4, 0x7f80_0000),
        FloatType::F64 => (8, 0x7ff0_0000_0000_0000),
        FloatType::F16 => (2, 0x7c00),
        FloatType::Bf16 => (2, 0x7f80),
    };
    let ones: u64 = match size {
        2 => 0x0001_0001_0001_0001,
        4 => 0x0000_0001_0000_0001,
        _ => 1,
    };
    let (mask, highs) = (exponent * ones, (ones << (8 * size - 1)));
    let mut words = b.chunks_exact(8);
    let any = words.by_ref().fold(false, |any, w| {
        let v = (u64::from_le_bytes(w.try_into().expect("8 bytes")) & mask) ^ mask;
        any | (v.wrapping_sub(ones) & !v & highs != 0)
    });
    let tail = words.remainder().chunks_exact(size).any(|e| {
        let mut lane = [0u8; 8];
        lane[..size].copy_from_slice(e);
        u64::from_le_bytes(lane) & exponent == exponent
    });
    any || tail
}

/// Calls `f(i, v)` for every element `i` of packed `b` (elements of `N` bytes) that `value` reads
/// as a non-zero `v`, skipping eight bytes at a time when they hold only zeros of either sign.
fn skip_zeros<const N: usize>(b: &[u8], mut f: impl FnMut(usize, f64), value: impl Fn([u8; N]) -> Option<f64>) {
    // Every bit but each element's sign bit.
    let magnitude = match N {
        2 => 0x7fff_7fff_7fff_7fff,
        _ => 0x7fff_ffff_7fff_ffff,
    };
    let mut words = b.chunks_exact(8);
    for (w, c) in words.by_ref().enumerate() {
        if u64::from_le_bytes(c.try_into().expect("8 bytes")) & magnitude == 0 {
            continue;
        }
        for (h, e) in c.chunks_exact(N).enumerate() {
            if let Some(v) = value(e.try_into().expect("N bytes")) {
                f(w * (8 / N) + h, v)
            }
        }
    }
    let done = (b.len() - words.remainder().len()) / N;
    for (h, e) in words.remainder().chunks_exact(N).enumerate() {
        if let Some(v) = value(e.try_into().expect("N bytes")) {
            f(done + h, v)
        }
    }
}

fn decode(dtype: FloatType, b: &[u8]) -> f64 {
    match dtype {
        FloatType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        FloatType::F64 => f64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        FloatType::F16 | FloatType::Bf16 => bits16(dtype, u16::from_le_bytes([b[0], b[1]])),
    }
}

fn bits16(dtype: FloatType, bits: u16) -> f64 {
    match dtype {
        FloatType::Bf16 => half::bf16::from_bits(bits).to_f64(),
        _ => half::f16::from_bits(bits).to_f64(),
    }
}

/// The bytes of a rewritten tensor: packed now, or a slice of the input copied when written.
pub enum Data {
    Bytes(Vec<u8>),
    Rows(RowSlice),
}

/// Chosen rows and columns of a row-major tensor stored as raw bytes (usually a slice of the
/// memory-mapped input), copied only when written: see [`Values::slice_rows`].
#[derive(Clone)]
pub struct RowSlice {
    source: Bytes,
    elem: usize,
    rows: Vec<usize>,
    row_len: usize,
    /// Kept columns as runs `(first, count)`: kept columns come in long runs, and a run is one
    /// copy however long it is.
    runs: Vec<(usize, usize)>,
    kept: usize,
}

/// How much a slice copies between writes.
const SLICE_BUFFER: usize = 1 << 20;

impl RowSlice {
    fn new(source: Bytes, elem: usize, rows: Vec<usize>, row_len: usize, cols: &[usize]) -> RowSlice {
        let mut runs: Vec<(usize, usize)> = vec![];
        for &c in cols {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == c => *count += 1,
                _ => runs.push((c, 1)),
            }
        }
        debug_assert!(rows.iter().all(|&r| (r + 1) * row_len * elem <= source.len()));
        debug_assert!(runs.iter().all(|&(f, n)| f + n <= row_len));
        RowSlice { source, elem, rows, row_len, runs, kept: cols.len() }
    }

    /// Bytes it writes.
    pub fn len(&self) -> usize {
        self.rows.len() * self.kept * self.elem
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor it slices, whole (to give its pages back once written).
    pub fn source(&self) -> &[u8] {
        &self.source
    }

    /// Copies the slice into `out` through one buffer of at most 1 MB, reading the source in
    /// windows (see [`super::io::in_windows`]).
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(self.len().min(SLICE_BUFFER));
        let row_bytes = self.row_len * self.elem;
        let mut result = Ok(());
        super::io::in_windows(&self.source, row_bytes, &self.rows, |rows| {
            for &r in rows {
                if result.is_err() {
                    return;
                }
                let row = &self.source[r * row_bytes..(r + 1) * row_bytes];
                for &(first, count) in &self.runs {
                    buf.extend_from_slice(&row[first * self.elem..(first + count) * self.elem]);
                }
                if buf.len() >= SLICE_BUFFER {
                    result = out.write_all(&buf);
                    buf.clear();
                }
            }
        });
        result?;
        out.write_all(&buf)
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out).expect("writing to memory cannot fail");
        out
    }

    /// The same rows and columns of another tensor of the same shape whose elements take `elem`
    /// bytes: where `self` slices a quantized weight's dequantized floats, the integers it
    /// stores.
    pub fn with_source(&self, source: Bytes, elem: usize) -> RowSlice {
        debug_assert_eq!(source.len() / elem, self.source.len() / self.elem);
        RowSlice { source, elem, ..self.clone() }
    }

    /// Where each element of the slice is in the tensor it slices (flat, row-major), in order.
    pub fn source_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.rows.iter().flat_map(move |&r| {
            self.runs.iter().flat_map(move |&(first, count)| (first..first + count).map(move |c| r * self.row_len + c))
        })
    }

    /// The rows and columns it keeps, where it slices `source` (as a matrix of `row_len` columns).
    pub fn kept(&self, source: &[u8]) -> Option<(&[usize], Vec<usize>)> {
        let same = self.source.as_ptr() == source.as_ptr() && self.source.len() == source.len();
        let cols = self.runs.iter().flat_map(|&(first, count)| first..first + count).collect();
        same.then_some((&self.rows[..], cols))
    }

    /// Whether both slices copy the same elements of the same stored tensor.
    pub fn same(&self, other: &RowSlice) -> bool {
        self.source.as_ptr() == other.source.as_ptr()
            && self.source.len() == other.source.len()
            && (self.elem, self.row_len, &self.rows, &self.runs)
                == (other.elem, other.row_len, &other.rows, &other.runs)
    }
}

/// Encodes values as a raw-data tensor of the given type.
pub fn encode(dtype: FloatType, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        dtype.encode_into(v, &mut out);
    }
    out
}

/// A new initializer holding `raw` bytes; every other field of `like` (doc string, metadata) is kept.
pub fn with_data(like: &TensorProto, dims: Vec<i64>, dtype: FloatType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims,
        data_type: Some(dtype.onnx()),
        raw_data: Some(raw.into()),
        float_data: vec![],
        double_data: vec![],
        int32_data: vec![],
        ..like.clone()
    }
}

/// The elements of an int64 tensor (shape constants), from raw bytes or `int64_data`.
pub fn int64s(t: &TensorProto) -> Vec<i64> {
    match t.raw_data.as_ref().filter(|r| !r.is_empty()) {
        Some(raw) => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        None => t.int64_data.clone(),
    }
}

/// An int64 tensor like `like` holding `vals`.
pub fn with_int64s(like: &TensorProto, vals: &[i64]) -> TensorProto {
    TensorProto {
        raw_data: Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()),
        int64_data: vec![],
        ..like.clone()
    }
}

/// [`with_int64s`] as a vector of `vals.len()` entries (a Gather's indices, fewer than before).
pub fn int64_vector_like(like: &TensorProto, vals: &[i64]) -> TensorProto {
    TensorProto { dims: vec![vals.len() as i64], ..with_int64s(like, vals) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: FloatType, vals: &[f64]) -> TensorProto {
        with_data(&TensorProto::default(), vec![vals.len() as i64], dtype, encode(dtype, vals))
    }

    #[test]
    fn every_float_type_round_trips_and_finds_zeros() {
        for dtype in [FloatType::F32, FloatType::F16, FloatType::Bf16, FloatType::F64] {
            let t = tensor(dtype, &[0.0, 1.5, -0.0, -2.0]);
            let v = Values::of(&t).unwrap();
            assert_eq!((0..4).map(|i| v.get(i)).collect::<Vec<_>>(), vec![0.0, 1.5, 0.0, -2.0]);
            let mut nz = vec![];
            v.for_each_nonzero(|i, x| nz.push((i, x)));
            assert_eq!(nz, vec![(1, 1.5), (3, -2.0)]);
            assert_eq!(v.gather([3, 1].into_iter()), encode(dtype, &[-2.0, 1.5]));
            assert_eq!(v.to_f32_bytes(), encode(FloatType::F32, &[0.0, 1.5, -0.0, -2.0]));
        }
    }

    #[test]
    fn the_fast_zero_skipping_agrees_with_reading_every_element() {
        let vals = [0.0, 1.0, -0.0, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0, 0.0, 2.5];
        for dtype in [FloatType::F32, FloatType::F16, FloatType::Bf16, FloatType::F64] {
            let t = tensor(dtype, &vals);
            let v = Values::of(&t).unwrap();
            for (start, len) in [(0, 11), (1, 10), (3, 5), (5, 6), (10, 1), (4, 0)] {
                let mut fast = vec![];
                v.for_each_nonzero_in(start, len, |i, x| fast.push((i, x)));
                let slow: Vec<(usize, f64)> =
                    (0..len).filter(|&i| vals[start + i] != 0.0).map(|i| (i, vals[start + i])).collect();
                assert_eq!(fast, slow, "{dtype:?} {start} {len}");
            }
        }
    }

    #[test]
    fn nonzero_bits_mark_what_the_scan_finds() {
        let vals: Vec<f64> = (0..150).map(|i| if i % 3 == 0 || i % 7 == 0 { 0.0 } else { i as f64 - 70.0 }).collect();
        for dtype in [FloatType::F32, FloatType::F16, FloatType::Bf16, FloatType::F64] {
            let t = tensor(dtype, &vals);
            let v = Values::of(&t).unwrap();
            for (start, len) in [(0, 150), (5, 130), (64, 64usize)] {
                let mut words = vec![0u64; len.div_ceil(64)];
                v.nonzero_bits(start, len, &mut words);
                let mut expected = vec![0u64; len.div_ceil(64)];
                v.for_each_nonzero_in(start, len, |i, _| expected[i / 64] |= 1 << (i % 64));
                assert_eq!(words, expected, "{dtype:?} {start} {len}");
            }
        }
    }

    #[test]
    fn non_finite_elements_are_found_wherever_they_are() {
        let finite: Vec<f64> = (0..37).map(|i| (i as f64 - 18.0) * 1e3).collect();
        for dtype in [FloatType::F32, FloatType::F16, FloatType::Bf16, FloatType::F64] {
            let largest = match dtype {
                FloatType::F32 => f32::MAX as f64,
                FloatType::F64 => f64::MAX,
                FloatType::F16 => half::f16::MAX.to_f64(),
                FloatType::Bf16 => half::bf16::MAX.to_f64(),
            };
            let mut vals = finite.clone();
            vals[3] = -largest;
            vals[30] = largest;
            let t = tensor(dtype, &vals);
            let v = Values::of(&t).unwrap();
            assert!(!v.any_non_finite(), "{dtype:?}");
            assert!(!v.nonzero_bits(0, vals.len(), &mut [0; 1]), "{dtype:?}");
            for at in [0, 1, 2, 3, 5, 35, 36] {
                for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
                    let mut vals = finite.clone();
                    vals[at] = bad;
                    let t = tensor(dtype, &vals);
                    let v = Values::of(&t).unwrap();
                    assert!(v.any_non_finite(), "{dtype:?} {bad} at {at}");
                    assert!(v.nonzero_bits(0, vals.len(), &mut [0; 1]), "{dtype:?} {bad} at {at}");
                }
            }
        }
    }

    #[test]
    fn typed_fields_are_read() {
        let t = TensorProto {
            dims: vec![2],
            data_type: Some(FloatType::F32.onnx()),
            float_data: vec![0.0, 3.0],
            ..Default::default()
        };
        assert_eq!(Values::of(&t).unwrap().get(1), 3.0);
        let h = TensorProto {
            dims: vec![1],
            data_type: Some(FloatType::F16.onnx()),
            int32_data: vec![half::f16::from_f64(0.5).to_bits() as i32],
            ..Default::default()
        };
        assert_eq!(Values::of(&h).unwrap().get(0), 0.5);
    }

    #[test]
    fn integer_tensors_are_refused_by_name() {
        let t = TensorProto {
            name: Some("w".into()),
            dims: vec![1],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![1],
            ..Default::default()
        };
        let e = Values::of(&t).err().unwrap().to_string();
        assert!(e.contains("w") && e.contains("INT64"), "{e}");
    }
}
