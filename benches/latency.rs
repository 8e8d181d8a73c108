//! tract inference latency of ONNX models, for BENCHMARKS.md (not a timed test).
//!
//! `cargo bench --bench latency -- MODEL.onnx [MODEL.onnx ...] --shape 1,3,224,224 [--iters 20]`
//! prints one JSON line per model: load+optimise seconds and the median and minimum run time.
//! Every input gets `--shape`: a float input ramps through [-1, 1]; an integer input (token ids)
//! holds small ids, or ones when its name says it is a mask. Models are planned exactly as
//! verification plans them (`onnx_minimize::verify::plan`).

use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// An input of type `dt` and `shape`, named `name`.
fn input(name: &str, dt: DatumType, shape: &[usize]) -> TractResult<Tensor> {
    let n: usize = shape.iter().product();
    if dt.is_integer() {
        let ids: Vec<i64> = (0..n).map(|i| if name.contains("mask") { 1 } else { (i % 7) as i64 }).collect();
        return Ok(Tensor::from_shape(shape, &ids)?.cast_to_dt(dt)?.into_owned());
    }
    Tensor::from_shape(shape, &(0..n).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect::<Vec<_>>())
}

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut models = vec![];
    let (mut shape, mut iters) = (vec![1usize, 3, 224, 224], 20usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shape" => {
                shape =
                    it.next().expect("--shape D1,D2,..").split(',').map(|d| d.parse().expect("a dimension")).collect()
            }
            "--iters" => iters = it.next().expect("--iters N").parse().expect("a count"),
            path => models.push(path.to_string()),
        }
    }
    for path in models {
        let start = Instant::now();
        let model = tract_onnx::onnx().model_for_path(&path)?;
        let mut inputs = tvec![];
        for (i, outlet) in model.input_outlets()?.iter().enumerate() {
            let dt = model.input_fact(i)?.datum_type.concretize().unwrap_or(f32::datum_type());
            inputs.push(input(&model.node(outlet.node).name, dt, &shape)?);
        }
        let facts: Vec<_> = inputs.iter().map(|t| (t.datum_type(), t.shape().to_vec())).collect();
        let plan = onnx_minimize::verify::plan(&model, path.as_ref(), &facts).map_err(|e| anyhow::anyhow!("{e}"))?;
        let load = start.elapsed().as_secs_f64();
        let feed = || inputs.iter().map(|t| t.clone().into_tvalue()).collect::<TVec<_>>();
        plan.run(feed())?; // warm-up
        let mut times: Vec<f64> = (0..iters)
            .map(|_| {
                let t = Instant::now();
                plan.run(feed()).map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<TractResult<_>>()?;
        times.sort_by(f64::total_cmp);
        println!(
            "{{\"model\": {:?}, \"load_optimise_s\": {load:.4}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"iters\": {iters}}}",
            path,
            times[times.len() / 2] * 1e3,
            times[0] * 1e3
        );
    }
    Ok(())
}
