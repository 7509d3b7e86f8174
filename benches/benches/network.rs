//! The whole network on loopback, in this process (issue 5): a real dispatcher (SQLite ledger,
//! model directory), real nodes (tract backend, batch size 1) and the real SDK over QUIC, as
//! `crat_testnet::LocalNetwork` wires them. Dispatcher and node data live on tmpfs
//! (`/dev/shm`) when there is one.
//!
//! - `network-latency`: one task in flight on the tiny CNN, SDK → node → SDK, against a bare
//!   in-process tract run of the same model (goal: ≤ 100 µs added at p50). Also prints p50/p90/p99
//!   of 5,000 individually timed SDK calls and 5,000 bare runs (and of 5,000 SDK calls again
//!   after criterion's runs).
//! - `network-throughput`: 2,048 tiny-CNN tasks through one client with 64 in flight
//!   (`Deployment::infer_many`) over 2 nodes, against the same 2,048 runs in-process, both
//!   sequentially and on 2 threads (the parallelism of 2 nodes × 1 worker each).
//! - `network-upload`: a 100 MB ONNX model through `Client::upload_model` (goal ≥ 500 MB/s);
//!   each iteration uploads different bytes (a new content-addressed id), and the stored blob
//!   is deleted between iterations, outside the timing. For the split: blake3 of the 100 MB,
//!   the ONNX check of the 100 MB (both run at finish), and the same upload through
//!   `Dispatcher::handle_client` in-process, without QUIC.
//! - `network-lease`: leases issued (goal ≥ 50,000/s): `Dispatcher::handle_client` in-process
//!   from 1 and 2 tasks, and over loopback QUIC with 1 and 64 in flight.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_benches::{data_dir, now_s, runtime};
use crat_core::id::{ModelId, PeerAddr, SdkKey};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{CHUNK_BYTES_MAX, ClientCall, ClientRequest, DispatcherResponse};
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_sdk::{Client, Deployment};
use crat_testnet::{LocalNetwork, NodeSpec, loopback_quic};
use crat_transport::quic::QuicTransport;
use crat_transport::{ConnectionExt, Conversation, FrameLimits, Transport};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt;
use futures_util::stream;
use tempfile::TempDir;
use tokio::runtime::Runtime;

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

/// The client identity in-process calls come from (the tickets they get name it).
const BENCH_CLIENT: crat_core::id::NodeId = crat_core::id::NodeId::from_bytes([77; 32]);

const TINY: &[u8] = include_bytes!("../../crates/backend/models/tiny_cnn.onnx");
const GPU: &str = "NVIDIA GeForce RTX 3090";
/// Nodes in every test network.
const NODES: usize = 2;

fn tiny_input() -> Tensor {
    let values: Vec<f32> = (0..28 * 28).map(|i| (i % 255) as f32 / 255.0).collect();
    Tensor::from_slice(&[1, 1, 28, 28], &values).unwrap()
}

/// A running network, a funded key, a client, and (optionally) a ready per-request
/// deployment of the tiny CNN.
struct Bed {
    net: LocalNetwork,
    key: SdkKey,
    client: Client<QuicTransport>,
    deployment: Option<Deployment<QuicTransport>>,
    dir: TempDir,
}

fn bed(rt: &Runtime, deploy: bool) -> Bed {
    rt.block_on(async {
        let dir = data_dir();
        let mut config = DispatcherConfig::new(dir.path().join("dispatcher"));
        config.tick_ms = 100;
        // One key is the whole load here (leases over QUIC at full speed): no per-key limit.
        config.client_key_rate = None;
        // Every lease's ticket is remembered until it expires plus the usage grace (over an
        // hour); the lease benches issue about a million in a few seconds, past the default
        // 262,144, after which leases are answered `Busy`, as they should be.
        config.tickets_tracked_max = 1 << 21;
        let specs = (0..NODES)
            .map(|_| NodeSpec {
                gpu: Some(GPU.into()),
                backend: Arc::new(TractBackend::new()),
                batch_size: 1,
            })
            .collect();
        let net = LocalNetwork::start(config, dir.path(), specs)
            .await
            .unwrap();
        let ledger = net.dispatcher().ledger().clone();
        let account = AccountName::new("bench").unwrap();
        admin::grant(&*ledger, &account, Credits::new(1 << 40), now_s()).unwrap();
        let key = admin::create_key(&*ledger, &account, now_s(), None).unwrap();
        // The client uses the same loopback QUIC settings as the dispatcher and nodes.
        let client = crat_sdk::connect_quic_with(
            net.dispatcher_addr,
            net.dispatcher().id(),
            key.clone(),
            crat_sdk::ClientConfig::default(),
            loopback_quic(),
        )
        .await
        .unwrap();
        let deployment = if deploy {
            let model = client.upload_model(TINY, |_| {}).await.unwrap();
            let plan = DeployPlan::PerRequest(PerRequestPlan {
                max_input_bytes: 1 << 16,
                credit_allowance: Credits::new(1 << 36),
            });
            let d = client.deploy(model, plan).await.unwrap();
            d.wait_ready(Duration::from_secs(60)).await.unwrap();
            Some(d)
        } else {
            None
        };
        Bed {
            net,
            key,
            client,
            deployment,
            dir,
        }
    })
}

/// Stops the network inside the runtime (its transports close there), then removes its files.
fn teardown(rt: &Runtime, bed: Bed) {
    let Bed {
        net,
        client,
        deployment,
        dir,
        ..
    } = bed;
    rt.block_on(async move {
        drop(deployment);
        client.transport().close();
        drop(client);
        net.shutdown();
        drop(net);
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    drop(dir);
}

fn percentiles(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "{label} over {} calls: p50 {:?}  p90 {:?}  p99 {:?}",
        samples.len(),
        p(0.50),
        p(0.90),
        p(0.99)
    );
    p(0.50)
}

fn latency(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let rt = runtime();
    let bed = bed(&rt, true);
    let deployment = bed.deployment.clone().unwrap();
    let model = TractBackend::new().load(TINY).unwrap();
    let x = tiny_input();
    let bare = vec![x.clone()];
    let infer = || {
        let inputs = vec![NamedTensor::new("input", x.clone())];
        let deployment = &deployment;
        async move { deployment.infer(inputs).await.unwrap() }
    };

    // Warm both paths (lease, node connections, tract plan) before timing anything.
    rt.block_on(async {
        for _ in 0..200 {
            infer().await;
        }
    });
    const CALLS: usize = 5_000;
    let bare_p50 = percentiles(
        "in-process tract run, tiny CNN",
        (0..CALLS)
            .map(|_| {
                let t = Instant::now();
                model.run(&bare).unwrap();
                t.elapsed()
            })
            .collect(),
    );
    let sdk_p50 = percentiles(
        "SDK infer over loopback QUIC, tiny CNN, 1 in flight",
        rt.block_on(async {
            let mut v = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let t = Instant::now();
                infer().await;
                v.push(t.elapsed());
            }
            v
        }),
    );
    eprintln!(
        "added by the network at p50: {:?} (goal ≤ 100 µs)",
        sdk_p50.saturating_sub(bare_p50)
    );

    let mut g = c.benchmark_group("network-latency/tiny CNN");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("in-process tract run", |b| {
        b.iter(|| model.run(&bare).unwrap());
    });
    g.bench_function("SDK infer, loopback QUIC, 1 in flight, 2 nodes", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    infer().await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    // Again after criterion's ~10,000 calls: tells a slower steady state (usage piling up in
    // the ledger, say) from noise.
    percentiles(
        "SDK infer over loopback QUIC, tiny CNN, 1 in flight, after the criterion runs",
        rt.block_on(async {
            let mut v = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let t = Instant::now();
                infer().await;
                v.push(t.elapsed());
            }
            v
        }),
    );
    drop(deployment);
    teardown(&rt, bed);
}

fn throughput(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let rt = runtime();
    let bed = bed(&rt, true);
    let deployment = bed.deployment.clone().unwrap();
    let model = TractBackend::new().load(TINY).unwrap();
    let x = tiny_input();
    const TASKS: usize = 2_048;
    const IN_FLIGHT: usize = 64;

    let mut g = c.benchmark_group("network-throughput/tiny CNN, 2048 tasks");
    g.throughput(Throughput::Elements(TASKS as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("in-process, sequential (1 thread)", |b| {
        let inputs = vec![x.clone()];
        b.iter(|| {
            for _ in 0..TASKS {
                model.run(&inputs).unwrap();
            }
        });
    });
    g.bench_function("in-process, 2 threads (as 2 nodes x 1 worker)", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..NODES {
                    let (model, inputs) = (&model, vec![x.clone()]);
                    s.spawn(move || {
                        for _ in 0..TASKS / NODES {
                            model.run(&inputs).unwrap();
                        }
                    });
                }
            });
        });
    });
    g.bench_function("SDK infer_many, 64 in flight, 1 client, 2 nodes", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let inputs =
                        stream::iter(0..TASKS).map(|_| vec![NamedTensor::new("input", x.clone())]);
                    let ok = deployment
                        .infer_many(inputs, IN_FLIGHT)
                        .filter(|r| std::future::ready(r.is_ok()))
                        .count()
                        .await;
                    assert_eq!(ok, TASKS);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    let stats = deployment.stats();
    eprintln!(
        "SDK deployment stats after the throughput bench: {} tasks, {} failed, {} failovers, {} lease renewals",
        stats.tasks, stats.failed, stats.failovers, stats.lease_renewals
    );
    drop(deployment);
    teardown(&rt, bed);
}

/// Removes every stored model (blobs are files named by id under `<data>/models`).
fn remove_stored_models(dir: &Path) {
    let models = dir.join("dispatcher").join("models");
    for entry in std::fs::read_dir(models).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::remove_file(path).unwrap();
        }
    }
}

fn upload(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let rt = runtime();
    let bed = bed(&rt, false);
    const BYTES: usize = 100_000_000;
    let mut model = crat_benches::onnx_model_with_unused_initializer(BYTES);
    crat_backend::onnx_check::check_model(&model).unwrap();
    let len = model.len();
    eprintln!("upload model: {len} bytes, valid ONNX (Identity + one unused f32 initializer)");
    let mut serial = 0u64;
    // A model no earlier iteration uploaded: the initializer's last 8 bytes (the model's last
    // bytes) carry a counter.
    let mut next_model = move || {
        serial += 1;
        model[len - 8..].copy_from_slice(&serial.to_le_bytes());
        model.clone()
    };

    let mut g = c.benchmark_group("network-upload/100 MB model");
    g.throughput(Throughput::Bytes(len as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.warm_up_time(Duration::from_secs(1));
    let fixed = next_model();
    g.bench_function(
        "blake3 of the bytes (once in the SDK, once at finish)",
        |b| {
            b.iter(|| blake3::hash(&fixed));
        },
    );
    g.bench_function("ONNX check of the bytes (at finish)", |b| {
        b.iter(|| crat_backend::onnx_check::check_model(&fixed).unwrap());
    });
    drop(fixed);
    let dispatcher = bed.net.dispatcher().clone();
    let key = bed.key.clone();
    g.bench_function(
        "dispatcher in-process: handle_client begin + chunks (8 in flight) + finish",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let bytes = next_model();
                    let id = ModelId::of_bytes(&bytes);
                    total += rt.block_on(async {
                        let call = |call| {
                            dispatcher.handle_client(
                                BENCH_CLIENT,
                                ClientRequest {
                                    key: key.clone(),
                                    call,
                                },
                            )
                        };
                        let start = Instant::now();
                        let begin = call(ClientCall::UploadBegin {
                            model: id,
                            total_bytes: len as u64,
                        })
                        .await;
                        assert!(
                            matches!(begin, DispatcherResponse::Upload { .. }),
                            "{begin:?}"
                        );
                        let chunk = CHUNK_BYTES_MAX as usize;
                        let mut acks = stream::iter((0..len).step_by(chunk))
                            .map(|offset| {
                                let data = bytes[offset..(offset + chunk).min(len)].to_vec();
                                call(ClientCall::UploadChunk {
                                    model: id,
                                    offset: offset as u64,
                                    data,
                                })
                            })
                            .buffer_unordered(8);
                        while let Some(r) = acks.next().await {
                            assert!(matches!(r, DispatcherResponse::Upload { .. }), "{r:?}");
                        }
                        let done = call(ClientCall::UploadFinish { model: id }).await;
                        assert!(
                            matches!(done, DispatcherResponse::ModelStored { .. }),
                            "{done:?}"
                        );
                        start.elapsed()
                    });
                    remove_stored_models(bed.dir.path());
                }
                total
            })
        },
    );
    g.bench_function("SDK upload_model over loopback QUIC", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let bytes = next_model();
                total += rt.block_on(async {
                    let start = Instant::now();
                    let mut fresh = true;
                    bed.client
                        .upload_model(&bytes, |p| fresh &= !p.already_stored)
                        .await
                        .unwrap();
                    assert!(fresh, "the model was already stored");
                    start.elapsed()
                });
                remove_stored_models(bed.dir.path());
            }
            total
        })
    });
    g.finish();
    teardown(&rt, bed);
}

fn leases(c: &mut Criterion) {
    let rt = runtime();
    let bed = bed(&rt, true);
    let deployment = bed.deployment.as_ref().unwrap().id();
    let dispatcher = bed.net.dispatcher().clone();
    let request = ClientRequest {
        key: bed.key.clone(),
        call: ClientCall::Lease { deployment },
    };
    async fn lease_n(
        dispatcher: crat_dispatcher::Dispatcher<QuicTransport>,
        request: ClientRequest,
        n: u64,
    ) {
        for _ in 0..n {
            let r = dispatcher
                .handle_client(BENCH_CLIENT, request.clone())
                .await;
            assert!(matches!(r, DispatcherResponse::Lease(_)), "{r:?}");
        }
    }
    // A raw client connection to the dispatcher, as the SDK's (which it does not expose).
    let (conn, _transport) = rt.block_on(async {
        let t = QuicTransport::bind(
            "127.0.0.1:0".parse().unwrap(),
            &SigningKey::from_bytes(&rand::random()),
            loopback_quic(),
        )
        .unwrap();
        let conn = t
            .connect(
                &PeerAddr::from(bed.net.dispatcher_addr),
                &bed.net.dispatcher().id(),
            )
            .await
            .unwrap();
        (conn, t)
    });
    let call_quic = |request: &ClientRequest| {
        let conn = &conn;
        let request = request.clone();
        async move {
            let r: DispatcherResponse = conn
                .call(
                    &request,
                    Conversation::ClientDispatcher,
                    FrameLimits::default(),
                )
                .await
                .unwrap();
            assert!(matches!(r, DispatcherResponse::Lease(_)), "{r:?}");
        }
    };

    let mut g = c.benchmark_group("network-lease");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("in-process handle_client, 1 task", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                lease_n(dispatcher.clone(), request.clone(), iters).await;
                start.elapsed()
            })
        })
    });
    g.bench_function("in-process handle_client, 2 tasks", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..2)
                    .map(|i| {
                        let n = iters / 2 + (i < iters % 2) as u64;
                        tokio::spawn(lease_n(dispatcher.clone(), request.clone(), n))
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("loopback QUIC, 1 connection, 1 in flight", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    call_quic(&request).await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("loopback QUIC, 1 connection, 64 in flight", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                stream::iter(0..iters)
                    .map(|_| call_quic(&request))
                    .buffer_unordered(64)
                    .count()
                    .await;
                start.elapsed()
            })
        })
    });
    g.finish();
    eprintln!(
        "dispatcher stats after the lease bench: {:?}",
        bed.net.dispatcher().stats()
    );
    drop(conn);
    teardown(&rt, bed);
}

criterion_group!(benches, latency, throughput, upload, leases);
criterion_main!(benches);
