//! Wall-clock steps (issue 14, item 7): a real dispatcher and real nodes on loopback QUIC, all
//! reading a [`SteadyClock`] over a wall clock the test steps three days forward, back, and
//! three days back, while a client streams tasks and rounds close on the dispatcher's own
//! ticker.
//!
//! Read raw, the forward step marks every node offline (its last heartbeat looks three days
//! old), closes the 32,400 rounds of three days at once and expires every ticket; the step back
//! stamps income into rounds already closed, where it is never paid. On steady time none of
//! that happens: the nodes stay online and committed, exactly the rounds real time reached are
//! closed, and every credit charged lands in the round in which it was earned. A dispatcher
//! restarted while the wall clock is three days behind starts its clock at the ledger's latest
//! time, so no round closes early and no charge lands in a closed round.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use crat_core::clock::Clock;
use crat_core::tensor::NamedTensor;
use crat_dispatcher::Dispatcher;
use crat_rewards::{Interval, RoundInputs, compute};
use crat_sdk::ClientConfig;
use crat_testnet::{LocalNetwork, loopback_quic};
use crat_transport::quic::QuicTransport;
use crat_transport::{SteadyClock, SystemClock, SystemMonotonic};
use ed25519_dalek::SigningKey;

const DAY_S: i64 = 86_400;
const ROUND_S: u64 = 8;

/// The system's wall clock, stepped by the test: `offset_s` is added to every reading.
#[derive(Default)]
struct SteppedWall {
    offset_s: AtomicI64,
}

impl SteppedWall {
    fn step_to(&self, offset_s: i64) {
        self.offset_s.store(offset_s, Ordering::SeqCst);
    }
}

impl Clock for SteppedWall {
    fn now_s(&self) -> u64 {
        SystemClock
            .now_s()
            .saturating_add_signed(self.offset_s.load(Ordering::SeqCst))
    }

    fn now_ms(&self) -> u64 {
        SystemClock
            .now_ms()
            .saturating_add_signed(self.offset_s.load(Ordering::SeqCst).saturating_mul(1_000))
    }
}

/// Sleeps until the system clock reads `t_s`.
async fn until(t_s: u64) {
    let now = now_s();
    if t_s > now {
        tokio::time::sleep(Duration::from_secs(t_s - now)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_day_wall_clock_steps_lose_no_uptime_and_no_income() {
    let dir = tempfile::tempdir().unwrap();
    let wall = Arc::new(SteppedWall::default());
    let steady = Arc::new(SteadyClock::new(
        wall.clone(),
        Arc::new(SystemMonotonic::new()),
    ));
    let clock: Arc<dyn Clock> = steady.clone();

    let mut cfg = config(dir.path());
    let start = now_s() + 4;
    cfg.round_epoch_s = start;
    cfg.round_close_delay_s = 1;
    cfg.rewards.round_s = ROUND_S;
    cfg.rewards.peak_windows = vec![Interval::new(0, ROUND_S)];
    cfg.rewards.commit_downtime_s_max = 2;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let specs = specs(&["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3080"]);
    let net = LocalNetwork::start_on_clock(cfg.clone(), dir.path(), specs, clock.clone())
        .await
        .unwrap();
    let ledger = net.dispatcher().ledger().clone();
    let (_, key) = client_with(&net, 1_000_000).await;
    let client = crat_sdk::connect_quic_with(
        net.dispatcher_addr,
        net.dispatcher().id(),
        key,
        ClientConfig {
            clock: clock.clone(),
            ..ClientConfig::default()
        },
        loopback_quic(),
    )
    .await
    .unwrap();
    let model = client.upload_model(TINY, |_| {}).await.unwrap();
    let d = client.deploy(model, per_request(500_000)).await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();

    // A client streams tasks through rounds 0 and 1 (from round 0's start: income before the
    // first round belongs to none) and stops 2 s before round 1 ends, so
    // that its last tasks' usage and acknowledgements arrive within round 1.
    until(start).await;
    let streaming = Arc::new(AtomicBool::new(true));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stream = tokio::spawn({
        let (streaming, served, failed) = (streaming.clone(), served.clone(), failed.clone());
        async move {
            let mut i = 0;
            while streaming.load(Ordering::SeqCst) {
                match d.infer(vec![NamedTensor::new("input", input(i))]).await {
                    Ok(_) => served.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        tracing::warn!(error = %e, "task failed");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            d
        }
    });

    // The wall clock steps 3 days ahead 2 s into round 0, back 2 s later, then 3 days behind
    // in round 0's last seconds and back 3 s into round 1. Each step lasts longer than the
    // dispatcher's silence limit (3 missed heartbeats of 1 s) and than a tick.
    let mut online_during_steps = Vec::new();
    let mut skews = Vec::new();
    for (at, offset) in [(2, 3 * DAY_S), (4, 0), (6, -3 * DAY_S), (ROUND_S + 3, 0)] {
        until(start + at).await;
        wall.step_to(offset);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        online_during_steps.push(net.dispatcher().online_nodes());
        skews.push(steady.skew_s());
        assert!(
            ledger.last_round().unwrap().is_none_or(|r| r.index == 0),
            "no round past real time closed: {:?}",
            ledger.last_round().unwrap().map(|r| r.index)
        );
    }
    assert_eq!(online_during_steps, [2, 2, 2, 2], "nodes stayed online");
    assert!(
        skews[0].abs_diff(3 * DAY_S) <= 2 && skews[2].abs_diff(-3 * DAY_S) <= 2,
        "the steps were seen as skew: {skews:?}"
    );

    until(start + 2 * ROUND_S - 2).await;
    streaming.store(false, Ordering::SeqCst);
    let d = stream.await.unwrap();
    let (served, failed) = (served.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(served > 50, "{served} tasks served");
    assert_eq!(failed, 0, "no task failed on expired tickets");

    // Rounds 0 and 1 close on the ticker, and only they.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ledger.round(1).unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "round 1 not closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ledger.last_round().unwrap().unwrap().index, 1);
    let mut round_income_usd = 0;
    for index in [0, 1] {
        let record = ledger.round(index).unwrap().unwrap();
        let inputs = RoundInputs::from_json(&record.inputs_json).unwrap();
        assert_eq!(inputs.round.start_s, start + index * ROUND_S);
        let outcome = compute(&inputs).unwrap();
        assert_eq!(inputs.nodes.len(), 2);
        for n in &outcome.nodes {
            assert!(
                n.committed,
                "round {index}: uptime kept through the steps: {n:?}"
            );
        }
        round_income_usd += inputs.round.income_usd_micro.get();
    }
    // Every credit charged was charged inside rounds 0 and 1, and was counted by them.
    let (tasks, charged) = ledger.usage_totals(&d.id()).unwrap();
    assert_eq!(tasks, served, "every task served was billed");
    assert!(charged.get() > 0);
    let all = ledger.income(0, u64::MAX).unwrap();
    assert_eq!(
        ledger.income(start, start + 2 * ROUND_S).unwrap(),
        all,
        "no charge outside the rounds in which it was earned"
    );
    assert_eq!(
        cfg.pricing.credits_to_usd(all).unwrap().get(),
        round_income_usd,
        "the closed rounds counted every credit charged"
    );
    let latest = ledger.latest_time_s().unwrap();
    drop(d);
    drop(client);
    drop(ledger);
    net.shutdown();
    drop(net);

    // A restart while the wall clock is 3 days behind: the fresh clock starts at the ledger's
    // latest time, not at the wall clock, so nothing closes early and time does not go back.
    let behind = Arc::new(SteppedWall::default());
    behind.step_to(-3 * DAY_S);
    let fresh = Arc::new(SteadyClock::new(
        behind.clone(),
        Arc::new(SystemMonotonic::new()),
    ));
    let key = SigningKey::from_bytes(&rand::random());
    let transport =
        QuicTransport::bind("127.0.0.1:0".parse().unwrap(), &key, loopback_quic()).unwrap();
    let restarted = Dispatcher::open_on_clock(cfg, key, transport, None, fresh.clone()).unwrap();
    let now = fresh.now_s();
    assert!(
        now >= latest && now > start + 2 * ROUND_S,
        "restarted at {now}, the ledger's latest time is {latest}"
    );
    assert!(fresh.skew_s() <= -3 * DAY_S + 30, "{}", fresh.skew_s());
    assert!(restarted.close_due_rounds().await.unwrap().is_empty());
    restarted.close();
}
