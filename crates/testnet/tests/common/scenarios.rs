//! End-to-end scenarios on any transport a [`LocalNetwork`] runs on: e2e.rs and
//! verification.rs run them on QUIC, iroh_e2e.rs on iroh over direct and relayed-only paths.
//! Each takes a started network and returns the SDK client it used, whose connections to nodes
//! are still open (a caller checks their paths with `Client::node_paths`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crat_core::id::{ModelId, NodeId, TaskId};
use crat_core::money::{Credits, MicroCrat, MicroUsd};
use crat_core::pricing::DeployPlan;
use crat_core::tensor::NamedTensor;
use crat_core::verify::{Tolerance, agree};
use crat_core::wire::{ClientCall, DispatcherResponse};
use crat_dispatcher::DispatcherConfig;
use crat_dispatcher::ledger::NodeRecord;
use crat_sdk::Client;
use crat_testnet::{LocalNetwork, LocalTransport, NodeSpec, PerturbedBackend, declared_gpu};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt;

use super::*;

/// The CRAT the validation scenarios' cheater holds (micro-CRAT) before it is slashed.
pub const CHEATER_CRAT: u64 = 1_000_000;

/// What the validation scenarios share: [`config`] with rounds from `start` (seconds) that
/// the test closes itself, four replicas, a node excluded when caught once.
fn cheater_config(dir: &Path, start: u64) -> DispatcherConfig {
    let mut cfg = config(dir);
    cfg.round_epoch_s = start;
    // The test closes round 0 itself.
    cfg.round_close_delay_s = 1_000_000;
    cfg.dispatch.replicas = 4;
    cfg.dispatch.caught_max = 1;
    cfg
}

/// A cheater's key and id, its ledger record written before it registers: it holds
/// [`CHEATER_CRAT`] from earlier rounds, so slashing shows in the outcome.
fn cheater<T: LocalTransport>(net: &LocalNetwork<T>, start: u64) -> (SigningKey, NodeId) {
    let key = SigningKey::from_bytes(&rand::random());
    let cheater = NodeId::from_key(&key.verifying_key());
    net.dispatcher()
        .ledger()
        .upsert_node(&NodeRecord {
            id: cheater,
            rating: 5,
            registered_at_s: start,
            mining_income_usd_micro_per_day: MicroUsd::ZERO,
            crat_micro: MicroCrat::new(CHEATER_CRAT),
            streak: 0,
            uptime_total_s: 0,
        })
        .unwrap();
    (key, cheater)
}

/// The CRAT the cheater loses for `failed` validations in a round: half of its balance per
/// failure (ECONOMICS rule 12).
fn slashed_after(failed: u64) -> u64 {
    let mut left = CHEATER_CRAT;
    for _ in 0..failed {
        left = left * 5_000 / 10_000;
    }
    CHEATER_CRAT - left
}

/// Uploads the tiny CNN, deploys it on `plan` and runs `n` tasks with 32 in flight through a
/// new client of `net`; `pace_per_s` spaces their starts (a per-instance plan buys a rate, and
/// its replicas refuse tasks beyond it). Every answer is the model's; the up-front price is
/// charged once and every task exactly once at its per-request price (nothing beyond the
/// up-front price on a per-instance plan). `dir` holds the dispatcher's ledger
/// (`dispatcher/ledger.sqlite`, read for the failure report).
pub async fn tasks_charged_exactly<T: Sdk>(
    net: &LocalNetwork<T>,
    dir: &Path,
    plan: DeployPlan,
    n: u32,
    pace_per_s: Option<u64>,
) -> Client<T> {
    let (client, _) = T::client(net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    assert_eq!(model, ModelId::of_bytes(TINY));
    let quote = client.quote(model, plan).await.unwrap();
    let balance_before = client.balance().await.unwrap();
    let d = client.deploy(model, plan).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        client.balance().await.unwrap().get(),
        balance_before.get() - quote.upfront.get()
    );
    // The deployment says what its model takes and returns, as the upload check read it.
    let signature = d.info().await.unwrap().signature.unwrap();
    assert_eq!(
        Some(&signature),
        crat_backend::onnx_check::check_model(TINY)
            .unwrap()
            .signature()
            .as_ref()
    );
    assert_eq!(signature.inputs[0].name, "input");

    let local = backend().load(TINY).unwrap();
    let interval = pace_per_s.map(|p| Duration::from_micros(1_000_000 / p.max(1)));
    let inputs = futures_util::stream::unfold(0..n, move |mut rest| async move {
        let i = rest.next()?;
        if let Some(interval) = interval {
            tokio::time::sleep(interval).await;
        }
        Some((vec![NamedTensor::new("input", input(i % 50))], rest))
    });
    let results: Vec<_> = d.infer_many(inputs, 32).collect().await;
    assert_eq!(results.len(), n as usize);
    for (i, r) in results.into_iter().enumerate() {
        let out = r.unwrap();
        let expected = local.run(&[input(i as u32 % 50)]).unwrap();
        // Nodes batch tasks; a batched convolution may round differently in the last bit.
        let (got, want) = (
            out[0].tensor.to_vec::<f32>().unwrap(),
            expected[0].to_vec::<f32>().unwrap(),
        );
        assert_eq!(got.len(), want.len());
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5),
            "task {i}: {got:?} vs {want:?}"
        );
    }

    // Usage reaches the ledger; every task charged exactly once at its per-request price.
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (count, _) = ledger.usage_totals(&d.id()).unwrap();
        if count == u64::from(n) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "usage {count} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, charged) = ledger.usage_totals(&d.id()).unwrap();
    let info = d.info().await.unwrap();
    match plan {
        DeployPlan::PerRequest(p) => {
            let cost = DispatcherConfig::new("x")
                .pricing
                .request_cost(TINY.len() as u64, 28 * 28 * 4)
                .unwrap();
            if charged.get() != u64::from(n) * cost.get() {
                // What was charged other than the task price, for the failure report.
                let conn =
                    rusqlite::Connection::open(dir.join("dispatcher/ledger.sqlite")).unwrap();
                let mut stmt = conn
                    .prepare(
                        "SELECT hex(task), hex(node), input_bytes, output_bytes, charged, at_s
                         FROM usage WHERE deployment = ?1 AND charged != ?2",
                    )
                    .unwrap();
                let odd: Vec<String> = stmt
                    .query_map(
                        rusqlite::params![d.id().as_bytes().as_slice(), cost.get() as i64],
                        |r| {
                            Ok(format!(
                                "task {} node {} in {} out {} charged {} at {}",
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, i64>(3)?,
                                r.get::<_, i64>(4)?,
                                r.get::<_, i64>(5)?
                            ))
                        },
                    )
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                panic!(
                    "charged {charged} for {n} tasks of {cost}: rows charged otherwise {odd:#?}; \
                     {:?}",
                    net.dispatcher().stats()
                );
            }
            assert_eq!(
                info.allowance_left.get(),
                p.credit_allowance.get() - charged.get()
            );
        }
        DeployPlan::PerInstance(_) => {
            // Requests inside the reservation cost nothing more: only the up-front price.
            assert_eq!(charged, Credits::ZERO);
        }
    }
    assert_eq!(
        client.balance().await.unwrap().get(),
        balance_before.get() - quote.upfront.get()
    );
    client
}

/// `tasks` tasks, 16 in flight, through a new client of `net` (three nodes, two replicas); the
/// first replica's node is killed once `kill_after` were answered. Every task is answered once
/// with its own task id (the SDK fails over to the other replica), charged at most once at the
/// right price, every task of the surviving nodes is charged, and the deployment is re-placed
/// on the third node. Returns the client and the killed node.
pub async fn node_killed_mid_stream<T: Sdk>(
    net: &LocalNetwork<T>,
    tasks: usize,
    kill_after: usize,
) -> (Client<T>, NodeId) {
    let (client, key) = T::client(net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    let victim = d.lease().await.unwrap().replicas[0].node;

    let tasks: Vec<TaskId> = (0..tasks)
        .map(|_| TaskId::from_bytes(rand::random()))
        .collect();
    let mut stream = futures_util::stream::iter(tasks.clone())
        .map(|task| {
            let d = d.clone();
            async move {
                (
                    task,
                    d.infer_task(task, vec![NamedTensor::new("input", input(1))])
                        .await,
                )
            }
        })
        .buffer_unordered(16);
    let mut done = HashSet::new();
    while let Some((task, r)) = stream.next().await {
        r.unwrap();
        assert!(done.insert(task), "task {task} answered twice");
        if done.len() == kill_after {
            net.nodes.iter().find(|n| n.id() == victim).unwrap().kill();
        }
    }
    assert_eq!(done.len(), tasks.len());
    assert!(d.stats().failovers > 0, "the killed node's tasks moved on");

    // Charged at most once per task, at the right price.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = net.dispatcher().ledger().clone();
    let (count, charged) = ledger.usage_totals(&d.id()).unwrap();
    let cost = DispatcherConfig::new("x")
        .pricing
        .request_cost(TINY.len() as u64, 28 * 28 * 4)
        .unwrap();
    assert!(count <= tasks.len() as u64);
    assert_eq!(charged.get(), count * cost.get());
    let rows = tasks
        .iter()
        .filter(|t| !ledger.usage(&d.id(), t).unwrap().is_empty())
        .count();
    assert_eq!(rows as u64, count);
    // Only tasks the killed node ran and had not reported yet can be missing.
    assert!(
        count >= kill_after as u64,
        "usage of surviving nodes reached the ledger: {count}"
    );
    // The deployment is re-placed on the third node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = d.info().await.unwrap();
        // A fresh lease from the dispatcher (the SDK's cached one may predate the kill).
        let DispatcherResponse::Lease(lease) =
            raw_call(net, &key, ClientCall::Lease { deployment: d.id() }).await
        else {
            panic!("no lease")
        };
        let leased: Vec<NodeId> = lease.replicas.iter().map(|r| r.node).collect();
        if info.replicas_ready == 2 && leased.len() == 2 && !leased.contains(&victim) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not re-placed: {info:?} {leased:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (client, victim)
}

/// Waits until a canary has passed; panics at `deadline`.
pub async fn wait_for_a_passed_canary<T: LocalTransport>(
    net: &LocalNetwork<T>,
    deadline: tokio::time::Instant,
) {
    while net.dispatcher().stats().canaries_passed == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no honest canary passed: {:?}",
            net.dispatcher().stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The dispatcher settings of [`canaries_catch`], its rounds starting at `start` (seconds):
/// four replicas, a canary every 100 ms, a node excluded when caught once; the test closes
/// round 0 itself.
pub fn canary_config(dir: &Path, start: u64) -> DispatcherConfig {
    let mut cfg = cheater_config(dir, start);
    cfg.canary.interval_ms = 100;
    cfg
}

/// Three honest nodes (`net`, started with [`canary_config`] at `start`) and a cheater joining
/// them, perturbing `per_mille` of its answers; every node holds a replica. Canaries catch the
/// cheater: excluded, failures in the ledger for it alone, slashed and ineligible in the closed
/// round, no new replica on it; honest replicas' canaries pass and clients get right answers.
pub async fn canaries_catch<T: Sdk>(
    net: &mut LocalNetwork<T>,
    start: u64,
    per_mille: u32,
) -> Client<T> {
    let (key, cheater) = cheater(net, start);
    let ledger = net.dispatcher().ledger().clone();
    let spec = NodeSpec {
        gpu: Some("NVIDIA GeForce RTX 3090".into()),
        backend: Arc::new(PerturbedBackend::new(backend(), per_mille)),
        batch_size: 1,
    };
    let gpus = vec![declared_gpu("NVIDIA GeForce RTX 3090")];
    net.add_node_at(spec, gpus, key, [127, 0, 0, 1].into(), |_| {})
        .await
        .unwrap();
    net.wait_online(4, Duration::from_secs(30)).await.unwrap();
    let honest: Vec<NodeId> = net.nodes[..3].iter().map(|n| n.id()).collect();

    let (client, _) = T::client(net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert!(net.dispatcher().ready_replicas(&d.id()).contains(&cheater));

    // Canaries run on their own; wait for the exclusion.
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while net.dispatcher().excluded_until(&cheater).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cheater not excluded: {:?}",
            net.dispatcher().stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "canaries, cheater perturbing {per_mille}/1000: excluded after {:?}; {:?}",
        started.elapsed(),
        net.dispatcher().stats()
    );
    // The cheater can be excluded before any honest replica's canary has come back: wait
    // for one to pass too.
    wait_for_a_passed_canary(net, deadline).await;
    let stats = net.dispatcher().stats();
    assert!(stats.canaries_failed >= 2, "{stats:?}");
    assert!(stats.canaries_passed > 0, "{stats:?}");
    // The determinism gate ran the model at deploy on the canaries' reference backend: the
    // canaries use that model, nothing loads it again.
    assert_eq!(stats.canary_reference_loads, 0, "{stats:?}");
    assert!(!net.dispatcher().ready_replicas(&d.id()).contains(&cheater));

    // The ledger: failures for the cheater only; a correct canary answer is not a
    // validation of anyone else's work, so nobody has validations_ok from canaries.
    let (ok, failed) = ledger.validations(&cheater, start, u64::MAX).unwrap();
    assert_eq!(ok, 0);
    assert!(failed >= 2, "{failed}");
    for h in &honest {
        assert_eq!(ledger.validations(h, start, u64::MAX).unwrap(), (0, 0));
    }

    // Clients are served by the honest replicas from now on: every answer is right.
    let local = backend().load(TINY).unwrap();
    for i in 0..40 {
        let out = d
            .infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
        let want = vec![NamedTensor::new(
            "output",
            local.run(&[input(i)]).unwrap().remove(0),
        )];
        let got = vec![NamedTensor::new("output", out[0].tensor.clone())];
        agree(&got, &want, &Tolerance::default()).unwrap();
    }
    // It gets no new deployment either: four replicas wanted, three other nodes, so the
    // deployment is created short (served by the three, the reason given), none on it.
    let d2 = client.deploy(model, per_request(1_000)).await.unwrap();
    let info = d2.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert!(
        info.shortfall
            .as_deref()
            .is_some_and(|s| s.starts_with("3 of 4")),
        "{info:?}"
    );
    assert!(!net.dispatcher().ready_replicas(&d2.id()).contains(&cheater));

    // Round 0 closes through crat-rewards: the cheater is slashed and not eligible for a
    // bonus; honest nodes are not.
    let closed = net.dispatcher().close_round(0).await.unwrap();
    let failed_in_round = ledger.validations(&cheater, start, u64::MAX).unwrap().1;
    let c = closed
        .outcome
        .nodes
        .iter()
        .find(|n| n.id == cheater)
        .unwrap();
    assert!(!c.eligible);
    assert!(c.rank.is_none());
    assert_eq!(c.crat_slashed_micro.get(), slashed_after(failed_in_round));
    // A round is closed over the nodes active in it: an honest node whose compute
    // challenge ran late on a loaded machine (suspended, no uptime) is left out, as it
    // would have earned and lost nothing.
    for h in &honest {
        match closed.outcome.nodes.iter().find(|n| n.id == *h) {
            Some(o) => assert_eq!(o.crat_slashed_micro.get(), 0),
            None => assert_eq!(ledger.validations(h, start, u64::MAX).unwrap(), (0, 0)),
        }
    }
    client
}

/// The dispatcher settings of [`spot_checks_catch`], its rounds starting at `start` (seconds):
/// four replicas, every task spot-checked, canaries off, a node excluded when caught once.
pub fn spot_check_config(dir: &Path, start: u64) -> DispatcherConfig {
    let mut cfg = cheater_config(dir, start);
    cfg.canary.interval_ms = 0;
    cfg.validation_bps = crat_core::bps::Bps(10_000);
    cfg
}

/// Four nodes on four address blocks joining `net` (started with [`spot_check_config`] at
/// `start`, no nodes), the last a cheater with CRAT perturbing `per_mille` of its answers;
/// canaries are off, so only the clients' reports catch it. Every answer the client gets is
/// the honest one; the cheater is excluded, blamed in the ledger, slashed and ineligible in the
/// closed round; honest validators are never blamed and earn validation CRAT.
pub async fn spot_checks_catch<T: Sdk>(
    net: &mut LocalNetwork<T>,
    start: u64,
    per_mille: u32,
) -> Client<T> {
    let ledger = net.dispatcher().ledger().clone();
    let gpus = [
        "NVIDIA GeForce RTX 3090",
        "NVIDIA GeForce RTX 3080",
        "NVIDIA GeForce RTX 3080",
    ];
    for (i, gpu) in gpus.iter().enumerate() {
        let spec = NodeSpec {
            gpu: Some((*gpu).into()),
            backend: backend(),
            batch_size: 4,
        };
        let key = SigningKey::from_bytes(&rand::random());
        net.add_node_at(
            spec,
            vec![declared_gpu(gpu)],
            key,
            [127, 0, i as u8 + 1, 1].into(),
            |_| {},
        )
        .await
        .unwrap();
    }
    let (key, cheater) = cheater(net, start);
    let gpu = "NVIDIA GeForce RTX 3090";
    let spec = NodeSpec {
        gpu: Some(gpu.into()),
        backend: Arc::new(PerturbedBackend::new(backend(), per_mille)),
        batch_size: 1,
    };
    net.add_node_at(
        spec,
        vec![declared_gpu(gpu)],
        key,
        [127, 0, 4, 1].into(),
        |_| {},
    )
    .await
    .unwrap();
    net.wait_online(4, Duration::from_secs(30)).await.unwrap();
    let honest: Vec<NodeId> = net.nodes[..3].iter().map(|n| n.id()).collect();

    let (client, _) = T::client(net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert!(net.dispatcher().ready_replicas(&d.id()).contains(&cheater));

    // Tasks until the cheater is excluded (and a few after); every answer the client gets
    // is the honest one.
    let local = backend().load(TINY).unwrap();
    let mut done = 0u32;
    let mut after = 0u32;
    while after < 40 {
        assert!(
            done < 3_000,
            "not excluded after {done} tasks: {:?}",
            net.dispatcher().stats()
        );
        let batch: Vec<_> = d
            .infer_many(
                futures_util::stream::iter(done..done + 20)
                    .map(|i| vec![NamedTensor::new("input", input(i % 50))]),
                4,
            )
            .collect()
            .await;
        for (k, r) in batch.into_iter().enumerate() {
            let i = done + k as u32;
            let out = r.unwrap();
            let want = vec![NamedTensor::new(
                "output",
                local.run(&[input(i % 50)]).unwrap().remove(0),
            )];
            let got = vec![NamedTensor::new("output", out[0].tensor.clone())];
            agree(&got, &want, &Tolerance::default())
                .unwrap_or_else(|e| panic!("task {i}: the client got a wrong answer: {e}"));
        }
        done += 20;
        if net.dispatcher().excluded_until(&cheater).is_some() {
            if after == 0 {
                eprintln!(
                    "spot checks, cheater perturbing {per_mille}/1000: excluded within {done} tasks; {:?}",
                    d.stats()
                );
            }
            after += 20;
        }
    }
    let sdk = d.stats();
    assert!(sdk.validations > 0 && sdk.disagreements >= 2, "{sdk:?}");
    assert!(!net.dispatcher().ready_replicas(&d.id()).contains(&cheater));

    // Reports are sent in the background; wait for the last ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = net.dispatcher().stats();
    assert!(stats.validations_failed >= 2, "{stats:?}");
    assert!(stats.validations_ok > 0, "{stats:?}");
    let (_, failed) = ledger.validations(&cheater, start, u64::MAX).unwrap();
    assert!(failed >= 2, "{failed}");
    let mut honest_ok = 0;
    for h in &honest {
        let (ok, failed) = ledger.validations(h, start, u64::MAX).unwrap();
        assert_eq!(failed, 0, "an honest node was blamed");
        honest_ok += ok;
    }
    assert!(honest_ok > 0);

    let closed = net.dispatcher().close_round(0).await.unwrap();
    let c = closed
        .outcome
        .nodes
        .iter()
        .find(|n| n.id == cheater)
        .unwrap();
    assert!(!c.eligible);
    let failed_in_round = ledger.validations(&cheater, start, u64::MAX).unwrap().1;
    assert_eq!(c.crat_slashed_micro.get(), slashed_after(failed_in_round));
    // Honest validators earn validation CRAT (ECONOMICS rule 11).
    let params = crat_rewards::Params::default();
    for h in &honest {
        let (ok, _) = ledger.validations(h, start, u64::MAX).unwrap();
        let o = closed.outcome.nodes.iter().find(|n| n.id == *h).unwrap();
        assert_eq!(o.crat_slashed_micro.get(), 0);
        assert!(o.crat_issued_micro.get() >= params.validation_unit_crat_micro.get() * ok);
    }
    client
}
