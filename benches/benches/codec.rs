//! Encode + decode of a 1 MiB f32 tensor message (goal ≥ 2 GB/s), and a small control
//! message, through the same framing every transport uses.

#![allow(missing_docs, clippy::unwrap_used)]

use crat_benches::infer_f32;
use crat_core::wire::{ClientToNode, NodeAck};
use crat_transport::Frame;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

fn codec(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let msg = infer_f32(1 << 18); // 262,144 f32 = 1 MiB of tensor data
    let frame = Frame::encode(&msg, u32::MAX).unwrap();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(frame.as_bytes().len() as u64));
    g.bench_function("encode+decode 1 MiB f32 tensor message", |b| {
        b.iter(|| {
            let f = Frame::encode(black_box(&msg), u32::MAX).unwrap();
            black_box(f.decode::<ClientToNode>().unwrap())
        })
    });
    g.bench_function("encode 1 MiB f32 tensor message", |b| {
        b.iter(|| black_box(Frame::encode(black_box(&msg), u32::MAX).unwrap()))
    });
    g.bench_function("decode 1 MiB f32 tensor message", |b| {
        b.iter(|| black_box(frame.decode::<ClientToNode>().unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("codec-small");
    g.bench_function("encode+decode NodeAck", |b| {
        b.iter(|| {
            let f = Frame::encode(black_box(&NodeAck::Ok), 1 << 20).unwrap();
            black_box(f.decode::<NodeAck>().unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
