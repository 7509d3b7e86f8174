//! Phase 5 of a round, the close: each node's activity written into the rewards driver's
//! round by position, the round closed by [`crat_rewards::RoundDriver::close_round_in_parts`] (whose
//! results are the only source of payouts and CRAT), the round's metrics taken from them,
//! and the providers that earned less than their electricity cost for
//! `behaviour.departure_rounds` rounds marked to leave.

use crat_rewards::{Aggregates, NodeResult};
use rayon::prelude::*;

use super::validation::Draws;
use super::{DAY_S, Node};
use crate::SimError;
use crate::report::RoundMetrics;
use crate::scenario::{Scenario, Strategy};

/// Amounts below which [`gini`] sorts on one thread (splitting costs more than it saves).
const PAR_SORT_MIN: usize = 1 << 17;

/// Nodes per parallel work item of the metrics pass: small enough that a round of 10,000
/// nodes spreads evenly over the cores (ten items: with five, one core ran three of them
/// while the other waited; its sums are integers and its lists kept in order, so the chunk
/// size changes no byte of the results).
const METRICS_CHUNK: usize = 1_024;

/// The round's metrics taken from its results (the only source of payouts and CRAT) and its
/// validation draws, each node's totals updated, and the positions in `nodes` (increasing)
/// of the providers that leave this round (marked departed). `nodes[k]` is the round's k-th
/// input (its id checked when its activity was written) and `results[k]` its result. Each
/// node's earnings and CRAT balance are left in `earnings` and `crats`, for [`gini`] and
/// [`top_decile_share`], which the caller runs.
#[allow(clippy::too_many_arguments)]
pub(super) fn outcome_metrics(
    results: &[NodeResult],
    a: &Aggregates,
    sc: &Scenario,
    nodes: &mut [Node],
    draws: &Draws<'_>,
    (earnings, crats): (&mut Vec<u64>, &mut Vec<u64>),
    m: &mut RoundMetrics,
) -> Result<Vec<usize>, SimError> {
    let round = m.round;
    let length_s = sc.rewards.round_s;
    m.pool_usd_micro = a.pool_usd_micro.get();
    m.paid_ranks = a.paid_ranks;
    m.bonus_usd_micro = a.bonus_paid_usd_micro.get();
    m.guaranteed_usd_micro = a.guaranteed_paid_usd_micro.get();
    m.carry_usd_micro = a.carry_out_usd_micro.get();
    if results.len() != nodes.len() {
        return Err(SimError::Rewards(crat_rewards::RewardsError::OutOfRange {
            field: "nodes".into(),
            reason: format!("{} results for {} nodes", results.len(), nodes.len()),
        }));
    }
    let day_share = |v: u64| (u128::from(v) * u128::from(length_s) / u128::from(DAY_S)) as u64;
    earnings.clear();
    earnings.resize(nodes.len(), 0);
    crats.clear();
    crats.resize(nodes.len(), 0);
    let departure_rounds = sc.behaviour.departure_rounds;
    let electricity = sc.behaviour.electricity_usd_micro_per_day;
    let initial = sc.population.nodes;
    // A node failing more validations than this in a round (the exclusion window is a day)
    // is excluded from placement by the dispatcher (`Dispatch::validation_failed`).
    let caught_max = u64::from(crat_core::dispatch::DispatchConfig::default().caught_max);
    let saving_bps = u128::from(sc.strategies.withholder_saving_bps);
    // Per rating class: the electricity cost of the round, and what a withholder saves of it.
    let electricity_round: [u64; 5] = std::array::from_fn(|class| day_share(electricity[class]));
    let withholder_saved: [u64; 5] = std::array::from_fn(|class| {
        (u128::from(electricity_round[class]) * saving_bps / 10_000) as u64
    });
    // In parallel chunks: integer sums and in-order lists, so the same bytes on any number
    // of threads.
    let c = METRICS_CHUNK;
    let parts: Vec<(RoundMetrics, Vec<usize>)> = nodes
        .par_chunks_mut(c)
        .zip(results.par_chunks(c))
        .zip(earnings.par_chunks_mut(c))
        .zip(crats.par_chunks_mut(c))
        .enumerate()
        .map(|(chunk, (((nodes, results), earnings), crats))| {
            let mut p = RoundMetrics::default();
            let mut departures = Vec::new();
            for (k, n) in nodes.iter_mut().enumerate() {
                let o = &results[k];
                let class = usize::from(n.rating.get()) - 1;
                let g = o.guaranteed_usd_micro.get();
                let b = o.bonus_usd_micro.get();
                n.guaranteed_total += g;
                n.bonus_total += b;
                n.crat_end = o.crat_end_micro.get();
                n.uptime_total = o.uptime_total_s;
                let d = draws.get(chunk * c + k);
                p.validations += d.ran;
                p.validations_failed += d.failed;
                p.strategies.framed_reports_refused += d.framed_refused;
                n.validations_failed += d.failed;
                if n.caught_at_task.is_none()
                    && let Some(at) = d.first_caught()
                {
                    n.caught_at_task = Some(n.tasks_served + at);
                }
                n.tasks_served += d.tasks;
                crats[k] = n.crat_end;
                earnings[k] = g + b;
                p.nodes_active += 1;
                p.class_nodes[class] += 1;
                p.class_guaranteed_usd_micro[class] += g;
                p.class_bonus_usd_micro[class] += b;
                if o.committed {
                    p.nodes_committed += 1;
                }
                let population = match n.strategy {
                    Strategy::Honest | Strategy::Cheater => None,
                    Strategy::HardwareLiar => Some(&mut p.strategies.liars),
                    Strategy::UsageInventor => Some(&mut p.strategies.inventors),
                    Strategy::ReceiptWithholder => {
                        p.strategies.withholder_saved_usd_micro += withholder_saved[class];
                        Some(&mut p.strategies.withholders)
                    }
                };
                if let Some(pop) = population {
                    pop.add_round(g, b, n.crat_end, d.failed, caught_max);
                }
                if n.strategy == Strategy::Cheater {
                    p.cheaters_active += 1;
                    p.cheater_bonus_usd_micro += b;
                    p.cheater_crat_micro += n.crat_end;
                } else {
                    p.honest_crat_micro += n.crat_end;
                }
                if departure_rounds > 0 {
                    if g + b < electricity_round[class] {
                        n.low_rounds += 1;
                    } else {
                        n.low_rounds = 0;
                    }
                    if n.low_rounds >= departure_rounds {
                        n.departed_round = Some(round);
                        departures.push(chunk * c + k);
                    }
                }
                if u64::from(n.index) < initial && n.departed_round.is_none() {
                    p.initial_retained += 1;
                }
            }
            (p, departures)
        })
        .collect();
    let mut departures: Vec<usize> = Vec::new();
    for (p, d) in parts {
        m.nodes_active += p.nodes_active;
        m.validations += p.validations;
        m.validations_failed += p.validations_failed;
        m.strategies.framed_reports_refused += p.strategies.framed_reports_refused;
        for class in 0..5 {
            m.class_nodes[class] += p.class_nodes[class];
            m.class_guaranteed_usd_micro[class] += p.class_guaranteed_usd_micro[class];
            m.class_bonus_usd_micro[class] += p.class_bonus_usd_micro[class];
        }
        m.nodes_committed += p.nodes_committed;
        m.cheaters_active += p.cheaters_active;
        m.cheater_bonus_usd_micro += p.cheater_bonus_usd_micro;
        m.cheater_crat_micro += p.cheater_crat_micro;
        m.honest_crat_micro += p.honest_crat_micro;
        m.initial_retained += p.initial_retained;
        m.strategies.add_nodes(&p.strategies);
        departures.extend(d);
    }
    Ok(departures)
}

/// Gini coefficient of non-negative amounts (0 = equal, → 1 = one holds all). A reported
/// statistic, not money.
pub(super) fn gini(v: &mut [u64]) -> f64 {
    let n = v.len();
    let total: u128 = v.iter().map(|&x| u128::from(x)).sum();
    if n == 0 || total == 0 {
        return 0.0;
    }
    if n >= PAR_SORT_MIN {
        v.par_sort_unstable();
    } else {
        v.sort_unstable();
    }
    // G = (2 Σ i·x_i) / (n Σ x) − (n + 1)/n, i from 1.
    let weighted: u128 = v
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u128 + 1) * u128::from(x))
        .sum();
    2.0 * weighted as f64 / (n as f64 * total as f64) - (n as f64 + 1.0) / n as f64
}

/// Share of the total held by the top 10 % of holders.
pub(super) fn top_decile_share(v: &mut [u64]) -> f64 {
    let n = v.len();
    let total: u128 = v.iter().map(|&x| u128::from(x)).sum();
    if n == 0 || total == 0 {
        return 0.0;
    }
    let k = n.div_ceil(10);
    let (_, _, top) = v.select_nth_unstable(n - k);
    let top_sum: u128 = top.iter().map(|&x| u128::from(x)).sum::<u128>() + u128::from(v[n - k]);
    top_sum as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_and_decile() {
        assert_eq!(gini(&mut [5, 5, 5, 5]), 0.0);
        let g = gini(&mut [0, 0, 0, 10]);
        assert!((g - 0.75).abs() < 1e-12);
        assert!((top_decile_share(&mut [1; 10]) - 0.1).abs() < 1e-12);
        assert_eq!(top_decile_share(&mut [0, 0, 0, 0, 0, 0, 0, 0, 0, 7]), 1.0);
    }
}
