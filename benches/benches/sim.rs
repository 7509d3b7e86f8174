//! The simulator (issue 6): the event kernel's hold time with 10^5 pending events (goal
//! ≥ 10 M events/s), and whole rounds of 10,000 nodes with the default churn, demand and
//! validation models (goal: 1,000 rounds ≤ 2 s, i.e. ≤ 2 ms a round).
//!
//! `cargo bench -p crat-benches --bench sim`
//!
//! The 1,000,000-node × 100-round figure is a whole `crat sim run` (see the crat-sim docs):
//! it is dominated by crat-rewards closing each round.

use std::hint::black_box;
use std::time::Duration;

use crat_sim::kernel::{EventQueue, mix64};
use crat_sim::{Scenario, Simulation};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

const PENDING: u64 = 100_000;
const HOLDS: u64 = 100_000;

fn kernel(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim_kernel");
    g.throughput(Throughput::Elements(HOLDS));
    g.bench_function("hold_100k_pending", |b| {
        // The classic hold model: pop the earliest event, schedule one a random time later.
        let mut q: EventQueue<u32> = EventQueue::with_limit(PENDING as usize + 1);
        for i in 0..PENDING {
            q.schedule(mix64(i) % 1_000_000, i as u32).unwrap_or(());
        }
        let mut x = 1u64;
        b.iter(|| {
            for _ in 0..HOLDS {
                let (t, e) = q.pop().unwrap_or((0, 0));
                x = mix64(x);
                q.schedule(t + x % 1_000_000, e).unwrap_or(());
            }
            black_box(q.len())
        });
    });
    g.finish();
}

fn rounds(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim_rounds");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    const NODES: u64 = 10_000;
    const ROUNDS: u32 = 20;
    let scenario = Scenario::from_toml(&format!(
        "rounds = {ROUNDS}\n[population]\nnodes = {NODES}\n\
         [demand]\nper_request_clients = 500\nper_instance_clients = 100\n"
    ))
    .unwrap_or_default();
    g.throughput(Throughput::Elements(NODES * u64::from(ROUNDS)));
    g.bench_function("10k_nodes_x20_rounds", |b| {
        b.iter_batched(
            || Simulation::new(&scenario, 1),
            |sim| sim.and_then(Simulation::run_to_end).map(|r| r.rounds.len()),
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, kernel, rounds);
criterion_main!(benches);
