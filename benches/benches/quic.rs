//! QUIC on loopback: small-message round trip (goal p50 ≤ 100 µs) and a 64 MiB transfer
//! (goal ≥ 1 GB/s), through the full stack: framing, one stream per exchange, decode.
//!
//! Besides criterion's per-iteration statistics, the round-trip bench prints the p50 and p99
//! of 20,000 individually timed exchanges.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crat_benches::infer_bytes;
use crat_core::wire::{ClientToNode, NodeToClient};
use crat_transport::quic::{QuicConfig, QuicConnection, QuicTransport};
use crat_transport::{ConnectionExt, Conversation, FrameLimits, Transport, serve};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

async fn handler(req: ClientToNode) -> NodeToClient {
    match req {
        ClientToNode::Ping => NodeToClient::Pong,
        // Big uploads get a small answer: the bench measures one direction's transfer.
        ClientToNode::Infer(r) => NodeToClient::Outputs {
            task: r.task,
            outputs: vec![],
            compute_us: 0,
        },
    }
}

fn setup(rt: &tokio::runtime::Runtime, config: QuicConfig) -> (QuicConnection, QuicTransport) {
    rt.block_on(async {
        let server_key = SigningKey::from_bytes(&[1; 32]);
        let server =
            QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &server_key, config.clone())
                .unwrap();
        let addr = server.local_addr();
        let id = server.local_id();
        tokio::spawn(async move {
            while let Ok(conn) = server.accept().await {
                tokio::spawn(serve(
                    conn,
                    Conversation::ClientNode,
                    FrameLimits::default(),
                    256,
                    handler,
                ));
            }
        });
        let client = QuicTransport::bind(
            "127.0.0.1:0".parse().unwrap(),
            &SigningKey::from_bytes(&[2; 32]),
            config,
        )
        .unwrap();
        let conn = client.connect(&addr, &id).await.unwrap();
        (conn, client)
    })
}

fn percentiles(rt: &tokio::runtime::Runtime, conn: &QuicConnection) {
    let mut samples: Vec<Duration> = rt.block_on(async {
        let mut v = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            let _: NodeToClient = conn
                .call(
                    &ClientToNode::Ping,
                    Conversation::ClientNode,
                    FrameLimits::default(),
                )
                .await
                .unwrap();
            v.push(t.elapsed());
        }
        v
    });
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "quic round trip over 20000 exchanges: p50 {:?}  p90 {:?}  p99 {:?}",
        p(0.50),
        p(0.90),
        p(0.99)
    );
}

fn quic(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (conn, _client) = setup(&rt, QuicConfig::default());
    percentiles(&rt, &conn);

    let mut g = c.benchmark_group("quic");
    g.bench_function("round trip, small message", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let _: NodeToClient = conn
                        .call(
                            &ClientToNode::Ping,
                            Conversation::ClientNode,
                            FrameLimits::default(),
                        )
                        .await
                        .unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    let big = infer_bytes(64 << 20);
    for (name, config) in [
        (
            "64 MiB transfer (default config, MTU discovery up to 6550)",
            QuicConfig::default(),
        ),
        (
            "64 MiB transfer (loopback config, MTU 6500)",
            QuicConfig {
                mtu_bytes_max: 6_500,
                mtu_bytes_initial: 6_500,
                ..QuicConfig::default()
            },
        ),
    ] {
        let (conn, _client) = setup(&rt, config);
        let mut g = c.benchmark_group("quic-bulk");
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(10));
        g.throughput(Throughput::Bytes(64 << 20));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let _: NodeToClient = conn
                            .call(&big, Conversation::ClientNode, FrameLimits::default())
                            .await
                            .unwrap();
                    }
                    start.elapsed()
                })
            })
        });
        g.finish();
        let stats = conn.quinn().stats();
        eprintln!(
            "{name}: path MTU {} B, cwnd {} B, lost {} packets of {} sent, rtt {:?}",
            stats.path.current_mtu,
            stats.path.cwnd,
            stats.path.lost_packets,
            stats.udp_tx.datagrams,
            stats.path.rtt
        );
    }
}

criterion_group!(benches, quic);
criterion_main!(benches);
