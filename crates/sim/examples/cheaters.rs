//! The cheater study of issue 7: with 10 %, 30 % and 49 % of providers cheating on all, half
//! or a tenth of their tasks, how many cheaters are caught within their first 1,000 tasks at
//! the default sampling rate, and what cheating earns against honest work. Prints a markdown
//! table (the one in `docs/verification.md`).
//!
//! `cargo run --release -p crat-sim --example cheaters [SEEDS]`

use crat_sim::{CheaterStats, Scenario, Simulation};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds: u64 = std::env::args().nth(1).map_or(Ok(4), |s| s.parse())?;
    println!(
        "| cheaters | wrong answers | caught within 1,000 tasks | expected | cheater / honest earnings | cheater / honest bonus |"
    );
    println!("|---|---|---|---|---|---|");
    for share_bps in [1_000u32, 3_000, 4_900] {
        for cheat_bps in [10_000u32, 5_000, 1_000] {
            let scenario = Scenario::from_toml(&format!(
                "name = \"cheaters\"\nrounds = 30\n[population]\nnodes = 1000\n\
                 [validation]\ncheater_share_bps = {share_bps}\ncheat_bps = {cheat_bps}\n\
                 [behaviour]\ndeparture_rounds = 0\n"
            ))?;
            let mut total = CheaterStats::default();
            let (mut earn_c, mut earn_h, mut bonus_c, mut bonus_h) = (0u128, 0u128, 0u128, 0u128);
            for seed in 1..=seeds {
                let mut sim = Simulation::new(&scenario, seed)?;
                while !sim.finished() {
                    sim.advance()?;
                }
                let s = CheaterStats::from_nodes(&sim.node_summaries(), 1_000);
                total.cheaters_with_tasks += s.cheaters_with_tasks;
                total.caught_within += s.caught_within;
                earn_c += u128::from(s.cheater_mean_usd_micro);
                earn_h += u128::from(s.honest_mean_usd_micro);
                bonus_c += u128::from(s.cheater_mean_bonus_usd_micro);
                bonus_h += u128::from(s.honest_mean_bonus_usd_micro);
            }
            // A wrong answer is sampled with probability s and caught unless the third node
            // is wrong too (f·c): P(caught within n) = 1 − (1 − s·c·(1 − f·c))^n, with f the
            // cheaters' share of capacity (≈ their share of nodes).
            let (s, c, f) = (
                f64::from(scenario.validation.sample_bps) / 1e4,
                f64::from(cheat_bps) / 1e4,
                f64::from(share_bps) / 1e4,
            );
            let expected = 1.0 - (1.0 - s * c * (1.0 - f * c)).powi(1_000);
            println!(
                "| {:.0} % | {:.0} % | {:.1} % ({} of {}) | {:.1} % | {:.3} | {:.3} |",
                f * 100.0,
                c * 100.0,
                100.0 * total.detection_rate(),
                total.caught_within,
                total.cheaters_with_tasks,
                100.0 * expected,
                earn_c as f64 / earn_h.max(1) as f64,
                bonus_c as f64 / bonus_h.max(1) as f64,
            );
        }
    }
    Ok(())
}
