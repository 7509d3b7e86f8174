//! Three rounds through the multi-round driver: a streak that breaks and restarts, a pool that
//! is carried over and paid out.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{DAY, id};
use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use crat_rewards::{
    ActivitySlot, CarriedState, ClosedRound, Interval, NodeActivity, NodeProfile, NodeResult,
    Params, RewardsError, RoundDetail, RoundDriver, carry_forward, compute,
};

fn profile(b: u8) -> NodeProfile {
    NodeProfile {
        id: id(b),
        rating: PowerRating::MAX,
        registered_at_s: u64::from(b),
        mining_income_usd_micro_per_day: MicroUsd::new(400_000),
    }
}

fn online(round: u64, from: u64, to: u64) -> NodeActivity {
    NodeActivity {
        online: vec![Interval::new(round * DAY + from, round * DAY + to)],
        ..NodeActivity::default()
    }
}

/// Closes `d`'s next round with activity listed by id, and returns a copy of the closed
/// round.
fn close_listed(
    d: &mut RoundDriver,
    income: MicroUsd,
    activity: impl IntoIterator<Item = (NodeId, NodeActivity)>,
) -> Result<ClosedRound, RewardsError> {
    let mut listed = d.activity_by_id(activity)?;
    d.close_round(
        income,
        |i, slot| listed.fill(i, slot),
        RoundDetail::Outcome,
        ClosedRound::clone,
    )
}

#[test]
fn three_rounds_with_a_streak_that_breaks_and_restarts() {
    let mut d = RoundDriver::new(Params::default(), 0, 0);
    // A: 10 CRAT and a streak of 5 carried from before; B: new.
    d.register_with_state(
        profile(1),
        CarriedState {
            crat_micro: MicroCrat::new(10_000_000),
            streak: 5,
            uptime_total_s: 0,
        },
    );
    d.register(profile(2));
    let (a, b) = (id(1), id(2));

    // Round 0: both online all day. Pool 80,000; k = min(3, 2) = 2; W = 3:
    // A (score 5 × 10,000,000) gets 53,333 + 1, B (score 0) 26,666.
    // A: streak 6 → 5 CRAT + 6 peak hours × 0.5 = 18 CRAT. B: streak 1 → 0 + 3 = 3 CRAT.
    let r0 = close_listed(
        &mut d,
        MicroUsd::new(100_000),
        [(a, online(0, 0, DAY)), (b, online(0, 0, DAY))],
    )
    .unwrap();
    let (oa, ob) = (r0.outcome.node(&a).unwrap(), r0.outcome.node(&b).unwrap());
    assert_eq!((oa.rank, oa.bonus_usd_micro.get()), (Some(1), 53_334));
    assert_eq!((ob.rank, ob.bonus_usd_micro.get()), (Some(2), 26_666));
    assert_eq!((oa.streak_end, oa.crat_end_micro.get()), (6, 18_000_000));
    assert_eq!((ob.streak_end, ob.crat_end_micro.get()), (1, 3_000_000));
    assert_eq!(oa.guaranteed_usd_micro.get(), 400_000);
    assert_eq!(r0.inputs.round.index, 0);

    // Round 1: A offline (streak breaks), B online 10,000 s (not eligible, not committed).
    // Nobody eligible: pool 400,000 is carried.
    let r1 = close_listed(&mut d, MicroUsd::new(500_000), [(b, online(1, 0, 10_000))]).unwrap();
    assert_eq!(r1.inputs.round.index, 1);
    assert_eq!(r1.inputs.round.start_s, DAY);
    assert_eq!(r1.inputs.nodes[0].crat_start_micro.get(), 18_000_000);
    assert_eq!(r1.inputs.nodes[0].streak_start, 6);
    let (oa, ob) = (r1.outcome.node(&a).unwrap(), r1.outcome.node(&b).unwrap());
    assert_eq!(
        (oa.streak_end, oa.crat_end_micro.get(), oa.uptime_total_s),
        (0, 18_000_000, DAY)
    );
    assert_eq!(
        (ob.streak_end, ob.crat_end_micro.get(), ob.uptime_total_s),
        (0, 3_000_000, DAY + 10_000)
    );
    assert_eq!(r1.outcome.aggregates.carry_out_usd_micro.get(), 400_000);
    assert_eq!(r1.outcome.aggregates.guaranteed_paid_usd_micro.get(), 0);

    // Round 2: both online again; A's streak restarts at 1 (below streak_min: no streak CRAT).
    // Pool = 0 + 400,000 carried; q = 80 → k = min(8, 2) = 2; W = 3: 266,666 + 1 and 133,333.
    let r2 = close_listed(
        &mut d,
        MicroUsd::ZERO,
        [(a, online(2, 0, DAY)), (b, online(2, 0, DAY))],
    )
    .unwrap();
    assert_eq!(r2.inputs.round.carry_in_usd_micro.get(), 400_000);
    let (oa, ob) = (r2.outcome.node(&a).unwrap(), r2.outcome.node(&b).unwrap());
    assert_eq!(
        (
            oa.streak_end,
            oa.crat_issued_micro.get(),
            oa.crat_end_micro.get()
        ),
        (1, 3_000_000, 21_000_000)
    );
    assert_eq!((ob.streak_end, ob.crat_end_micro.get()), (1, 6_000_000));
    assert_eq!((oa.rank, oa.bonus_usd_micro.get()), (Some(1), 266_667));
    assert_eq!((ob.rank, ob.bonus_usd_micro.get()), (Some(2), 133_333));
    assert_eq!(r2.outcome.aggregates.carry_out_usd_micro.get(), 0);
    assert_eq!(oa.uptime_total_s, 2 * DAY);

    // The driver now holds round 3's starting state.
    assert_eq!(d.next_round().index, 3);
    assert_eq!(d.next_round().start_s, 3 * DAY);
    assert_eq!(
        d.state(&a),
        Some(CarriedState {
            crat_micro: MicroCrat::new(21_000_000),
            streak: 1,
            uptime_total_s: 2 * DAY
        })
    );
    // Every closed round recomputes from its stored inputs alone.
    for closed in [&r0, &r1, &r2] {
        assert_eq!(compute(&closed.inputs).unwrap(), closed.outcome);
    }
    // carry_forward is what the driver applies between rounds.
    let next = carry_forward(&r1.inputs, &r1.outcome).unwrap();
    assert_eq!(next.round, {
        let mut r = r2.inputs.round.clone();
        r.income_usd_micro = MicroUsd::ZERO;
        r
    });
    // The driver's state survives serialization (a dispatcher persists it).
    let saved = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<RoundDriver>(&saved).unwrap(), d);
}

#[test]
fn driver_rejects_bad_activity_and_stays_unchanged() {
    let mut d = RoundDriver::new(Params::default(), 0, 0);
    d.register(profile(1));
    let before = d.clone();
    assert_eq!(
        close_listed(&mut d, MicroUsd::ZERO, [(id(9), NodeActivity::default())]),
        Err(RewardsError::UnknownNode { id: id(9) })
    );
    assert_eq!(
        close_listed(
            &mut d,
            MicroUsd::ZERO,
            [
                (id(1), NodeActivity::default()),
                (id(1), NodeActivity::default())
            ]
        ),
        Err(RewardsError::DuplicateActivity { id: id(1) })
    );
    let reversed = NodeActivity {
        online: vec![Interval::new(5, 1)],
        ..NodeActivity::default()
    };
    assert!(close_listed(&mut d, MicroUsd::ZERO, [(id(1), reversed)]).is_err());
    assert_eq!(d, before);
    assert!(d.deregister(&id(1)));
    assert!(!d.deregister(&id(1)));
    assert_eq!(d.node_count(), 0);
}

/// Drivers given their activity by id (`activity_by_id`, the closed round copied or only
/// lent to `f`) or by position, with the rank-ordered outcome or their results only
/// (`RoundDetail`), run the same rounds; batch registration and deregistration match
/// one-by-one; every outcome and result is found by position.
#[test]
fn in_place_and_copying_drivers_agree_over_many_rounds() {
    let mut copying = RoundDriver::new(Params::default(), 0, 0);
    let mut in_place = RoundDriver::new(Params::default(), 0, 0);
    let mut filled = RoundDriver::new(Params::default(), 0, 0);
    let mut lean = RoundDriver::new(Params::default(), 0, 0);
    let mut rng = 5u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let node = |b: u8, crat: u64| {
        (
            profile(b),
            CarriedState {
                crat_micro: MicroCrat::new(crat),
                streak: 0,
                uptime_total_s: 0,
            },
        )
    };
    let first: Vec<_> = (1..=60u8)
        .map(|b| node(b, u64::from(b % 7) * 1_000))
        .collect();
    for (p, s) in first.clone() {
        copying.register_with_state(p, s);
    }
    in_place.register_all(first.clone());
    filled.register_all(first.clone());
    lean.register_all(first);
    for round in 0..12u64 {
        if round == 4 {
            let late: Vec<_> = (61..=70u8).rev().map(|b| node(b, 0)).collect();
            for (p, s) in late.clone() {
                copying.register_with_state(p, s);
            }
            in_place.register_all(late.clone());
            filled.register_all(late.clone());
            lean.register_all(late);
        }
        if round == 7 {
            let gone = [id(3), id(64), id(40)];
            for g in &gone {
                assert!(copying.deregister(g));
            }
            assert_eq!(in_place.deregister_all(&gone), 3);
            assert_eq!(filled.deregister_all(&gone), 3);
            // By position in the driver's (id) order, as the simulator removes them.
            let mut order: Vec<NodeId> = (1..=70u8).map(id).collect();
            order.sort_unstable();
            let mut at: Vec<usize> = gone
                .iter()
                .map(|g| order.iter().position(|i| i == g).unwrap())
                .collect();
            at.sort_unstable();
            assert_eq!(lean.deregister_at(&at), Ok(3));
        }
        let ids: Vec<_> = (1..=70u8)
            .map(id)
            .filter(|i| copying.state(i).is_some())
            .collect();
        let activity: Vec<(crat_core::id::NodeId, NodeActivity)> = ids
            .iter()
            .map(|&i| {
                let from = next() % 20_000;
                let mut a = online(round, from, DAY - next() % 5_000);
                a.validations_ok = next() % 3;
                a.validations_failed = u64::from(next() % 17 == 0);
                (i, a)
            })
            .collect();
        let income = MicroUsd::new(next() % 2_000_000);
        let copied = close_listed(&mut copying, income, activity.clone()).unwrap();
        // By position: the activity is listed in id order, the drivers' order.
        let fill = |i: usize, mut slot: ActivitySlot<'_>| {
            let (id, a) = &activity[i];
            assert_eq!(slot.id(), id);
            assert!(slot.online().is_empty());
            slot.online().extend_from_slice(&a.online);
            slot.set_validations(a.validations_ok, a.validations_failed);
            slot.set_crat_external(a.crat_external_micro);
        };
        let by_position = filled
            .close_round(income, fill, RoundDetail::Outcome, ClosedRound::clone)
            .unwrap();
        assert_eq!(by_position.outcome, copied.outcome, "round {round}");
        let results = lean
            .close_round(income, fill, RoundDetail::ResultsOnly, ClosedRound::clone)
            .unwrap();
        assert_eq!(results.inputs, copied.inputs, "round {round}");
        assert_eq!(results.outcome.aggregates, copied.outcome.aggregates);
        assert!(results.outcome.nodes.is_empty());
        assert_eq!(results.results().len(), copied.inputs.nodes.len());
        for (k, r) in results.results().iter().enumerate() {
            let o = copied.outcome.node(&copied.inputs.nodes[k].id).unwrap();
            assert_eq!(*r, NodeResult::from(o), "round {round} node {k}");
            assert_eq!(by_position.result_of(k), Some(*r));
            assert_eq!(copied.result_of(k), Some(*r));
        }
        let mut listed = in_place.activity_by_id(activity).unwrap();
        let fill_listed = |i: usize, slot: ActivitySlot<'_>| listed.fill(i, slot);
        let lent = in_place
            .close_round(income, fill_listed, RoundDetail::Outcome, |closed| {
                for k in 0..closed.inputs.nodes.len() {
                    let o = closed.outcome_of(k).unwrap();
                    assert_eq!(o.id, closed.inputs.nodes[k].id);
                }
                closed.clone()
            })
            .unwrap();
        assert_eq!(lent.inputs, copied.inputs, "round {round}");
        assert_eq!(lent.outcome, copied.outcome, "round {round}");
        assert_eq!(lent.outcome, compute(&copied.inputs).unwrap());
    }
    assert_eq!(copying, in_place);
    assert_eq!(copying, filled);
    assert_eq!(copying, lean);
}

/// A driver of `n` nodes (ids 1..=n, ratings and incomes varied) for the parts tests.
fn parts_driver(n: u8, income_per_day: impl Fn(u8) -> u64) -> RoundDriver {
    let mut d = RoundDriver::new(Params::default(), 0, 0);
    for b in 1..=n {
        d.register_with_state(
            NodeProfile {
                id: id(b),
                rating: PowerRating::new(1 + b % 5).unwrap(),
                registered_at_s: u64::from(b % 3),
                mining_income_usd_micro_per_day: MicroUsd::new(income_per_day(b)),
            },
            CarriedState {
                crat_micro: MicroCrat::new(u64::from(b % 4) * 1_000_000),
                streak: u64::from(b % 2),
                uptime_total_s: 0,
            },
        );
    }
    d
}

/// A round closed and carried forward in parts, whatever their size and however they are run
/// (in reverse, on threads of their own, some left alone), is the round closed in one go:
/// same inputs, outcome, results and carried state, under both details.
#[test]
fn rounds_closed_in_parts_are_rounds_closed_in_one_go() {
    let mut x = 11u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 50u8;
    for detail in [RoundDetail::Outcome, RoundDetail::ResultsOnly] {
        for part_nodes in [0usize, 1, 3, 7, 16, 50, 1_000] {
            let mut whole = parts_driver(n, |b| 100_000 * u64::from(b));
            let mut parts = whole.clone();
            let mut threaded = whole.clone();
            for round in 0..4u64 {
                let activity: Vec<(u64, u64, u64, u64)> = (0..n)
                    .map(|_| (next() % 30_000, next() % 5_000, next() % 3, next() % 13))
                    .collect();
                // Nodes 10..20 did nothing: their activity is not written, and a part of them
                // only is left alone.
                let idle = |i: usize| (10..20).contains(&i);
                let fill = |i: usize, mut slot: ActivitySlot<'_>| {
                    if idle(i) {
                        return;
                    }
                    let (from, short, ok, failed) = activity[i];
                    slot.online()
                        .push(Interval::new(round * DAY + from, (round + 1) * DAY - short));
                    slot.set_validations(ok, u64::from(failed == 0));
                };
                let income = MicroUsd::new(next() % 5_000_000);
                let want = whole
                    .close_round(income, fill, detail, ClosedRound::clone)
                    .unwrap();
                let reversed = parts
                    .close_round_in_parts(
                        income,
                        part_nodes,
                        |parts| {
                            for part in parts.iter_mut().rev() {
                                let last = part.first() + part.len() - 1;
                                if !(idle(part.first()) && idle(last)) {
                                    part.fill(fill);
                                    // A second run does nothing.
                                    part.fill(|_, _| panic!("a part runs once"));
                                }
                            }
                        },
                        // Every other part carried here, backwards; the driver carries the rest.
                        |parts| {
                            for part in parts.iter_mut().rev().step_by(2) {
                                part.run();
                                part.run();
                            }
                        },
                        detail,
                        ClosedRound::clone,
                    )
                    .unwrap();
                let on_threads = threaded
                    .close_round_in_parts(
                        income,
                        part_nodes,
                        |parts| {
                            std::thread::scope(|s| {
                                for part in parts {
                                    s.spawn(move || part.fill(fill));
                                }
                            })
                        },
                        |parts| {
                            std::thread::scope(|s| {
                                for part in parts {
                                    s.spawn(move || part.run());
                                }
                            })
                        },
                        detail,
                        ClosedRound::clone,
                    )
                    .unwrap();
                for got in [&reversed, &on_threads] {
                    let what = format!("{detail:?}, parts of {part_nodes}, round {round}");
                    assert_eq!(got.inputs, want.inputs, "{what}");
                    assert_eq!(got.outcome, want.outcome, "{what}");
                    assert_eq!(got.results(), want.results(), "{what}");
                }
            }
            assert_eq!(parts, whole);
            assert_eq!(threaded, whole);
        }
    }
}

/// A round closed in parts fails as the round closed in one go does: with the first error in
/// input order (a node's own, or the guaranteed total's overflow before it), the driver
/// unchanged.
#[test]
fn rounds_closed_in_parts_fail_with_the_first_error_in_input_order() {
    let day = Interval::new(0, DAY);
    let backwards = Interval::new(DAY, 0);
    // (nodes whose income is near u64::MAX, nodes with an interval ending before its start)
    let cases: [(&[usize], &[usize]); 5] = [
        (&[], &[12]),
        (&[], &[3, 12]),
        (&[2, 9], &[]),
        // The total overflows at node 9, before node 12's error (in another part).
        (&[2, 9], &[12]),
        // Node 5's error comes before the total overflows at node 9.
        (&[2, 9], &[5]),
    ];
    for (rich, broken) in cases {
        let income = |b: u8| {
            if rich.contains(&usize::from(b - 1)) {
                u64::MAX - 1
            } else {
                400_000
            }
        };
        let fill = |i: usize, mut slot: ActivitySlot<'_>| {
            slot.online()
                .push(if broken.contains(&i) { backwards } else { day });
        };
        let mut whole = parts_driver(20, income);
        let before = whole.clone();
        let want = whole
            .close_round(MicroUsd::new(1_000), fill, RoundDetail::ResultsOnly, |_| ())
            .unwrap_err();
        assert_eq!(whole, before);
        for part_nodes in [1, 4, 8, 20] {
            let mut parts = before.clone();
            let got = parts
                .close_round_in_parts(
                    MicroUsd::new(1_000),
                    part_nodes,
                    |parts| {
                        for part in parts.iter_mut().rev() {
                            part.fill(fill);
                        }
                    },
                    |_| panic!("a round that failed is not carried forward"),
                    RoundDetail::ResultsOnly,
                    |_| (),
                )
                .unwrap_err();
            assert_eq!(got, want, "{rich:?} {broken:?}, parts of {part_nodes}");
            assert_eq!(parts, before);
        }
    }
}

/// Positions that do not increase, or that name no node, are refused with the position at
/// fault, and nothing is removed.
#[test]
fn deregister_at_refuses_bad_positions_and_changes_nothing() {
    let mut d = RoundDriver::new(Params::default(), 0, 0);
    for b in 1..=5u8 {
        d.register(profile(b));
    }
    for (bad, field) in [
        (vec![1, 1], "positions[1]"),
        (vec![3, 2], "positions[1]"),
        (vec![0, 5], "positions[1]"),
        (vec![9], "positions[0]"),
    ] {
        match d.deregister_at(&bad) {
            Err(RewardsError::OutOfRange { field: f, .. }) => assert_eq!(f, field, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        assert_eq!(d.node_count(), 5, "{bad:?}");
    }
    let mut order: Vec<NodeId> = (1..=5u8).map(id).collect();
    order.sort_unstable();
    assert_eq!(d.deregister_at(&[]), Ok(0));
    assert_eq!(d.deregister_at(&[0, 4]), Ok(2));
    assert_eq!(d.node_count(), 3);
    assert!(d.state(&order[0]).is_none() && d.state(&order[4]).is_none());
    assert!(order[1..4].iter().all(|i| d.state(i).is_some()));
}
