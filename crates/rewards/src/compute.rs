//! The rules of `ECONOMICS.md`, in order. Every payout and CRAT movement is computed here and
//! nowhere else.

use std::cmp::Ordering;

use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};

use crate::outcome::{Aggregates, NodeOutcome, NodeResult, RoundOutcome};
use crate::params::BPS;
use crate::round::{NodeInput, Round, RoundInputs};
use crate::{Interval, Params, RewardsError};

/// Most nodes in one round. Node positions are kept as `u32` while ranking.
pub const ROUND_NODES_MAX: usize = 1 << INDEX_BITS;

/// Most online intervals one node may report for one round (a node flapping every second
/// for a whole day reports 43,200).
pub const ONLINE_INTERVALS_MAX: usize = 1 << 17;

/// Seconds in a day: guaranteed USD scales the daily mining income by `length_s / 86400`.
const DAY_S: u64 = 86_400;

/// Seconds in an hour: peak CRAT is paid per full hour.
const HOUR_S: u64 = 3_600;

/// One node's intermediate quantities, rule by rule: what [`crate::explain`] shows and what
/// the outcome is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBreakdown {
    /// Rule 1: seconds online inside the round, overlaps merged.
    pub uptime_s: u64,
    /// Rule 1: seconds online inside the peak windows.
    pub peak_uptime_s: u64,
    /// Rule 1: `uptime_total_s_before + uptime_s`.
    pub uptime_total_s: u64,
    /// Rule 2: `uptime_s ≥ length_s − commit_downtime_s_max`.
    pub committed: bool,
    /// Rule 3: the round's share of the daily mining income when committed, else 0.
    pub guaranteed_usd_micro: MicroUsd,
    /// Rule 5: enough uptime and no failed validation.
    pub eligible: bool,
    /// Rule 6: the rank score `rating × crat_start_micro`.
    pub score: u128,
    /// Rule 9: `streak_start + 1` when committed, else 0.
    pub streak_end: u64,
    /// Rule 9: streak CRAT.
    pub streak_crat_micro: MicroCrat,
    /// Rule 10: peak CRAT.
    pub peak_crat_micro: MicroCrat,
    /// Rule 11: validation CRAT.
    pub validation_crat_micro: MicroCrat,
    /// Rules 9–11 summed.
    pub crat_issued_micro: MicroCrat,
    /// Rule 12: the balance after slashing.
    pub crat_after_slash_micro: MicroCrat,
    /// Rule 12: `crat_start_micro − crat_after_slash_micro`.
    pub crat_slashed_micro: MicroCrat,
    /// Rule 13: the balance at the end of the round.
    pub crat_end_micro: MicroCrat,
}

/// The bonus schedule of a round (rules 7 and 8): how many ranks are paid and what each gets.
///
/// ```
/// use crat_core::money::MicroUsd;
/// use crat_rewards::BonusSchedule;
///
/// // A pool of 100,001 µUSD with a 12,000 µUSD minimum pays k = 3 ranks
/// // (2 × 100001 ≥ 12000 × 3 × 4, but not ≥ 12000 × 4 × 5).
/// let s = BonusSchedule::new(MicroUsd::new(100_001), MicroUsd::new(12_000), 10);
/// assert_eq!(s.paid_ranks, 3);
/// assert_eq!(s.weight_total, 6);
/// // 100001 × 3 / 6 = 50000, × 2 / 6 = 33333, × 1 / 6 = 16666: 99,999 in all, so the
/// // remainder of 2 µUSD adds 1 to ranks 1 and 2.
/// assert_eq!(s.remainder_usd_micro, 2);
/// let shares: Vec<u64> = (1..=4).map(|r| s.share(r).get()).collect();
/// assert_eq!(shares, [50_001, 33_334, 16_666, 0]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BonusSchedule {
    /// The pool to pay out.
    pub pool_usd_micro: MicroUsd,
    /// `k`: the largest integer in `[0, eligible]` with `2 × pool ≥ min_bonus × k × (k + 1)`.
    pub paid_ranks: u64,
    /// `W = k(k + 1)/2`.
    pub weight_total: u128,
    /// `pool − Σ floor(pool × (k + 1 − i) / W)`; ranks `1..=remainder` get 1 µUSD more.
    pub remainder_usd_micro: u64,
}

/// Rule 7: the largest `k` in `[0, eligible]` with `2 × pool ≥ min_bonus × k × (k + 1)`.
///
/// With `q = floor(2 × pool / min_bonus)` the condition is `k(k + 1) ≤ q`, i.e.
/// `2k + 1 ≤ isqrt(4q + 1)`, so the unbounded maximum is `(isqrt(4q + 1) − 1) / 2`.
/// A `min_bonus` of zero pays every eligible rank.
pub fn paid_ranks(pool: MicroUsd, min_bonus: MicroUsd, eligible: u64) -> u64 {
    if min_bonus.get() == 0 {
        return eligible;
    }
    let q = 2 * u128::from(pool.get()) / u128::from(min_bonus.get());
    // q < 2^66, so 4q + 1 < 2^68 and the root is below 2^34: every step fits.
    let k = (4 * q + 1).isqrt().saturating_sub(1) / 2;
    u64::try_from(k).map_or(eligible, |k| k.min(eligible))
}

impl BonusSchedule {
    /// The schedule for a pool shared among `eligible` ranked nodes.
    pub fn new(pool: MicroUsd, min_bonus: MicroUsd, eligible: u64) -> Self {
        let k = paid_ranks(pool, min_bonus, eligible);
        let p = u128::from(pool.get());
        let w = u128::from(k) * (u128::from(k) + 1) / 2;
        let remainder = if k > 0 {
            // Σ_{j=1..k} floor(p·j / W) ≤ p (each term ≤ p·j/W and Σ j = W); p − sum < k.
            let sum = floor_sum(u128::from(k) + 1, w, p, 0);
            u64::try_from(p - sum).unwrap_or(u64::MAX)
        } else {
            0
        };
        Self {
            pool_usd_micro: pool,
            paid_ranks: k,
            weight_total: w,
            remainder_usd_micro: remainder,
        }
    }

    /// Rule 8: the bonus of rank `rank` (1 first): `pool × (k + 1 − rank) / W`, plus 1 µUSD
    /// for ranks `1..=remainder`; 0 for rank 0 and ranks above `k`.
    pub fn share(&self, rank: u64) -> MicroUsd {
        if rank == 0 || rank > self.paid_ranks {
            return MicroUsd::ZERO;
        }
        let weight = u128::from(self.paid_ranks + 1 - rank);
        let pool = u128::from(self.pool_usd_micro.get());
        let base = match (
            u64::try_from(pool * weight),
            u64::try_from(self.weight_total),
        ) {
            (Ok(product), Ok(w)) => u128::from(product / w),
            _ => pool * weight / self.weight_total,
        };
        // base ≤ pool, and a remainder unit is only added when Σ base < pool.
        let base = u64::try_from(base).unwrap_or(u64::MAX);
        MicroUsd::new(base + u64::from(rank <= self.remainder_usd_micro))
    }

    /// Bonus paid over all ranks: the whole pool when `k ≥ 1`, else 0.
    pub fn paid_usd_micro(&self) -> MicroUsd {
        if self.paid_ranks > 0 {
            self.pool_usd_micro
        } else {
            MicroUsd::ZERO
        }
    }

    /// Pool carried to the next round: the whole pool when `k = 0`, else 0.
    pub fn carry_out_usd_micro(&self) -> MicroUsd {
        if self.paid_ranks > 0 {
            MicroUsd::ZERO
        } else {
            self.pool_usd_micro
        }
    }
}

/// `Σ_{i=0}^{n-1} floor((a·i + b) / m)` for `m ≥ 1`, in O(log m) steps (the Euclid-like
/// floor sum), so the bonus remainder costs nothing however many ranks are paid.
///
/// Overflow: called with `n = k + 1`, `m = W = k(k+1)/2`, `a = pool < 2^64`, `b = 0`; every
/// partial sum is at most the result `≤ pool`, and `a·n + b < 2^128`.
fn floor_sum(mut n: u128, mut m: u128, mut a: u128, mut b: u128) -> u128 {
    let mut sum = 0;
    loop {
        if a >= m {
            sum += n * (n - 1) / 2 * (a / m);
            a %= m;
        }
        if b >= m {
            sum += n * (b / m);
            b %= m;
        }
        let y_max = a * n + b;
        if y_max < m {
            return sum;
        }
        n = y_max / m;
        b = y_max % m;
        std::mem::swap(&mut m, &mut a);
    }
}

/// Rule 12, one failed validation: `balance × (10000 − slash_bps) / 10000`.
pub(crate) fn slash_once(balance: u64, slash_bps: u64) -> u64 {
    let kept = mul_div(balance, BPS - slash_bps, BPS);
    // kept ≤ balance because slash_bps ≤ 10000 (validated).
    u64::try_from(kept).unwrap_or(balance)
}

/// Rule 12: [`slash_once`] applied `failed` times. Stops early at a fixed point (a zero
/// balance, or `slash_bps = 0`), which gives the same result and bounds the loop: with
/// `slash_bps ≥ 1` every step lowers a positive balance.
pub(crate) fn slash(balance: u64, failed: u64, slash_bps: u64) -> u64 {
    let mut b = balance;
    for _ in 0..failed {
        let next = slash_once(b, slash_bps);
        if next == b {
            break;
        }
        b = next;
    }
    b
}

/// A round's validated constants.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) params: &'a Params,
    pub(crate) start_s: u64,
    pub(crate) end_s: u64,
    pub(crate) length_s: u64,
    /// Peak windows in absolute seconds, clipped to the round, sorted and merged.
    pub(crate) peaks: Vec<Interval>,
    /// Rule 2's right-hand side: `length_s − commit_downtime_s_max`, floored at 0.
    pub(crate) commit_uptime_min_s: u64,
    /// Rule 5's right-hand side: `bonus_uptime_bps_min × length_s`.
    pub(crate) eligible_rhs: u128,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(inputs: &'a RoundInputs) -> Result<Self, RewardsError> {
        Self::for_round(&inputs.params, &inputs.round, inputs.nodes.len())
    }

    /// The context of a round of `node_count` nodes, checked.
    pub(crate) fn for_round(
        params: &'a Params,
        round: &Round,
        node_count: usize,
    ) -> Result<Self, RewardsError> {
        params.validate()?;
        if round.length_s == 0 {
            return Err(RewardsError::out_of_range(
                "round.length_s",
                "must be at least 1",
            ));
        }
        if round.length_s != params.round_s {
            return Err(RewardsError::out_of_range(
                "round.length_s",
                format!(
                    "{} differs from params.round_s {}",
                    round.length_s, params.round_s
                ),
            ));
        }
        let end_s = round
            .start_s
            .checked_add(round.length_s)
            .ok_or_else(|| RewardsError::overflow("round.start_s", "start_s + length_s"))?;
        if node_count > ROUND_NODES_MAX {
            return Err(RewardsError::TooManyNodes { count: node_count });
        }
        let mut peaks: Vec<Interval> = params
            .peak_windows
            .iter()
            .map(|w| {
                Interval::new(
                    round.start_s.saturating_add(w.start_s).min(end_s),
                    round.start_s.saturating_add(w.end_s).min(end_s),
                )
            })
            .filter(|w| w.start_s < w.end_s)
            .collect();
        merge_sorted_in_place(&mut peaks, false);
        Ok(Self {
            params,
            start_s: round.start_s,
            end_s,
            length_s: round.length_s,
            peaks,
            commit_uptime_min_s: round.length_s.saturating_sub(params.commit_downtime_s_max),
            eligible_rhs: u128::from(params.bonus_uptime_bps_min) * u128::from(round.length_s),
        })
    }

    /// Rule 1's first half: `online` clipped to the round, sorted and merged into `merged`.
    pub(crate) fn merge_online(
        &self,
        index: usize,
        online: &[Interval],
        merged: &mut Vec<Interval>,
    ) -> Result<(), RewardsError> {
        if online.len() > ONLINE_INTERVALS_MAX {
            return Err(RewardsError::out_of_range(
                format!("nodes[{index}].online"),
                format!(
                    "{} intervals, more than {ONLINE_INTERVALS_MAX}",
                    online.len()
                ),
            ));
        }
        merged.clear();
        let mut sorted = true;
        let mut last_start = 0;
        for (j, iv) in online.iter().enumerate() {
            if iv.end_s < iv.start_s {
                return Err(RewardsError::out_of_range(
                    format!("nodes[{index}].online[{j}]"),
                    format!("interval end {} before start {}", iv.end_s, iv.start_s),
                ));
            }
            let s = iv.start_s.max(self.start_s);
            let e = iv.end_s.min(self.end_s);
            if s < e {
                sorted &= s >= last_start;
                last_start = s;
                merged.push(Interval::new(s, e));
            }
        }
        merge_sorted_in_place(merged, sorted);
        Ok(())
    }

    /// Rule 1: `(uptime_s, peak_uptime_s)` of one node; `merged` is left holding its merged
    /// intervals.
    pub(crate) fn uptime(
        &self,
        index: usize,
        online: &[Interval],
        merged: &mut Vec<Interval>,
    ) -> Result<(u64, u64), RewardsError> {
        self.merge_online(index, online, merged)?;
        let mut uptime_s = 0;
        let mut peak_uptime_s = 0;
        for iv in merged.iter() {
            uptime_s += iv.len_s();
            for w in &self.peaks {
                let s = iv.start_s.max(w.start_s);
                let e = iv.end_s.min(w.end_s);
                peak_uptime_s += e.saturating_sub(s);
            }
        }
        Ok((uptime_s, peak_uptime_s))
    }

    /// Rule 1's total: `uptime_total_s_before + uptime_s`.
    fn uptime_total(index: usize, node: &NodeInput, uptime_s: u64) -> Result<u64, RewardsError> {
        node.uptime_total_s_before
            .checked_add(uptime_s)
            .ok_or_else(|| {
                RewardsError::overflow(
                    format!("nodes[{index}].uptime_total_s_before"),
                    "uptime_total_s",
                )
            })
    }

    /// Rule 5: enough uptime and no failed validation.
    fn eligible(&self, node: &NodeInput, uptime_s: u64) -> bool {
        u128::from(uptime_s) * u128::from(BPS) >= self.eligible_rhs && node.validations_failed == 0
    }

    /// All of rules 1–3, 5, 6 (score) and 9–13 for one node.
    pub(crate) fn breakdown(
        &self,
        index: usize,
        node: &NodeInput,
        merged: &mut Vec<Interval>,
    ) -> Result<NodeBreakdown, RewardsError> {
        let (uptime_s, peak_uptime_s) = self.uptime(index, &node.online, merged)?;
        self.breakdown_after_uptime(index, node, uptime_s, peak_uptime_s)
    }

    /// Rules 2–3, 5, 6 (score) and 9–13 for one node whose rule 1 is done.
    fn breakdown_after_uptime(
        &self,
        index: usize,
        node: &NodeInput,
        uptime_s: u64,
        peak_uptime_s: u64,
    ) -> Result<NodeBreakdown, RewardsError> {
        let p = self.params;
        let field = |name: &str| format!("nodes[{index}].{name}");
        let uptime_total_s = Self::uptime_total(index, node, uptime_s)?;

        let committed = uptime_s >= self.commit_uptime_min_s;
        let guaranteed = if committed {
            mul_div(
                node.mining_income_usd_micro_per_day.get(),
                self.length_s,
                DAY_S,
            )
        } else {
            0
        };
        let guaranteed = to_u64(guaranteed).ok_or_else(|| {
            RewardsError::overflow(
                field("mining_income_usd_micro_per_day"),
                "guaranteed_usd_micro",
            )
        })?;

        let eligible = self.eligible(node, uptime_s);
        let score = u128::from(node.rating.get()) * u128::from(node.crat_start_micro.get());

        let streak_end = if committed {
            node.streak_start
                .checked_add(1)
                .ok_or_else(|| RewardsError::overflow(field("streak_start"), "streak_end"))?
        } else {
            0
        };
        let streak_crat = if streak_end >= p.streak_min {
            u128::from(p.streak_unit_crat_micro.get())
                * u128::from((streak_end - 1).min(p.streak_cap))
        } else {
            0
        };
        let streak_crat = to_u64(streak_crat)
            .ok_or_else(|| RewardsError::overflow(field("streak_start"), "streak CRAT"))?;
        let peak_crat =
            u128::from(p.peak_unit_crat_micro_per_hour.get()) * u128::from(peak_uptime_s / HOUR_S);
        let peak_crat = to_u64(peak_crat)
            .ok_or_else(|| RewardsError::overflow(field("online"), "peak CRAT"))?;
        let validation_crat =
            u128::from(p.validation_unit_crat_micro.get()) * u128::from(node.validations_ok);
        let validation_crat = to_u64(validation_crat)
            .ok_or_else(|| RewardsError::overflow(field("validations_ok"), "validation CRAT"))?;
        let issued = to_u64(
            u128::from(streak_crat) + u128::from(peak_crat) + u128::from(validation_crat),
        )
        .ok_or_else(|| RewardsError::overflow(field("validations_ok"), "crat_issued_micro"))?;

        let start = node.crat_start_micro.get();
        let after_slash = slash(start, node.validations_failed, p.slash_bps);
        let end = to_u64(
            u128::from(after_slash)
                + u128::from(issued)
                + u128::from(node.crat_external_micro.get()),
        )
        .ok_or_else(|| RewardsError::overflow(field("crat_external_micro"), "crat_end_micro"))?;

        Ok(NodeBreakdown {
            uptime_s,
            peak_uptime_s,
            uptime_total_s,
            committed,
            guaranteed_usd_micro: MicroUsd::new(guaranteed),
            eligible,
            score,
            streak_end,
            streak_crat_micro: MicroCrat::new(streak_crat),
            peak_crat_micro: MicroCrat::new(peak_crat),
            validation_crat_micro: MicroCrat::new(validation_crat),
            crat_issued_micro: MicroCrat::new(issued),
            crat_after_slash_micro: MicroCrat::new(after_slash),
            crat_slashed_micro: MicroCrat::new(start - after_slash),
            crat_end_micro: MicroCrat::new(end),
        })
    }
}

/// `a × b / d`, floored, exact: in 64 bits when the product fits (the common case, and much
/// faster than a 128-bit division), in 128 bits otherwise.
#[inline]
fn mul_div(a: u64, b: u64, d: u64) -> u128 {
    match a.checked_mul(b) {
        Some(product) => u128::from(product / d),
        None => u128::from(a) * u128::from(b) / u128::from(d),
    }
}

fn to_u64(v: u128) -> Option<u64> {
    u64::try_from(v).ok()
}

/// Sorts (unless `sorted`) and merges overlapping or touching intervals, in place.
fn merge_sorted_in_place(v: &mut Vec<Interval>, sorted: bool) {
    if !sorted {
        v.sort_unstable();
    }
    let mut w = 0;
    for r in 0..v.len() {
        let cur = v[r];
        if w > 0 && cur.start_s <= v[w - 1].end_s {
            v[w - 1].end_s = v[w - 1].end_s.max(cur.end_s);
        } else {
            v[w] = cur;
            w += 1;
        }
    }
    v.truncate(w);
}

/// The first 8 bytes of an id, big-endian: comparing these first orders ids like their bytes.
fn id_prefix(node: &NodeInput) -> u64 {
    let b = node.id.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Rule 6's sort key, precomputed so the sort touches one small array.
#[derive(Clone, Copy, Debug)]
struct RankKey {
    score: u128,
    uptime_total_s: u64,
    registered_at_s: u64,
    id_prefix: u64,
    index: u32,
}

/// Rule 6: `score` descending, `uptime_total_s` descending, `registered_at_s` ascending, id
/// bytes ascending (prefix first, the full id only when the prefixes tie).
fn cmp_rank(nodes: &[NodeInput], a: &RankKey, b: &RankKey) -> Ordering {
    b.score
        .cmp(&a.score)
        .then(b.uptime_total_s.cmp(&a.uptime_total_s))
        .then(a.registered_at_s.cmp(&b.registered_at_s))
        .then(a.id_prefix.cmp(&b.id_prefix))
        .then_with(|| nodes[a.index as usize].id.cmp(&nodes[b.index as usize].id))
}

/// Bits of an id-order entry that hold the node's position (`ROUND_NODES_MAX` = 2^26).
const INDEX_BITS: u32 = 26;

/// An entry of [`id_order`]: the id's first 38 bits above the node's position.
fn id_order_entry(index: usize, node: &NodeInput) -> u64 {
    (id_prefix(node) >> INDEX_BITS) << INDEX_BITS | index as u64
}

/// Node positions in id byte order, from one [`id_order_entry`] per node: one integer sort
/// does almost all the work, then runs that share the 38 bits are put in full-id order.
/// Fails on a duplicate id.
fn id_order(
    nodes: &[NodeInput],
    mut order: Vec<u64>,
    tmp: &mut Vec<u64>,
) -> Result<Vec<u64>, RewardsError> {
    if order.len() < RADIX_MIN {
        order.sort_unstable();
    } else {
        // Three passes of 13 bits over the 38-bit prefix.
        radix_sort_bits::<_, { 1 << 13 }>(&mut order, tmp, INDEX_BITS, 64);
    }
    let index = |e: u64| (e & ((1 << INDEX_BITS) - 1)) as usize;
    let prefix = |e: u64| e >> INDEX_BITS;
    // Runs sharing the 38 bits are rare for public keys: order them by full id, then
    // position. Equal ids can then only be neighbours.
    sort_runs(
        &mut order,
        |&a, &b| prefix(a) == prefix(b),
        |&a, &b| nodes[index(a)].id.cmp(&nodes[index(b)].id).then(a.cmp(&b)),
    );
    for pair in order.windows(2) {
        let (a, b) = (index(pair[0]), index(pair[1]));
        if prefix(pair[0]) == prefix(pair[1]) && nodes[a].id == nodes[b].id {
            return Err(RewardsError::DuplicateNode {
                index: b,
                first: a,
                id: nodes[a].id,
            });
        }
    }
    for e in &mut order {
        *e = index(*e) as u64;
    }
    Ok(order)
}

/// Sorts by `cmp` each run of neighbours that `same` groups together: a forward scan, O(n)
/// over all runs plus the sorts of the runs longer than one.
fn sort_runs<T>(
    v: &mut [T],
    same: impl Fn(&T, &T) -> bool,
    mut cmp: impl FnMut(&T, &T) -> Ordering,
) {
    let mut run = 0;
    while run < v.len() {
        let mut end = run + 1;
        while end < v.len() && same(&v[run], &v[end]) {
            end += 1;
        }
        if end - run > 1 {
            v[run..end].sort_unstable_by(&mut cmp);
        }
        run = end;
    }
}

/// The eligible nodes' positions in rule 6's order, into `order`; `ranked` holds their keys
/// in input order (and is left in some order). The result is the order
/// `sort_unstable_by(cmp_rank)` gives, since that order is total; how it is reached depends
/// on the round:
///
/// - when most scores are shared (a network whose balances move in equal steps; 99.9 % of a
///   simulated million-node round), score, total uptime and registration time are packed
///   with the node's position into one 128-bit key when they fit 102 bits, one radix sort
///   orders the keys, and only nodes equal in all three are then ordered by id;
/// - when scores mostly differ, a radix sort orders by score and a comparison sort orders
///   each (short) run of equal scores by the whole rule;
/// - small rounds, and scores or fields too wide to pack, take the comparison sort.
fn rank_order(
    nodes: &[NodeInput],
    ranked: &mut [RankKey],
    scratch: &mut Scratch,
    order: &mut Vec<u32>,
) {
    order.clear();
    match rank_path(ranked) {
        RankPath::Packed(layout) => rank_by_packed_keys(nodes, ranked, &layout, scratch, order),
        RankPath::Score => rank_by_score(nodes, ranked, scratch, order),
        RankPath::Compare => {
            ranked.sort_unstable_by(|a, b| cmp_rank(nodes, a, b));
            order.extend(ranked.iter().map(|k| k.index));
        }
    }
}

/// How [`rank_order`] sorts a round's eligible nodes.
enum RankPath {
    Packed(KeyLayout),
    Score,
    Compare,
}

fn rank_path(ranked: &[RankKey]) -> RankPath {
    if ranked.len() < RADIX_MIN {
        return RankPath::Compare;
    }
    if scores_mostly_shared(ranked)
        && let Some(layout) = KeyLayout::fit(ranked)
    {
        return RankPath::Packed(layout);
    }
    if ranked.iter().all(|k| k.score <= u128::from(u64::MAX)) {
        return RankPath::Score;
    }
    RankPath::Compare
}

/// The positions of rule 6's first `k` eligible nodes, in order, into `order`: what
/// [`rank_order`] would list first, found by selecting the first `k` (O(n)) and sorting only
/// them when `k` is small against the round.
fn top_order(
    nodes: &[NodeInput],
    ranked: &mut [RankKey],
    k: usize,
    scratch: &mut Scratch,
    order: &mut Vec<u32>,
) {
    order.clear();
    let k = k.min(ranked.len());
    if k == 0 {
        return;
    }
    if ranked.len() < RADIX_MIN || k > ranked.len() / 8 {
        rank_order(nodes, ranked, scratch, order);
        order.truncate(k);
        return;
    }
    ranked.select_nth_unstable_by(k - 1, |a, b| cmp_rank(nodes, a, b));
    let top = &mut ranked[..k];
    top.sort_unstable_by(|a, b| cmp_rank(nodes, a, b));
    order.extend(top.iter().map(|key| key.index));
}

/// Eligible nodes below which rule 6 is a plain comparison sort.
const RADIX_MIN: usize = 4096;

/// Whether more than half of an evenly spaced sample of 1,024 scores repeat within it.
fn scores_mostly_shared(ranked: &[RankKey]) -> bool {
    let step = (ranked.len() / 1024).max(1);
    let mut sample: Vec<u128> = ranked.iter().step_by(step).map(|k| k.score).collect();
    sample.sort_unstable();
    let repeats = sample.windows(2).filter(|w| w[0] == w[1]).count();
    repeats * 2 > sample.len()
}

/// [`rank_order`] by one radix sort of packed keys.
fn rank_by_packed_keys(
    nodes: &[NodeInput],
    ranked: &[RankKey],
    layout: &KeyLayout,
    scratch: &mut Scratch,
    order: &mut Vec<u32>,
) {
    let mut keys = std::mem::take(&mut scratch.keys);
    keys.clear();
    keys.extend(ranked.iter().map(|k| layout.key(k)));
    radix_sort_bits::<_, { 1 << 11 }>(
        &mut keys,
        &mut scratch.keys_tmp,
        INDEX_BITS,
        INDEX_BITS + layout.bits(),
    );
    let index = |e: u128| (e as u32) & ((1 << INDEX_BITS) - 1);
    // Equal score, total uptime and registration: id bytes decide.
    sort_runs(
        &mut keys,
        |&a, &b| a >> INDEX_BITS == b >> INDEX_BITS,
        |&a, &b| {
            nodes[index(a) as usize]
                .id
                .cmp(&nodes[index(b) as usize].id)
        },
    );
    order.extend(keys.iter().map(|&e| index(e)));
    scratch.keys = keys;
}

/// [`rank_order`] by a radix sort on scores (which fit 64 bits) and comparison sorts of the
/// runs of equal scores.
fn rank_by_score(
    nodes: &[NodeInput],
    ranked: &mut [RankKey],
    scratch: &mut Scratch,
    order: &mut Vec<u32>,
) {
    // (inverted score, position): higher scores first. Positions < ROUND_NODES_MAX < 2^32.
    let mut keys = std::mem::take(&mut scratch.keys);
    keys.clear();
    keys.extend(
        ranked
            .iter()
            .enumerate()
            .map(|(p, k)| u128::from(!(k.score as u64)) << 64 | p as u128),
    );
    radix_sort_bits::<_, { 1 << 11 }>(&mut keys, &mut scratch.keys_tmp, 64, 128);
    let mut sorted = std::mem::take(&mut scratch.ranked_tmp);
    sorted.clear();
    sorted.extend(keys.iter().map(|&e| ranked[e as u32 as usize]));
    scratch.keys = keys;
    sort_runs(
        &mut sorted,
        |a, b| a.score == b.score,
        |a, b| cmp_rank(nodes, a, b),
    );
    order.extend(sorted.iter().map(|k| k.index));
    scratch.ranked_tmp = sorted;
}

/// How [`rank_order`] packs rule 6's first three criteria above a node's position: the
/// score and the total uptime inverted (higher first), the registration time from the
/// earliest (earlier first).
struct KeyLayout {
    score_bits: u32,
    uptime_bits: u32,
    registered_bits: u32,
    registered_min: u64,
}

impl KeyLayout {
    /// The layout for `ranked`, if its fields fit 128 bits with the position.
    fn fit(ranked: &[RankKey]) -> Option<Self> {
        let bits = |max: u128| 128 - max.leading_zeros();
        let (mut score_max, mut uptime_max) = (0, 0);
        let (mut registered_min, mut registered_max) = (u64::MAX, 0);
        for k in ranked {
            score_max = score_max.max(k.score);
            uptime_max = uptime_max.max(k.uptime_total_s);
            registered_min = registered_min.min(k.registered_at_s);
            registered_max = registered_max.max(k.registered_at_s);
        }
        let registered_min = registered_min.min(registered_max);
        let layout = Self {
            score_bits: bits(score_max),
            uptime_bits: bits(u128::from(uptime_max)),
            registered_bits: bits(u128::from(registered_max - registered_min)),
            registered_min,
        };
        (layout.bits() + INDEX_BITS <= 128).then_some(layout)
    }

    fn bits(&self) -> u32 {
        self.score_bits + self.uptime_bits + self.registered_bits
    }

    /// The key of `k`: ascending keys are rule 6's order up to the id, then position.
    fn key(&self, k: &RankKey) -> u128 {
        let ones = |bits: u32| (1u128 << bits) - 1;
        let score = ones(self.score_bits) - k.score;
        let uptime = ones(self.uptime_bits) - u128::from(k.uptime_total_s);
        let registered = u128::from(k.registered_at_s - self.registered_min);
        let rule = (score << self.uptime_bits | uptime) << self.registered_bits | registered;
        rule << INDEX_BITS | u128::from(k.index)
    }
}

/// LSD radix sort of integer entries (u64 or u128) by their bits `lo..hi` (entries equal
/// there keep their order), log2(`BUCKETS`) bits a pass: one read of the entries counts
/// every digit, then a pass per digit, skipping digits that every entry shares.
fn radix_sort_bits<K: Copy + Default + Into<u128>, const BUCKETS: usize>(
    v: &mut Vec<K>,
    to: &mut Vec<K>,
    lo: u32,
    hi: u32,
) {
    const { assert!(BUCKETS.is_power_of_two()) };
    let digit_bits = BUCKETS.trailing_zeros();
    let digits = (hi.saturating_sub(lo)).div_ceil(digit_bits) as usize;
    to.clear();
    to.resize(v.len(), K::default());
    let digit =
        |e: K, d: usize| ((e.into() >> (lo + d as u32 * digit_bits)) as usize) & (BUCKETS - 1);
    let mut counts = vec![[0usize; BUCKETS]; digits];
    for &e in v.iter() {
        for (d, count) in counts.iter_mut().enumerate() {
            count[digit(e, d)] += 1;
        }
    }
    for (d, count) in counts.iter_mut().enumerate() {
        if count.contains(&v.len()) {
            continue;
        }
        let mut sum = 0;
        for c in count.iter_mut() {
            let here = *c;
            *c = sum;
            sum += here;
        }
        for &e in v.iter() {
            let b = digit(e, d);
            to[count[b]] = e;
            count[b] += 1;
        }
        std::mem::swap(v, to);
    }
}

/// Computes a round: all of `ECONOMICS.md`'s rules, after checking the inputs.
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
    compute_indexed(inputs).map(|(outcome, _)| outcome)
}

/// [`compute`], also returning where each node landed: `positions[i]` is the index in
/// `outcome.nodes` of `inputs.nodes[i]`. Callers that keep per-node state in input order (the
/// [`crate::RoundDriver`], the simulator) read each node's outcome through it instead of
/// searching the rank-ordered output by id.
pub fn compute_indexed(inputs: &RoundInputs) -> Result<(RoundOutcome, Vec<u32>), RewardsError> {
    compute_with(inputs, &mut Scratch::default(), Detail::Outcomes)
        .map(|c| (c.outcome, c.positions))
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
    ranked_tmp: Vec<RankKey>,
    order: Vec<u32>,
    by_id: Vec<u64>,
    by_id_tmp: Vec<u64>,
    keys: Vec<u128>,
    keys_tmp: Vec<u128>,
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

/// [`compute_indexed`] with reused buffers; under [`Detail::Results`] without the
/// rank-ordered outcome.
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
    by_id: Vec<u64>,
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
        let mut by_id = std::mem::take(&mut scratch.by_id);
        by_id.clear();
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
            by_id,
            results,
            guaranteed_paid: 0,
            in_id_order: true,
            previous: None,
        }
    }

    fn node(&mut self, ctx: &Ctx<'_>, i: usize, node: &NodeInput) -> Result<(), RewardsError> {
        let (uptime_s, peak_uptime_s) = ctx.uptime(i, &node.online, &mut self.merged)?;
        self.by_id.push(id_order_entry(i, node));
        if self.previous.is_some_and(|p| p >= node.id) {
            self.in_id_order = false;
        }
        self.previous = Some(node.id);
        let rank_key = |uptime_total_s| RankKey {
            score: u128::from(node.rating.get()) * u128::from(node.crat_start_micro.get()),
            uptime_total_s,
            registered_at_s: node.registered_at_s,
            id_prefix: id_prefix(node),
            // i < ROUND_NODES_MAX < 2^32, checked in Ctx::new.
            index: i as u32,
        };
        if self.detail.outcomes() {
            // Rule 1 and rule 6's key here; the other rules when each outcome is written.
            self.uptimes.push((uptime_s, peak_uptime_s));
            if ctx.eligible(node, uptime_s) {
                self.ranked
                    .push(rank_key(Ctx::uptime_total(i, node, uptime_s)?));
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
            self.ranked.push(rank_key(b.uptime_total_s));
        }
        self.results.push(result(&b, MicroUsd::ZERO));
        Ok(())
    }
}

/// A node's result from its breakdown and its bonus.
fn result(b: &NodeBreakdown, bonus_usd_micro: MicroUsd) -> NodeResult {
    NodeResult {
        guaranteed_usd_micro: b.guaranteed_usd_micro,
        bonus_usd_micro,
        crat_end_micro: b.crat_end_micro,
        uptime_total_s: b.uptime_total_s,
        streak_end: b.streak_end,
        committed: b.committed,
        eligible: b.eligible,
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
        mut by_id,
        mut results,
        guaranteed_paid,
        in_id_order,
        ..
    } = pass;

    // Ids unique; then rule 6's order is total and the unstable sort deterministic.
    let by_id = if in_id_order {
        by_id.clear();
        by_id.extend(0..n as u64);
        by_id
    } else {
        id_order(nodes, by_id, &mut scratch.by_id_tmp)?
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
            scratch,
            &mut order,
        );
        for (r, &i) in order.iter().enumerate() {
            results[i as usize].bonus_usd_micro = schedule.share(r as u64 + 1);
        }
        scratch.order = order;
        scratch.ranked = ranked;
        scratch.by_id = by_id;
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
    rank_order(nodes, &mut ranked, scratch, &mut order);

    // Each node's place in the output: eligible nodes in rank order, then the others in id
    // order.
    place.resize(n, u32::MAX);
    for (r, &i) in order.iter().enumerate() {
        place[i as usize] = r as u32;
    }
    scratch.order = order;
    let mut next = eligible as u32;
    for &i in &by_id {
        let p = &mut place[i as usize];
        if *p == u32::MAX {
            *p = next;
            next += 1;
        }
    }
    scratch.ranked = ranked;
    scratch.by_id = by_id;

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
                results.push(result(&b, bonus_usd_micro));
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

/// Rule 4: `income × bonus_share_bps / 10000 + carry_in`.
pub(crate) fn pool_usd_micro(inputs: &RoundInputs) -> Result<MicroUsd, RewardsError> {
    pool_of(&inputs.params, &inputs.round)
}

/// Rule 4 for a round with `params`.
fn pool_of(params: &Params, r: &Round) -> Result<MicroUsd, RewardsError> {
    let share = mul_div(r.income_usd_micro.get(), params.bonus_share_bps, BPS);
    to_u64(share + u128::from(r.carry_in_usd_micro.get()))
        .map(MicroUsd::new)
        .ok_or_else(|| RewardsError::overflow("round.carry_in_usd_micro", "pool_usd_micro"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paid_ranks_is_maximal() {
        for pool in [
            0u64,
            1,
            9_999,
            10_000,
            19_999,
            20_000,
            59_999,
            60_000,
            1_000_000,
            u64::MAX,
        ] {
            for min in [1u64, 7, 10_000, u64::MAX] {
                let k = paid_ranks(MicroUsd::new(pool), MicroUsd::new(min), u64::MAX);
                let fits = |k: u128| 2 * u128::from(pool) >= u128::from(min) * k * (k + 1);
                assert!(fits(u128::from(k)), "pool {pool} min {min} k {k}");
                assert!(!fits(u128::from(k) + 1), "pool {pool} min {min} k {k}");
            }
        }
        assert_eq!(paid_ranks(MicroUsd::new(1_000_000), MicroUsd::new(1), 5), 5);
        assert_eq!(paid_ranks(MicroUsd::ZERO, MicroUsd::new(1), 5), 0);
    }

    #[test]
    fn shares_sum_to_pool() {
        for (pool, k_elig) in [
            (100_000u64, 10u64),
            (7, 3),
            (1_000_003, 1000),
            (u64::MAX, 1 << 20),
        ] {
            let s = BonusSchedule::new(MicroUsd::new(pool), MicroUsd::new(1), k_elig);
            let total: u128 = (1..=s.paid_ranks)
                .map(|r| u128::from(s.share(r).get()))
                .sum();
            assert_eq!(total, u128::from(pool));
            assert!(s.remainder_usd_micro < s.paid_ranks.max(1));
        }
    }

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

    fn input(id: [u8; 32]) -> NodeInput {
        NodeInput {
            id: NodeId::from_bytes(id),
            rating: crat_core::hardware::PowerRating::MIN,
            registered_at_s: 0,
            mining_income_usd_micro_per_day: MicroUsd::ZERO,
            crat_start_micro: MicroCrat::ZERO,
            streak_start: 0,
            uptime_total_s_before: 0,
            online: Vec::new(),
            validations_ok: 0,
            validations_failed: 0,
            crat_external_micro: MicroCrat::ZERO,
        }
    }

    #[test]
    fn id_order_matches_a_plain_sort_above_the_radix_threshold() {
        // 10,000 ids from a simple generator; every 7th shares its first 38 bits (and more)
        // with another, so the run fix-up is exercised.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut nodes: Vec<NodeInput> = (0..10_000u32)
            .map(|i| {
                let mut id = [0u8; 32];
                for chunk in id.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_be_bytes());
                }
                if i % 7 == 0 {
                    id[..6].copy_from_slice(&[1, 2, 3, 4, 5, (i % 3) as u8]);
                }
                input(id)
            })
            .collect();
        let entries = |nodes: &[NodeInput]| {
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| id_order_entry(i, n))
                .collect::<Vec<_>>()
        };
        let order = id_order(&nodes, entries(&nodes), &mut Vec::new()).unwrap();
        let mut want: Vec<u64> = (0..nodes.len() as u64).collect();
        want.sort_by_key(|&i| nodes[i as usize].id);
        assert_eq!(order, want);
        // A duplicate anywhere is found.
        nodes[9_999].id = nodes[14].id;
        assert_eq!(
            id_order(&nodes, entries(&nodes), &mut Vec::new()),
            Err(RewardsError::DuplicateNode {
                index: 9_999,
                first: 14,
                id: nodes[14].id
            })
        );
    }

    #[test]
    fn floor_sum_matches_the_plain_sum() {
        let mut x: u64 = 12345;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = u128::from(x % 300) + 1;
            let w = k * (k + 1) / 2;
            let p = u128::from(x >> (x % 64));
            let plain: u128 = (1..=k).map(|j| p * j / w).sum();
            assert_eq!(floor_sum(k + 1, w, p, 0), plain, "k {k} p {p}");
        }
        // Extremes stay exact and fast.
        let s = BonusSchedule::new(MicroUsd::MAX, MicroUsd::ZERO, u64::MAX);
        assert_eq!(s.paid_ranks, u64::MAX);
        assert!(s.remainder_usd_micro < u64::MAX);
        let s = BonusSchedule::new(MicroUsd::MAX, MicroUsd::new(1), u64::MAX);
        assert!(s.remainder_usd_micro < s.paid_ranks);
    }

    #[test]
    fn slash_halves_and_stops() {
        assert_eq!(slash(1_000_001, 2, 5_000), 250_000);
        assert_eq!(slash(3, u64::MAX, 5_000), 0);
        assert_eq!(slash(3, u64::MAX, 0), 3);
        assert_eq!(slash(5, 1, 10_000), 0);
    }

    #[test]
    fn radix_rank_sort_equals_the_comparison_sort() {
        use crat_core::hardware::PowerRating;
        let mut x = 11u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // (nodes, CRAT levels, total uptime levels): packed keys with few and many distinct
        // values, all three equal (ids decide), and fields too wide to pack (comparison sort).
        let mut paths = std::collections::BTreeSet::new();
        for (count, crat_levels, uptime_levels) in [
            (5_000usize, 40u64, 4u64),
            (9_000, 3, 4),
            (4_096, 1, 1),
            (6_000, 1 << 40, 4),
            (6_000, u64::MAX, 4),
            (5_000, 40, u64::MAX),
            (4_000, 40, 4),
        ] {
            let nodes: Vec<NodeInput> = (0..count)
                .map(|i| {
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(&next().to_be_bytes());
                    // Some ids share their first 8 bytes.
                    if i % 97 == 1 {
                        id[..8].copy_from_slice(&[7; 8]);
                        id[8..16].copy_from_slice(&(i as u64).to_be_bytes());
                    }
                    NodeInput {
                        id: NodeId::from_bytes(id),
                        rating: PowerRating::new(1 + (next() % 5) as u8)
                            .unwrap_or(PowerRating::MIN),
                        registered_at_s: next() % 3.min(uptime_levels),
                        mining_income_usd_micro_per_day: MicroUsd::ZERO,
                        crat_start_micro: MicroCrat::new(next() % crat_levels.max(1)),
                        streak_start: 0,
                        uptime_total_s_before: next() % uptime_levels,
                        online: Vec::new(),
                        validations_ok: 0,
                        validations_failed: 0,
                        crat_external_micro: MicroCrat::ZERO,
                    }
                })
                .collect();
            let keys: Vec<RankKey> = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| RankKey {
                    score: u128::from(node.rating.get()) * u128::from(node.crat_start_micro.get()),
                    uptime_total_s: node.uptime_total_s_before,
                    registered_at_s: node.registered_at_s,
                    id_prefix: id_prefix(node),
                    index: i as u32,
                })
                .collect();
            paths.insert(match rank_path(&keys) {
                RankPath::Packed(_) => "packed",
                RankPath::Score => "score",
                RankPath::Compare => "compare",
            });
            let mut a = keys.clone();
            a.sort_unstable_by(|p, q| cmp_rank(&nodes, p, q));
            let mut b = keys;
            let mut ib = Vec::new();
            rank_order(&nodes, &mut b, &mut Scratch::default(), &mut ib);
            let ia: Vec<u32> = a.iter().map(|k| k.index).collect();
            assert_eq!(ia, ib, "{count} nodes, {crat_levels} CRAT levels");
        }
        assert_eq!(paths.len(), 3, "every path is exercised: {paths:?}");
    }
}
