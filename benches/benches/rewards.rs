//! Closing a round with `crat-rewards`: 10,000, 100,000 and 1,000,000 nodes, each with one to
//! four online intervals (some overlapping, some reaching outside the round), random ratings,
//! CRAT balances, streaks and validations. Goal (issue 4): 1,000,000 nodes ≤ 200 ms and
//! 10,000 nodes ≤ 2 ms. Measured twice: nodes listed in random order, and in id order (the
//! order the multi-round driver keeps them in). Then the multi-round driver closing rounds
//! with results only (`RoundDetail::ResultsOnly`, what the simulator asks for: only the paid
//! ranks are put in order), one round an iteration, every round with the same activity.
//!
//! `cargo bench -p crat-benches --bench rewards`
//!
//! The allocator is mimalloc keeping freed memory for a second, as in the `crat` binary that
//! runs the dispatcher's round closer: each round's outcome buffer (128 MB at 1M nodes) then
//! reuses the previous round's pages instead of faulting in fresh zeroed ones.

use std::hint::black_box;
use std::time::Duration;

use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use crat_rewards::{
    CarriedState, Interval, NodeInput, NodeProfile, Params, Round, RoundDetail, RoundDriver,
    RoundInputs, compute,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

const DAY: u64 = 86_400;

/// A round of `n` nodes, the same for a given `n` on every run (fixed seed).
fn round(n: usize) -> RoundInputs {
    let mut rng = StdRng::seed_from_u64(0xC0FFEE ^ n as u64);
    let start = 1_700_000_000;
    let nodes = (0..n)
        .map(|_| {
            let intervals = rng.gen_range(1..=4);
            let online = (0..intervals)
                .map(|_| {
                    let s = start + rng.gen_range(0..DAY + 3_600) - 1_800;
                    Interval::new(s, s + rng.gen_range(0..DAY / 2))
                })
                .collect();
            NodeInput {
                id: NodeId::from_bytes(rng.r#gen()),
                rating: PowerRating::new(rng.gen_range(1..=5)).unwrap_or(PowerRating::MIN),
                registered_at_s: rng.gen_range(1_600_000_000..start),
                mining_income_usd_micro_per_day: MicroUsd::new(rng.gen_range(10_000..1_000_000)),
                crat_start_micro: MicroCrat::new(rng.gen_range(0..100_000_000)),
                streak_start: rng.gen_range(0..40),
                uptime_total_s_before: rng.gen_range(0..10_000_000),
                online,
                validations_ok: rng.gen_range(0..5),
                validations_failed: u64::from(rng.gen_ratio(1, 20)),
                crat_external_micro: MicroCrat::ZERO,
            }
        })
        .collect();
    RoundInputs {
        params: Params::default(),
        round: Round {
            index: 1,
            start_s: start,
            length_s: DAY,
            // $10,000 of client income: pool 8,000,000,000 µUSD pays about 1,264 ranks.
            income_usd_micro: MicroUsd::new(10_000_000_000),
            carry_in_usd_micro: MicroUsd::ZERO,
        },
        nodes,
    }
}

/// The same round with nodes listed in id order, as [`crat_rewards::RoundDriver`] keeps them
/// (and as a ledger query ordered by primary key returns them). Cloned so that each node's
/// intervals sit in memory in listing order, as they would after parsing.
fn id_ordered(inputs: &RoundInputs) -> RoundInputs {
    let mut sorted = inputs.clone();
    sorted.nodes.sort_unstable_by_key(|n| n.id);
    sorted.clone()
}

fn close_round(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    for (name, ordered) in [
        ("rewards/close_round", false),
        ("rewards/close_round_id_ordered", true),
    ] {
        let mut group = c.benchmark_group(name);
        for n in [10_000usize, 100_000, 1_000_000] {
            let inputs = if ordered {
                id_ordered(&round(n))
            } else {
                round(n)
            };
            if n >= 1_000_000 {
                group.sample_size(10);
                group.warm_up_time(Duration::from_secs(1));
                group.measurement_time(Duration::from_secs(8));
            }
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &inputs, |b, inputs| {
                b.iter(|| compute(black_box(inputs)).map(|o| o.aggregates))
            });
        }
        group.finish();
    }
}

fn driver_results_only(c: &mut Criterion) {
    crat_benches::retain_freed_memory_ms(1_000);
    let mut group = c.benchmark_group("rewards/driver_results_only");
    for n in [10_000usize, 100_000, 1_000_000] {
        let inputs = id_ordered(&round(n));
        // Five times the income of the rounds above, so that 2,827 ranks are paid (the bonus
        // schedule pays about √(2 × pool / minimum bonus) ranks): at 10,000 nodes about the
        // share the simulator's bench_10k pays (2,853 of 9,857 eligible).
        let income = MicroUsd::new(inputs.round.income_usd_micro.get() * 5);
        let first = inputs.round.start_s;
        let mut driver = RoundDriver::new(inputs.params.clone(), 1, first);
        driver.register_all(
            inputs
                .nodes
                .iter()
                .map(|node| {
                    let profile = NodeProfile {
                        id: node.id,
                        rating: node.rating,
                        registered_at_s: node.registered_at_s,
                        mining_income_usd_micro_per_day: node.mining_income_usd_micro_per_day,
                    };
                    let state = CarriedState {
                        crat_micro: node.crat_start_micro,
                        streak: node.streak_start,
                        uptime_total_s: node.uptime_total_s_before,
                    };
                    (profile, state)
                })
                .collect(),
        );
        if n >= 1_000_000 {
            group.sample_size(10);
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(8));
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                // The same activity, moved into the round being closed.
                let shift = driver.next_round().start_s - first;
                driver
                    .close_round(
                        income,
                        |i, mut slot| {
                            let node = &inputs.nodes[i];
                            slot.online().extend(
                                node.online
                                    .iter()
                                    .map(|iv| Interval::new(iv.start_s + shift, iv.end_s + shift)),
                            );
                            slot.set_validations(node.validations_ok, node.validations_failed);
                        },
                        RoundDetail::ResultsOnly,
                        |closed| closed.outcome.aggregates.paid_ranks,
                    )
                    .expect("the round closes")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, close_round, driver_results_only);
criterion_main!(benches);
