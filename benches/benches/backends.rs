//! Per-inference latency of the two CPU backends, tract and ONNX Runtime (1 intra-op thread),
//! on the two test models of `crates/backend/models`: the tiny CNN ([N,1,28,28] → [N,10]) and the
//! PaddleOCR text-direction classifier ([N,3,48,192] → [N,2]), at batch 1 and 32. A second
//! group runs the PaddleOCR model at batch 1, 4, 8, 16 and 32 on both backends: its per-item
//! time (criterion's throughput, elements = batch items) is what a node's batch limit must be
//! measured from, because batching does not always pay on the CPU. A third group times tract's
//! first run at a new batch size (planning included). A fourth, when `CRAT_COMPARE_DETECTOR`
//! names the PP-OCRv4 detector's `.onnx` (`benches/compare/run.sh` extracts it from its PyPI
//! package), runs it on ONNX Runtime at batch 1 and 2 ([N,3,320,320]): the model's own cost
//! through `crat-backend`, which the comparison's README sets against onnxruntime's Python
//! binding (`benches/compare/ort_alone.py`) and against a node's whole task.
//!
//! **Needs ONNX Runtime**: set `ORT_DYLIB_PATH` to a `libonnxruntime.so.1.*` (1.24 or newer)
//! first, or the benchmark stops with an error:
//!
//! ```text
//! export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)
//! cargo bench -p crat-benches --bench backends
//! ```
//!
//! Medians are in `target/criterion/<group>/<function>/new/estimates.json`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use crat_backend::ort::{OrtBackend, OrtConfig};
use crat_backend::tract::TractBackend;
use crat_backend::{InferenceBackend, LoadedModel};
use crat_core::tensor::Tensor;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

const TINY_CNN: &[u8] = include_bytes!("../../crates/backend/models/tiny_cnn.onnx");
const PADDLE_CLS: &[u8] =
    include_bytes!("../../crates/backend/models/ch_ppocr_mobile_v2.0_cls_infer.onnx");

/// Deterministic pseudo-random input values in [-1, 1).
fn input(shape: &[u64]) -> Tensor {
    let n: u64 = shape.iter().product();
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_slice(shape, &values).unwrap()
}

fn backends() -> Vec<(&'static str, Arc<dyn InferenceBackend>)> {
    let ort = OrtBackend::new(&OrtConfig::default()).unwrap_or_else(|e| {
        panic!(
            "this benchmark compares against ONNX Runtime: {e}\n\
             run: export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)"
        )
    });
    vec![
        ("tract", Arc::new(TractBackend::new())),
        ("ort", Arc::new(ort)),
    ]
}

fn run_once(model: &dyn LoadedModel, x: &Tensor) {
    black_box(model.run(std::slice::from_ref(x)).unwrap());
}

fn latency(c: &mut Criterion) {
    let backends = backends();
    let models: [(&str, &[u8], [u64; 3]); 2] = [
        ("tiny_cnn", TINY_CNN, [1, 28, 28]),
        ("paddle_cls", PADDLE_CLS, [3, 48, 192]),
    ];
    for (model_name, bytes, item) in models {
        let mut g = c.benchmark_group(format!("backends/{model_name}"));
        g.sample_size(20);
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(4));
        for (backend_name, backend) in &backends {
            let model = backend.load(bytes).unwrap();
            for batch in [1u64, 32] {
                let x = input(&[batch, item[0], item[1], item[2]]);
                // Plan / warm up outside the measurement.
                run_once(model.as_ref(), &x);
                g.throughput(Throughput::Elements(batch));
                g.bench_with_input(
                    BenchmarkId::new(*backend_name, format!("b{batch}")),
                    &x,
                    |b, x| b.iter(|| run_once(model.as_ref(), x)),
                );
            }
        }
        g.finish();
    }
}

fn paddle_batch_scaling(c: &mut Criterion) {
    let backends = backends();
    let mut g = c.benchmark_group("backends/paddle_cls_batch");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for (backend_name, backend) in &backends {
        let model = backend.load(PADDLE_CLS).unwrap();
        for batch in [1u64, 4, 8, 16, 32] {
            let x = input(&[batch, 3, 48, 192]);
            run_once(model.as_ref(), &x);
            g.throughput(Throughput::Elements(batch));
            g.bench_with_input(
                BenchmarkId::new(*backend_name, format!("b{batch}")),
                &x,
                |b, x| b.iter(|| run_once(model.as_ref(), x)),
            );
        }
    }
    g.finish();
}

/// What the first request of a new shape costs on tract: planning (optimising the model for
/// that shape) plus the run. PaddleOCR cannot share one plan across batch sizes, so every new
/// batch size pays this once (until it falls out of the `PLANS_MAX` plan cache).
fn tract_first_run(c: &mut Criterion) {
    let mut g = c.benchmark_group("backends/tract_first_run");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    for (model_name, bytes, item) in [
        ("tiny_cnn", TINY_CNN, [1u64, 28, 28]),
        ("paddle_cls", PADDLE_CLS, [3, 48, 192]),
    ] {
        let x = input(&[8, item[0], item[1], item[2]]);
        g.bench_function(BenchmarkId::new(model_name, "plan+run b8"), |b| {
            b.iter_batched(
                || TractBackend::new().load(bytes).unwrap(),
                |model| run_once(model.as_ref(), &x),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// The PP-OCRv4 detector on ONNX Runtime, when `CRAT_COMPARE_DETECTOR` names it (the group is
/// left out, saying so, when it does not: the model is not in the repository).
fn detector(c: &mut Criterion) {
    let Some(path) = std::env::var_os("CRAT_COMPARE_DETECTOR") else {
        eprintln!(
            "backends/detector: left out; set CRAT_COMPARE_DETECTOR to ch_PP-OCRv4_det_infer.onnx \
             (benches/compare/run.sh extracts it)"
        );
        return;
    };
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading CRAT_COMPARE_DETECTOR {}: {e}", path.display()));
    let (_, ort) = backends()
        .into_iter()
        .find(|(name, _)| *name == "ort")
        .unwrap();
    let model = ort.load(&bytes).unwrap();
    let mut g = c.benchmark_group("backends/detector");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    for batch in [1u64, 2] {
        let x = input(&[batch, 3, 320, 320]);
        run_once(model.as_ref(), &x);
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::new("ort", format!("b{batch}")), &x, |b, x| {
            b.iter(|| run_once(model.as_ref(), x))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    latency,
    paddle_batch_scaling,
    tract_first_run,
    detector
);
criterion_main!(benches);
