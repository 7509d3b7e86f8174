//! Encode + decode of a 1 MiB f32 tensor message (goal ≥ 2 GB/s), and a small control
//! message, through the same framing every transport uses; and what a node adds to every
//! answer for spot checks: the outputs' digest and a signed [`Receipt`] (with and without a
//! nonce made ahead of time), and its check.

#![allow(missing_docs, clippy::unwrap_used)]

use crat_benches::infer_f32;
use crat_core::id::{DeploymentId, NodeId, TaskId};
use crat_core::sign::{ProvenReceipt, Receipt, SigningNonce, tensors_digest};
use crat_core::wire::{ClientToNode, NodeAck};
use crat_transport::Frame;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
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

    // A node's receipt for one answer: digest of 1 MiB of outputs, one ed25519 signature.
    let ClientToNode::Infer(request) = &msg else {
        unreachable!("infer_f32 builds an inference request")
    };
    let outputs = &request.inputs;
    let key = SigningKey::from_bytes(&[9; 32]);
    let node = NodeId::from_key(&key.verifying_key());
    let receipt = |digest| Receipt {
        task: TaskId::from_bytes([6; 16]),
        deployment: DeploymentId::from_bytes([1; 16]),
        model: crat_core::id::ModelId::from_bytes([2; 32]),
        node,
        inputs_digest: request.inputs_digest,
        outputs_digest: digest,
    };
    let signed = ProvenReceipt::sign(receipt(tensors_digest(outputs)), &key);
    let mut g = c.benchmark_group("receipt");
    g.bench_function("tensors_digest 1 MiB", |b| {
        b.iter(|| black_box(tensors_digest(black_box(outputs))))
    });
    g.bench_function("sign", |b| {
        b.iter(|| black_box(ProvenReceipt::sign(receipt(black_box([3; 32])), &key)))
    });
    // With a nonce made ahead of time (what a node's receipts are signed with while it
    // has one): the signing left on an answer's path, and the nonce's making, off it.
    let nonce = || {
        let mut random: [u8; 64] = std::array::from_fn(|_| rand::random());
        SigningNonce::from_random(&mut random)
    };
    g.bench_function("sign_with_nonce", |b| {
        b.iter_batched(
            nonce,
            |n| {
                let mut n = Some(n);
                black_box(ProvenReceipt::sign_all_with(
                    vec![receipt(black_box([3; 32]))],
                    &key,
                    || n.take(),
                ))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("nonce", |b| b.iter(|| black_box(nonce())));
    g.bench_function("verify", |b| {
        b.iter(|| black_box(signed.verify(Some(&node)).is_ok()))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
