//! One node's payout, step by step, in plain words: what `crat rewards explain` prints, so a
//! node operator can recompute their own payout from the round's inputs.

use std::fmt;

use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};

use crate::rules::{Ctx, pool_usd_micro, slash_once};
use crate::{
    Aggregates, BonusSchedule, Interval, NodeBreakdown, NodeInput, NodeOutcome, Params,
    RewardsError, Round, RoundInputs, compute,
};

/// Slash steps listed one by one before the explanation summarises the rest.
const SLASH_STEPS_SHOWN_MAX: usize = 8;

/// A neighbouring node in the ranking, with the key it was ranked by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Its id.
    pub id: NodeId,
    /// Its rank.
    pub rank: u64,
    /// `rating × crat_start_micro`.
    pub score: u128,
    /// Its total uptime after this round.
    pub uptime_total_s: u64,
    /// Its registration time.
    pub registered_at_s: u64,
}

/// Everything that went into one node's payout; [`fmt::Display`] writes it out in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The round.
    pub round: Round,
    /// The parameters used.
    pub params: Params,
    /// The node's inputs.
    pub node: NodeInput,
    /// Its online intervals clipped to the round and merged.
    pub merged_online: Vec<Interval>,
    /// The peak windows in absolute seconds, clipped to the round and merged.
    pub peak_windows: Vec<Interval>,
    /// Intermediate quantities, rule by rule.
    pub breakdown: NodeBreakdown,
    /// The node's outputs.
    pub outcome: NodeOutcome,
    /// Number of eligible (ranked) nodes in the round.
    pub eligible_count: u64,
    /// The round's bonus schedule.
    pub schedule: BonusSchedule,
    /// The node ranked just above, if any.
    pub above: Option<Neighbour>,
    /// The node ranked just below, if any.
    pub below: Option<Neighbour>,
    /// The round's totals.
    pub aggregates: Aggregates,
}

/// Computes the round and explains the payout of node `id`.
pub fn explain(inputs: &RoundInputs, id: &NodeId) -> Result<Explanation, RewardsError> {
    let outcome = compute(inputs)?;
    let ctx = Ctx::new(inputs)?;
    let (index, node) = inputs
        .nodes
        .iter()
        .enumerate()
        .find(|(_, n)| n.id == *id)
        .ok_or(RewardsError::UnknownNode { id: *id })?;
    let mut merged = Vec::new();
    let breakdown = ctx.breakdown(index, node, &mut merged)?;
    let position = outcome
        .nodes
        .iter()
        .position(|n| n.id == *id)
        .ok_or(RewardsError::UnknownNode { id: *id })?;
    let eligible_count = outcome.nodes.iter().filter(|n| n.eligible).count() as u64;
    let neighbour = |pos: usize| -> Option<Neighbour> {
        let o = outcome.nodes.get(pos)?;
        let rank = o.rank?;
        let input = inputs.nodes.iter().find(|n| n.id == o.id)?;
        Some(Neighbour {
            id: o.id,
            rank,
            score: u128::from(input.rating.get()) * u128::from(input.crat_start_micro.get()),
            uptime_total_s: o.uptime_total_s,
            registered_at_s: input.registered_at_s,
        })
    };
    let (above, below) = if outcome.nodes[position].rank.is_some() {
        (
            position.checked_sub(1).and_then(neighbour),
            neighbour(position + 1),
        )
    } else {
        (None, None)
    };
    let schedule = BonusSchedule::new(
        pool_usd_micro(inputs)?,
        inputs.params.min_bonus_usd_micro,
        eligible_count,
    );
    Ok(Explanation {
        round: inputs.round.clone(),
        params: inputs.params.clone(),
        node: node.clone(),
        merged_online: merged,
        peak_windows: ctx.peaks.clone(),
        breakdown,
        outcome: outcome.nodes[position].clone(),
        eligible_count,
        schedule,
        above,
        below,
        aggregates: outcome.aggregates,
    })
}

fn usd(v: MicroUsd) -> String {
    format!("{} µUSD ({v})", v.get())
}

fn crat(v: MicroCrat) -> String {
    format!("{} µCRAT ({v})", v.get())
}

fn intervals(list: &[Interval]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter()
        .map(|i| format!("[{}, {}) = {} s", i.start_s, i.end_s, i.len_s()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Why `a` ranks above `b` (rule 6's first differing criterion).
fn ahead_because(a: &Neighbour, b: &Neighbour) -> String {
    if a.score != b.score {
        return format!("higher score ({} > {})", a.score, b.score);
    }
    if a.uptime_total_s != b.uptime_total_s {
        return format!(
            "equal score {}, more total uptime ({} s > {} s)",
            a.score, a.uptime_total_s, b.uptime_total_s
        );
    }
    if a.registered_at_s != b.registered_at_s {
        return format!(
            "equal score and total uptime, registered earlier ({} < {})",
            a.registered_at_s, b.registered_at_s
        );
    }
    "equal score, total uptime and registration, smaller id".to_owned()
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, r, n, b, o) = (
            &self.params,
            &self.round,
            &self.node,
            &self.breakdown,
            &self.outcome,
        );
        let end = r.start_s.saturating_add(r.length_s);
        writeln!(f, "Node {}", n.id)?;
        writeln!(
            f,
            "Round {}: seconds [{}, {}), length_s {} s. Every number below is an input of the round \
             or follows from the inputs by the numbered rules of ECONOMICS.md (integers, divisions round down).",
            r.index, r.start_s, end, r.length_s
        )?;

        writeln!(f, "\n1. Uptime")?;
        writeln!(
            f,
            "   {} online interval(s) given; clipped to the round and merged: {}",
            n.online.len(),
            intervals(&self.merged_online)
        )?;
        writeln!(f, "   uptime_s = {} s", b.uptime_s)?;
        writeln!(
            f,
            "   peak windows (params.peak_windows + round.start_s, within the round): {}",
            intervals(&self.peak_windows)
        )?;
        writeln!(
            f,
            "   peak_uptime_s = {} s online inside them",
            b.peak_uptime_s
        )?;
        writeln!(
            f,
            "   uptime_total_s = uptime_total_s_before {} + uptime_s {} = {} s",
            n.uptime_total_s_before, b.uptime_s, b.uptime_total_s
        )?;

        writeln!(f, "\n2-3. Guaranteed USD")?;
        writeln!(
            f,
            "   committed: uptime_s {} >= length_s {} - commit_downtime_s_max {} (= {})? {}",
            b.uptime_s,
            r.length_s,
            p.commit_downtime_s_max,
            r.length_s.saturating_sub(p.commit_downtime_s_max),
            yes(b.committed)
        )?;
        if b.committed {
            writeln!(
                f,
                "   guaranteed = mining_income_usd_micro_per_day {} x length_s {} / 86400 = {}",
                n.mining_income_usd_micro_per_day.get(),
                r.length_s,
                usd(o.guaranteed_usd_micro)
            )?;
        } else {
            writeln!(f, "   not committed, so guaranteed = 0 µUSD")?;
        }

        writeln!(f, "\n4-8. Bonus USD")?;
        writeln!(
            f,
            "   pool = income_usd_micro {} x bonus_share_bps {} / 10000 + carry_in_usd_micro {} = {}",
            r.income_usd_micro.get(),
            p.bonus_share_bps,
            r.carry_in_usd_micro.get(),
            usd(self.schedule.pool_usd_micro)
        )?;
        let uptime_lhs = u128::from(b.uptime_s) * u128::from(crate::params::BPS);
        let uptime_rhs = u128::from(p.bonus_uptime_bps_min) * u128::from(r.length_s);
        writeln!(
            f,
            "   eligible: uptime_s {} x 10000 = {} >= bonus_uptime_bps_min {} x length_s {} = {}? {}; \
             validations_failed {} = 0? {}; so eligible: {}",
            b.uptime_s,
            uptime_lhs,
            p.bonus_uptime_bps_min,
            r.length_s,
            uptime_rhs,
            yes(uptime_lhs >= uptime_rhs),
            n.validations_failed,
            yes(n.validations_failed == 0),
            yes(b.eligible)
        )?;
        writeln!(
            f,
            "   score = rating {} x crat_start_micro {} = {}",
            n.rating,
            n.crat_start_micro.get(),
            b.score
        )?;
        let s = &self.schedule;
        let k = s.paid_ranks;
        let min = p.min_bonus_usd_micro.get();
        let two_pool = 2 * u128::from(s.pool_usd_micro.get());
        let k_note = if k == self.eligible_count {
            "every eligible node".to_owned()
        } else {
            let k1 = u128::from(k) + 1;
            format!(
                "k + 1 would need {} x {} x {} = {} > {}",
                min,
                k1,
                k1 + 1,
                u128::from(min) * k1 * (k1 + 1),
                two_pool
            )
        };
        writeln!(
            f,
            "   paid ranks k = {k}: the largest k <= {} eligible nodes with 2 x pool = {} >= \
             min_bonus_usd_micro {} x k x (k + 1) = {} ({k_note})",
            self.eligible_count,
            two_pool,
            min,
            u128::from(min) * u128::from(k) * (u128::from(k) + 1),
        )?;
        match o.rank {
            None => writeln!(f, "   not eligible: no rank, bonus = 0 µUSD")?,
            Some(rank) => {
                let me = Neighbour {
                    id: n.id,
                    rank,
                    score: b.score,
                    uptime_total_s: b.uptime_total_s,
                    registered_at_s: n.registered_at_s,
                };
                writeln!(
                    f,
                    "   rank {rank} of {} (order: score high to low, then uptime_total_s high to low, \
                     then registered_at_s early to late, then id)",
                    self.eligible_count
                )?;
                if let Some(a) = &self.above {
                    writeln!(
                        f,
                        "     rank {} {} is ahead: {}",
                        a.rank,
                        a.id,
                        ahead_because(a, &me)
                    )?;
                }
                if let Some(c) = &self.below {
                    writeln!(
                        f,
                        "     rank {} {} is behind: this node has {}",
                        c.rank,
                        c.id,
                        ahead_because(&me, c)
                    )?;
                }
                if rank > k {
                    writeln!(f, "   rank {rank} > k = {k}: bonus = 0 µUSD")?;
                } else {
                    let weight = k + 1 - rank;
                    let base =
                        u128::from(s.pool_usd_micro.get()) * u128::from(weight) / s.weight_total;
                    let extra = if rank <= s.remainder_usd_micro {
                        format!(
                            " + 1 (the remainder {} µUSD goes 1 µUSD each to ranks 1..{})",
                            s.remainder_usd_micro, s.remainder_usd_micro
                        )
                    } else if s.remainder_usd_micro > 0 {
                        format!(
                            " (the remainder {} µUSD goes to ranks 1..{} only)",
                            s.remainder_usd_micro, s.remainder_usd_micro
                        )
                    } else {
                        String::new()
                    };
                    writeln!(
                        f,
                        "   bonus = pool {} x (k + 1 - rank) {weight} / W {} (= k(k+1)/2) = {base}{extra} = {}",
                        s.pool_usd_micro.get(),
                        s.weight_total,
                        usd(o.bonus_usd_micro)
                    )?;
                }
            }
        }

        writeln!(f, "\n9-13. CRAT")?;
        writeln!(
            f,
            "   streak_end = {} (committed? {}; streak_start {})",
            b.streak_end,
            yes(b.committed),
            n.streak_start
        )?;
        if b.streak_end >= p.streak_min {
            writeln!(
                f,
                "   streak CRAT = streak_unit_crat_micro {} x min(streak_end - 1 = {}, streak_cap {}) = {}",
                p.streak_unit_crat_micro.get(),
                b.streak_end - 1,
                p.streak_cap,
                crat(b.streak_crat_micro)
            )?;
        } else {
            writeln!(
                f,
                "   streak CRAT = 0 (streak_end {} < streak_min {})",
                b.streak_end, p.streak_min
            )?;
        }
        writeln!(
            f,
            "   peak CRAT = peak_unit_crat_micro_per_hour {} x full hours (peak_uptime_s {} / 3600 = {}) = {}",
            p.peak_unit_crat_micro_per_hour.get(),
            b.peak_uptime_s,
            b.peak_uptime_s / 3600,
            crat(b.peak_crat_micro)
        )?;
        writeln!(
            f,
            "   validation CRAT = validation_unit_crat_micro {} x validations_ok {} = {}",
            p.validation_unit_crat_micro.get(),
            n.validations_ok,
            crat(b.validation_crat_micro)
        )?;
        writeln!(
            f,
            "   crat_issued = {} + {} + {} = {}",
            b.streak_crat_micro.get(),
            b.peak_crat_micro.get(),
            b.validation_crat_micro.get(),
            crat(o.crat_issued_micro)
        )?;
        if n.validations_failed == 0 {
            writeln!(f, "   no failed validation: nothing slashed")?;
        } else {
            let mut steps = vec![n.crat_start_micro.get()];
            let mut balance = n.crat_start_micro.get();
            for _ in 0..n.validations_failed.min(SLASH_STEPS_SHOWN_MAX as u64) {
                balance = slash_once(balance, p.slash_bps);
                steps.push(balance);
            }
            let shown: Vec<String> = steps.iter().map(u64::to_string).collect();
            let more = if n.validations_failed > SLASH_STEPS_SHOWN_MAX as u64 {
                format!(" -> ... -> {}", b.crat_after_slash_micro.get())
            } else {
                String::new()
            };
            writeln!(
                f,
                "   slash: {} failed validation(s), each keeps balance x (10000 - slash_bps {}) / 10000: {}{more}",
                n.validations_failed,
                p.slash_bps,
                shown.join(" -> ")
            )?;
            writeln!(
                f,
                "   crat_slashed = crat_start_micro {} - {} = {}",
                n.crat_start_micro.get(),
                b.crat_after_slash_micro.get(),
                crat(o.crat_slashed_micro)
            )?;
        }
        writeln!(
            f,
            "   crat_end = after slashing {} + issued {} + crat_external_micro {} = {}",
            b.crat_after_slash_micro.get(),
            o.crat_issued_micro.get(),
            n.crat_external_micro.get(),
            crat(o.crat_end_micro)
        )?;

        let total = o.guaranteed_usd_micro.saturating_add(o.bonus_usd_micro);
        writeln!(
            f,
            "\nPaid this round: guaranteed {} + bonus {} = {}",
            o.guaranteed_usd_micro.get(),
            o.bonus_usd_micro.get(),
            usd(total)
        )?;
        writeln!(
            f,
            "Round totals: pool {}, {} paid rank(s), bonus paid {}, guaranteed paid {}, carried to next round {}",
            self.aggregates.pool_usd_micro.get(),
            self.aggregates.paid_ranks,
            self.aggregates.bonus_paid_usd_micro.get(),
            self.aggregates.guaranteed_paid_usd_micro.get(),
            self.aggregates.carry_out_usd_micro.get()
        )
    }
}
