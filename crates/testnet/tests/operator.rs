//! The node operator's issue (16): a network of one node serves a per-request deployment
//! (degraded, the client told why) and tops it up when a second node joins; a node asks the
//! dispatcher how it stands after rounds closed and gets the ledger's numbers.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crat_core::id::PeerAddr;
use crat_core::tensor::NamedTensor;
use crat_core::wire::{
    DeploymentState, DispatcherReply, ErrorCode, NodeRequest, STANDING_ROUNDS_MAX,
};
use crat_node::standing::{StandingError, ask_standing};
use crat_rewards::{Interval, RoundOutcome};
use crat_testnet::{LocalNetwork, loopback_quic};
use crat_transport::quic::QuicTransport;
use crat_transport::{ConnectionExt, Conversation, FrameLimits};
use ed25519_dalek::SigningKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_network_serves_a_per_request_deploy_degraded_until_a_node_joins() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    assert_eq!(cfg.dispatch.replicas, 2, "the default wants two replicas");
    let mut net = LocalNetwork::start(cfg, dir.path(), specs(&["NVIDIA GeForce RTX 3090"]))
        .await
        .unwrap();
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();

    // A per-instance plan buys a rate: refused rather than sold short.
    let refused = client.deploy(model, per_instance()).await.err().unwrap();
    assert!(
        matches!(refused, crat_sdk::Error::NoCapacity(_)),
        "{refused:?}"
    );

    // A per-request plan is created short, with the reason, and served by the one node.
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    let info = d.info().await.unwrap();
    let why = info.shortfall.clone().unwrap();
    assert!(
        why.starts_with("1 of 2 replicas placed: the network has 1 node"),
        "{why}"
    );
    let info = d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(info.state, DeploymentState::Degraded);
    assert_eq!((info.replicas_ready, info.replicas_wanted), (1, 2));
    assert!(info.shortfall.is_some());
    for i in 0..5 {
        let out = d
            .infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
    }

    // A second node joins: the deployment gets its replica and is ready, nothing short.
    net.add_node(specs(&["NVIDIA GeForce RTX 3080"]).remove(0))
        .unwrap();
    net.wait_online(2, Duration::from_secs(30)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info = d.info().await.unwrap();
        if info.state == DeploymentState::Ready {
            break info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not topped up: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((info.replicas_ready, info.replicas_wanted), (2, 2));
    assert_eq!(info.shortfall, None);
    d.infer(vec![NamedTensor::new("input", input(99))])
        .await
        .unwrap();
    net.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_its_standing_and_the_ledger_s_earnings_after_rounds_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let start = now_s();
    cfg.round_epoch_s = start;
    cfg.round_close_delay_s = 1;
    cfg.rewards.round_s = 4;
    cfg.rewards.peak_windows = vec![Interval::new(0, 4)];
    cfg.rewards.commit_downtime_s_max = 3;
    cfg.standing_estimate_ms = 0;
    // Deadlines these CPU nodes meet, so that their declared GPUs are proven and rounds pay.
    cfg.hardware = crat_core::policy::hardware::ProofConfig {
        allowance_ms: 30_000,
        ..crat_core::policy::hardware::ProofConfig::test_scale()
    };
    let mut net = LocalNetwork::start(cfg, dir.path(), Vec::new())
        .await
        .unwrap();
    let key = SigningKey::from_bytes(&rand::random());
    let spec = specs(&["NVIDIA GeForce RTX 3090"]).remove(0);
    net.add_node_keyed(spec, key.clone(), |_| {}).unwrap();
    net.add_node(specs(&["NVIDIA GeForce RTX 3080"]).remove(0))
        .unwrap();
    net.wait_online(2, Duration::from_secs(30)).await.unwrap();
    let (client, _) = client_with(&net, 1_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(100_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    for i in 0..20 {
        d.infer(vec![NamedTensor::new("input", input(i))])
            .await
            .unwrap();
    }

    // Two rounds closed by the dispatcher's own ticker.
    let ledger = net.dispatcher().ledger().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while ledger.round(1).unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "rounds not closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let node = &net.nodes[0];
    let standing = node.node.standing(STANDING_ROUNDS_MAX).await.unwrap();
    assert_eq!(standing.node, node.id());
    assert!(standing.online);

    // Earnings per closed round are the stored outcomes, exactly.
    assert!(standing.closed.len() >= 2, "{:?}", standing.closed);
    let indices: Vec<u64> = standing.closed.iter().map(|r| r.index).collect();
    assert!(indices.windows(2).all(|w| w[0] > w[1]), "newest first");
    for r in &standing.closed {
        let record = ledger.round(r.index).unwrap().unwrap();
        assert_eq!(r.start_s, record.start_s);
        let outcome = RoundOutcome::from_json(&record.outcome_json).unwrap();
        let o = outcome.nodes.iter().find(|o| o.id == node.id()).unwrap();
        assert_eq!(
            (
                r.uptime_s,
                r.committed,
                r.rank,
                r.guaranteed_usd_micro,
                r.bonus_usd_micro
            ),
            (
                o.uptime_s,
                o.committed,
                o.rank,
                o.guaranteed_usd_micro,
                o.bonus_usd_micro
            )
        );
        assert_eq!(
            (r.crat_issued_micro, r.crat_slashed_micro, r.crat_end_micro),
            (o.crat_issued_micro, o.crat_slashed_micro, o.crat_end_micro)
        );
    }
    let paid: u64 = standing
        .closed
        .iter()
        .map(|r| r.guaranteed_usd_micro.get() + r.bonus_usd_micro.get())
        .sum();
    assert!(paid > 0, "a proven, committed node earns: {standing:?}");

    // Proven hardware: what the ledger holds for the node (never its claim).
    let record = ledger.node(&node.id()).unwrap().unwrap();
    assert!(standing.proven.challenged);
    assert!(standing.challenges_passed >= 1);
    assert_eq!(standing.proven.rating.get(), record.rating);
    assert_eq!(
        standing.proven.mining_income_usd_micro_per_day,
        record.mining_income_usd_micro_per_day
    );
    assert_eq!(standing.proven.gpus.len(), 1);
    // CRAT, streak and uptime carried by the ledger; within a second the round may close.
    assert!(standing.crat_micro <= record.crat_micro);
    assert!(standing.uptime_total_s <= record.uptime_total_s);

    // The running round so far.
    let clock = crat_dispatcher::rounds::RoundClock {
        epoch_s: start,
        round_s: 4,
    };
    let round = &standing.round;
    assert!(round.index >= 2 && round.index <= clock.index_at(now_s()));
    assert_eq!(round.start_s, clock.start(round.index));
    assert_eq!(round.length_s, 4);
    assert!(round.elapsed_s >= 1 && round.elapsed_s <= 4);
    assert!(round.uptime_s <= round.elapsed_s);
    let served_total = ledger.tasks_served(&node.id(), 0, u64::MAX).unwrap();
    assert!(served_total > 0, "the node served charged tasks");
    assert!(round.tasks_served <= served_total);

    // An operator's tool holding the node's key asks on its own connection, without
    // registering (the running node is not disturbed), and the rounds asked are bounded.
    let tool = QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, loopback_quic()).unwrap();
    let addr = PeerAddr::from(net.dispatcher_addr);
    let id = net.dispatcher().id();
    let again = ask_standing(&tool, node.id(), &addr, &id, 1, FrameLimits::default())
        .await
        .unwrap();
    assert_eq!(again.node, node.id());
    assert_eq!(again.closed.len(), 1);
    assert_eq!(again.closed[0], standing.closed[0]);
    let too_many = ask_standing(
        &tool,
        node.id(),
        &addr,
        &id,
        STANDING_ROUNDS_MAX + 1,
        FrameLimits::default(),
    )
    .await;
    assert!(matches!(
        too_many,
        Err(StandingError::TooManyRounds { asked }) if asked == STANDING_ROUNDS_MAX + 1
    ));
    // The dispatcher enforces the cap too.
    let conn = crat_transport::Transport::connect(&tool, &addr, &id)
        .await
        .unwrap();
    let reply: DispatcherReply = conn
        .call(
            &NodeRequest::Standing {
                rounds: STANDING_ROUNDS_MAX + 1,
            },
            Conversation::NodeDispatcher,
            FrameLimits::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(&reply, DispatcherReply::Error(e) if e.code == ErrorCode::BadRequest),
        "{reply:?}"
    );
    assert_eq!(net.dispatcher().online_nodes(), 2);
    net.shutdown();
}

/// STOP under a stream of tasks (`Node::stop`, what the dashboard's button does): no task
/// fails (the stopping node answers `Busy` and clients go to the other replica), the tasks
/// in flight finish, the dispatcher counts the node offline at once, every task is charged
/// exactly once after the usage window (the stopped node's usage reported before it left),
/// and START brings it back online.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_under_load_fails_no_task_and_comes_back_on_start() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crat_dispatcher::DispatcherConfig;
    use crat_node::runtime::NodeMode;

    const TASKS: u32 = 400;
    const STOP_AT: u32 = 150;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Short tickets, so that their usage window ends within the test.
    cfg.ticket_lifetime_s = 4;
    cfg.usage_grace_s = 2;
    let net = LocalNetwork::start(
        cfg,
        dir.path(),
        specs(&["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3080"]),
    )
    .await
    .unwrap();
    net.wait_online(2, Duration::from_secs(30)).await.unwrap();
    let (client, _) = client_with(&net, 10_000_000).await;
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let allowance = 1_000_000;
    let d = client.deploy(model, per_request(allowance)).await.unwrap();
    let info = d.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(info.replicas_ready, 2);
    let stopping = net.nodes[0].node.clone();
    assert_eq!(stopping.mode(), NodeMode::Online);

    // 8 tasks in flight; the first node is stopped when task STOP_AT is issued.
    let issued = Arc::new(AtomicU32::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = Arc::new(std::sync::Mutex::new(Some(stop_tx)));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (d, issued, stop_tx) = (d.clone(), issued.clone(), stop_tx.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= TASKS {
                    return;
                }
                if i == STOP_AT
                    && let Some(tx) = stop_tx.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
                d.infer(vec![NamedTensor::new("input", input(i))])
                    .await
                    .unwrap_or_else(|e| panic!("task {i} failed: {e}"));
            }
        }));
    }
    stop_rx.await.unwrap();
    let report = stopping.stop(Duration::from_secs(10)).await;
    assert!(!report.already_stopped);
    assert_eq!(report.tasks_unfinished, 0, "{report:?}");
    assert_eq!(stopping.mode(), NodeMode::Stopped);
    // The dispatcher knows at once (the connection closed), not after missed heartbeats.
    let standing = stopping.standing(1).await.unwrap();
    assert!(!standing.online, "{standing:?}");
    for w in workers {
        w.await.unwrap();
    }
    let stats = d.stats();
    assert_eq!(
        (stats.completed, stats.failed),
        (u64::from(TASKS), 0),
        "{stats:?}"
    );
    // A second STOP does nothing.
    assert!(stopping.stop(Duration::from_secs(1)).await.already_stopped);

    // Every task charged exactly once, after the tickets' usage window.
    d.flush_acks().await.unwrap();
    let pricing = DispatcherConfig::new("x").pricing;
    let cost = pricing
        .request_cost(TINY.len() as u64, 28 * 28 * 4)
        .unwrap()
        .get();
    let expected = allowance - u64::from(TASKS) * cost;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while d.info().await.unwrap().allowance_left.get() > expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "allowance {} after the usage window, {expected} expected",
            d.info().await.unwrap().allowance_left.get()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(d.info().await.unwrap().allowance_left.get(), expected);

    // START: registered again, online in the dispatcher's eyes.
    stopping.start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stopping.mode() != NodeMode::Online {
        assert!(tokio::time::Instant::now() < deadline, "not online again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopping.standing(1).await.unwrap().online);
}
