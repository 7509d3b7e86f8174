//! A researcher's run in a few lines: load a scenario, run it with a seed, read the metrics.
//!
//! `cargo run --release -p crat-sim --example scenario_run -- scenarios/baseline.toml`

use crat_sim::{Scenario, Simulation};

// The allocator and settings of the `crat` binary, so timings match `crat sim run`.
#[global_allocator]
static GLOBAL: crat_alloc::MiMalloc = crat_alloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    crat_alloc::retain_freed_memory_ms(crat_alloc::RETAIN_FREED_MEMORY_MS);
    crat_alloc::huge_pages_off_unless_asked();
    let started = std::time::Instant::now();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "scenarios/baseline.toml".into());
    let scenario = Scenario::from_toml(&std::fs::read_to_string(&path)?)?;
    let report = Simulation::new(&scenario, scenario.seed)?.run_to_end()?;
    for m in report.rounds.iter().step_by(10) {
        println!(
            "round {:>4}: income ${:>10.2}  guaranteed ${:>9.2}  bonus ${:>10.2}  paid ranks {:>5}  \
             SLA {:.3}  retention {:.3}  Gini {:.3}",
            m.round,
            m.income_usd_micro as f64 / 1e6,
            m.guaranteed_usd_micro as f64 / 1e6,
            m.bonus_usd_micro as f64 / 1e6,
            m.paid_ranks,
            m.sla_fulfilment(),
            m.retention(),
            m.gini_earnings,
        );
    }
    print!("{}", report.summary_json());
    eprintln!(
        "{} rounds in {:.2} s",
        report.rounds.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
