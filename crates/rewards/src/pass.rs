//! The passes that apply the rules ([`crate::rules`]) to a whole round, and their buffers:
//! one pass over the nodes in input order (rule 1, the rank keys, and under
//! [`Detail::Results`] every rule but the bonus), the rank order ([`crate::rank`]), then the
//! bonuses and, when the rank-ordered outcome is wanted, a pass that writes each node's
//! outcome straight to its place. The first pass may run in parts of consecutive nodes
//! ([`RoundPart`], on any threads; put together in input order, so the outcome is the same).
//! [`Scratch`] keeps the buffers from round to round, and [`ActivitySlot`] is how a caller
//! writes a node's activity into the round being closed.

use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};

use crate::outcome::{Aggregates, NodeOutcome, NodeResult, RoundOutcome};
use crate::rank::{
    Extrema, RankBuffers, RankKey, id_order, id_order_entry, rank_order, top_order_in_parts,
};
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
    /// The first pass's state per part of a round.
    parts: Vec<PartPass>,
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
    let n = inputs.nodes.len();
    let (mut uptimes, mut results) = first_pass_buffers(scratch, detail, n);
    let mut parts = std::mem::take(&mut scratch.parts);
    parts.truncate(1);
    parts.resize_with(1, PartPass::default);
    let part = &mut parts[0];
    part.start();
    for (i, node) in inputs.nodes.iter().enumerate() {
        if let Err(e) = part.node(
            &ctx,
            detail,
            i,
            node,
            uptimes.get_mut(i),
            results.get_mut(i),
        ) {
            part.error = Some(e);
            break;
        }
    }
    let computed =
        gather(&mut parts, uptimes, results, &mut scratch.ranked, detail).and_then(|passed| {
            finish(
                &ctx,
                &inputs.round,
                &inputs.nodes,
                passed,
                &parts,
                scratch,
                detail,
            )
        });
    scratch.parts = parts;
    computed
}

/// [`compute_with`] of `inputs` once each node's activity is written, in parts of
/// `part_nodes` consecutive nodes (the last may be shorter): `run` runs the parts (each with
/// [`RoundPart::fill`], in any order, on any threads), and a part it leaves alone is run with
/// nothing written. A part writes each node's activity just before that node's rules run
/// (one pass over the nodes, not two), so a round's first pass is spread over the threads
/// that run its parts; the outcome is the same however they are run.
pub(crate) fn compute_filled(
    inputs: &mut RoundInputs,
    scratch: &mut Scratch,
    detail: Detail,
    part_nodes: usize,
    run: impl FnOnce(&mut [RoundPart<'_>]),
) -> Result<Computed, RewardsError> {
    let RoundInputs {
        params,
        round,
        nodes,
    } = inputs;
    let ctx = Ctx::for_round(params, round, nodes.len())?;
    let n = nodes.len();
    let part_nodes = part_nodes.max(1);
    let (mut uptimes, mut results) = first_pass_buffers(scratch, detail, n);
    let mut states = std::mem::take(&mut scratch.parts);
    states.truncate(n.div_ceil(part_nodes));
    states.resize_with(n.div_ceil(part_nodes), PartPass::default);
    {
        let mut uptimes = uptimes.chunks_mut(part_nodes);
        let mut results = results.chunks_mut(part_nodes);
        let mut parts: Vec<RoundPart<'_>> = nodes
            .chunks_mut(part_nodes)
            .zip(states.iter_mut())
            .enumerate()
            .map(|(p, (nodes, pass))| {
                pass.start();
                RoundPart {
                    ctx: &ctx,
                    detail,
                    first: p * part_nodes,
                    nodes,
                    uptimes: uptimes.next().unwrap_or_default(),
                    results: results.next().unwrap_or_default(),
                    pass,
                }
            })
            .collect();
        run(&mut parts);
        for part in &mut parts {
            part.fill(|_, _| {});
        }
    }
    let computed = gather(&mut states, uptimes, results, &mut scratch.ranked, detail)
        .and_then(|passed| finish(&ctx, round, nodes, passed, &states, scratch, detail));
    scratch.parts = states;
    computed
}

/// The first pass's per-node buffers, from `scratch`: the uptimes (rule 1) of every node
/// when the outcome is wanted, the results of every node under [`Detail::Results`] (written
/// by position, so the parts of a round can write theirs at once), else empty.
fn first_pass_buffers(
    scratch: &mut Scratch,
    detail: Detail,
    n: usize,
) -> (Vec<(u64, u64)>, Vec<NodeResult>) {
    let mut uptimes = std::mem::take(&mut scratch.uptimes);
    let mut results = std::mem::take(&mut scratch.results);
    // Every entry is written by the pass before it is read: an earlier round's values are
    // left in place rather than cleared first.
    if detail.outcomes() {
        uptimes.truncate(n);
        uptimes.resize(n, (0, 0));
    } else {
        uptimes.clear();
    }
    match detail {
        Detail::Results => {
            results.truncate(n);
            results.resize(n, NodeResult::default());
        }
        Detail::OutcomesAndResults => {
            results.clear();
            results.reserve(n);
        }
        Detail::Outcomes => results.clear(),
    }
    (uptimes, results)
}

/// What the first pass leaves for [`finish`].
struct Passed {
    /// Under outcomes: each node's `(uptime_s, peak_uptime_s)`.
    uptimes: Vec<(u64, u64)>,
    /// Under outcomes: the eligible nodes' rank keys, in input order (under
    /// [`Detail::Results`] they stay in the parts, and this is an empty buffer).
    ranked: Vec<RankKey>,
    /// The number of eligible nodes.
    eligible: usize,
    /// The span of their keys' fields.
    extrema: Extrema,
    /// Under [`Detail::Results`]: each node's result, bonus not yet set.
    results: Vec<NodeResult>,
    /// Under [`Detail::Results`]: the guaranteed USD of all nodes.
    guaranteed_paid: u64,
    /// Whether the ids strictly increase: then they are unique and in id order.
    in_id_order: bool,
}

/// The parts' passes put together in input order: the first error a pass over all nodes in
/// order would have met (a node's own, or the guaranteed total's overflow), or what they
/// found. Under outcomes their rank keys are gathered into `ranked`'s buffer; under
/// [`Detail::Results`] they stay in the parts (the paid ranks are selected from there).
fn gather(
    parts: &mut [PartPass],
    uptimes: Vec<(u64, u64)>,
    results: Vec<NodeResult>,
    ranked: &mut Vec<RankKey>,
    detail: Detail,
) -> Result<Passed, RewardsError> {
    let mut all = std::mem::take(ranked);
    all.clear();
    let single = parts.len() == 1;
    let mut guaranteed_paid = 0u128;
    let mut in_id_order = true;
    let mut last: Option<NodeId> = None;
    let (mut eligible, mut extrema) = (0, Extrema::default());
    for part in parts.iter_mut() {
        // A part's total covers its nodes before its error, if any: the total of all nodes
        // in order overflows before that error exactly when it overflows here.
        guaranteed_paid += part.guaranteed_paid;
        if guaranteed_paid > u128::from(u64::MAX) {
            return Err(RewardsError::overflow("nodes", "guaranteed_paid_usd_micro"));
        }
        if let Some(e) = part.error.take() {
            return Err(e);
        }
        if let Some((first, part_last)) = part.ids {
            in_id_order &= part.in_id_order && last.is_none_or(|l| l < first);
            last = Some(part_last);
        }
        eligible += part.ranked.len();
        extrema.merge(&part.extrema);
        if !detail.outcomes() {
            continue;
        }
        if single {
            // One part (a round closed in one go): its keys are taken, not copied.
            std::mem::swap(&mut all, &mut part.ranked);
        } else {
            all.extend_from_slice(&part.ranked);
        }
    }
    Ok(Passed {
        uptimes,
        ranked: all,
        eligible,
        extrema,
        results,
        // Checked against u64::MAX above.
        guaranteed_paid: guaranteed_paid as u64,
        in_id_order,
    })
}

/// One part of a round being closed in parts ([`crate::RoundDriver::close_round_in_parts`]):
/// consecutive nodes whose activity is written and whose rules (all but the bonus, which
/// needs every node's rank) run together, on whichever thread runs the part.
#[derive(Debug)]
pub struct RoundPart<'a> {
    ctx: &'a Ctx<'a>,
    detail: Detail,
    first: usize,
    nodes: &'a mut [NodeInput],
    uptimes: &'a mut [(u64, u64)],
    results: &'a mut [NodeResult],
    pass: &'a mut PartPass,
}

impl RoundPart<'_> {
    /// Index in the round's inputs of its first node.
    pub fn first(&self) -> usize {
        self.first
    }

    /// Its number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Writes each of its nodes' activity with `fill(i, slot)` (`i`: the node's index in the
    /// round's inputs, increasing; the slot starts empty) and runs the node's rules right
    /// after. A part runs once: a second call does nothing. The first invalid input stops
    /// the part (the round then fails with the first error in input order).
    pub fn fill(&mut self, mut fill: impl FnMut(usize, ActivitySlot<'_>)) {
        if self.pass.done {
            return;
        }
        self.pass.done = true;
        for (j, node) in self.nodes.iter_mut().enumerate() {
            let i = self.first + j;
            fill(i, ActivitySlot { node });
            let (uptime, result) = (self.uptimes.get_mut(j), self.results.get_mut(j));
            if let Err(e) = self
                .pass
                .node(self.ctx, self.detail, i, node, uptime, result)
            {
                self.pass.error = Some(e);
                return;
            }
        }
    }
}

/// Every rule but the bonus (rules 1–3, 5, 6's keys, 9–13) over one part's nodes, node by
/// node in input order: uptimes or results written at each node's position, rank keys for
/// the eligible nodes. Its buffers are kept in [`Scratch`] from round to round.
#[derive(Clone, Debug, Default)]
pub(crate) struct PartPass {
    merged: Vec<Interval>,
    ranked: Vec<RankKey>,
    /// The span of `ranked`'s fields.
    extrema: Extrema,
    /// Under [`Detail::Results`], the guaranteed USD of the nodes passed (at most
    /// `ROUND_NODES_MAX` amounts below 2^64: no overflow).
    guaranteed_paid: u128,
    /// The first and last ids passed.
    ids: Option<(NodeId, NodeId)>,
    /// Whether the ids passed strictly increase.
    in_id_order: bool,
    /// The error that stopped the part.
    error: Option<RewardsError>,
    /// Whether the part ran.
    done: bool,
}

impl PartPass {
    /// Ready for a round (buffers kept).
    fn start(&mut self) {
        self.ranked.clear();
        self.extrema = Extrema::default();
        self.guaranteed_paid = 0;
        self.ids = None;
        self.in_id_order = true;
        self.error = None;
        self.done = false;
    }

    /// Node `i`'s rules: under outcomes its uptimes into `uptime`, else its result (bonus
    /// not yet set) into `result`; its rank key when eligible.
    #[inline]
    fn node(
        &mut self,
        ctx: &Ctx<'_>,
        detail: Detail,
        i: usize,
        node: &NodeInput,
        uptime: Option<&mut (u64, u64)>,
        result: Option<&mut NodeResult>,
    ) -> Result<(), RewardsError> {
        let (uptime_s, peak_uptime_s) = ctx.uptime(i, &node.online, &mut self.merged)?;
        match &mut self.ids {
            None => self.ids = Some((node.id, node.id)),
            Some((_, last)) => {
                if *last >= node.id {
                    self.in_id_order = false;
                }
                *last = node.id;
            }
        }
        if detail.outcomes() {
            // Rule 1 and rule 6's key here; the other rules when each outcome is written.
            if let Some(u) = uptime {
                *u = (uptime_s, peak_uptime_s);
            }
            if ctx.eligible(node, uptime_s) {
                let uptime_total_s = Ctx::uptime_total(i, node, uptime_s)?;
                self.push_key(RankKey::new(i, node, uptime_total_s));
            }
            return Ok(());
        }
        // Every rule but the bonus, the result written at the node's position.
        let b = ctx.breakdown_after_uptime(i, node, uptime_s, peak_uptime_s)?;
        self.guaranteed_paid += u128::from(b.guaranteed_usd_micro.get());
        if b.eligible {
            self.push_key(RankKey::new(i, node, b.uptime_total_s));
        }
        if let Some(r) = result {
            *r = b.result(MicroUsd::ZERO);
        }
        Ok(())
    }

    /// An eligible node's rank key.
    #[inline]
    fn push_key(&mut self, key: RankKey) {
        self.extrema.add(&key);
        self.ranked.push(key);
    }
}

/// The ranks and bonuses (rules 4, 6–8) after the first pass went over `nodes`, and the
/// outcome.
fn finish(
    ctx: &Ctx<'_>,
    round: &Round,
    nodes: &[NodeInput],
    passed: Passed,
    parts: &[PartPass],
    scratch: &mut Scratch,
    detail: Detail,
) -> Result<Computed, RewardsError> {
    let n = nodes.len();
    let Passed {
        uptimes,
        mut ranked,
        eligible,
        extrema,
        mut results,
        guaranteed_paid,
        in_id_order,
    } = passed;

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
        top_order_in_parts(
            nodes,
            parts.iter().map(|p| p.ranked.as_slice()),
            (eligible, &extrema),
            schedule.paid_ranks as usize,
            (&mut scratch.rank, &mut ranked),
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
