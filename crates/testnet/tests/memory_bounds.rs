//! Memory bombs against a running network with canaries on: a real dispatcher (tract reference
//! backend, canary sweeps every 500 ms) and three tract nodes on loopback. Models built to make
//! a backend allocate gigabytes (`ConstantOfShape` of a constant shape, which tract evaluates at
//! load) are refused at upload or at deploy with the reason, or exempted from canaries and
//! marked, and nothing ever loads them: the process's peak resident memory (`VmHWM`) stays
//! under 2 GiB. One test in this binary, so that no other test's memory counts.
#![allow(clippy::unwrap_used)] // tests panic to report

mod common;
#[path = "../../backend/tests/data/malicious/corpus.rs"]
mod corpus;

use std::time::Duration;

use common::*;
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{Unverifiable, Verifiability};
use crat_dispatcher::CanaryOutcome;
use crat_sdk::Error;

/// The bound on the process's peak resident memory.
const PEAK_BYTES_MAX: u64 = 2 << 30;

/// The process's peak resident set size (`VmHWM` of `/proc/self/status`), in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib << 10
}

fn x() -> Tensor {
    Tensor::from_slice(&[1, 4], &[-1.0f32, 2.0, -3.0, 4.5]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constant_of_shape_bomb_at_deploy_with_canaries_on_stays_under_2_gib() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.canary.interval_ms = 500;
    let mut net = network(cfg, dir.path()).await;
    let (client, _) = client_with(&net, 10_000_000).await;

    // The bomb: ConstantOfShape([65536, 65536]), 16 GiB of floats that tract used to
    // allocate at load. The model check refuses it at upload, saying why.
    let bomb = corpus::constant_of_shape(&[1 << 16, 1 << 16]);
    match client.upload_model(&bomb, |_| {}).await {
        Err(Error::ModelRejected(m)) => {
            assert!(
                m.contains("ConstantOfShape") && m.contains("16.0 GiB"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }

    // A bomb within the one-tensor limit: ConstantOfShape([16384, 16384]) is 1 GiB of floats
    // (about 3 GiB with an operator's input and output). Under the default bound of what a
    // node holds (8 GiB) its upload is stored; nothing loads it at upload.
    let big = corpus::constant_of_shape(&[1 << 14, 1 << 14]);
    let big = client.upload_model(&big, |_| {}).await.unwrap();
    // A servable model that makes 16 MiB of zeros (about 48 MiB estimated), deployed while the
    // reference backends may hold 1 GiB: verifiable, canaried.
    let zeros = corpus::zeros_then_identity(&[2048, 2048]);
    let zeros = client.upload_model(&zeros, |_| {}).await.unwrap();
    let canaried = client.deploy(zeros, per_request(100_000)).await.unwrap();
    canaried.wait_ready(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        canaried.info().await.unwrap().verifiability,
        Verifiability::Verifiable
    );
    // And a good model, canaried throughout.
    let tiny = client.upload_model(TINY, |_| {}).await.unwrap();
    let good = client.deploy(tiny, per_request(100_000)).await.unwrap();
    good.wait_ready(Duration::from_secs(60)).await.unwrap();

    // The operator lowers the bounds: a node holds 256 MiB of one model, the reference
    // backends 32 MiB.
    net.restart_dispatcher_with(|c| {
        c.model_memory_bytes_max = 256 << 20;
        c.canary.reference_memory_bytes_max = 32 << 20;
    })
    .await
    .unwrap();
    net.wait_online(3, Duration::from_secs(30)).await.unwrap();
    // The client reconnects on an idempotent call (a deploy is never retried on its own).
    client.balance().await.unwrap();

    // The stored bomb is refused at deploy, with its estimate, before anything loads it (not
    // the determinism gate's tract, not a node).
    match client.deploy(big, per_request(100_000)).await {
        Err(Error::ModelRejected(m)) => assert!(
            m.contains("3.0 GiB") && m.contains("more than a node holds") && m.contains("made"),
            "{m}"
        ),
        Err(e) => panic!("{e}"),
        Ok(d) => panic!("deployed: {:?}", d.info().await),
    }
    // A new one is refused at upload: 256 MiB of floats, over what a node holds with its
    // input and output.
    let mid = corpus::constant_of_shape(&[1 << 13, 1 << 13]);
    match client.upload_model(&mid, |_| {}).await {
        Err(Error::ModelRejected(m)) => assert!(m.contains("more than a node holds"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A model over the reference memory deployed now is exempt from canaries without being
    // loaded by the dispatcher, and marked: unverifiable, too large. Nodes serve it.
    let zeros2 = corpus::zeros_then_identity(&[2048, 2049]);
    let zeros2 = client.upload_model(&zeros2, |_| {}).await.unwrap();
    let exempt = client.deploy(zeros2, per_request(100_000)).await.unwrap();
    assert_eq!(
        exempt.info().await.unwrap().verifiability,
        Verifiability::Unverifiable(Unverifiable::TooLarge)
    );
    exempt.wait_ready(Duration::from_secs(60)).await.unwrap();
    let out = exempt
        .infer(vec![NamedTensor::new("x", x())])
        .await
        .unwrap();
    assert_eq!(out[0].tensor, x());

    // The deployment gated before the bound was lowered is exempted at its first canary (the
    // reference is estimated, not loaded); the sweep goes on with the others.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while net.dispatcher().stats().canary_models_exempt == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            net.dispatcher().stats()
        );
        net.dispatcher().canary_sweep().await;
    }
    // From now on every sweep canaries the good deployment only (once its replicas are back
    // after the restart), until one of its canaries passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut passed = 0;
    while passed == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            net.dispatcher().stats()
        );
        let outcomes = net.dispatcher().canary_sweep().await;
        assert!(
            outcomes.iter().all(|(d, _, _)| *d == good.id()),
            "only the good deployment is canaried: {outcomes:?}"
        );
        passed = outcomes
            .iter()
            .filter(|(_, _, o)| *o == CanaryOutcome::Passed)
            .count();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(net.dispatcher().stats().canaries_failed, 0);
    // Still served.
    let out = canaried
        .infer(vec![NamedTensor::new("x", x())])
        .await
        .unwrap();
    assert_eq!(out[0].tensor, x());

    let peak = peak_rss_bytes();
    println!("peak resident memory (VmHWM): {} MiB", peak >> 20);
    assert!(peak < PEAK_BYTES_MAX, "VmHWM {peak} bytes");
    assert_eq!(net.dispatcher().online_nodes(), 3);
    net.shutdown();
}
