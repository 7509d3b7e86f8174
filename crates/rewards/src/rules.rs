//! The rules of the round economics, numbered as in `docs/economics.md`: each rule is one
//! function (or one method of [`Ctx`], the round's checked constants) whose body reads like
//! the rule. Every payout and CRAT movement is computed here and nowhere else; the order of
//! rule 6 is [`crate::rank`]'s, and the passes that apply these rules to a whole round are
//! [`crate::pass`]'s.

use crat_core::money::{MicroCrat, MicroUsd};

use crate::outcome::NodeResult;
use crate::params::BPS;
use crate::rank::ROUND_NODES_MAX;
use crate::round::{NodeInput, Round, RoundInputs};
use crate::{Interval, Params, RewardsError};

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

impl NodeBreakdown {
    /// The node's result, with its bonus (rule 8) from the rank it got.
    pub(crate) fn result(&self, bonus_usd_micro: MicroUsd) -> NodeResult {
        NodeResult {
            guaranteed_usd_micro: self.guaranteed_usd_micro,
            bonus_usd_micro,
            crat_end_micro: self.crat_end_micro,
            uptime_total_s: self.uptime_total_s,
            streak_end: self.streak_end,
            committed: self.committed,
            eligible: self.eligible,
        }
    }
}

/// A round's validated constants, and the per-node rules that depend on them.
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
    #[inline]
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
            peak_uptime_s += self.peak_overlap_s(iv.start_s, iv.end_s);
        }
        Ok((uptime_s, peak_uptime_s))
    }

    /// Seconds of `[s, e)` inside the peak windows (disjoint).
    #[inline]
    fn peak_overlap_s(&self, s: u64, e: u64) -> u64 {
        self.peaks
            .iter()
            .map(|w| e.min(w.end_s).saturating_sub(s.max(w.start_s)))
            .sum()
    }

    /// Rule 1's total: `uptime_total_s = uptime_total_s_before + uptime_s`.
    pub(crate) fn uptime_total(
        index: usize,
        node: &NodeInput,
        uptime_s: u64,
    ) -> Result<u64, RewardsError> {
        node.uptime_total_s_before
            .checked_add(uptime_s)
            .ok_or_else(|| {
                RewardsError::overflow(
                    format!("nodes[{index}].uptime_total_s_before"),
                    "uptime_total_s",
                )
            })
    }

    /// Rule 2: committed ⇔ `uptime_s ≥ length_s − commit_downtime_s_max`.
    fn committed(&self, uptime_s: u64) -> bool {
        uptime_s >= self.commit_uptime_min_s
    }

    /// Rule 3: guaranteed USD = committed ? `mining_income_usd_micro_per_day × length_s /
    /// 86400` : 0.
    fn guaranteed(&self, committed: bool, node: &NodeInput) -> Option<u64> {
        if !committed {
            return Some(0);
        }
        to_u64(mul_div(
            node.mining_income_usd_micro_per_day.get(),
            self.length_s,
            DAY_S,
        ))
    }

    /// Rule 5: eligible ⇔ `uptime_s × 10000 ≥ bonus_uptime_bps_min × length_s` and no failed
    /// validation.
    pub(crate) fn eligible(&self, node: &NodeInput, uptime_s: u64) -> bool {
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

    /// Rules 2–3, 5, 6 (score) and 9–13 for one node whose rule 1 is done. An amount that
    /// does not fit 64 bits fails naming the input it came from.
    #[inline]
    pub(crate) fn breakdown_after_uptime(
        &self,
        index: usize,
        node: &NodeInput,
        uptime_s: u64,
        peak_uptime_s: u64,
    ) -> Result<NodeBreakdown, RewardsError> {
        let p = self.params;
        let overflow = |input: &str, what: &'static str| {
            RewardsError::overflow(format!("nodes[{index}].{input}"), what)
        };
        let uptime_total_s = Self::uptime_total(index, node, uptime_s)?;
        let committed = self.committed(uptime_s);
        let guaranteed = self
            .guaranteed(committed, node)
            .ok_or_else(|| overflow("mining_income_usd_micro_per_day", "guaranteed_usd_micro"))?;
        let eligible = self.eligible(node, uptime_s);
        let score = score(node);
        let streak_end = streak_end(committed, node.streak_start)
            .ok_or_else(|| overflow("streak_start", "streak_end"))?;
        let streak_crat =
            streak_crat(p, streak_end).ok_or_else(|| overflow("streak_start", "streak CRAT"))?;
        let peak_crat =
            peak_crat(p, peak_uptime_s).ok_or_else(|| overflow("online", "peak CRAT"))?;
        let validation_crat = validation_crat(p, node.validations_ok)
            .ok_or_else(|| overflow("validations_ok", "validation CRAT"))?;
        let issued =
            to_u64(u128::from(streak_crat) + u128::from(peak_crat) + u128::from(validation_crat))
                .ok_or_else(|| overflow("validations_ok", "crat_issued_micro"))?;
        let start = node.crat_start_micro.get();
        let after_slash = slash(start, node.validations_failed, p.slash_bps);
        let end = crat_end(after_slash, issued, node.crat_external_micro)
            .ok_or_else(|| overflow("crat_external_micro", "crat_end_micro"))?;

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

/// Rule 4: `pool = income_usd_micro × bonus_share_bps / 10000 + carry_in_usd_micro`.
pub(crate) fn pool_usd_micro(inputs: &RoundInputs) -> Result<MicroUsd, RewardsError> {
    pool_of(&inputs.params, &inputs.round)
}

/// Rule 4 for a round with `params`.
pub(crate) fn pool_of(params: &Params, r: &Round) -> Result<MicroUsd, RewardsError> {
    let share = mul_div(r.income_usd_micro.get(), params.bonus_share_bps, BPS);
    to_u64(share + u128::from(r.carry_in_usd_micro.get()))
        .map(MicroUsd::new)
        .ok_or_else(|| RewardsError::overflow("round.carry_in_usd_micro", "pool_usd_micro"))
}

/// Rule 6's first criterion, the score: `rating × crat_start_micro` (the whole order is
/// [`crate::rank::cmp_rank`]).
#[inline]
pub(crate) fn score(node: &NodeInput) -> u128 {
    u128::from(node.rating.get()) * u128::from(node.crat_start_micro.get())
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

    /// Rule 8: bonus paid over all ranks: the whole pool when `k ≥ 1`, else 0.
    pub fn paid_usd_micro(&self) -> MicroUsd {
        if self.paid_ranks > 0 {
            self.pool_usd_micro
        } else {
            MicroUsd::ZERO
        }
    }

    /// Rule 8: pool carried to the next round: the whole pool when `k = 0`, else 0.
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

/// Rule 9: `streak_end = committed ? streak_start + 1 : 0` (`None` on overflow).
fn streak_end(committed: bool, streak_start: u64) -> Option<u64> {
    if committed {
        streak_start.checked_add(1)
    } else {
        Some(0)
    }
}

/// Rule 9: streak CRAT = `streak_end ≥ streak_min ? streak_unit_crat_micro ×
/// min(streak_end − 1, streak_cap) : 0`.
fn streak_crat(p: &Params, streak_end: u64) -> Option<u64> {
    if streak_end < p.streak_min {
        return Some(0);
    }
    to_u64(
        u128::from(p.streak_unit_crat_micro.get()) * u128::from((streak_end - 1).min(p.streak_cap)),
    )
}

/// Rule 10: peak CRAT = `peak_unit_crat_micro_per_hour × (peak_uptime_s / 3600)`.
fn peak_crat(p: &Params, peak_uptime_s: u64) -> Option<u64> {
    to_u64(u128::from(p.peak_unit_crat_micro_per_hour.get()) * u128::from(peak_uptime_s / HOUR_S))
}

/// Rule 11: validation CRAT = `validation_unit_crat_micro × validations_ok`.
fn validation_crat(p: &Params, validations_ok: u64) -> Option<u64> {
    to_u64(u128::from(p.validation_unit_crat_micro.get()) * u128::from(validations_ok))
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

/// Rule 13: `crat_end_micro = slashed balance + CRAT issued (rules 9–11) +
/// crat_external_micro`.
fn crat_end(after_slash: u64, issued: u64, external: MicroCrat) -> Option<u64> {
    to_u64(u128::from(after_slash) + u128::from(issued) + u128::from(external.get()))
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
    if v.len() < 2 {
        return;
    }
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
}
