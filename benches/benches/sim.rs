//! The simulator (issue 6): whole rounds of 10,000 nodes with the default churn, demand and
//! validation models (goal: 1,000 rounds ≤ 2 s, i.e. ≤ 2 ms a round).
//!
//! `cargo bench -p crat-benches --bench sim`
//!
//! The 1,000,000-node × 100-round figure is a whole `crat sim run` (see
//! `docs/simulator.md`): it is dominated by crat-rewards closing each round.

use std::time::Duration;

use crat_sim::{Scenario, Simulation};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

fn rounds(c: &mut Criterion) {
    // The memory settings of `crat sim run`.
    crat_benches::retain_freed_memory_ms(1_000);
    crat_benches::huge_pages_off_unless_asked();
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

criterion_group!(benches, rounds);
criterion_main!(benches);
