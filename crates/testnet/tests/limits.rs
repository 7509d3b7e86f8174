//! Limits end to end on loopback QUIC: the dispatcher's request rate per SDK key, and a node
//! over its per-key rate answering `Busy`, which the SDK turns into a failover (each task
//! still answered once and charged once).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crat_core::id::SdkKey;
use crat_core::id::TaskId;
use crat_core::limit::RateLimit;
use crat_core::tensor::NamedTensor;
use crat_core::wire::{ClientCall, ClientRequest, DispatcherResponse, ErrorCode};
use crat_dispatcher::admin;
use crat_dispatcher::ledger::AccountName;
use crat_testnet::{LocalNetwork, NodeSpec};
use futures_util::StreamExt;

fn busy(r: &DispatcherResponse) -> bool {
    matches!(r, DispatcherResponse::Error(e) if e.code == ErrorCode::Busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_over_a_keys_rate_are_busy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.client_key_rate = Some(RateLimit { per_s: 1, burst: 5 });
    let net = LocalNetwork::start(cfg, dir.path(), vec![]).await.unwrap();
    let ledger = net.dispatcher().ledger().clone();
    let account = AccountName::new("alice").unwrap();
    let alice = admin::create_key(&*ledger, &account, now_s(), None).unwrap();
    let bob = admin::create_key(&*ledger, &account, now_s(), None).unwrap();

    // Requests naming bob with a wrong secret are refused before they count against him.
    let impostor = SdkKey {
        id: bob.id,
        secret: [0; 32],
    };
    for _ in 0..10 {
        let r = raw_call(&net, &impostor, ClientCall::Balance).await;
        assert!(
            matches!(r, DispatcherResponse::Error(ref e) if e.code == ErrorCode::Unauthenticated),
            "{r:?}"
        );
    }
    // Five at once, then one a second.
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(busy(&raw_call(&net, &alice, ClientCall::Balance).await));
    }
    let refilled = started.elapsed().as_secs() as usize;
    assert_eq!(answers[..5], [false; 5], "the burst");
    let passed = answers.iter().filter(|b| !**b).count();
    assert!(
        passed <= 5 + refilled,
        "{passed} of 8 passed in {refilled} s: {answers:?}"
    );
    // Bob has his own allowance, untouched by the impostor.
    for _ in 0..5 {
        assert!(!busy(&raw_call(&net, &bob, ClientCall::Balance).await));
    }
    // The SDK sees the typed error.
    let client = crat_sdk::connect(net.dispatcher_addr, net.dispatcher().id(), alice.clone())
        .await
        .unwrap();
    assert!(matches!(
        client.balance().await,
        Err(crat_sdk::Error::Busy(_))
    ));
    // In-process calls (benchmarks, embedding) are not rate-limited.
    for _ in 0..20 {
        let r = net
            .dispatcher()
            .handle_client(
                crat_core::id::NodeId::from_bytes([7; 32]),
                ClientRequest {
                    key: alice.clone(),
                    call: ClientCall::Balance,
                },
            )
            .await;
        assert!(matches!(r, DispatcherResponse::Balance(_)), "{r:?}");
    }
    // A second later, one more.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(!busy(&raw_call(&net, &alice, ClientCall::Balance).await));
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_a_keys_rate_makes_the_sdk_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = LocalNetwork::start(config(dir.path()), dir.path(), vec![])
        .await
        .unwrap();
    let spec = |gpu: &str| NodeSpec {
        gpu: Some(gpu.to_owned()),
        backend: backend(),
        batch_size: 4,
    };
    // One node lets each key run two tasks a second; the other has the default limit.
    net.add_node_with(spec("NVIDIA GeForce RTX 3090"), |c| {
        c.key_rate = Some(RateLimit { per_s: 2, burst: 2 });
    })
    .unwrap();
    net.add_node(spec("NVIDIA GeForce RTX 3080")).unwrap();
    net.wait_online(2, Duration::from_secs(30)).await.unwrap();
    let strict = net.nodes[0].id();
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert!(
        d.lease()
            .await
            .unwrap()
            .replicas
            .iter()
            .any(|r| r.node == strict),
        "both nodes are replicas"
    );

    let tasks: Vec<TaskId> = (0..200)
        .map(|_| TaskId::from_bytes(rand::random()))
        .collect();
    let results: Vec<_> = futures_util::stream::iter(tasks.clone())
        .map(|t| {
            let d = d.clone();
            async move {
                d.infer_task(t, vec![NamedTensor::new("input", input(1))])
                    .await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "every task answered");
    let stats = d.stats();
    assert!(
        stats.failovers > 0,
        "busy answers moved tasks on: {stats:?}"
    );

    // Charged once per task, and only for tasks that ran.
    let ledger = net.dispatcher().ledger().clone();
    let (count, _) = settled_usage(&net, &d.id(), tasks.len() as u64).await;
    assert_eq!(count, tasks.len() as u64);
    let on_strict = tasks
        .iter()
        .filter(|t| ledger.usage(&d.id(), t).unwrap()[0].node == strict)
        .count();
    assert!(
        on_strict <= 2 + 2 * 10,
        "the strict node ran at most its rate: {on_strict}"
    );
    net.shutdown();
}

/// One key leasing as fast as it may fills its own share of the dispatcher's ticket memory
/// and is refused `QuotaExceeded`, while another key still leases; an account runs at most
/// its share of deployments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_fills_only_its_share_and_accounts_their_deployments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.client_key_rate = None;
    cfg.tickets_tracked_max = 1_000;
    cfg.tickets_per_key_max = 20;
    cfg.deployments_per_account_max = 1;
    let net = network(cfg, dir.path()).await;
    let (client, alice) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let lease = |key: SdkKey| {
        let net = &net;
        let deployment = d.id();
        async move { raw_call(net, &key, ClientCall::Lease { deployment }).await }
    };
    // Alice's leases (the SDK's own count too) stop at her share.
    let refused = loop {
        match lease(alice.clone()).await {
            DispatcherResponse::Lease(_) => {}
            other => break other,
        }
        assert!(
            net.dispatcher().stats().leases <= 20,
            "more than the key's share"
        );
    };
    assert_eq!(net.dispatcher().stats().leases, 20);
    assert!(
        matches!(&refused, DispatcherResponse::Error(e) if e.code == ErrorCode::QuotaExceeded),
        "{refused:?}"
    );
    // Another key of the same account still leases.
    let ledger = net.dispatcher().ledger().clone();
    let bob =
        admin::create_key(&*ledger, &AccountName::new("alice").unwrap(), now_s(), None).unwrap();
    assert!(matches!(lease(bob).await, DispatcherResponse::Lease(_)));
    // A second deployment is over the account's share, with a typed error.
    let second = client
        .deploy(model, per_request(100_000))
        .await
        .unwrap_err();
    assert!(
        matches!(second, crat_sdk::Error::QuotaExceeded(_)),
        "{second}"
    );
    d.undeploy().await.unwrap();
    client.deploy(model, per_request(100_000)).await.unwrap();
    net.shutdown();
}

/// The SDK client (and key) of a new account `name` with `credits`.
async fn client_of(
    net: &LocalNetwork,
    name: &str,
    credits: u64,
) -> (
    crat_sdk::Client<crat_transport::quic::QuicTransport>,
    SdkKey,
) {
    let ledger = net.dispatcher().ledger().clone();
    let account = AccountName::new(name).unwrap();
    admin::grant(
        &*ledger,
        &account,
        crat_core::money::Credits::new(credits),
        now_s(),
    )
    .unwrap();
    let key = admin::create_key(&*ledger, &account, now_s(), None).unwrap();
    let client = crat_sdk::connect(net.dispatcher_addr, net.dispatcher().id(), key.clone())
        .await
        .unwrap();
    (client, key)
}

/// Knowing a model's hash is not having it: another account cannot quote or deploy it, nor
/// claim it by starting an upload; it owns it once it sent the bytes, or once an owner made
/// it public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_deployed_by_hash_only_by_their_uploaders_or_once_public() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(config(dir.path()), dir.path()).await;
    let (alice, _) = client_of(&net, "alice", 1_000_000).await;
    let (bob, bob_key) = client_of(&net, "bob", 1_000_000).await;
    let (carol, _) = client_of(&net, "carol", 1_000_000).await;
    let model = alice.upload_model(TINY, |_| {}).await.unwrap();
    let plan = per_request(100_000);
    for c in [&bob, &carol] {
        assert!(matches!(
            c.quote(model, plan).await,
            Err(crat_sdk::Error::NotFound(_))
        ));
        assert!(matches!(
            c.deploy(model, plan).await,
            Err(crat_sdk::Error::NotFound(_))
        ));
    }
    // Starting an upload of a stored model is not owning it: the dispatcher asks for the
    // bytes.
    let begin = raw_call(
        &net,
        &bob_key,
        ClientCall::UploadBegin {
            model,
            total_bytes: TINY.len() as u64,
        },
    )
    .await;
    assert!(
        matches!(
            begin,
            DispatcherResponse::Upload {
                received_bytes: 0,
                ..
            }
        ),
        "{begin:?}"
    );
    // Bob sends the bytes: now he owns it too.
    assert_eq!(bob.upload_model(TINY, |_| {}).await.unwrap(), model);
    bob.deploy(model, plan).await.unwrap();
    // Carol is not an owner and cannot publish it; alice can.
    assert!(matches!(
        carol.set_model_public(model, true).await,
        Err(crat_sdk::Error::NotFound(_))
    ));
    alice.set_model_public(model, true).await.unwrap();
    carol.deploy(model, plan).await.unwrap();
    net.shutdown();
}

/// Deployments end by themselves: a per-instance reservation when its lifetime is over, a
/// per-request deployment once its allowance is spent and it stayed spent for the idle time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_end_with_their_lifetime_or_their_spent_allowance() {
    use crat_core::pricing::{DeployPlan, PerInstancePlan, PerRequestPlan, UpdateFrequency};
    use crat_core::wire::DeploymentState;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.spent_deployment_idle_s = 1;
    cfg.canary.interval_ms = 0;
    let cost = task_cost();
    let net = network(cfg, dir.path()).await;
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let reserved = client
        .deploy(
            model,
            DeployPlan::PerInstance(PerInstancePlan {
                guaranteed_rps: 5,
                max_input_bytes: 1 << 16,
                update_frequency: UpdateFrequency::Never,
                key_lifetime_s: 3_600,
            }),
        )
        .await
        .unwrap();
    let metered = client
        .deploy(
            model,
            DeployPlan::PerRequest(PerRequestPlan {
                max_input_bytes: 1 << 16,
                credit_allowance: crat_core::money::Credits::new(3 * cost),
            }),
        )
        .await
        .unwrap();
    metered.wait_ready(Duration::from_secs(30)).await.unwrap();
    for i in 0..3 {
        metered
            .infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
    }
    let state = |d: &crat_sdk::Deployment<crat_transport::quic::QuicTransport>| {
        let d = d.clone();
        async move { d.info().await.map(|i| i.state) }
    };
    // The spent one ends within its idle time (the tick, on the real clock)...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !matches!(state(&metered).await, Ok(DeploymentState::Stopped)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spent deployment still runs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...the reservation only when its hour is over.
    assert!(matches!(
        state(&reserved).await,
        Ok(DeploymentState::Ready | DeploymentState::Pending)
    ));
    let ended = net.dispatcher().end_due_deployments(now_s() + 3_601).await;
    assert_eq!(
        ended,
        vec![(
            reserved.id(),
            crat_core::policy::lifecycle::End::LifetimeOver
        )]
    );
    assert!(matches!(
        state(&reserved).await,
        Ok(DeploymentState::Stopped)
    ));
    net.shutdown();
}

/// Holds the SQLite ledger's `file` with a second connection (`BEGIN IMMEDIATE`): the
/// dispatcher's writes wait for it past their busy timeout (5 s) and fail; its reads go on
/// (WAL). `ROLLBACK` on the connection frees the file.
fn hold_ledger(file: &std::path::Path) -> rusqlite::Connection {
    let other = rusqlite::Connection::open(file).unwrap();
    other.busy_timeout(Duration::from_secs(10)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    other
}

/// When `net`'s ledger records `deployment` as stopped, if it does.
fn stopped_in_ledger(net: &LocalNetwork, deployment: crat_core::id::DeploymentId) -> Option<u64> {
    let ledger = net.dispatcher().ledger();
    ledger
        .deployment(&deployment)
        .unwrap()
        .unwrap()
        .stopped_at_s
}

/// Waits (20 s at most) until `net`'s ledger records `deployment` as stopped.
async fn wait_stopped_in_ledger(net: &LocalNetwork, deployment: crat_core::id::DeploymentId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stopped_in_ledger(net, deployment).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{deployment} was never stopped in the ledger"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A deployment whose model no node can load is stopped in the ledger, and what is left of its
/// allowance refunded in time, even when the first stop cannot be written: another writer
/// holds the ledger's file (a real second SQLite connection, past the dispatcher's busy
/// timeout). The deployment reads as failed meanwhile, and the stop is written on a later
/// tick once the file is free — not only after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deployments_stop_is_written_once_the_ledger_takes_writes_again() {
    use crat_core::wire::DeploymentState;
    const UNLOADABLE: &[u8] =
        include_bytes!("../../backend/tests/data/malicious/unknown_operator.onnx");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let ledger_file = cfg.ledger_path();
    let net = network(cfg, dir.path()).await;
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(UNLOADABLE, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(10_000)).await.unwrap();

    // Another writer takes the file before the nodes have failed (they hear of the deployment
    // on their next heartbeat, a second apart).
    let other = hold_ledger(&ledger_file);
    assert_eq!(
        stopped_in_ledger(&net, d.id()),
        None,
        "stopped before the ledger was held"
    );
    // The nodes fail it; the dispatcher takes it out of service (it reads as failed, with the
    // nodes' reasons) and tries to write the stop, which waits for the file...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = d.info().await.unwrap();
        if info.state == DeploymentState::Failed {
            assert!(
                info.failure.as_ref().is_some_and(|f| !f.is_empty()),
                "{info:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not failed while the ledger was held: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...past the dispatcher's busy timeout (5 s): that write fails.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        stopped_in_ledger(&net, d.id()),
        None,
        "written while the ledger was held"
    );
    assert!(matches!(
        d.wait_ready(Duration::from_secs(1)).await,
        Err(crat_sdk::Error::ModelRejected(_))
    ));
    other.execute_batch("ROLLBACK").unwrap();

    // The file is free: a later tick writes the stop.
    wait_stopped_in_ledger(&net, d.id()).await;
    assert_eq!(d.info().await.unwrap().state, DeploymentState::Failed);
    assert_eq!(net.dispatcher().online_nodes(), 3, "every node is still up");
    net.shutdown();
}

/// An owner's undeploy whose stop cannot be written (another writer holds the ledger's file
/// past the dispatcher's busy timeout) is refused with an error, the deployment no longer
/// serves, and the dispatcher writes the stop on a later tick once the file is free: its
/// allowance is not held until a restart, and a restart would not serve it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeploy_whose_stop_could_not_be_written_is_finished_by_the_dispatcher() {
    use crat_core::wire::DeploymentState;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let ledger_file = cfg.ledger_path();
    let net = network(cfg, dir.path()).await;
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(10_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();

    let other = hold_ledger(&ledger_file);
    let refused = d.undeploy().await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        stopped_in_ledger(&net, d.id()),
        None,
        "written while the ledger was held"
    );
    assert_eq!(d.info().await.unwrap().state, DeploymentState::Stopped);
    assert!(
        d.infer(vec![NamedTensor::new("input", input(1))])
            .await
            .is_err()
    );
    other.execute_batch("ROLLBACK").unwrap();

    wait_stopped_in_ledger(&net, d.id()).await;
    assert_eq!(d.info().await.unwrap().state, DeploymentState::Stopped);
    net.shutdown();
}
