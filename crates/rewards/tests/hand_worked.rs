//! Rounds whose every number was worked out by hand (the arithmetic is in the comments).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{DAY, id, node, round};
use crat_core::money::{MicroCrat, MicroUsd};
use crat_rewards::{Params, RewardsError, compute, explain};

fn usd(v: u64) -> MicroUsd {
    MicroUsd::new(v)
}

fn crat(v: u64) -> MicroCrat {
    MicroCrat::new(v)
}

#[test]
fn tie_on_score_is_broken_by_total_uptime() {
    // A: rating 2 × 3 CRAT = score 6,000,000; 100,000 s before + 86,400 = 186,400.
    // B: rating 3 × 2 CRAT = score 6,000,000; 50,000 s before + 86,400 = 136,400.
    // C: rating 1 × 10 CRAT = score 10,000,000; online 60,000 s: eligible (60,000 × 10,000 =
    //    600,000,000 ≥ 5,000 × 86,400 = 432,000,000) but not committed (< 85,800).
    let mut a = node(1, 2, 3_000_000, &[(0, DAY)]);
    a.uptime_total_s_before = 100_000;
    let mut b = node(2, 3, 2_000_000, &[(0, DAY)]);
    b.uptime_total_s_before = 50_000;
    let c = node(3, 1, 10_000_000, &[(0, 60_000)]);
    let out = compute(&round(0, 1_000_000, 0, vec![a, b, c])).unwrap();

    // Pool = 1,000,000 × 8,000 / 10,000 = 800,000. q = 2 × 800,000 / 10,000 = 160, so k(k+1) ≤ 160
    // allows k = 12, capped by 3 eligible nodes: k = 3, W = 6.
    // Shares: 800,000 × 3/6 = 400,000; × 2/6 = 266,666; × 1/6 = 133,333; sum 799,999, remainder 1
    // to rank 1.
    let ag = &out.aggregates;
    assert_eq!(ag.pool_usd_micro, usd(800_000));
    assert_eq!(ag.paid_ranks, 3);
    assert_eq!(ag.bonus_paid_usd_micro, usd(800_000));
    assert_eq!(ag.carry_out_usd_micro, usd(0));
    let order: Vec<_> = out
        .nodes
        .iter()
        .map(|n| (n.id, n.rank, n.bonus_usd_micro))
        .collect();
    assert_eq!(
        order,
        [
            (id(3), Some(1), usd(400_001)),
            (id(1), Some(2), usd(266_666)),
            (id(2), Some(3), usd(133_333)),
        ]
    );
    assert_eq!(out.nodes[1].uptime_total_s, 186_400);
    assert_eq!(out.nodes[2].uptime_total_s, 136_400);
    // Guaranteed: A and B committed, 500,000 × 86,400 / 86,400 = 500,000 each; C nothing.
    assert_eq!(out.nodes[0].guaranteed_usd_micro, usd(0));
    assert_eq!(out.nodes[1].guaranteed_usd_micro, usd(500_000));
    assert_eq!(ag.guaranteed_paid_usd_micro, usd(1_000_000));
    assert!(!out.nodes[0].committed && out.nodes[1].committed);
}

#[test]
fn tie_on_uptime_is_broken_by_registration_then_id() {
    // Four nodes with score 5 × 1,000,000 and 86,400 s uptime each.
    // Registered at 100 (id 9), 50 (id 8), 50 (id 7), 50 (id 6): registration 50 first, and
    // among those the smaller id first.
    let mut n9 = node(9, 5, 1_000_000, &[(0, DAY)]);
    n9.registered_at_s = 100;
    let mut nodes = vec![n9];
    for b in [8, 7, 6] {
        let mut n = node(b, 5, 1_000_000, &[(0, DAY)]);
        n.registered_at_s = 50;
        nodes.push(n);
    }
    let out = compute(&round(0, 0, 0, nodes)).unwrap();
    let ids: Vec<_> = out.nodes.iter().map(|n| (n.id, n.rank)).collect();
    assert_eq!(
        ids,
        [
            (id(6), Some(1)),
            (id(7), Some(2)),
            (id(8), Some(3)),
            (id(9), Some(4)),
        ]
    );
    // Zero income and zero carry: no bonus for anyone, k = 0, nothing carried.
    assert!(out.nodes.iter().all(|n| n.bonus_usd_micro == usd(0)));
    assert_eq!(out.aggregates.paid_ranks, 0);
    assert_eq!(out.aggregates.pool_usd_micro, usd(0));
    assert_eq!(out.aggregates.carry_out_usd_micro, usd(0));
}

#[test]
fn k_is_limited_by_income() {
    // Five eligible nodes with scores 5, 4, 3, 2, 1 × 1,000,000.
    let nodes = (1..=5)
        .map(|r| node(r, r, 1_000_000, &[(0, DAY)]))
        .collect();
    // Income 50,000 → pool 40,000. q = 80,000 / 10,000 = 8: k(k+1) ≤ 8 gives k = 2 (2 × 3 = 6;
    // 3 × 4 = 12 > 8). W = 3: 40,000 × 2/3 = 26,666, × 1/3 = 13,333; remainder 1 to rank 1.
    let out = compute(&round(0, 50_000, 0, nodes)).unwrap();
    assert_eq!(out.aggregates.paid_ranks, 2);
    let bonuses: Vec<_> = out.nodes.iter().map(|n| n.bonus_usd_micro.get()).collect();
    assert_eq!(bonuses, [26_667, 13_333, 0, 0, 0]);
    let ids: Vec<_> = out.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, [id(5), id(4), id(3), id(2), id(1)]);
    assert_eq!(out.aggregates.carry_out_usd_micro, usd(0));
}

#[test]
fn pool_is_carried_when_nobody_is_eligible() {
    // Online 43,199 s: 431,990,000 < 432,000,000, one second short of eligible. Another node is
    // fully online but failed a validation.
    let mut failed = node(2, 5, 1, &[(0, DAY)]);
    failed.validations_failed = 1;
    let nodes = vec![node(1, 5, 9_000_000, &[(0, 43_199)]), failed];
    // Pool = 1,000,000 × 0.8 + 250,000 carried in = 1,050,000; nobody eligible → k = 0, all
    // carried out.
    let out = compute(&round(0, 1_000_000, 250_000, nodes)).unwrap();
    let ag = &out.aggregates;
    assert_eq!(ag.pool_usd_micro, usd(1_050_000));
    assert_eq!(ag.paid_ranks, 0);
    assert_eq!(ag.bonus_paid_usd_micro, usd(0));
    assert_eq!(ag.carry_out_usd_micro, usd(1_050_000));
    assert!(out.nodes.iter().all(|n| !n.eligible && n.rank.is_none()));
    // Unranked nodes come in id order.
    assert_eq!(out.nodes[0].id, id(1));
    // One more second makes node 1 eligible: 43,200 × 10,000 = 432,000,000.
    let out = compute(&round(
        0,
        1_000_000,
        250_000,
        vec![node(1, 5, 9, &[(0, 43_200)])],
    ))
    .unwrap();
    assert!(out.nodes[0].eligible);
    // k = min(eligible 1, ...) = 1, W = 1: the whole pool to rank 1.
    assert_eq!(out.nodes[0].bonus_usd_micro, usd(1_050_000));
}

#[test]
fn two_failed_validations_slash_twice() {
    // Start 1,000,001 µCRAT; slash 5,000 bps twice: 1,000,001 × 5,000 / 10,000 = 500,000 (floor),
    // then 250,000. Slashed = 750,001.
    // Streak 4 → 5 (committed): 1,000,000 × min(4, 30) = 4,000,000.
    // Peak: online all day, peak window 57,600..79,200 = 6 h → 3,000,000.
    // Validations ok 3 → 300,000. External 1,234.
    // End = 250,000 + 4,000,000 + 3,000,000 + 300,000 + 1,234 = 7,551,234.
    let mut n = node(1, 3, 1_000_001, &[(0, DAY)]);
    n.validations_failed = 2;
    n.validations_ok = 3;
    n.streak_start = 4;
    n.crat_external_micro = crat(1_234);
    let out = compute(&round(0, 1_000_000, 0, vec![n])).unwrap();
    let o = &out.nodes[0];
    assert_eq!(o.crat_slashed_micro, crat(750_001));
    assert_eq!(o.crat_issued_micro, crat(7_300_000));
    assert_eq!(o.crat_end_micro, crat(7_551_234));
    assert_eq!(o.streak_end, 5);
    assert_eq!(o.peak_uptime_s, 21_600);
    // A failed validation makes the node ineligible, but it was committed: guaranteed paid.
    assert!(!o.eligible && o.rank.is_none());
    assert!(o.committed);
    assert_eq!(o.guaranteed_usd_micro, usd(500_000));
    assert_eq!(out.aggregates.carry_out_usd_micro, usd(800_000));
}

#[test]
fn overlapping_and_out_of_round_intervals() {
    let s = 1_000_000; // round [1,000,000, 1,086,400); peak [1,057,600, 1,079,200)
    let online = [
        (s + 50_000, s + 80_000),  // merges with the next: [s+50,000, s+86,400)
        (2_000_000, 2_000_100),    // after the round: nothing
        (900_000, s + 10_000),     // clipped to [s, s+10,000)
        (s + 70_000, s + 200_000), // clipped to s+86,400
        (s + 5_000, s + 20_000),   // merges with the third: [s, s+20,000)
        (s + 30_000, s + 30_000),  // empty
        (0, 10),                   // before the round: nothing
    ];
    // Uptime = 20,000 + 36,400 = 56,400. Peak: [s+50,000, s+86,400) covers all 21,600 s →
    // 6 h → 3,000,000 µCRAT. Not committed (56,400 < 85,800): streak 2 → 0, no streak CRAT.
    let mut a = node(1, 2, 0, &online);
    a.streak_start = 2;
    a.uptime_total_s_before = 1;
    // Peak partial hour: online [s+56,000, s+61,599) = 5,599 s, of it 3,999 s in the peak
    // window → 1 full hour → 500,000 µCRAT.
    let b = node(2, 2, 0, &[(s + 56_000, s + 61_599)]);
    // Exactly the commitment threshold: 86,400 − 600 = 85,800 s online → committed.
    let c = node(3, 2, 0, &[(s + 600, s + DAY)]);
    // One second less → not committed.
    let d = node(4, 2, 0, &[(s + 601, s + DAY)]);
    let out = compute(&round(s, 0, 0, vec![d, c, b, a])).unwrap();
    let by = |b: u8| out.node(&id(b)).unwrap();
    let a = by(1);
    assert_eq!((a.uptime_s, a.peak_uptime_s), (56_400, 21_600));
    assert_eq!(a.uptime_total_s, 56_401);
    assert_eq!((a.committed, a.streak_end), (false, 0));
    assert_eq!(a.crat_issued_micro, crat(3_000_000));
    assert!(a.eligible); // 564,000,000 ≥ 432,000,000
    let b = by(2);
    assert_eq!((b.uptime_s, b.peak_uptime_s), (5_599, 3_999));
    assert_eq!(b.crat_issued_micro, crat(500_000));
    assert!(!b.eligible);
    assert!(by(3).committed);
    assert_eq!(by(3).guaranteed_usd_micro, usd(500_000));
    assert_eq!(by(3).streak_end, 1);
    assert!(!by(4).committed);
    assert_eq!(by(4).guaranteed_usd_micro, usd(0));
}

#[test]
fn guaranteed_scales_with_round_length() {
    // A one-hour round: 240,000 × 3,600 / 86,400 = 10,000 µUSD.
    let mut inputs = round(0, 0, 0, vec![node(1, 1, 0, &[(0, 3_600)])]);
    inputs.params = Params {
        round_s: 3_600,
        peak_windows: vec![],
        ..Params::default()
    };
    inputs.round.length_s = 3_600;
    inputs.nodes[0].mining_income_usd_micro_per_day = usd(240_000);
    let out = compute(&inputs).unwrap();
    assert_eq!(out.nodes[0].guaranteed_usd_micro, usd(10_000));
    assert_eq!(out.nodes[0].peak_uptime_s, 0);
    // A round length that differs from params.round_s is refused.
    inputs.round.length_s = 7_200;
    let err = compute(&inputs).unwrap_err();
    assert!(err.to_string().starts_with("round.length_s:"), "{err}");
}

#[test]
fn streak_crat_is_capped() {
    // Streak 40 → 41: min(40, cap 30) steps = 30,000,000 µCRAT; plus 6 peak hours.
    let mut n = node(1, 1, 0, &[(0, DAY)]);
    n.streak_start = 40;
    let out = compute(&round(0, 0, 0, vec![n])).unwrap();
    assert_eq!(out.nodes[0].crat_issued_micro, crat(33_000_000));
    // Streak 0 → 1 is below streak_min 2: no streak CRAT.
    let out = compute(&round(0, 0, 0, vec![node(1, 1, 0, &[(0, DAY)])])).unwrap();
    assert_eq!(out.nodes[0].crat_issued_micro, crat(3_000_000));
}

#[test]
fn invalid_rounds_name_the_field() {
    type Mutation = Box<dyn Fn(&mut crat_rewards::RoundInputs)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|r| r.nodes[1].online[0] = crat_rewards::Interval::new(9, 5)),
            "nodes[1].online[0]: interval end 5 before start 9",
        ),
        (
            Box::new(|r| r.round.length_s = 0),
            "round.length_s: must be at least 1",
        ),
        (
            Box::new(|r| r.params.slash_bps = 10_001),
            "params.slash_bps:",
        ),
        (
            Box::new(|r| r.params.bonus_share_bps = 20_000),
            "params.bonus_share_bps:",
        ),
        (
            Box::new(|r| r.params.min_bonus_usd_micro = usd(0)),
            "params.min_bonus_usd_micro:",
        ),
        (Box::new(|r| r.params.streak_min = 0), "params.streak_min:"),
        (
            Box::new(|r| r.params.peak_windows[0] = crat_rewards::Interval::new(2, 1)),
            "params.peak_windows[0]:",
        ),
        (Box::new(|r| r.nodes[1].id = r.nodes[0].id), "nodes[1].id:"),
        (
            Box::new(|r| r.round.start_s = u64::MAX - 5),
            "round.start_s:",
        ),
        (
            Box::new(|r| r.nodes[0].crat_external_micro = crat(u64::MAX)),
            "nodes[0].crat_external_micro:",
        ),
    ];
    for (mutate, want) in cases {
        let mut inputs = round(
            0,
            0,
            0,
            vec![node(1, 1, 5, &[(0, 1)]), node(2, 1, 0, &[(0, 1)])],
        );
        mutate(&mut inputs);
        let err = compute(&inputs).unwrap_err();
        assert!(
            err.to_string().starts_with(want),
            "{err} does not start with {want}"
        );
    }
    let mut inputs = round(0, 0, 0, vec![node(1, 1, 0, &[]), node(1, 1, 0, &[])]);
    inputs.nodes[1].registered_at_s = 3;
    assert_eq!(
        compute(&inputs),
        Err(RewardsError::DuplicateNode {
            index: 1,
            first: 0,
            id: id(1)
        })
    );
}

#[test]
fn explanation_traces_every_number() {
    let mut a = node(1, 2, 3_000_000, &[(0, DAY)]);
    a.uptime_total_s_before = 100_000;
    let mut b = node(2, 3, 2_000_000, &[(0, DAY)]);
    b.uptime_total_s_before = 50_000;
    let c = node(3, 1, 10_000_000, &[(0, 60_000)]);
    let inputs = round(0, 1_000_000, 0, vec![a, b, c]);
    let e = explain(&inputs, &id(1)).unwrap();
    let text = e.to_string();
    for needle in [
        "uptime_total_s = uptime_total_s_before 100000 + uptime_s 86400 = 186400 s",
        "guaranteed = mining_income_usd_micro_per_day 500000 x length_s 86400 / 86400 = 500000 µUSD ($0.500000)",
        "pool = income_usd_micro 1000000 x bonus_share_bps 8000 / 10000 + carry_in_usd_micro 0 = 800000 µUSD",
        "score = rating 2 x crat_start_micro 3000000 = 6000000",
        "rank 2 of 3",
        "is ahead: higher score (10000000 > 6000000)",
        "is behind: this node has equal score 6000000, more total uptime (186400 s > 136400 s)",
        "paid ranks k = 3",
        "bonus = pool 800000 x (k + 1 - rank) 2 / W 6 (= k(k+1)/2) = 266666",
        "= 266666 µUSD",
        "peak CRAT = peak_unit_crat_micro_per_hour 500000 x full hours (peak_uptime_s 21600 / 3600 = 6) = 3000000 µCRAT",
        "crat_end = after slashing 3000000 + issued 3000000 + crat_external_micro 0 = 6000000 µCRAT",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert_eq!(e.outcome.rank, Some(2));
    assert!(matches!(
        explain(&inputs, &id(99)),
        Err(RewardsError::UnknownNode { .. })
    ));
}
