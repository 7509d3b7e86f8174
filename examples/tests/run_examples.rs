//! Runs each example's walkthrough in self-contained mode with small limits, and checks what
//! it returns: the same code `cargo run -p crat-examples --example <name>` runs.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crat_core::wire::KeyStatus;
use crat_examples::{integrator, node_builder, operator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrator_deploys_infers_and_pays() {
    let credits = 1_000_000;
    let options = integrator::Options {
        batch: 24,
        concurrency: 4,
        allowance: 50_000,
    };
    let report = integrator::run(integrator::Target::Local { credits }, options)
        .await
        .unwrap();

    assert_eq!(
        report.model,
        crat_core::id::ModelId::of_bytes(crat_examples::TINY_CNN)
    );
    // The first task's probabilities: shape [1, 10], a softmax.
    assert_eq!(report.first_probs.shape(), &[1, 10]);
    let sum: f32 = report.first_probs.iter().sum();
    assert!((sum - 1.0).abs() < 1e-3, "probs sum to {sum}");
    // Every streamed task came back, in input order: tasks 0 and 20 share an image.
    assert_eq!(report.batch_classes.len(), 24);
    assert!(report.batch_classes.iter().all(|&c| c < 10));
    assert_eq!(report.batch_classes[0], report.batch_classes[20]);
    assert_eq!(report.stats.completed, 25);
    assert_eq!(report.stats.failed, 0);
    // Money: the allowance left the balance on deploy; the unspent part comes back only once
    // the usage window of the last leases has ended, not at undeploy.
    let [before, deployed, after] = report.balances.map(|c| c.get());
    assert_eq!(before, credits);
    assert_eq!(report.upfront.get(), 50_000);
    assert_eq!(deployed, before - 50_000);
    assert_eq!(after, deployed, "{:?}", report.balances);
    assert_eq!(report.key.status, KeyStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_builder_registers_and_runs_idle_workload() {
    let options = node_builder::Options {
        idle_after_s: 1,
        run_for: Some(Duration::from_secs(4)),
        ..node_builder::Options::self_contained()
    };
    let report = node_builder::run(options).await.unwrap();
    assert_eq!(report.registered, Some(true));
    assert!(!report.backend.is_empty());
    // The declared RTX 3090 (or a real GPU) rates above a CPU-only node.
    assert!(report.rating > 1, "rating {}", report.rating);
    assert!(report.idle_starts >= 1, "the idle workload never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_closes_a_round_and_pays_the_node() {
    let report = operator::run(operator::Options::self_contained())
        .await
        .unwrap();
    assert_eq!(report.balance.get(), 1_000_000);
    assert!(report.key.to_string().starts_with("sk_"));
    assert_eq!(report.rounds.len(), 1, "round 0 closed within 30 s");
    let round = &report.rounds[0];
    assert_eq!(round.record.index, 0);
    assert_eq!(round.record.length_s, 6);
    // The local node was online for the round: it is paid, and the payouts add up.
    assert_eq!(round.payouts.len(), 1);
    let total: u64 = round.payouts.iter().map(|p| p.total_usd_micro.get()).sum();
    assert!(total > 0);
    assert_eq!(total, round.record.paid_usd_micro.get());
}
