//! Model updates (`ClientCall::UpdateModel`): a deployment's model replaced under a stream of
//! tasks, with none failing, every task charged once, and the plan's update frequency
//! enforced. A real dispatcher, three tract nodes and an SDK client on loopback QUIC.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use crat_backend::{BackendError, InferenceBackend, LoadedModel};
use crat_core::id::ModelId;
use crat_core::pricing::{DeployPlan, PerInstancePlan, UpdateFrequency};
use crat_core::tensor::NamedTensor;
use crat_dispatcher::DispatcherConfig;
use crat_sdk::Error;
use crat_testnet::{LocalNetwork, NodeSpec};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt;

/// The same network as `TINY` with other weights: same inputs and outputs, other answers.
const TINY_V2: &[u8] = include_bytes!("../../backend/models/tiny_cnn_v2.onnx");
/// The PaddleOCR classifier: other inputs than the tiny CNN's.
const PADDLE: &[u8] = include_bytes!("../../backend/models/ch_ppocr_mobile_v2.0_cls_infer.onnx");
const TASKS: u32 = 1_000;
/// The stream's task at which the update is asked for.
const UPDATE_AT: u32 = 250;
/// From this task on, the stream waits until every replica serves the new model.
const AFTER_SWITCH_FROM: u32 = 900;
const INPUTS: u32 = 16;

fn outputs(model: &[u8]) -> Vec<Vec<f32>> {
    let loaded = backend().load(model).unwrap();
    (0..INPUTS)
        .map(|i| loaded.run(&[input(i)]).unwrap()[0].to_vec::<f32>().unwrap())
        .collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    // Nodes batch tasks; a batched convolution may round differently in the last bit.
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5)
}

fn hourly(lifetime_s: u64) -> DeployPlan {
    DeployPlan::PerInstance(PerInstancePlan {
        guaranteed_rps: 20,
        max_input_bytes: 1 << 16,
        update_frequency: UpdateFrequency::Hourly,
        key_lifetime_s: lifetime_s,
    })
}

/// Tract, taking `delay` longer to load the model of `slow_bytes`: a node that takes its time
/// to switch, so that the replicas serve different models for a while.
struct SlowToLoad {
    inner: Arc<dyn InferenceBackend>,
    slow_bytes: &'static [u8],
    delay: Duration,
}

impl InferenceBackend for SlowToLoad {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn execution_provider(&self) -> &str {
        self.inner.execution_provider()
    }

    fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
        if model == self.slow_bytes {
            // The node loads models on a blocking thread.
            std::thread::sleep(self.delay);
        }
        self.inner.load(model)
    }
}

/// Three nodes of three operators (127.0.N.1), every task spot-checked on a second one: the
/// node on 127.0.3.1 takes 1.5 s longer than the others to load `TINY_V2`.
async fn three_operators(dir: &std::path::Path) -> LocalNetwork {
    let mut cfg = config(dir);
    cfg.dispatch.replicas = 3;
    cfg.validation_bps = crat_core::bps::Bps(10_000);
    // Short tickets, so that their usage window ends (and what was acknowledged is settled)
    // within the test.
    cfg.ticket_lifetime_s = 4;
    cfg.usage_grace_s = 2;
    let mut net = LocalNetwork::start(cfg, dir, vec![]).await.unwrap();
    for (i, gpu) in [
        "NVIDIA GeForce RTX 3090",
        "NVIDIA GeForce RTX 3080",
        "NVIDIA GeForce RTX 3080",
    ]
    .iter()
    .enumerate()
    {
        let slow = i == 2;
        let spec = NodeSpec {
            gpu: Some((*gpu).into()),
            backend: Arc::new(SlowToLoad {
                inner: backend(),
                slow_bytes: TINY_V2,
                delay: Duration::from_millis(if slow { 1_500 } else { 0 }),
            }),
            batch_size: 4,
        };
        let key = SigningKey::from_bytes(&rand::random());
        net.add_node_on(spec, key, [127, 0, i as u8 + 1, 1].into(), |_| {})
            .unwrap();
    }
    net.wait_online(3, Duration::from_secs(30)).await.unwrap();
    net
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_update_under_a_stream_of_tasks_fails_none_and_charges_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let net = three_operators(dir.path()).await;
    let (client, _) = client_with(&net, 10_000_000).await;
    let a = client.upload_model(TINY, |_| {}).await.unwrap();
    let b = client.upload_model(TINY_V2, |_| {}).await.unwrap();
    let allowance = 1_000_000;
    let d = client.deploy(a, per_request(allowance)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    let (want_a, want_b) = (outputs(TINY), outputs(TINY_V2));
    assert!((0..INPUTS as usize).all(|i| !close(&want_a[i], &want_b[i])));

    // The stream: 1,000 tasks, 8 in flight, spaced 2 ms apart. At task 250 the model is
    // updated in the background, and a waiter marks when every replica serves it; tasks
    // from 900 on start only after that.
    let switched = Arc::new(AtomicBool::new(false));
    let issued_after_switch = Arc::new(std::sync::Mutex::new(Vec::new()));
    let updater = Arc::new(std::sync::Mutex::new(None));
    let inputs = {
        let (d, switched, issued, updater) = (
            d.clone(),
            switched.clone(),
            issued_after_switch.clone(),
            updater.clone(),
        );
        futures_util::stream::unfold(0..TASKS, move |mut rest| {
            let (d, switched, issued, updater) =
                (d.clone(), switched.clone(), issued.clone(), updater.clone());
            async move {
                let i = rest.next()?;
                if i == UPDATE_AT {
                    let (d, switched) = (d.clone(), switched.clone());
                    *updater.lock().unwrap() = Some(tokio::spawn(async move {
                        let info = d.update_model(b).await.unwrap();
                        let done = d.wait_updated(Duration::from_secs(60)).await.unwrap();
                        switched.store(true, Ordering::SeqCst);
                        (info, done)
                    }));
                }
                if i >= AFTER_SWITCH_FROM {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    while !switched.load(Ordering::SeqCst) {
                        assert!(tokio::time::Instant::now() < deadline, "no switch in 60 s");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                issued.lock().unwrap().push(switched.load(Ordering::SeqCst));
                Some((vec![NamedTensor::new("input", input(i % INPUTS))], rest))
            }
        })
    };
    let results: Vec<_> = d.infer_many(inputs, 8).collect().await;
    let update = updater.lock().unwrap().take().unwrap();
    let (updated, done) = update.await.unwrap();
    assert_eq!(updated.model, b);
    assert_eq!(updated.updates, 1);
    assert_eq!(
        (done.model, done.replicas_on_model),
        (b, done.replicas_ready)
    );
    assert!(done.replicas_ready >= 2, "{done:?}");

    // None failed; each answer is model A's or model B's; once B answers for a task issued
    // after the switch, every later-issued one is B's; the stream saw both.
    assert_eq!(results.len(), TASKS as usize);
    let issued = issued_after_switch.lock().unwrap().clone();
    let (mut seen_a, mut seen_b) = (0, 0);
    for (i, r) in results.into_iter().enumerate() {
        let out = r.unwrap_or_else(|e| panic!("task {i} failed: {e}"));
        let got = out[0].tensor.to_vec::<f32>().unwrap();
        let k = i % INPUTS as usize;
        if close(&got, &want_a[k]) {
            seen_a += 1;
            assert!(
                !issued[i],
                "task {i}, issued after the switch, answered by model A"
            );
            assert!((i as u32) < AFTER_SWITCH_FROM);
        } else if close(&got, &want_b[k]) {
            seen_b += 1;
            assert!(
                (i as u32) >= UPDATE_AT,
                "task {i} answered by B before the update"
            );
        } else {
            panic!("task {i}: an answer of neither model: {got:?}");
        }
    }
    let stats = d.stats();
    eprintln!(
        "answers: {seen_a} of model A, {seen_b} of model B; spot checks {} ({} without a verdict \
         across models)",
        stats.validations, stats.validations_inconclusive
    );
    assert!(seen_a >= UPDATE_AT as usize, "{seen_a} answers of A");
    assert!(
        seen_b >= (TASKS - AFTER_SWITCH_FROM) as usize,
        "{seen_b} answers of B"
    );

    // Each task charged once at its price, and the update once from the allowance. Every
    // task ran on two replicas (the spot checks): a record is charged only within what the
    // client acknowledged of its node, and a validator's record may take its node's room
    // before that node's own (the acknowledgement bounds counts and credits, not which
    // tasks), so some records stay held; when the tickets' usage window ends the rest of what
    // was acknowledged is charged from the acknowledgements. So: never a task twice, and
    // exactly the 1,000 tasks' price once the window has ended.
    d.flush_acks().await.unwrap();
    let pricing = DispatcherConfig::new("x").pricing;
    let cost = pricing
        .request_cost(TINY.len() as u64, 28 * 28 * 4)
        .unwrap()
        .get();
    let expected = allowance - u64::from(TASKS) * cost - pricing.update_cost(TINY_V2.len() as u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = d.info().await.unwrap();
        if info.allowance_left.get() <= expected {
            break info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "allowance {} after the usage window, {expected} expected; usage {:?}",
            info.allowance_left.get(),
            net.dispatcher().ledger().usage_totals(&d.id())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Nothing more is charged later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(d.info().await.unwrap().allowance_left.get(), expected);
    assert_eq!(info.allowance_left.get(), expected);
    // The credits charged are exactly the 1,000 tasks' (records, and acknowledged work
    // settled when the window ended): no task was charged twice, none went free.
    let (_, charged) = net.dispatcher().ledger().usage_totals(&d.id()).unwrap();
    assert_eq!(charged.get(), u64::from(TASKS) * cost);
    let history = net.dispatcher().ledger().model_updates(&d.id()).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].previous, history[0].model), (a, b));

    // Every task was spot-checked; those answered by both models had no verdict, and no
    // honest node was failed by a spot check or a canary across the switch.
    assert_eq!(d.stats().validations, u64::from(TASKS));
    assert!(d.stats().validations_inconclusive > 0, "{:?}", d.stats());
    let stats = net.dispatcher().stats();
    assert!(stats.validations_ok > 0, "{stats:?}");
    assert_eq!(stats.validations_failed, 0, "{stats:?}");
    assert_eq!(stats.canaries_failed, 0, "{stats:?}");

    // The same update again changes nothing and costs nothing (a retry is safe); another
    // at once is beyond the per-request spacing.
    let again = d.update_model(b).await.unwrap();
    assert_eq!(
        (again.updates, again.allowance_left),
        (1, info.allowance_left)
    );
    assert!(matches!(
        d.update_model(a).await,
        Err(Error::UpdateTooFrequent(_))
    ));
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_plan_bounds_updates_and_a_model_must_fit_the_callers() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(config(dir.path()), dir.path()).await;
    let (client, _) = client_with(&net, 1_000_000_000).await;
    let a = client.upload_model(TINY, |_| {}).await.unwrap();
    let b = client.upload_model(TINY_V2, |_| {}).await.unwrap();
    let paddle = client.upload_model(PADDLE, |_| {}).await.unwrap();

    // Hourly for two hours: two updates paid for, one an hour.
    let d = client.deploy(a, hourly(2 * 3_600)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    let before = d.info().await.unwrap();
    assert_eq!(before.updates, 0);
    let created = before.next_update_at_s.unwrap();
    // Another model's inputs: refused, and it does not count.
    assert!(matches!(
        d.update_model(paddle).await,
        Err(Error::ModelRejected(m)) if m.contains("input")
    ));
    let balance = client.balance().await.unwrap();
    let after = d.update_model(b).await.unwrap();
    assert_eq!((after.model, after.updates), (b, 1));
    // Paid up front: the balance does not move.
    assert_eq!(client.balance().await.unwrap(), balance);
    let next = after.next_update_at_s.unwrap();
    assert!(next >= created + 3_600, "{next} vs {created}");
    let refused = d.update_model(a).await.unwrap_err();
    assert!(
        matches!(&refused, Error::UpdateTooFrequent(m) if m.contains(&next.to_string())),
        "{refused}"
    );
    assert_eq!(
        refused.code(),
        Some(crat_core::wire::ErrorCode::UpdateTooFrequent)
    );
    // The deployment serves the new model once its replicas switch.
    let done = d.wait_updated(Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.replicas_on_model, done.replicas_ready);
    let out = d
        .infer(vec![NamedTensor::new("input", input(3))])
        .await
        .unwrap();
    let want = backend().load(TINY_V2).unwrap().run(&[input(3)]).unwrap();
    assert!(close(
        &out[0].tensor.to_vec::<f32>().unwrap(),
        &want[0].to_vec::<f32>().unwrap()
    ));

    // A plan that allows no updates.
    let never = client.deploy(a, per_instance()).await.unwrap();
    let info = never.info().await.unwrap();
    assert_eq!(info.next_update_at_s, None);
    assert!(matches!(
        never.update_model(b).await,
        Err(Error::UpdateTooFrequent(m)) if m.contains("no more")
    ));
    // A model never uploaded.
    assert!(matches!(
        never
            .update_model(ModelId::of_bytes(b"never uploaded"))
            .await,
        Err(Error::NotFound(_))
    ));
    net.shutdown();
}
