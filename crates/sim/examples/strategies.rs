//! The study of issue 13, item 8: hardware liars, usage inventors, receipt withholders and
//! input framers, each 10 % of 1,000 providers (framers: a share of spot checks) over 30
//! one-day rounds, against honest providers with the same GPUs. Prints the markdown table of
//! `docs/verification.md`.
//!
//! `cargo run --release -p crat-sim --example strategies [SEEDS]`

use crat_sim::{PopulationStats, Scenario, Simulation, Strategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds: u64 = std::env::args().nth(1).map_or(Ok(4), |s| s.parse())?;
    let rows: [(&str, Strategy, &str); 9] = [
        (
            "liars, one class up, card at 100 % of its peak",
            Strategy::HardwareLiar,
            "liar_share_bps = 1000",
        ),
        (
            "liars, one class up, card at 70 %",
            Strategy::HardwareLiar,
            "liar_share_bps = 1000\nliar_speed_pct = 70",
        ),
        (
            "liars claiming an A100",
            Strategy::HardwareLiar,
            "liar_share_bps = 1000\nliar_claim_gpu = \"NVIDIA A100\"",
        ),
        (
            "liars claiming a B200",
            Strategy::HardwareLiar,
            "liar_share_bps = 1000\nliar_claim_gpu = \"NVIDIA B200\"",
        ),
        (
            "inventors, as many tasks again",
            Strategy::UsageInventor,
            "inventor_share_bps = 1000",
        ),
        (
            "withholders, saving 1 % of electricity",
            Strategy::ReceiptWithholder,
            "withholder_share_bps = 1000",
        ),
        (
            "withholders, saving 10 % of electricity",
            Strategy::ReceiptWithholder,
            "withholder_share_bps = 1000\nwithholder_saving_bps = 1000",
        ),
        (
            "framers, 10 % of spot checks",
            Strategy::Honest,
            "framer_task_bps = 1000",
        ),
        (
            "framers, all spot checks",
            Strategy::Honest,
            "framer_task_bps = 10000",
        ),
    ];
    println!(
        "| strategy | nodes | caught | earnings / honest | bonus / honest | CRAT / honest | what the rule did |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, strategy, table) in rows {
        let scenario = |strategies: &str| {
            Scenario::from_toml(&format!(
                "name = \"strategies\"\nrounds = 30\n[population]\nnodes = 1000\n\
                 [behaviour]\ndeparture_rounds = 0\n[strategies]\n{strategies}\n"
            ))
        };
        let with = scenario(table)?;
        let without = scenario("")?;
        let (mut nodes, mut caught) = (0u64, 0u64);
        let (mut own, mut base) = ([0u128; 3], [0u128; 3]);
        let (mut attempted, mut charged, mut saved, mut refused) = (0u64, 0u64, 0u64, 0u64);
        let mut honest_failed = 0u64;
        for seed in 1..=seeds {
            let mut sim = Simulation::new(&with, seed)?;
            while !sim.finished() {
                sim.advance()?;
            }
            let summaries = sim.node_summaries();
            for m in &sim.report().rounds {
                attempted += m.strategies.invented_credits_attempted;
                charged += m.strategies.invented_credits_charged;
                saved += m.strategies.withholder_saved_usd_micro;
                refused += m.strategies.framed_reports_refused;
            }
            honest_failed += summaries
                .iter()
                .filter(|n| n.strategy == Strategy::Honest)
                .map(|n| n.validations_failed)
                .sum::<u64>();
            if strategy == Strategy::Honest {
                // Framers are clients: compare honest nodes with and without them.
                let mut clean = Simulation::new(&without, seed)?;
                while !clean.finished() {
                    clean.advance()?;
                }
                let a = PopulationStats::from_nodes(&summaries, Strategy::Honest);
                let b = PopulationStats::from_nodes(&clean.node_summaries(), Strategy::Honest);
                nodes += a.nodes;
                for (i, (x, y)) in [
                    (a.mean_usd_micro, b.mean_usd_micro),
                    (a.mean_bonus_usd_micro, b.mean_bonus_usd_micro),
                    (a.mean_crat_micro, b.mean_crat_micro),
                ]
                .into_iter()
                .enumerate()
                {
                    own[i] += u128::from(x) * u128::from(a.nodes);
                    base[i] += u128::from(y) * u128::from(a.nodes);
                }
                continue;
            }
            let s = PopulationStats::from_nodes(&summaries, strategy);
            nodes += s.nodes;
            caught += s.caught;
            let n = u128::from(s.nodes);
            own[0] += u128::from(s.mean_usd_micro) * n;
            own[1] += u128::from(s.mean_bonus_usd_micro) * n;
            own[2] += u128::from(s.mean_crat_micro) * n;
            base[0] += u128::from(s.honest_usd_micro) * n;
            base[1] += u128::from(s.honest_bonus_usd_micro) * n;
            base[2] += u128::from(s.honest_crat_micro) * n;
        }
        // A withholder's savings count as earnings.
        own[0] += u128::from(saved);
        let ratio = |i: usize| own[i] as f64 / base[i].max(1) as f64;
        let rule = match strategy {
            Strategy::HardwareLiar => "paid the class its card proves".to_string(),
            Strategy::UsageInventor => {
                format!("{attempted} invented credits reported, {charged} charged")
            }
            Strategy::ReceiptWithholder => format!(
                "slashed and excluded; saved {:.2} USD a node over the run",
                saved as f64 / 1e6 / nodes.max(1) as f64
            ),
            _ => format!("{refused} framed reports refused, {honest_failed} honest failures"),
        };
        let caught = if strategy == Strategy::Honest {
            format!("{honest_failed} honest nodes failed")
        } else {
            format!("{:.1} %", 100.0 * caught as f64 / nodes.max(1) as f64)
        };
        println!(
            "| {label} | {nodes} | {caught} | {:.3} | {:.3} | {:.3} | {rule} |",
            ratio(0),
            ratio(1),
            ratio(2)
        );
    }
    Ok(())
}
