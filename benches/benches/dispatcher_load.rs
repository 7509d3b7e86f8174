//! The dispatcher load test (issue 18, item 4): `crat dispatcher` (a release build, a separate
//! process) with `CRAT_LOAD_NODES` simulated nodes (default 100,000) heartbeating at
//! `CRAT_LOAD_HEARTBEAT_S` (default 10 s), then SDK clients leasing while the nodes report
//! usage. Prints the dispatcher's CPU per core, memory per node, p50/p99 handling latencies,
//! leases/s, usage charges/s and ledger calls/s. Settings: [`crat_benches::load::LoadConfig`].
//!
//! ```text
//! cargo build --release -p crat-cli
//! ulimit -n 65536
//! cargo bench -p crat-benches --bench dispatcher_load                       # SQLite
//! CRAT_LOAD_LEDGER=postgres://… cargo bench -p crat-benches --bench dispatcher_load
//! ```

use crat_benches::load::{LoadConfig, run};

#[global_allocator]
static GLOBAL: crat_benches::MiMalloc = crat_benches::MiMalloc;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; a filter makes no sense for one scenario.
    let config = LoadConfig::from_env()?;
    println!(
        "dispatcher load: {} nodes, heartbeat {} s, ledger {}, crat {}",
        config.nodes,
        config.heartbeat_interval_s,
        config.ledger.name(),
        config.bin.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&config))?;
    println!("{report}");
    Ok(())
}
