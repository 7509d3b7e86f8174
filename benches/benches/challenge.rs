//! What a compute challenge (`crat_core::policy::challenge`) costs each side, on this CPU:
//! the node generating the matrices and committing to a product (Merkle root over rows), and
//! the dispatcher checking one opened row (recomputing it: `k × m` multiply-adds). The
//! product itself is the node's device's work; the reference CPU product is measured at a
//! small size only, to show what a CPU-only node spends.
//!
//! The `proof` group measures the proof of hardware at its default sizes
//! (`crat_core::policy::hardware::ProofConfig::default`: `n × 4096 × 4096`, 16 rows opened):
//! the node's whole answer per product row on this CPU through the challenge model on tract
//! (generation, the backend's MatMul, the row commitment), the node opening 16 rows, and the
//! dispatcher checking one challenge (its 16 opened rows). `docs/hardware-proof.md` turns these
//! per-row and per-challenge costs into per-class node times and the network's cost at
//! 100,000 nodes.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use crat_backend::InferenceBackend;
use crat_backend::challenge::{matmul_model, run_product};
use crat_backend::tract::TractBackend;
use crat_core::policy::challenge::{ChallengeSpec, Opening, RowTree, pick_rows, verify_opening};
use crat_core::policy::hardware::ProofConfig;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

fn challenge(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let mut g = c.benchmark_group("challenge");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for size in [1024u32, 4096] {
        let spec = ChallengeSpec::new([7; 32], size, size, size).unwrap();
        g.throughput(Throughput::Elements(u64::from(size) * u64::from(size)));
        g.bench_with_input(
            BenchmarkId::new("node: generate A and B", size),
            &spec,
            |b, s| b.iter(|| (black_box(s.matrix_a()).len(), black_box(s.matrix_b()).len())),
        );
        // Any n × m product commits the same way; its values do not change the cost.
        let product: Vec<f32> = (0..u64::from(size) * u64::from(size))
            .map(|i| (i % 17) as f32)
            .collect();
        g.bench_with_input(
            BenchmarkId::new("node: commit (Merkle root over rows)", size),
            &product,
            |b, p| b.iter(|| RowTree::build(black_box(p), size).unwrap().root()),
        );
        let row = spec.product_row(3);
        let mut honest = product.clone();
        honest[3 * size as usize..4 * size as usize].copy_from_slice(&row);
        let tree = RowTree::build(&honest, size).unwrap();
        let opening = tree.open(3, &honest).unwrap();
        g.throughput(Throughput::Elements(u64::from(size) * u64::from(size)));
        g.bench_with_input(
            BenchmarkId::new("dispatcher: verify one opened row", size),
            &opening,
            |b, o| b.iter(|| verify_opening(&spec, &tree.root(), black_box(o)).unwrap()),
        );
    }
    let small = ChallengeSpec::new([7; 32], 256, 256, 256).unwrap();
    g.throughput(Throughput::Elements(256 * 256 * 256));
    g.bench_function("CPU reference product 256x256x256", |b| {
        b.iter(|| black_box(small.product()).len())
    });
    g.finish();
}

fn proof(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let config = ProofConfig::default();
    let (k, m, rows) = (config.k, config.m, config.rows_opened);
    let mut g = c.benchmark_group("proof");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    // The node's answer with 64 and 256 rows of a default-size challenge: the cost is a fixed
    // part (generating B, k × m) plus a part linear in n; two sizes give both.
    let model = TractBackend::new().load(&matmul_model()).unwrap();
    for n in [64u32, 256] {
        let spec = ChallengeSpec::new([5; 32], n, k, m).unwrap();
        g.throughput(Throughput::Elements(u64::from(n)));
        g.bench_function(
            BenchmarkId::new("node: answer on tract (rows of 4096x4096)", n),
            |b| {
                b.iter(|| {
                    let product = run_product(&*model, black_box(&spec)).unwrap();
                    RowTree::build(&product, m).unwrap().root()
                })
            },
        );
    }
    let n = 64u32;
    let spec = ChallengeSpec::new([5; 32], n, k, m).unwrap();
    let product = run_product(&*model, &spec).unwrap();
    let tree = RowTree::build(&product, m).unwrap();
    let root = tree.root();
    let picked = pick_rows(&[1; 32], &root, n, rows);
    g.throughput(Throughput::Elements(u64::from(rows)));
    g.bench_function(
        BenchmarkId::new("node: open rows (recomputed on the CPU)", rows),
        |b| {
            b.iter(|| {
                let opened: Vec<Opening> = picked
                    .iter()
                    .map(|&r| Opening {
                        row: r,
                        path: tree.path(r).unwrap(),
                        values: spec.product_row(r),
                    })
                    .collect();
                black_box(opened)
            })
        },
    );
    let openings: Vec<Opening> = picked
        .iter()
        .map(|&r| tree.open(r, &product).unwrap())
        .collect();
    g.bench_function(
        BenchmarkId::new("dispatcher: verify one challenge (opened rows)", rows),
        |b| {
            b.iter(|| {
                for o in &openings {
                    verify_opening(&spec, &root, black_box(o)).unwrap();
                }
            })
        },
    );
    g.finish();
}

criterion_group!(benches, challenge, proof);
criterion_main!(benches);
