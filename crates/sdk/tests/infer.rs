//! Deploy and infer against real `crat-node` nodes (tract, tiny CNN) behind the fake
//! dispatcher: results, typed errors, failover when a node dies, lease renewal.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_core::id::{ModelId, TaskId};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PerRequestPlan};
use crat_core::tensor::{DType, NamedTensor, Tensor};
use crat_core::wire::{DeploymentState, KeyStatus};
use crat_sdk::{Client, Deployment, Error};
use crat_transport::memory::{MemoryNetwork, MemoryTransport};
use futures_util::{StreamExt, stream};

fn plan(allowance: u64) -> DeployPlan {
    DeployPlan::PerRequest(PerRequestPlan {
        max_input_bytes: 1 << 20,
        credit_allowance: Credits::new(allowance),
    })
}

struct World {
    _net: MemoryNetwork,
    clock: Arc<TestClock>,
    fake: Arc<Fake>,
    nodes: Vec<TestNode>,
    client: Client<MemoryTransport>,
}

async fn world(nodes: u8) -> World {
    let net = MemoryNetwork::new();
    let clock = clock();
    let fake = start_dispatcher(&net, clock.clone(), 4096);
    fake.state().replicas_wanted = u32::from(nodes);
    let nodes: Vec<TestNode> = (0..nodes)
        .map(|n| TestNode::start(&net, clock.clone(), n))
        .collect();
    let client = client(&net, "mem:client", sdk_key(), config(clock.clone()))
        .await
        .unwrap();
    World {
        _net: net,
        clock,
        fake,
        nodes,
        client,
    }
}

async fn deploy(w: &World) -> Deployment<MemoryTransport> {
    let model = w.client.upload_model(TINY, |_| {}).await.unwrap();
    let d = w.client.deploy(model, plan(1_000)).await.unwrap();
    let info = d.wait_ready(Duration::from_secs(20)).await.unwrap();
    assert_eq!(info.state, DeploymentState::Ready);
    d
}

fn input(seed: u32) -> Vec<NamedTensor> {
    vec![NamedTensor::new("input", image(seed))]
}

fn task(i: u32) -> TaskId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&i.to_le_bytes());
    b[15] = 0xaa;
    TaskId::from_bytes(b)
}

fn check_probs(outputs: &[NamedTensor], want: &[f32]) {
    let probs = crat_sdk::convert::named_array::<f32>(outputs, "probs").unwrap();
    assert_eq!(probs.shape(), &[1, 10]);
    let got: Vec<f32> = probs.iter().copied().collect();
    // Batched and single runs may differ in the last bits, never by more than 1e-5.
    assert!(max_diff(&got, want) <= 1e-5);
}

fn direct(seed: u32) -> Vec<f32> {
    let model = TractBackend::new().load(TINY).unwrap();
    model.run(&[image(seed)]).unwrap()[0]
        .to_vec::<f32>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_infer_matches_a_direct_run_and_account_calls_work() {
    let w = world(2).await;
    let model = w.client.upload_model(TINY, |_| {}).await.unwrap();
    assert_eq!(model, ModelId::of_bytes(TINY));
    assert_eq!(w.client.quote(model, plan(1_000)).await.unwrap(), quote());
    let before = w.client.balance().await.unwrap();
    let d = w.client.deploy(model, plan(1_000)).await.unwrap();
    assert_eq!(
        w.client.balance().await.unwrap(),
        before.checked_sub(Credits::new(1_000)).unwrap()
    );
    d.wait_ready(Duration::from_secs(20)).await.unwrap();
    let key = w.client.key_status().await.unwrap();
    assert_eq!((key.id, key.status), (sdk_key().id, KeyStatus::Active));

    let want: Vec<Vec<f32>> = (0..8).map(direct).collect();
    for (i, want) in want.iter().enumerate() {
        let out = d.infer(input(i as u32)).await.unwrap();
        check_probs(&out, want);
    }
    // Round robin spreads tasks over both replicas.
    wait_for("usage from both nodes", || {
        let s = w.fake.state();
        w.nodes
            .iter()
            .all(|n| s.usage.iter().any(|(id, _)| *id == n.id))
    })
    .await;
    let stats = d.stats();
    assert_eq!((stats.tasks, stats.completed, stats.failovers), (8, 8, 0));
    assert_eq!(w.client.stats().tasks, 8);
    assert_eq!(
        w.fake.state().leases_issued,
        1,
        "one lease serves every task"
    );

    // Another handle on the same deployment; then stop it.
    let again = w.client.deployment(d.id());
    assert_eq!(again.info().await.unwrap().model, model);
    again.undeploy().await.unwrap();
    assert_eq!(d.info().await.unwrap().state, DeploymentState::Stopped);
    let err = d.wait_ready(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, Error::Stopped(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_and_accounts_faults_are_not_retried() {
    let w = world(2).await;
    let d = deploy(&w).await;

    // A wrong-shape tensor: the node says InvalidInput, and no other replica is tried.
    let bad = vec![NamedTensor::new(
        "input",
        Tensor::zeros(DType::F32, &[1, 1, 27, 28]).unwrap(),
    )];
    let err = d.infer(bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let stats = d.stats();
    assert_eq!((stats.failed, stats.failovers), (1, 0));

    // Deploying beyond the balance: InsufficientCredits from the dispatcher.
    let model = ModelId::of_bytes(TINY);
    let err = w.client.deploy(model, plan(10_000_000)).await.unwrap_err();
    assert!(
        matches!(err, Error::InsufficientCredits(ref m) if m.contains("needed")),
        "{err}"
    );

    // An unknown deployment.
    let missing = w
        .client
        .deployment(crat_core::id::DeploymentId::from_bytes([200; 16]));
    let err = missing.infer(input(0)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_mid_stream_fails_over_and_every_task_completes() {
    let w = world(3).await;
    let d = deploy(&w).await;
    const TASKS: u32 = 48;
    const CONCURRENCY: usize = 6;
    let want: Vec<Vec<f32>> = (0..4).map(direct).collect();

    let mut results = stream::iter(0..TASKS)
        .map(|i| {
            let d = d.clone();
            async move { (i, d.infer_task(task(i), input(i % 4)).await) }
        })
        .buffered(CONCURRENCY);
    let mut done = 0;
    while let Some((i, r)) = results.next().await {
        let out = r.unwrap_or_else(|e| panic!("task {i}: {e}"));
        check_probs(&out, &want[(i % 4) as usize]);
        done += 1;
        if done == 12 {
            // Node 0 dies with tasks in flight: they fail over, and later tasks that start
            // with it find it gone and fail over too.
            w.nodes[0].kill();
        }
    }
    assert_eq!(done, TASKS);
    let stats = d.stats();
    assert_eq!((stats.tasks, stats.completed, stats.failed), (48, 48, 0));
    assert!(stats.failovers >= 1, "{stats:?}");

    // Each task id reached a surviving node at most once; every task the dead node did not
    // run was served by a survivor (up to the few it may have finished but not reported
    // before it died).
    wait_for("survivors reported their usage", || {
        w.nodes[1..].iter().all(|n| n.node.usage_pending() == 0)
    })
    .await;
    let usage = w.fake.state().usage.clone();
    let mut per_node: HashMap<_, Vec<TaskId>> = HashMap::new();
    for (node, r) in &usage {
        per_node.entry(*node).or_default().push(r.task);
    }
    for (node, tasks) in &per_node {
        let mut t = tasks.clone();
        t.sort();
        t.dedup();
        assert_eq!(t.len(), tasks.len(), "{node} ran a task twice");
    }
    let survivors: Vec<TaskId> = w.nodes[1..]
        .iter()
        .flat_map(|n| per_node.get(&n.id).cloned().unwrap_or_default())
        .collect();
    let mut unique = survivors.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), survivors.len(), "a task ran on two survivors");
    let dead: Vec<TaskId> = per_node.get(&w.nodes[0].id).cloned().unwrap_or_default();
    let unreported = (0..TASKS)
        .filter(|&i| !survivors.contains(&task(i)) && !dead.contains(&task(i)))
        .count();
    assert!(unreported <= CONCURRENCY, "{unreported} tasks ran nowhere");
    // Only tasks in flight when the node died can have run twice.
    let twice = dead.iter().filter(|t| survivors.contains(t)).count();
    assert!(twice <= CONCURRENCY, "{twice} tasks ran twice");
    eprintln!("{stats:?}, {twice} ran twice, {unreported} unreported");

    // Every node gone: each replica is tried, the lease renewed once, then NoReplica with
    // the last cause.
    w.nodes[1].kill();
    w.nodes[2].kill();
    let leases = w.fake.state().leases_issued;
    let err = d.infer(input(0)).await.unwrap_err();
    match &err {
        Error::NoReplica { attempts, last } => {
            assert_eq!(*attempts, 6, "3 replicas, then 3 again after renewing");
            assert!(
                matches!(last.as_deref(), Some(Error::Transport(_))),
                "{err}"
            );
        }
        other => panic!("expected NoReplica, got {other}"),
    }
    assert_eq!(w.fake.state().leases_issued, leases + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_renewed_before_expiry_once_for_concurrent_callers() {
    let w = world(1).await;
    w.fake.state().ticket_lifetime_s = 60;
    let d = deploy(&w).await;
    let want = direct(1);

    check_probs(&d.infer(input(1)).await.unwrap(), &want);
    check_probs(&d.infer(input(1)).await.unwrap(), &want);
    assert_eq!(w.fake.state().leases_issued, 1);

    // 50 s later, 10 s are left: under 20% of the lifetime, so the lease is renewed before
    // the next task, by one request however many tasks want it.
    w.clock.advance(50);
    let outs = futures_util::future::join_all((0..10).map(|_| d.infer(input(1)))).await;
    for out in outs {
        check_probs(&out.unwrap(), &want);
    }
    assert_eq!(w.fake.state().leases_issued, 2);
    assert_eq!(d.stats().lease_renewals, 1);

    // Past the old ticket's expiry the node would refuse it; the new one is used.
    w.clock.advance(20);
    check_probs(&d.infer(input(1)).await.unwrap(), &want);
    assert_eq!(w.fake.state().leases_issued, 2);
    assert_eq!(d.stats().ticket_rejections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_ticket_renews_the_lease_and_the_task_goes_through() {
    let w = world(2).await;
    let d = deploy(&w).await;
    // The first lease's ticket names nobody: every node refuses it.
    w.fake
        .state()
        .lease_faults
        .push_back(LeaseFault::WrongAudience);
    let want = direct(3);
    let outs = futures_util::future::join_all((0..4).map(|_| d.infer(input(3)))).await;
    for out in outs {
        check_probs(&out.unwrap(), &want);
    }
    let stats = d.stats();
    assert!(stats.ticket_rejections >= 1, "{stats:?}");
    assert_eq!(
        stats.lease_renewals, 1,
        "one renewal for all rejected callers"
    );
    assert_eq!(w.fake.state().leases_issued, 2);
    assert_eq!(stats.failovers, 0);
}

/// The dispatcher hears the shapes (never the values) of the inputs sent, for its canaries:
/// a new shape at the next flush, with how many tasks had it; nothing when turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_shapes_are_told_to_the_dispatcher_unless_turned_off() {
    let w = world(1).await;
    let d = deploy(&w).await;
    for i in 0..3 {
        d.infer(input(i)).await.unwrap();
    }
    d.flush_acks().await.unwrap();
    {
        let s = w.fake.state();
        assert_eq!(s.shapes.len(), 1, "{:?}", s.shapes);
        let (dep, told) = &s.shapes[0];
        assert_eq!(*dep, d.id());
        assert_eq!(told.inputs.len(), 1);
        assert_eq!(
            (told.inputs[0].name.as_str(), told.inputs[0].dims.as_slice()),
            ("input", &[1u64, 1, 28, 28][..])
        );
        assert_eq!(told.tasks, 3);
    }
    // A known shape waits for the interval.
    d.infer(input(9)).await.unwrap();
    d.flush_acks().await.unwrap();
    assert_eq!(w.fake.state().shapes.len(), 1);
    w.clock.advance(61);
    d.flush_acks().await.unwrap();
    assert_eq!(w.fake.state().shapes.len(), 2);
    assert_eq!(w.fake.state().shapes[1].1.tasks, 1);

    let mut quiet = config(w.clock.clone());
    quiet.input_shapes_report_s = 0;
    let net_client = client(&w._net, "mem:quiet", sdk_key(), quiet)
        .await
        .unwrap();
    let d = net_client.deployment(d.id());
    d.infer(input(1)).await.unwrap();
    d.flush_acks().await.unwrap();
    assert_eq!(w.fake.state().shapes.len(), 2);
}
