//! The strategies beside the cheaters (issue 13, item 8): hardware liars are paid what their
//! card proves, usage inventors are charged nothing beyond their clients' acknowledgements,
//! receipt withholders are caught on every checked task, input framers cost no honest node
//! anything; runs stay deterministic, and runs without them write the bytes they always wrote.
#![allow(clippy::unwrap_used)]

use crat_sim::{PopulationStats, Report, Scenario, Simulation, Strategy, write_nodes_csv};

/// FNV-1a, 64 bits: a fingerprint of output bytes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The rounds CSV, nodes CSV and summary of a run through `advance`.
fn run(s: &Scenario, seed: u64) -> (Vec<u8>, Vec<u8>, String, Report, Vec<crat_sim::NodeSummary>) {
    let mut sim = Simulation::new(s, seed).unwrap();
    while !sim.finished() {
        sim.advance().unwrap();
    }
    let mut rounds = Vec::new();
    sim.report().write_rounds_csv(&mut rounds).unwrap();
    let summaries = sim.node_summaries();
    let mut nodes = Vec::new();
    write_nodes_csv(&summaries, &mut nodes).unwrap();
    (
        rounds,
        nodes,
        sim.report().summary_json(),
        sim.report().clone(),
        summaries,
    )
}

/// `scenarios/cheaters_10pct.toml` writes, byte for byte, what it wrote before the strategies
/// existed (fingerprints taken from a run of the commit before them).
#[test]
fn runs_without_strategies_write_the_bytes_they_always_wrote() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scenarios/cheaters_10pct.toml"
    ))
    .unwrap();
    let s = Scenario::from_toml(&text).unwrap();
    let (rounds, nodes, summary, _, _) = run(&s, s.seed);
    let scenario = serde_json::to_string_pretty(&s).unwrap();
    assert_eq!(
        (rounds.len(), fnv(&rounds)),
        (68_775, 0x503f_48c7_edf4_00c2)
    );
    assert_eq!((nodes.len(), fnv(&nodes)), (157_151, 0x9a45_e318_9fd1_91e4));
    assert_eq!(
        (summary.len(), fnv(summary.as_bytes())),
        (862, 0x7559_7177_70ae_2240)
    );
    assert_eq!(
        (scenario.len(), fnv(scenario.as_bytes())),
        (2_771, 0xb00f_fa60_5b2e_06fe)
    );
}

fn small(extra: &str) -> Scenario {
    Scenario::from_toml(&format!(
        "rounds = 8\n[population]\nnodes = 400\n[behaviour]\ndeparture_rounds = 0\n{extra}"
    ))
    .unwrap()
}

/// Liars are paid what their card proves: one class up at full speed is within the
/// deadlines' margin (paid as claimed), slower it proves less than its own card, and a claim
/// more than 4 times its card's throughput proves nothing.
#[test]
fn liars_are_paid_the_class_they_prove() {
    let one_gpu = "[population]\nnodes = 200\ngpu_mix = [{gpu = \"NVIDIA GeForce GTX 1650\", weight = 1}]\n\
                   [churn]\nmodel = \"none\"\n[demand]\nper_request_clients = 0\nper_instance_clients = 0\n";
    let daily = |strategies: &str| {
        let s = Scenario::from_toml(&format!("rounds = 2\n{one_gpu}[strategies]\n{strategies}"))
            .unwrap();
        let mut sim = Simulation::new(&s, 4).unwrap();
        let closed = sim.step().unwrap();
        let summaries = sim.node_summaries();
        let mut by_strategy = std::collections::BTreeMap::<&str, Vec<u64>>::new();
        for n in &closed.inputs.nodes {
            let who = summaries.iter().find(|x| x.id == n.id).unwrap();
            by_strategy
                .entry(who.strategy.name())
                .or_default()
                .push(n.mining_income_usd_micro_per_day.get());
            // Committed all round: paid exactly the income it proved.
            let o = closed.outcome.nodes.iter().find(|o| o.id == n.id).unwrap();
            assert_eq!(o.guaranteed_usd_micro, n.mining_income_usd_micro_per_day);
        }
        by_strategy
    };
    let all = |v: &[u64], x: u64| !v.is_empty() && v.iter().all(|i| *i == x);
    // GTX 1650 (2.9 TFLOPS, 45,000 µUSD a day) claiming a GTX 1060 (3.8 TFLOPS, 55,000).
    let up = daily("liar_share_bps = 5000\n");
    assert!(all(&up["honest"], 45_000), "{up:?}");
    assert!(all(&up["hardware_liar"], 55_000), "{up:?}");
    // At 60 % of its peak it misses the claim and proves the lowest-paid rating-1 card met.
    let slow = daily("liar_share_bps = 5000\nliar_speed_pct = 60\n");
    assert!(
        slow["hardware_liar"].iter().all(|i| *i < 45_000),
        "{slow:?}"
    );
    // Claiming a B200 (75 TFLOPS): nothing proven, nothing paid.
    let far = daily("liar_share_bps = 5000\nliar_claim_gpu = \"NVIDIA B200\"\n");
    assert!(all(&far["hardware_liar"], 0), "{far:?}");
    assert!(all(&far["honest"], 45_000), "{far:?}");
}

/// Inventors report as many invented tasks again as they served; none is charged beyond
/// what their clients acknowledged, so every metric of the run is what it is without them.
#[test]
fn inventors_are_charged_nothing_beyond_acknowledgements() {
    let with = small("[strategies]\ninventor_share_bps = 3000\ninventor_inflation_bps = 10000\n");
    let without = small("");
    let (rounds_with, _, _, report, summaries) = run(&with, 6);
    let (rounds_without, _, _, _, _) = run(&without, 6);
    let attempted: u64 = report
        .rounds
        .iter()
        .map(|m| m.strategies.invented_credits_attempted)
        .sum();
    let charged: u64 = report
        .rounds
        .iter()
        .map(|m| m.strategies.invented_credits_charged)
        .sum();
    assert!(attempted > 0);
    assert_eq!(charged, 0);
    // Same income, same payouts, same everything: the rows both runs write are equal.
    let text = String::from_utf8(rounds_with).unwrap();
    let common: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("inventors_") && !l.contains("invented_"))
        .collect();
    assert_eq!(
        common.join("\n") + "\n",
        String::from_utf8(rounds_without).unwrap()
    );
    assert!(text.contains(&format!(
        "invented_credits_attempted,all,{}",
        report.rounds[0].strategies.invented_credits_attempted
    )));
    let inventors = summaries
        .iter()
        .filter(|n| n.strategy == Strategy::UsageInventor)
        .count();
    assert!((80..=160).contains(&inventors), "{inventors} of 400");
    assert_eq!(
        report.rounds[0].strategies.inventors.active,
        inventors as u64
    );
}

/// Withholders fail every checked task: caught within 1,000 tasks as often as
/// `1 − (1 − s)^1000` says (s = 1 %: 99.996 %), slashed, and never paid a bonus.
#[test]
fn withholders_are_caught_like_cheaters_who_are_always_wrong() {
    let s = small("[strategies]\nwithholder_share_bps = 2000\n");
    let (_, nodes_csv, summary, report, summaries) = run(&s, 9);
    let withholders: Vec<_> = summaries
        .iter()
        .filter(|n| n.strategy == Strategy::ReceiptWithholder)
        .collect();
    let with_tasks: Vec<_> = withholders
        .iter()
        .filter(|n| n.tasks_served >= 1_000)
        .collect();
    assert!(with_tasks.len() > 40, "{}", with_tasks.len());
    assert!(
        with_tasks
            .iter()
            .all(|n| n.caught_at_task.is_some_and(|t| t < 1_000)),
        "every withholder is caught within its first 1,000 tasks"
    );
    assert!(
        summaries
            .iter()
            .filter(|n| n.strategy == Strategy::Honest)
            .all(|n| n.validations_failed == 0)
    );
    let stats = PopulationStats::from_nodes(&summaries, Strategy::ReceiptWithholder);
    assert_eq!(stats.caught, stats.nodes);
    assert_eq!(stats.mean_bonus_usd_micro, 0);
    assert!(stats.honest_bonus_usd_micro > 0);
    assert!(
        stats.mean_crat_micro < stats.honest_crat_micro / 2,
        "{stats:?}"
    );
    let total_caught: u64 = report
        .rounds
        .iter()
        .map(|m| m.strategies.withholders.rounds_caught)
        .sum();
    let total_active: u64 = report
        .rounds
        .iter()
        .map(|m| m.strategies.withholders.active)
        .sum();
    // Caught in (nearly) every round it is online, and excluded (more than one failure).
    assert!(
        total_caught * 10 >= total_active * 9,
        "{total_caught} of {total_active}"
    );
    let excluded: u64 = report
        .rounds
        .iter()
        .map(|m| m.strategies.withholders.rounds_excluded)
        .sum();
    assert!(
        excluded * 10 >= total_caught * 9,
        "{excluded} of {total_caught}"
    );
    assert!(
        report
            .rounds
            .iter()
            .all(|m| m.strategies.withholder_saved_usd_micro > 0)
    );
    // The outputs name them.
    assert!(
        String::from_utf8(nodes_csv)
            .unwrap()
            .contains(",receipt_withholder\n")
    );
    assert!(summary.contains("\"withholders\""), "{summary}");
}

/// Framers' spot checks are refused: no node is failed, and nobody's guaranteed income or
/// uptime changes; only the validations the framers asked for credit nothing.
#[test]
fn framers_never_cost_an_honest_node_anything() {
    let with = small("[strategies]\nframer_task_bps = 10000\n[validation]\nsample_bps = 500\n");
    let without = small("[validation]\nsample_bps = 500\n");
    let (_, _, summary, report, framed) = run(&with, 2);
    let (_, _, _, _, clean) = run(&without, 2);
    let refused: u64 = report
        .rounds
        .iter()
        .map(|m| m.strategies.framed_reports_refused)
        .sum();
    assert!(refused > 1_000, "{refused}");
    assert!(summary.contains("\"framed_reports_refused\""));
    assert_eq!(framed.len(), clean.len());
    for (a, b) in framed.iter().zip(&clean) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.validations_failed, 0);
        assert_eq!(a.guaranteed_usd_micro, b.guaranteed_usd_micro);
        assert_eq!(a.uptime_total_s, b.uptime_total_s);
    }
    assert!(report.rounds.iter().all(|m| m.validations_failed == 0));
}

/// All populations at once: the same seed gives the same bytes on one thread and on two.
#[test]
fn strategies_are_deterministic_across_thread_counts() {
    let s = Scenario::from_toml(
        "rounds = 8\n[population]\nnodes = 400\narrivals_per_round = 4\n\
         [validation]\ncheater_share_bps = 1000\n[strategies]\n\
         liar_share_bps = 1000\ninventor_share_bps = 1000\nwithholder_share_bps = 1000\n\
         framer_task_bps = 2000\n",
    )
    .unwrap();
    let on = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let (r, n, j, _, _) = run(&s, 17);
                (r, n, j)
            })
    };
    let one = on(1);
    assert_eq!(one, on(2), "seed 17");
    let rounds = String::from_utf8(one.0.clone()).unwrap();
    for row in [
        "liars_active",
        "inventors_guaranteed_usd_micro",
        "withholders_rounds_excluded",
        "framed_reports_refused",
    ] {
        assert!(rounds.contains(row), "{row}");
    }
    assert_ne!(one.0, run(&s, 18).0);
}
