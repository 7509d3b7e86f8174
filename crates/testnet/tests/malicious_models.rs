//! The malicious-model corpus (`crates/backend/tests/data/malicious`) through a running network on
//! loopback: a real dispatcher and three tract nodes. Each file is uploaded and, if stored,
//! deployed: the check refuses what it must (`ModelRejected`), a model that passes the check
//! but cannot load fails every replica (the deployment never becomes ready), the legal one
//! serves correctly — and a good deployment keeps serving throughout, every node stays up,
//! and the heap stays within a stated bound (a counting global allocator in this binary).
#![allow(unsafe_code, clippy::unwrap_used)] // the allocator shim; tests panic to report

mod common;
#[path = "../../backend/tests/data/malicious/corpus.rs"]
mod corpus;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use corpus::Expect;
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::DeploymentState;
use crat_sdk::Error;

/// Bytes allocated and not yet freed, their high-water mark, and the largest single request
/// (counted even when the system refuses it: asking for terabytes is the failure).
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Counting;

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator unchanged; only keeps counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Growth of the heap over the corpus run above its level before, and the largest single
/// allocation asked for: both far below what any corpus model claims (terabytes).
const HEAP_GROWTH_BYTES_MAX: usize = 256 << 20;
const ALLOCATION_BYTES_MAX: usize = 128 << 20;

fn relu_input() -> Tensor {
    Tensor::from_slice(&[1, 4], &[-1.0f32, 2.0, -3.0, 4.5]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_is_refused_or_fails_its_deployment_and_the_network_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(config(dir.path()), dir.path()).await;
    let (client, _) = client_with(&net, 10_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let good = client.deploy(model, per_request(1_000_000)).await.unwrap();
    good.wait_ready(Duration::from_secs(30)).await.unwrap();
    let local = backend().load(TINY).unwrap();
    let good_serves = |seed: u32| {
        let good = good.clone();
        let want = local.run(&[input(seed)]).unwrap()[0]
            .to_vec::<f32>()
            .unwrap();
        async move {
            let out = good
                .infer(vec![NamedTensor::new("input", input(seed))])
                .await
                .unwrap();
            let got = out[0].tensor.to_vec::<f32>().unwrap();
            assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5));
        }
    };
    for i in 0..20 {
        good_serves(i).await;
    }
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);

    for (i, entry) in corpus::corpus().into_iter().enumerate() {
        // The file in the repository, as an attacker would upload it.
        let bytes = std::fs::read(corpus::dir().join(entry.name)).unwrap();
        let what = entry.name;
        let uploaded = client.upload_model(&bytes, |_| {}).await;
        match entry.expect {
            Expect::Refused(_) => {
                assert!(
                    matches!(uploaded, Err(Error::ModelRejected(_))),
                    "{what}: {uploaded:?}"
                );
            }
            Expect::FailsAtLoad => {
                let d = client
                    .deploy(uploaded.unwrap(), per_request(10_000))
                    .await
                    .unwrap();
                // Every node is tried in turn and each reports the failure once.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while !net.nodes.iter().all(|n| n.node.failed().contains(&d.id())) {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{what}: not failed on every node"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let info = d.info().await.unwrap();
                assert_eq!(info.replicas_ready, 0, "{what}");
                assert_ne!(info.state, DeploymentState::Ready, "{what}");
                // Failed on every node (3, the default limit): the deployment is failed, with
                // the nodes' reasons, within a tick or so.
                let failed = d.wait_ready(Duration::from_secs(30)).await.unwrap_err();
                assert!(
                    matches!(&failed, Error::ModelRejected(m) if m.contains("could not load")),
                    "{what}: {failed}"
                );
                let info = d.info().await.unwrap();
                assert_eq!(info.state, DeploymentState::Failed, "{what}");
                assert!(info.failure.is_some_and(|f| !f.is_empty()), "{what}");
                let r = d.infer(vec![NamedTensor::new("x", relu_input())]).await;
                assert!(r.is_err(), "{what}: {r:?}");
                d.undeploy().await.unwrap();
            }
            Expect::ServesRelu => {
                let d = client
                    .deploy(uploaded.unwrap(), per_request(10_000))
                    .await
                    .unwrap();
                d.wait_ready(Duration::from_secs(60)).await.unwrap();
                let out = d
                    .infer(vec![NamedTensor::new("x", relu_input())])
                    .await
                    .unwrap();
                assert_eq!(
                    out[0].tensor.to_vec::<f32>().unwrap(),
                    [0.0, 2.0, 0.0, 4.5],
                    "{what}"
                );
                d.undeploy().await.unwrap();
            }
        }
        // The good deployment never noticed.
        good_serves(100 + i as u32).await;
    }

    let growth = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    let largest = LARGEST.load(Ordering::Relaxed);
    println!(
        "corpus run: heap grew by at most {} KiB; largest allocation {} KiB",
        growth >> 10,
        largest >> 10
    );
    assert!(
        growth < HEAP_GROWTH_BYTES_MAX,
        "heap grew by {growth} bytes"
    );
    assert!(
        largest < ALLOCATION_BYTES_MAX,
        "an allocation of {largest} bytes was asked for"
    );
    assert_eq!(net.dispatcher().online_nodes(), 3, "every node is still up");
    assert!(net.nodes.iter().all(|n| !n.is_stopped()));
    net.shutdown();
}
