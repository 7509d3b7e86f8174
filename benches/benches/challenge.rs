//! What a compute challenge (`crat_core::policy::challenge`) costs each side, on this CPU:
//! the node generating the matrices and committing to a product (Merkle root over rows), and
//! the dispatcher checking one opened row (recomputing it: `k × m` multiply-adds). The
//! product itself is the node's device's work; the reference CPU product is measured at a
//! small size only, to show what a CPU-only node spends.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use crat_core::policy::challenge::{ChallengeSpec, RowTree, verify_opening};
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

criterion_group!(benches, challenge);
criterion_main!(benches);
