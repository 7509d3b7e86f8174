#![allow(clippy::unwrap_used)]
//! Verification of computations end to end (issue 7): a real dispatcher, honest tract nodes
//! and one cheating node (tract with perturbed outputs) on loopback QUIC.
//!
//! Canaries: the dispatcher sends every warm replica tasks whose answer it computed itself;
//! the cheater is caught (`validations_failed` in the ledger), slashed and made ineligible in
//! the closed round's outcome (computed by `crat-rewards`), and excluded from placement.
//!
//! Spot checks: the SDK runs sampled tasks on a validator of another operator (nodes on
//! 127.0.N.1, one /24 each), a third replica decides disagreements, the client gets the
//! majority's answer (never the cheater's), and the signed receipts reach the dispatcher,
//! which credits the honest validators and records the cheater's failures.
//!
//! The determinism gate: a model with a random operator is deployed as unverifiable, and no
//! canary, spot check or report fails an honest node over it.

mod common;
#[path = "../../backend/tests/data/malicious/corpus.rs"]
mod corpus;

use std::time::Duration;

use common::*;
use crat_core::id::{DeploymentId, NodeId, TaskId};
use crat_core::money::Credits;
use crat_core::sign::{ProvenReceipt, Receipt};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{
    ClientCall, DispatcherResponse, ErrorCode, Unverifiable, ValidationReport, Verifiability,
};
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_testnet::{LocalNetwork, NodeSpec};
use ed25519_dalek::SigningKey;

/// Three honest nodes and a cheater perturbing `per_mille` of its answers; every node holds
/// a replica. See [`scenarios::canaries_catch`].
async fn canaries_catch(per_mille: u32) {
    let dir = tempfile::tempdir().unwrap();
    let start = now_s();
    let mut net = network(scenarios::canary_config(dir.path(), start), dir.path()).await;
    scenarios::canaries_catch(&mut net, start, per_mille).await;
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_catch_a_node_perturbing_every_answer() {
    canaries_catch(1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_catch_a_node_perturbing_one_answer_in_ten() {
    canaries_catch(100).await;
}

/// Four nodes on four address blocks, the last a cheater with CRAT; every task is
/// spot-checked and canaries are off, so only the clients' reports catch it. See
/// [`scenarios::spot_checks_catch`].
async fn spot_checks_catch(per_mille: u32) {
    let dir = tempfile::tempdir().unwrap();
    let start = now_s();
    let cfg = scenarios::spot_check_config(dir.path(), start);
    let mut net = LocalNetwork::start(cfg, dir.path(), vec![]).await.unwrap();
    scenarios::spot_checks_catch(&mut net, start, per_mille).await;
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_checks_catch_a_node_perturbing_every_answer() {
    spot_checks_catch(1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_checks_catch_a_node_perturbing_one_answer_in_ten() {
    spot_checks_catch(100).await;
}

fn receipt(
    key: &SigningKey,
    node: NodeId,
    task: TaskId,
    deployment: DeploymentId,
    digest: u8,
) -> ProvenReceipt {
    ProvenReceipt::sign(
        Receipt {
            task,
            deployment,
            model: crat_core::id::ModelId::of_bytes(TINY),
            node,
            inputs_digest: [1; 32],
            outputs_digest: [digest; 32],
        },
        key,
    )
}

fn code(r: &DispatcherResponse) -> Option<ErrorCode> {
    match r {
        DispatcherResponse::Ok => None,
        DispatcherResponse::Error(e) => Some(e.code),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// The dispatcher credits only reports that hold together: receipts signed by the
/// deployment's replicas, of distinct operators, for one task, once, with a real majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_reports_are_checked_before_crediting() {
    let dir = tempfile::tempdir().unwrap();
    let start = now_s();
    let mut cfg = config(dir.path());
    cfg.dispatch.replicas = 4;
    cfg.canary.interval_ms = 0;
    // No task ran: one report is all the sampling rate allows.
    cfg.validation_reports_slack = 1;
    let mut net = LocalNetwork::start(cfg, dir.path(), vec![]).await.unwrap();
    // a, b, c on three blocks; d shares a's block.
    let ips: [[u8; 4]; 4] = [
        [127, 0, 1, 1],
        [127, 0, 2, 1],
        [127, 0, 3, 1],
        [127, 0, 1, 2],
    ];
    let mut keys = Vec::new();
    for ip in ips {
        let key = SigningKey::from_bytes(&rand::random());
        let spec = NodeSpec {
            gpu: Some("NVIDIA GeForce RTX 3090".into()),
            backend: backend(),
            batch_size: 1,
        };
        net.add_node_on(spec, key.clone(), ip.into(), |_| {})
            .unwrap();
        keys.push(key);
    }
    net.wait_online(4, Duration::from_secs(30)).await.unwrap();
    let ids: Vec<NodeId> = keys
        .iter()
        .map(|k| NodeId::from_key(&k.verifying_key()))
        .collect();
    let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
    let (client, sdk_key) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let dep = client.deploy(model, per_request(100_000)).await.unwrap();
    dep.wait_ready(Duration::from_secs(30)).await.unwrap();
    let dep = dep.id();
    let task = TaskId::from_bytes([5; 16]);
    let r = |i: usize, digest: u8| receipt(&keys[i], ids[i], task, dep, digest);
    let report = |receipts: Vec<ProvenReceipt>, majority: Vec<NodeId>| {
        ClientCall::ReportValidation(Box::new(ValidationReport { receipts, majority }))
    };
    let send = |call| raw_call(&net, &sdk_key, call);

    // A client cannot sign for a node.
    let forged = receipt(&SigningKey::from_bytes(&rand::random()), b, task, dep, 1);
    assert_eq!(
        code(&send(report(vec![r(0, 1), forged], vec![a, b])).await),
        Some(ErrorCode::Unauthenticated)
    );
    // A node that is not a replica (here: any key signing for itself) earns nothing.
    let outsider = SigningKey::from_bytes(&rand::random());
    let o = receipt(
        &outsider,
        NodeId::from_key(&outsider.verifying_key()),
        task,
        dep,
        1,
    );
    let o_id = o.body.node;
    assert_eq!(
        code(&send(report(vec![r(0, 1), o], vec![a, o_id])).await),
        Some(ErrorCode::NotFound)
    );
    // Two nodes of one operator do not validate each other.
    assert_eq!(
        code(&send(report(vec![r(0, 1), r(3, 1)], vec![a, d])).await),
        Some(ErrorCode::BadRequest)
    );
    // A majority of one is none.
    assert_eq!(
        code(&send(report(vec![r(0, 1), r(1, 2)], vec![a])).await),
        Some(ErrorCode::BadRequest)
    );
    // Identical answers cannot have disagreed.
    assert_eq!(
        code(&send(report(vec![r(0, 1), r(1, 1), r(2, 1)], vec![a, c])).await),
        Some(ErrorCode::BadRequest)
    );
    // Receipts of two tasks.
    let other = receipt(&keys[1], b, TaskId::from_bytes([6; 16]), dep, 1);
    assert_eq!(
        code(&send(report(vec![r(0, 1), other], vec![a, b])).await),
        Some(ErrorCode::BadRequest)
    );
    // Receipts of the same task id run on other inputs: a client that sent b other inputs
    // cannot get it failed for answering them.
    let mut framed = r(1, 2).body;
    framed.inputs_digest = [2; 32];
    let framed = ProvenReceipt::sign(framed, &keys[1]);
    assert_eq!(
        code(&send(report(vec![r(0, 1), framed, r(2, 1)], vec![a, c])).await),
        Some(ErrorCode::BadRequest)
    );
    // Another account's deployment.
    let ledger = net.dispatcher().ledger().clone();
    let bob = AccountName::new("bob").unwrap();
    admin::grant(&*ledger, &bob, Credits::new(10), now_s()).unwrap();
    let bob_key = admin::create_key(&*ledger, &bob, now_s(), None).unwrap();
    assert_eq!(
        code(&raw_call(&net, &bob_key, report(vec![r(0, 1), r(1, 1)], vec![a, b])).await),
        Some(ErrorCode::NotFound)
    );
    // Nothing was credited so far.
    for n in &ids {
        assert_eq!(ledger.validations(n, start, u64::MAX).unwrap(), (0, 0));
    }

    // Leases sample at the configured rate while no replica has failed.
    let sampling = |call| async {
        match send(call).await {
            DispatcherResponse::Lease(l) => l.validation_bps.get(),
            other => panic!("no lease: {other:?}"),
        }
    };
    assert_eq!(sampling(ClientCall::Lease { deployment: dep }).await, 100);

    // A real dispute: a worked, b disagreed, c decided for a.
    let good = report(vec![r(0, 1), r(1, 2), r(2, 1)], vec![a, c]);
    assert_eq!(code(&send(good.clone()).await), None);
    // b failed once (tolerated: it still serves), so the deployment is sampled at the
    // suspect rate until b fails again or the window passes.
    assert_eq!(net.dispatcher().stats().validations_failed, 1);
    assert_eq!(sampling(ClientCall::Lease { deployment: dep }).await, 1_000);
    assert_eq!(ledger.validations(&a, start, u64::MAX).unwrap(), (0, 0));
    assert_eq!(ledger.validations(&b, start, u64::MAX).unwrap(), (0, 1));
    assert_eq!(ledger.validations(&c, start, u64::MAX).unwrap(), (1, 0));
    // Once per task.
    assert_eq!(code(&send(good).await), Some(ErrorCode::BadRequest));
    assert_eq!(ledger.validations(&c, start, u64::MAX).unwrap(), (1, 0));
    // More reports than the deployment's tasks and sampling rate explain: not credited.
    let task2 = TaskId::from_bytes([7; 16]);
    let r2 = |i: usize| receipt(&keys[i], ids[i], task2, dep, 1);
    assert_eq!(
        code(&send(report(vec![r2(0), r2(1)], vec![a, b])).await),
        Some(ErrorCode::Busy)
    );
    assert_eq!(ledger.validations(&b, start, u64::MAX).unwrap(), (0, 1));
    let stats = net.dispatcher().stats();
    assert_eq!((stats.validations_ok, stats.validations_failed), (1, 1));
    net.shutdown();
}

/// The determinism gate (issue 13, item 7): a model with an unseeded `RandomUniform` is
/// deployed as unverifiable and fails no honest node, with canaries every 100 ms and every
/// task sampled for a spot check; the tiny CNN on the same network stays verifiable, its
/// canaries and spot checks running. The verdict survives a dispatcher restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_uniform_model_fails_no_honest_node() {
    let dir = tempfile::tempdir().unwrap();
    let start = now_s();
    let mut cfg = config(dir.path());
    cfg.dispatch.replicas = 3;
    cfg.canary.interval_ms = 100;
    cfg.validation_bps = crat_core::bps::Bps(10_000);
    let mut net = LocalNetwork::start(cfg, dir.path(), vec![]).await.unwrap();
    // Three address blocks: a spot check's validator is of another operator.
    let mut keys = Vec::new();
    for block in 1..=3u8 {
        let spec = NodeSpec {
            gpu: Some("NVIDIA GeForce RTX 3090".into()),
            backend: backend(),
            batch_size: 1,
        };
        let key = SigningKey::from_bytes(&rand::random());
        net.add_node_on(spec, key.clone(), [127, 0, block, 1].into(), |_| {})
            .unwrap();
        keys.push(key);
    }
    net.wait_online(3, Duration::from_secs(30)).await.unwrap();
    let nodes: Vec<NodeId> = net.nodes.iter().map(|n| n.id()).collect();
    let ledger = net.dispatcher().ledger().clone();
    let (client, sdk_key) = client_with(&net, 1_000_000).await;
    let bps = |response| match response {
        DispatcherResponse::Lease(l) => l.validation_bps.get(),
        other => panic!("no lease: {other:?}"),
    };

    let random = client
        .upload_model(&corpus::random_uniform(None), |_| {})
        .await
        .unwrap();
    let d = client.deploy(random, per_request(100_000)).await.unwrap();
    let unverifiable = Verifiability::Unverifiable(Unverifiable::RandomOperator);
    assert_eq!(d.info().await.unwrap().verifiability, unverifiable);
    let info = d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(info.verifiability, unverifiable);
    // Leases sample no task of it, whatever the configured rate.
    let lease = ClientCall::Lease { deployment: d.id() };
    assert_eq!(bps(raw_call(&net, &sdk_key, lease).await), 0);

    // It really is random: one input, different answers (from one replica or another).
    let x = || {
        let x = Tensor::from_slice(&[1, 4], &[0.5f32; 4]).unwrap();
        vec![NamedTensor::new("x", x)]
    };
    let first = d.infer(x()).await.unwrap();
    let mut differed = 0;
    for _ in 0..40 {
        if d.infer(x()).await.unwrap() != first {
            differed += 1;
        }
    }
    assert!(differed > 0);
    assert_eq!(d.stats().validations, 0, "{:?}", d.stats());
    // Several canary sweeps pass; none is sent to it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = net.dispatcher().stats();
    let canaries = stats.canaries_passed + stats.canaries_failed + stats.canaries_inconclusive;
    assert_eq!(canaries, 0, "{stats:?}");
    // A report of a (real, honest) disagreement about it is refused: nobody is failed.
    let task = TaskId::from_bytes([9; 16]);
    let r = |i: usize, digest: u8| receipt(&keys[i], nodes[i], task, d.id(), digest);
    let report = ValidationReport {
        receipts: vec![r(0, 1), r(1, 2), r(2, 1)],
        majority: vec![nodes[0], nodes[2]],
    };
    let call = ClientCall::ReportValidation(Box::new(report));
    assert_eq!(
        code(&raw_call(&net, &sdk_key, call).await),
        Some(ErrorCode::BadRequest)
    );

    // A deterministic model on the same nodes is verifiable: sampled, canaried.
    let tiny = client.upload_model(TINY, |_| {}).await.unwrap();
    let t = client.deploy(tiny, per_request(100_000)).await.unwrap();
    let info = t.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(info.verifiability, Verifiability::Verifiable);
    let lease = ClientCall::Lease { deployment: t.id() };
    assert_eq!(bps(raw_call(&net, &sdk_key, lease).await), 10_000);
    for i in 0..10 {
        t.infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
    }
    assert!(t.stats().validations > 0, "{:?}", t.stats());
    scenarios::wait_for_a_passed_canary(
        &net,
        tokio::time::Instant::now() + Duration::from_secs(30),
    )
    .await;

    // No honest node failed anything.
    let stats = net.dispatcher().stats();
    assert_eq!((stats.canaries_failed, stats.validations_failed), (0, 0));
    for n in &nodes {
        assert_eq!(ledger.validations(n, start, u64::MAX).unwrap().1, 0);
        assert!(net.dispatcher().excluded_until(n).is_none());
    }

    // The verdict is the ledger's: a restarted dispatcher says the same.
    net.restart_dispatcher().await.unwrap();
    let call = ClientCall::Deployment { deployment: d.id() };
    match raw_call(&net, &sdk_key, call).await {
        DispatcherResponse::Deployment(info) => assert_eq!(info.verifiability, unverifiable),
        other => panic!("no deployment: {other:?}"),
    }
    net.shutdown();
}
