//! Builders for small ONNX models, shared by the integration tests.

use onnx_minimize::onnx::proto::*;
use prost::Message;
use std::path::{Path, PathBuf};

pub use onnx_minimize::onnx::build::{
    attr_float as attr_f, attr_int as attr_i, attr_ints, f32_tensor, int64_tensor, node, value_info,
};

#[derive(Debug, Clone)]
pub enum Form {
    Gemm { trans_b: bool, alpha: f32, beta: f32 },
    MatMulAdd,
}

/// A fully-connected layer: `w[j * n_in + c]` is the weight from input `c` to output `j`.
#[derive(Debug, Clone)]
pub struct Layer {
    pub n_in: usize,
    pub n_out: usize,
    pub w: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub form: Form,
    pub act: Option<&'static str>,
}

/// An MLP `x [batch, n_in] -> y [batch, n_out]` in opset 17.
pub fn mlp(layers: &[Layer]) -> ModelProto {
    let mut g = GraphProto { name: Some("mlp".into()), ..Default::default() };
    g.input.push(value_info("x", tensor_proto::DataType::Float, &[None, Some(layers[0].n_in)]));
    let mut cur = "x".to_string();
    for (i, l) in layers.iter().enumerate() {
        let out = format!("h{i}");
        let wname = format!("w{i}");
        let transposed: Vec<f32> =
            (0..l.n_in).flat_map(|c| (0..l.n_out).map(move |j| (c, j))).map(|(c, j)| l.w[j * l.n_in + c]).collect();
        match &l.form {
            Form::Gemm { trans_b, alpha, beta } => {
                if *trans_b {
                    g.initializer.push(f32_tensor(&wname, &[l.n_out, l.n_in], &l.w));
                } else {
                    g.initializer.push(f32_tensor(&wname, &[l.n_in, l.n_out], &transposed));
                }
                let mut inputs = vec![cur.as_str(), wname.as_str()];
                let bname = format!("b{i}");
                if let Some(b) = &l.bias {
                    g.initializer.push(f32_tensor(&bname, &[l.n_out], b));
                    inputs.push(&bname);
                }
                let attrs = vec![attr_i("transB", *trans_b as i64), attr_f("alpha", *alpha), attr_f("beta", *beta)];
                g.node.push(node("Gemm", &format!("fc{i}"), &inputs, &[&out], attrs));
            }
            Form::MatMulAdd => {
                g.initializer.push(f32_tensor(&wname, &[l.n_in, l.n_out], &transposed));
                let mm = if l.bias.is_some() { format!("mm{i}") } else { out.clone() };
                g.node.push(node("MatMul", &format!("fc{i}"), &[&cur, &wname], &[&mm], vec![]));
                if let Some(b) = &l.bias {
                    let bname = format!("b{i}");
                    g.initializer.push(f32_tensor(&bname, &[l.n_out], b));
                    g.node.push(node("Add", &format!("bias{i}"), &[&mm, &bname], &[&out], vec![]));
                }
            }
        }
        cur = out;
        if let Some(act) = l.act {
            let a = format!("a{i}");
            g.node.push(node(act, &format!("act{i}"), &[&cur], &[&a], vec![]));
            cur = a;
        }
    }
    g.node.push(node("Identity", "out", &[&cur], &["y"], vec![]));
    g.output.push(value_info("y", tensor_proto::DataType::Float, &[None, Some(layers.last().unwrap().n_out)]));
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("onnx-minimize tests".into()),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(g),
        ..Default::default()
    }
}

pub fn read(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

pub fn write(dir: &Path, name: &str, m: &ModelProto) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// Every fixture that `fixtures/<dir>/expected.json` lists, minimized and verified, changes
/// exactly the linear layers it lists (as `[in, in', out, out']`, sorted), grows nothing, and a
/// second pass removes nothing more.
pub fn layers_change_as_expected(dir: &str) {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{dir}/expected.json"))).unwrap()).unwrap();
    for (file, e) in expected.as_object().unwrap() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out.onnx");
        let r = onnx_minimize::minimize_file(
            &fixture(&format!("{dir}/{file}")),
            Some(&out),
            &onnx_minimize::Options::default(),
            &|_| {},
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(r.verification.is_some(), "{file}");
        let changed = changed_layers(&r);
        let want: Vec<[usize; 4]> = serde_json::from_value(e["changed_layers"].clone()).unwrap();
        assert_eq!(changed, want, "{file}");
        assert!(r.after.params <= r.before.params, "{file}");
        let opts = onnx_minimize::Options { verify: None, ..Default::default() };
        let again = onnx_minimize::minimize_file(&out, None, &opts, &|_| {}).unwrap();
        assert_eq!(again.after.params, again.before.params, "{file}: a second pass removes nothing more");
    }
}

/// The linear layers a run changed, as `[in, in', out, out']`, sorted: what the generators'
/// `expected.json` files list.
pub fn changed_layers(r: &onnx_minimize::Report) -> Vec<[usize; 4]> {
    let mut changed: Vec<[usize; 4]> = r
        .removals
        .layers
        .iter()
        .filter(|l| l.inputs_after != l.inputs_before || l.outputs_after != l.outputs_before)
        .map(|l| [l.inputs_before, l.inputs_after, l.outputs_before, l.outputs_after])
        .collect();
    changed.sort();
    changed
}

/// Elements of the float32 initializers of a model file: its weights, which minimization never
/// grows (shape constants it may copy do not count).
pub fn float_params(path: &Path) -> u64 {
    let m = onnx_minimize::Model::load(path).unwrap();
    let floats = m.graph().initializer.iter().filter(|t| t.data_type == Some(1));
    floats.map(|t| t.dims.iter().product::<i64>() as u64).sum()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_onnx-minimize"))
}

/// A hand-built graph, for operator-pattern tests.
pub struct G {
    pub g: GraphProto,
    rng: u64,
}

impl G {
    pub fn new(input: &str, dims: &[Option<usize>]) -> G {
        let mut g = GraphProto { name: Some("g".into()), ..Default::default() };
        g.input.push(value_info(input, tensor_proto::DataType::Float, dims));
        G { g, rng: 0x9e3779b97f4a7c15 }
    }

    /// Deterministic values in [-1, 1).
    pub fn rand(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                (self.rng >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A `[rows, cols]` weight whose listed rows are zero.
    pub fn weight(&mut self, name: &str, rows: usize, cols: usize, zero_rows: &[usize]) -> &mut Self {
        let mut w = self.rand(rows * cols);
        for &r in zero_rows {
            w[r * cols..(r + 1) * cols].iter_mut().for_each(|x| *x = 0.0);
        }
        self.init(name, &[rows, cols], &w)
    }

    pub fn init(&mut self, name: &str, dims: &[usize], vals: &[f32]) -> &mut Self {
        self.g.initializer.push(f32_tensor(name, dims, vals));
        self
    }

    pub fn op(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> &mut Self {
        let name = format!("{op}_{}", self.g.node.len());
        self.g.node.push(node(op, &name, inputs, &[output], attrs));
        self
    }

    pub fn rank(&mut self, name: &str, dims: &[Option<usize>]) -> &mut Self {
        self.g.value_info.push(value_info(name, tensor_proto::DataType::Float, dims));
        self
    }

    pub fn model(&self, output: &str, dims: &[Option<usize>]) -> ModelProto {
        let mut g = self.g.clone();
        g.output.push(value_info(output, tensor_proto::DataType::Float, dims));
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
            graph: Some(g),
            ..Default::default()
        }
    }
}

impl G {
    /// A `[out, in, k, k]` conv weight whose listed output filters are zero, and whose listed
    /// input channels are read by no filter.
    pub fn conv_weight(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
        k: usize,
        zero_filters: &[usize],
        unread: &[usize],
    ) -> &mut Self {
        let mut w = self.rand(out * inp * k * k);
        for o in 0..out {
            for i in 0..inp {
                if zero_filters.contains(&o) || unread.contains(&i) {
                    let at = (o * inp + i) * k * k;
                    w[at..at + k * k].iter_mut().for_each(|x| *x = 0.0);
                }
            }
        }
        self.init(name, &[out, inp, k, k], &w)
    }

    /// `Conv(x, w, b)` with `pad` on every side.
    pub fn conv(&mut self, x: &str, w: &str, b: Option<&str>, y: &str, pad: i64, group: i64) -> &mut Self {
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let attrs = vec![attr_ints("pads", &[pad; 4]), attr_i("group", group)];
        self.op("Conv", &inputs, y, attrs)
    }
}
