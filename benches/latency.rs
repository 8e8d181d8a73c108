//! tract inference latency of ONNX models, for BENCHMARKS.md (not a timed test).
//!
//! `cargo bench --bench latency -- MODEL.onnx [MODEL.onnx ...] --shape 1,3,224,224 [--iters 20]`
//! prints one JSON line per model: load+optimise seconds and the median and minimum run time.
//! Models are planned exactly as verification plans them (`onnx_minimize::verify::plan`).

use std::time::Instant;

use tract_onnx::prelude::*;

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
        let plan = onnx_minimize::verify::plan(&model, path.as_ref(), &[(f32::datum_type(), shape.clone())])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let load = start.elapsed().as_secs_f64();
        let n: usize = shape.iter().product();
        let input = Tensor::from_shape(&shape, &(0..n).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect::<Vec<_>>())?;
        plan.run(tvec!(input.clone().into_tvalue()))?; // warm-up
        let mut times: Vec<f64> = (0..iters)
            .map(|_| {
                let t = Instant::now();
                plan.run(tvec!(input.clone().into_tvalue())).map(|_| t.elapsed().as_secs_f64())
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
