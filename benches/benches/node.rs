//! What the node adds to a bare backend call, and what batching buys under load, with the
//! tract backend on the shipped models.
//!
//! - `node-overhead`: one caller; a bare `LoadedModel::run` against the node's path for a
//!   task (input validation + the model's batching queue + a blocking-pool run), per model.
//! - `node-throughput`: 64 concurrent callers on the tiny CNN, batching on (batch size up to
//!   32, taking whatever is queued when the worker frees) against off (batch size 1).

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_backend::validate::validate_inputs;
use crat_core::tensor::{NamedTensor, Tensor};
use crat_node::batch::{BatchConfig, Batcher};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

const TINY: &[u8] = include_bytes!("../../crates/backend/models/tiny_cnn.onnx");
const PADDLE: &[u8] =
    include_bytes!("../../crates/backend/models/ch_ppocr_mobile_v2.0_cls_infer.onnx");

fn input(name: &str, shape: &[u64]) -> NamedTensor {
    let n: u64 = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i % 255) as f32 / 255.0).collect();
    NamedTensor::new(name, Tensor::from_slice(shape, &values).unwrap())
}

fn overhead(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = TractBackend::new();
    for (name, bytes, x) in [
        ("tiny CNN", TINY, input("input", &[1, 1, 28, 28])),
        ("PaddleOCR cls", PADDLE, input("x", &[1, 3, 48, 192])),
    ] {
        let model = backend.load(bytes).unwrap();
        let mut g = c.benchmark_group(format!("node-overhead/{name}"));
        let bare = vec![x.tensor.clone()];
        g.bench_function("bare backend run", |b| {
            b.iter(|| model.run(&bare).unwrap());
        });
        let batcher = rt.block_on(async {
            Batcher::spawn(
                model.clone(),
                BatchConfig {
                    batch_size_max: 32,
                    queue_delay_us_max: 0,
                    ..BatchConfig::default()
                },
            )
            .unwrap()
        });
        g.bench_function("node path (validate + batcher + run thread)", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let inputs =
                            validate_inputs(model.info(), vec![x.clone()], 1 << 30).unwrap();
                        batcher.infer(inputs).await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
        g.finish();
    }
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let model = TractBackend::new().load(TINY).unwrap();
    const CALLERS: usize = 64;
    const PER_CALLER: usize = 16;
    let mut g = c.benchmark_group("node-throughput/tiny CNN, 64 callers");
    g.throughput(Throughput::Elements((CALLERS * PER_CALLER) as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for (name, batch_size_max) in [("batching off", 1u32), ("batching on (max 32)", 32)] {
        let batcher = rt.block_on(async {
            Batcher::spawn(
                model.clone(),
                BatchConfig {
                    batch_size_max,
                    queue_delay_us_max: 0,
                    ..BatchConfig::default()
                },
            )
            .unwrap()
        });
        let batcher = Arc::new(batcher);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut tasks = Vec::with_capacity(CALLERS);
                        for c in 0..CALLERS {
                            let batcher = batcher.clone();
                            let x = input("input", &[1, 1, 28, 28]);
                            tasks.push(tokio::spawn(async move {
                                for _ in 0..PER_CALLER {
                                    let _ = c;
                                    batcher.infer(vec![x.tensor.clone()]).await.unwrap();
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, overhead, throughput);
criterion_main!(benches);
