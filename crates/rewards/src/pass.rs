//! The passes that apply the rules ([`crate::rules`]) to a whole round, and their buffers:
//! one pass over the nodes in input order (rule 1, the rank keys, and under
//! [`Detail::Results`] every rule but the bonus), the rank order ([`crate::rank`]), then the
//! bonuses and, when the rank-ordered outcome is wanted, a pass that writes each node's
//! outcome straight to its place. [`Scratch`] keeps the buffers from round to round, and
//! [`ActivitySlot`] is how a caller writes a node's activity into the round being closed.

use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};

use crate::outcome::{Aggregates, NodeOutcome, NodeResult, RoundOutcome};
use crate::rank::{RankBuffers, RankKey, id_order, id_order_entry, rank_order, top_order};
use crate::round::{NodeInput, Round, RoundInputs};
use crate::rules::{BonusSchedule, Ctx, pool_of};
use crate::{Interval, NodeActivity, RewardsError};

/// Computes a round: all the rules of `docs/economics.md`, after checking the inputs.
///
/// Errors name the offending field (`nodes[3].online[1]: interval end 5 before start 9`).
/// The result does not depend on the order of `inputs.nodes`, and the same inputs always give
/// the same outcome.
///
/// Cost: a pass over the nodes for rule 1 and the rank keys (intervals merged in one reused
/// buffer, no allocation per node), a radix sort of the ids (skipped when the nodes come in id
/// order, as [`crate::RoundDriver`] lists them), a sort of the eligible nodes by rule 6 (see
/// `rank_order`), then a pass that applies the other rules and writes each outcome straight
/// to its place.
pub fn compute(inputs: &RoundInputs) -> Result<RoundOutcome, RewardsError> {
    compute_with(inputs, &mut Scratch::default(), Detail::Outcomes).map(|c| c.outcome)
}

/// What [`compute_with`] produces besides the per-node results in input order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detail {
    /// The rank-ordered outcome (the interchange output), no results (left empty).
    Outcomes,
    /// The outcome and the results (a driver that carries the round forward).
    OutcomesAndResults,
    /// Only the results in input order and the totals: no 128-byte outcome per node written at
    /// its rank position (`outcome.nodes` and `positions` are left empty).
    Results,
}

impl Detail {
    fn outcomes(self) -> bool {
        self != Self::Results
    }
}

/// One computed round, with the buffers it was written into.
#[derive(Debug)]
pub(crate) struct Computed {
    /// The outcome; its nodes are empty under [`Detail::Results`].
    pub(crate) outcome: RoundOutcome,
    /// `positions[i]`: index in `outcome.nodes` of node `i` (empty under [`Detail::Results`]).
    pub(crate) positions: Vec<u32>,
    /// `results[i]`: node `i`'s result.
    pub(crate) results: Vec<NodeResult>,
}

/// Buffers of one computation, kept by [`crate::RoundDriver`] from round to round so that a
/// round of a million nodes does not allocate (and fault in) some 300 MB afresh. They carry
/// no state: any two are equal.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scratch {
    uptimes: Vec<(u64, u64)>,
    ranked: Vec<RankKey>,
    order: Vec<u32>,
    by_id: Vec<u64>,
    by_id_tmp: Vec<u64>,
    rank: RankBuffers,
    /// The outcome buffer of an earlier round, handed back by the driver.
    pub(crate) out: Vec<NodeOutcome>,
    /// The positions buffer of an earlier round, handed back by the driver.
    pub(crate) place: Vec<u32>,
    /// The results buffer of an earlier round, handed back by the driver.
    pub(crate) results: Vec<NodeResult>,
}

impl Scratch {
    /// Takes back the buffers of a computed round for the next one.
    pub(crate) fn recycle(&mut self, computed: Computed) {
        self.out = computed.outcome.nodes;
        self.place = computed.positions;
        self.results = computed.results;
    }
}

impl PartialEq for Scratch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Scratch {}

/// [`compute`] with reused buffers, producing what `detail` asks for.
pub(crate) fn compute_with(
    inputs: &RoundInputs,
    scratch: &mut Scratch,
    detail: Detail,
) -> Result<Computed, RewardsError> {
    let ctx = Ctx::new(inputs)?;
    let mut pass = PassOne::new(scratch, detail, inputs.nodes.len());
    for (i, node) in inputs.nodes.iter().enumerate() {
        pass.node(&ctx, i, node)?;
    }
    finish(&ctx, &inputs.round, &inputs.nodes, pass, scratch, detail)
}

/// [`compute_with`] of `inputs` once `fill(i, node)` has written each node's activity,
/// called for each node just before its rules run (one pass over the nodes, not two).
pub(crate) fn compute_filled(
    inputs: &mut RoundInputs,
    scratch: &mut Scratch,
    detail: Detail,
    mut fill: impl FnMut(usize, &mut NodeInput),
) -> Result<Computed, RewardsError> {
    let ctx = Ctx::for_round(&inputs.params, &inputs.round, inputs.nodes.len())?;
    let mut pass = PassOne::new(scratch, detail, inputs.nodes.len());
    for (i, node) in inputs.nodes.iter_mut().enumerate() {
        fill(i, node);
        pass.node(&ctx, i, node)?;
    }
    finish(&ctx, &inputs.round, &inputs.nodes, pass, scratch, detail)
}

/// Every rule but the bonus (rules 1–3, 5, 6's keys, 9–13), node by node in input order:
/// results written sequentially, rank keys for the eligible nodes.
struct PassOne {
    detail: Detail,
    merged: Vec<Interval>,
    uptimes: Vec<(u64, u64)>,
    ranked: Vec<RankKey>,
    results: Vec<NodeResult>,
    guaranteed_paid: u64,
    /// Whether the ids strictly increase so far: then they are unique and in id order.
    in_id_order: bool,
    previous: Option<NodeId>,
}

impl PassOne {
    fn new(scratch: &mut Scratch, detail: Detail, n: usize) -> Self {
        let mut uptimes = std::mem::take(&mut scratch.uptimes);
        uptimes.clear();
        let mut ranked = std::mem::take(&mut scratch.ranked);
        ranked.clear();
        let mut results = std::mem::take(&mut scratch.results);
        results.clear();
        if detail != Detail::Outcomes {
            results.reserve(n);
        }
        Self {
            detail,
            merged: Vec::with_capacity(16),
            uptimes,
            ranked,
            results,
            guaranteed_paid: 0,
            in_id_order: true,
            previous: None,
        }
    }

    #[inline]
    fn node(&mut self, ctx: &Ctx<'_>, i: usize, node: &NodeInput) -> Result<(), RewardsError> {
        let (uptime_s, peak_uptime_s) = ctx.uptime(i, &node.online, &mut self.merged)?;
        if self.previous.is_some_and(|p| p >= node.id) {
            self.in_id_order = false;
        }
        self.previous = Some(node.id);
        if self.detail.outcomes() {
            // Rule 1 and rule 6's key here; the other rules when each outcome is written.
            self.uptimes.push((uptime_s, peak_uptime_s));
            if ctx.eligible(node, uptime_s) {
                let uptime_total_s = Ctx::uptime_total(i, node, uptime_s)?;
                self.ranked.push(RankKey::new(i, node, uptime_total_s));
            }
            return Ok(());
        }
        // Every rule but the bonus, the result written in input order.
        let b = ctx.breakdown_after_uptime(i, node, uptime_s, peak_uptime_s)?;
        self.guaranteed_paid = self
            .guaranteed_paid
            .checked_add(b.guaranteed_usd_micro.get())
            .ok_or_else(|| RewardsError::overflow("nodes", "guaranteed_paid_usd_micro"))?;
        if b.eligible {
            self.ranked.push(RankKey::new(i, node, b.uptime_total_s));
        }
        self.results.push(b.result(MicroUsd::ZERO));
        Ok(())
    }
}

/// The ranks and bonuses (rules 4, 6–8) after [`PassOne`] went over `nodes`, and the
/// outcome.
fn finish(
    ctx: &Ctx<'_>,
    round: &Round,
    nodes: &[NodeInput],
    pass: PassOne,
    scratch: &mut Scratch,
    detail: Detail,
) -> Result<Computed, RewardsError> {
    let n = nodes.len();
    let PassOne {
        uptimes,
        mut ranked,
        mut results,
        guaranteed_paid,
        in_id_order,
        ..
    } = pass;

    // Ids unique; then rule 6's order is total and the unstable sort deterministic.
    // In id order (as a driver lists them) the ids are unique and the id order is the input
    // order: no list is built. Otherwise the id order, which also finds duplicates.
    let by_id = if in_id_order {
        None
    } else {
        let mut by_id = std::mem::take(&mut scratch.by_id);
        by_id.clear();
        by_id.extend(
            nodes
                .iter()
                .enumerate()
                .map(|(i, node)| id_order_entry(i, node)),
        );
        Some(id_order(nodes, by_id, &mut scratch.by_id_tmp)?)
    };

    // Rules 4, 7, 8.
    let eligible = ranked.len();
    let pool = pool_of(ctx.params, round)?;
    let schedule = BonusSchedule::new(pool, ctx.params.min_bonus_usd_micro, eligible as u64);

    let mut out = std::mem::take(&mut scratch.out);
    out.clear();
    let mut place = std::mem::take(&mut scratch.place);
    place.clear();
    let mut order = std::mem::take(&mut scratch.order);
    if !detail.outcomes() {
        // Results carry no rank: only the paid ranks' order matters (a few thousand of a
        // million eligible nodes), found by selection instead of a full sort.
        // paid_ranks ≤ eligible ≤ ROUND_NODES_MAX.
        top_order(
            nodes,
            &mut ranked,
            schedule.paid_ranks as usize,
            &mut scratch.rank,
            &mut order,
        );
        for (r, &i) in order.iter().enumerate() {
            results[i as usize].bonus_usd_micro = schedule.share(r as u64 + 1);
        }
        scratch.order = order;
        scratch.ranked = ranked;
        if let Some(by_id) = by_id {
            scratch.by_id = by_id;
        }
        scratch.uptimes = uptimes;
        let outcome = RoundOutcome {
            nodes: out,
            aggregates: aggregates(&schedule, pool, guaranteed_paid),
        };
        return Ok(Computed {
            outcome,
            positions: place,
            results,
        });
    }
    rank_order(nodes, &mut ranked, &mut scratch.rank, &mut order);

    // Each node's place in the output: eligible nodes in rank order, then the others in id
    // order.
    place.resize(n, u32::MAX);
    for (r, &i) in order.iter().enumerate() {
        place[i as usize] = r as u32;
    }
    scratch.order = order;
    let mut next = eligible as u32;
    let mut place_next = |i: usize| {
        let p = &mut place[i];
        if *p == u32::MAX {
            *p = next;
            next += 1;
        }
    };
    match by_id {
        Some(by_id) => {
            by_id.iter().for_each(|&i| place_next(i as usize));
            scratch.by_id = by_id;
        }
        None => (0..n).for_each(place_next),
    }
    scratch.ranked = ranked;

    // Rule 8 by rank; the remaining rules run here for each node and its outcome is written
    // to its place.
    let mut guaranteed_paid = guaranteed_paid;
    {
        let blank = NodeOutcome {
            id: NodeId::from_bytes([0; 32]),
            uptime_s: 0,
            peak_uptime_s: 0,
            committed: false,
            eligible: false,
            rank: None,
            guaranteed_usd_micro: MicroUsd::ZERO,
            bonus_usd_micro: MicroUsd::ZERO,
            crat_issued_micro: MicroCrat::ZERO,
            crat_slashed_micro: MicroCrat::ZERO,
            crat_end_micro: MicroCrat::ZERO,
            streak_end: 0,
            uptime_total_s: 0,
        };
        out.resize(n, blank);
        for (i, node) in nodes.iter().enumerate() {
            let (uptime_s, peak_uptime_s) = uptimes[i];
            let b = ctx.breakdown_after_uptime(i, node, uptime_s, peak_uptime_s)?;
            guaranteed_paid = guaranteed_paid
                .checked_add(b.guaranteed_usd_micro.get())
                .ok_or_else(|| RewardsError::overflow("nodes", "guaranteed_paid_usd_micro"))?;
            let place = place[i] as usize;
            let rank = b.eligible.then_some(place as u64 + 1);
            let bonus_usd_micro = rank.map_or(MicroUsd::ZERO, |r| schedule.share(r));
            if detail == Detail::OutcomesAndResults {
                results.push(b.result(bonus_usd_micro));
            }
            out[place] = NodeOutcome {
                id: node.id,
                uptime_s,
                peak_uptime_s,
                committed: b.committed,
                eligible: b.eligible,
                rank,
                guaranteed_usd_micro: b.guaranteed_usd_micro,
                bonus_usd_micro,
                crat_issued_micro: b.crat_issued_micro,
                crat_slashed_micro: b.crat_slashed_micro,
                crat_end_micro: b.crat_end_micro,
                streak_end: b.streak_end,
                uptime_total_s: b.uptime_total_s,
            };
        }
    }
    scratch.uptimes = uptimes;

    let outcome = RoundOutcome {
        nodes: out,
        aggregates: aggregates(&schedule, pool, guaranteed_paid),
    };
    Ok(Computed {
        outcome,
        positions: place,
        results,
    })
}

/// A round's totals.
fn aggregates(schedule: &BonusSchedule, pool: MicroUsd, guaranteed_paid: u64) -> Aggregates {
    Aggregates {
        pool_usd_micro: pool,
        paid_ranks: schedule.paid_ranks,
        bonus_paid_usd_micro: schedule.paid_usd_micro(),
        guaranteed_paid_usd_micro: MicroUsd::new(guaranteed_paid),
        carry_out_usd_micro: schedule.carry_out_usd_micro(),
    }
}

/// One registered node's activity in a round being closed in place (see
/// [`crate::RoundDriver::close_round`]). It starts empty; the caller writes what the node
/// did. The rules check it as they check any input.
#[derive(Debug)]
pub struct ActivitySlot<'a> {
    node: &'a mut NodeInput,
}

impl ActivitySlot<'_> {
    /// The node.
    pub fn id(&self) -> &NodeId {
        &self.node.id
    }

    /// Its online intervals for the round: empty, with the buffer of an earlier round kept
    /// (filling it does not allocate once it is large enough).
    pub fn online(&mut self) -> &mut Vec<Interval> {
        &mut self.node.online
    }

    /// Its validations this round: correct and failed.
    pub fn set_validations(&mut self, ok: u64, failed: u64) {
        self.node.validations_ok = ok;
        self.node.validations_failed = failed;
    }

    /// CRAT earned outside the rules this round.
    pub fn set_crat_external(&mut self, crat: MicroCrat) {
        self.node.crat_external_micro = crat;
    }

    /// All of its activity at once (the online intervals moved in).
    pub fn set(&mut self, activity: NodeActivity) {
        self.node.online = activity.online;
        self.node.validations_ok = activity.validations_ok;
        self.node.validations_failed = activity.validations_failed;
        self.node.crat_external_micro = activity.crat_external_micro;
    }
}

/// `fill` as [`compute_filled`] calls it: each node's empty activity as a slot.
pub(crate) fn slots(
    mut fill: impl FnMut(usize, ActivitySlot<'_>),
) -> impl FnMut(usize, &mut NodeInput) {
    move |i, node| fill(i, ActivitySlot { node })
}

#[cfg(test)]
mod tests {
    use crat_core::money::{MicroCrat, MicroUsd};

    use super::*;
    use crate::Params;
    use crate::rank::RADIX_MIN;
    use crate::rank::tests::input;

    /// A round closed for its results only pays the same bonuses as the full computation:
    /// the paid ranks are found by selection, ties in score, uptime and registration
    /// included (ids decide), on every rank-sort path.
    #[test]
    fn results_only_pay_the_paid_ranks_as_the_full_sort_does() {
        let mut x = 7u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut selected, mut sorted) = (0, 0);
        for (count, crat_levels, income) in [
            (6_000usize, 3u64, 30_000_000u64),
            (6_000, 1 << 40, 30_000_000),
            (6_000, 3, 300_000_000_000),
            (1_000, 3, 30_000_000),
        ] {
            let params = Params::default();
            let nodes: Vec<NodeInput> = (0..count)
                .map(|_| {
                    let mut id = [0u8; 32];
                    for chunk in id.chunks_mut(8) {
                        chunk.copy_from_slice(&next().to_be_bytes());
                    }
                    let mut n = input(id);
                    n.rating = crat_core::hardware::PowerRating::new(1 + (next() % 5) as u8)
                        .unwrap_or(crat_core::hardware::PowerRating::MIN);
                    n.crat_start_micro = MicroCrat::new(next() % crat_levels);
                    n.uptime_total_s_before = next() % 2;
                    n.registered_at_s = next() % 2;
                    n.online = vec![Interval::new(0, params.round_s)];
                    n
                })
                .collect();
            let inputs = RoundInputs {
                round: Round {
                    index: 0,
                    start_s: 0,
                    length_s: params.round_s,
                    income_usd_micro: MicroUsd::new(income),
                    carry_in_usd_micro: MicroUsd::ZERO,
                },
                params,
                nodes,
            };
            let full =
                compute_with(&inputs, &mut Scratch::default(), Detail::OutcomesAndResults).unwrap();
            let lean = compute_with(&inputs, &mut Scratch::default(), Detail::Results).unwrap();
            assert_eq!(
                lean.results, full.results,
                "{count} nodes, {crat_levels} levels"
            );
            assert_eq!(lean.outcome.aggregates, full.outcome.aggregates);
            let k = full.outcome.aggregates.paid_ranks;
            assert!(k > 1, "{count}: {k} paid ranks");
            if count >= RADIX_MIN && k as usize <= count / 8 {
                selected += 1;
            } else {
                sorted += 1;
            }
        }
        assert_eq!(
            (selected, sorted),
            (2, 2),
            "both ways of finding the paid ranks"
        );
    }
}
