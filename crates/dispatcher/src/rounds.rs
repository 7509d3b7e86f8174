//! Closing a round: the ledger's records of the round become the rewards inputs of
//! `docs/economics.md`, `crat-rewards` computes the outcome, the ledger stores both and
//! applies the outcome to the nodes ([`store_round`]); then the payouts go to a
//! [`Settlement`] and the ledger records the round as settled ([`settle_round`]).
//!
//! Nothing here is computed twice: the payouts *are* `crat_rewards::compute` on the stored
//! inputs, so anyone holding a round's `inputs_json` can recompute its payouts with
//! `crat rewards compute`.
//!
//! **Settlement is resumable.** Storing and settling are two steps because settling can fail
//! (a full disk, a payment API down) and the process can die between them. The ledger says
//! which closed rounds are unsettled ([`Ledger::unsettled_rounds`]); the dispatcher settles
//! them, oldest first, on start and on every tick, and a round that fails is retried after
//! [`SettleRetries`]' backoff (1 s doubling to 10 min). An unsettled round never stops the
//! next rounds from closing, nor from settling: a [`Settlement`] is idempotent by
//! `(round, node)` and does not require round order, so a round that keeps failing is retried
//! on its own while the later ones are paid. A round is marked settled only after the
//! settlement returned, so a crash in between settles it again after the restart, which pays
//! nothing twice.

use std::collections::HashMap;

use crat_core::money::MicroUsd;
use crat_core::pricing::PricingParams;
use crat_rewards::{
    NodeInput, Params, PayoutBatch, Round, RoundInputs, RoundOutcome, Settlement,
    SettlementReceipt, compute,
};

use crate::ledger::{Ledger, LedgerError, RoundRecord, RoundSettlement};

/// Why a round could not be closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundError {
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The rewards computation refused the inputs.
    #[error("rewards: {0}")]
    Rewards(#[from] crat_rewards::RewardsError),
    /// Income does not convert to µUSD.
    #[error("income overflows µUSD")]
    Overflow,
    /// Paying out failed (the round is stored; settling again later is safe).
    #[error("settlement: {0}")]
    Settlement(#[from] crat_rewards::SettlementError),
    /// The round to settle is not closed.
    #[error("round {0} is not closed")]
    NotClosed(u64),
}

/// When rounds start and how long they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundClock {
    /// Start of round 0 (Unix seconds).
    pub epoch_s: u64,
    /// Round length in seconds (> 0).
    pub round_s: u64,
}

impl RoundClock {
    /// The round that contains `t`.
    pub fn index_at(&self, t: u64) -> u64 {
        t.saturating_sub(self.epoch_s) / self.round_s.max(1)
    }

    /// Start of round `index`.
    pub fn start(&self, index: u64) -> u64 {
        self.epoch_s
            .saturating_add(index.saturating_mul(self.round_s))
    }
}

/// Builds round `index`'s rewards inputs from the ledger.
pub fn round_inputs(
    ledger: &dyn Ledger,
    params: &Params,
    pricing: &PricingParams,
    clock: RoundClock,
    index: u64,
) -> Result<RoundInputs, RoundError> {
    let start_s = clock.start(index);
    let end_s = start_s.saturating_add(clock.round_s);
    let income = ledger.income(start_s, end_s)?;
    let income_usd_micro = pricing
        .credits_to_usd(income)
        .map_err(|_| RoundError::Overflow)?;
    let carry_in_usd_micro = match ledger.last_round()? {
        Some(r) if r.index + 1 == index => r.carry_out_usd_micro,
        _ => MicroUsd::ZERO,
    };
    let mut nodes = Vec::new();
    for n in ledger.round_nodes(start_s, end_s)? {
        let rating = crat_core::hardware::PowerRating::new(n.rating)
            .ok_or_else(|| LedgerError::Corrupt(format!("node {} rating {}", n.id, n.rating)))?;
        let online = ledger.online_sessions(&n.id, start_s, end_s)?;
        let (validations_ok, validations_failed) = ledger.validations(&n.id, start_s, end_s)?;
        nodes.push(NodeInput {
            id: n.id,
            rating,
            registered_at_s: n.registered_at_s,
            mining_income_usd_micro_per_day: n.mining_income_usd_micro_per_day,
            crat_start_micro: n.crat_micro,
            streak_start: n.streak,
            uptime_total_s_before: n.uptime_total_s,
            online,
            validations_ok,
            validations_failed,
            crat_external_micro: crat_core::money::MicroCrat::ZERO,
        });
    }
    Ok(RoundInputs {
        params: Params {
            round_s: clock.round_s,
            ..params.clone()
        },
        round: Round {
            index,
            start_s,
            length_s: clock.round_s,
            income_usd_micro,
            carry_in_usd_micro,
        },
        nodes,
    })
}

/// A closed round: what was stored and what the settlement said.
#[derive(Debug)]
pub struct ClosedRound {
    /// The stored round.
    pub record: RoundRecord,
    /// Its outcome.
    pub outcome: RoundOutcome,
    /// The payouts.
    pub payouts: PayoutBatch,
    /// The settlement's receipt; `None` when the round is stored but not settled yet (its
    /// settlement failed and is retried with backoff).
    pub receipt: Option<SettlementReceipt>,
}

/// Stores round `index` if it is not stored yet: inputs from the ledger →
/// `crat_rewards::compute` → stored (with the outcome applied to nodes), atomically. A round
/// already stored is read back. The round is unsettled until [`settle_round`].
pub fn store_round(
    ledger: &dyn Ledger,
    params: &Params,
    pricing: &PricingParams,
    clock: RoundClock,
    index: u64,
) -> Result<(RoundRecord, RoundOutcome), RoundError> {
    if let Some(record) = ledger.round(index)? {
        let outcome = RoundOutcome::from_json(&record.outcome_json)?;
        return Ok((record, outcome));
    }
    let inputs = round_inputs(ledger, params, pricing, clock, index)?;
    let outcome = compute(&inputs)?;
    let a = &outcome.aggregates;
    let paid = a
        .bonus_paid_usd_micro
        .checked_add(a.guaranteed_paid_usd_micro)
        .ok_or(RoundError::Overflow)?;
    let record = RoundRecord {
        index,
        start_s: inputs.round.start_s,
        length_s: inputs.round.length_s,
        income_usd_micro: inputs.round.income_usd_micro,
        carry_out_usd_micro: a.carry_out_usd_micro,
        paid_usd_micro: paid,
        inputs_json: inputs.to_json(),
        outcome_json: outcome.to_json(),
    };
    ledger.close_round(&record, &outcome)?;
    Ok((record, outcome))
}

/// Settles stored round `index`: its payouts (from the stored outcome) go to `settlement`,
/// then the ledger records the round as settled at `now_s` with the receipt's digest. Safe to
/// call again for a round settled already (the [`Settlement`] contract makes it a no-op, and
/// the ledger keeps its first record). A round not stored is [`RoundError::NotClosed`].
pub fn settle_round(
    ledger: &dyn Ledger,
    index: u64,
    settlement: &mut dyn Settlement,
    now_s: u64,
) -> Result<ClosedRound, RoundError> {
    let record = ledger.round(index)?.ok_or(RoundError::NotClosed(index))?;
    let outcome = RoundOutcome::from_json(&record.outcome_json)?;
    let payouts = PayoutBatch::from_outcome(index, &outcome)?;
    let receipt = settlement.settle(&payouts)?;
    let mut digest = [0u8; 32];
    let digest = hex::decode_to_slice(&receipt.digest_hex, &mut digest)
        .ok()
        .map(|()| digest);
    ledger.mark_round_settled(
        index,
        &RoundSettlement {
            settled_at_s: now_s,
            digest,
        },
    )?;
    Ok(ClosedRound {
        record,
        outcome,
        payouts,
        receipt: Some(receipt),
    })
}

/// Closes round `index` now: [`store_round`] then [`settle_round`]. A round already stored is
/// only settled again (which the [`Settlement`] contract makes a no-op).
pub fn close_round(
    ledger: &dyn Ledger,
    params: &Params,
    pricing: &PricingParams,
    clock: RoundClock,
    index: u64,
    settlement: &mut dyn Settlement,
    now_s: u64,
) -> Result<ClosedRound, RoundError> {
    store_round(ledger, params, pricing, clock, index)?;
    settle_round(ledger, index, settlement, now_s)
}

/// First wait before retrying a round whose settlement failed.
pub const SETTLE_RETRY_MS_MIN: u64 = 1_000;
/// Longest wait between two tries of a round's settlement.
pub const SETTLE_RETRY_MS_MAX: u64 = 600_000;

/// When to try each unsettled round's settlement again: after its `n`-th failure in a row
/// it waits `SETTLE_RETRY_MS_MIN × 2^(n−1)`, at most [`SETTLE_RETRY_MS_MAX`]. Sans-IO: time
/// is a monotonic millisecond count given by the caller. The state lives in memory only; the
/// ledger says which rounds are unsettled, so after a restart every one is tried at once.
/// Bounded by [`crate::ledger::UNSETTLED_ROUNDS_MAX`]: the caller forgets rounds that are no
/// longer among the unsettled ones it lists ([`SettleRetries::retain`]).
#[derive(Debug, Default)]
pub struct SettleRetries {
    /// Per round: failures in a row and when it may be tried again.
    failing: HashMap<u64, (u32, u64)>,
}

impl SettleRetries {
    /// No round failing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether round `index` may be tried at `now_ms`.
    pub fn is_due(&self, index: u64, now_ms: u64) -> bool {
        self.failing
            .get(&index)
            .is_none_or(|&(_, next_ms)| now_ms >= next_ms)
    }

    /// Records a failure of round `index` at `now_ms`; returns how long it waits now (ms).
    pub fn failed(&mut self, index: u64, now_ms: u64) -> u64 {
        let failures = self.failing.get(&index).map_or(0, |&(n, _)| n) + 1;
        let wait_ms = SETTLE_RETRY_MS_MIN
            .saturating_mul(1u64 << (failures - 1).min(20))
            .min(SETTLE_RETRY_MS_MAX);
        self.failing
            .insert(index, (failures, now_ms.saturating_add(wait_ms)));
        wait_ms
    }

    /// Records that round `index` was settled (it is forgotten).
    pub fn settled(&mut self, index: u64) {
        self.failing.remove(&index);
    }

    /// Failures in a row of round `index`.
    pub fn failures(&self, index: u64) -> u32 {
        self.failing.get(&index).map_or(0, |&(n, _)| n)
    }

    /// Forgets the rounds for which `keep` is false (settled elsewhere, or not listed).
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.failing.retain(|&i, _| keep(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_to_ten_minutes_and_reset_on_success() {
        let mut r = SettleRetries::new();
        assert!(r.is_due(3, 0));
        let waits: Vec<u64> = (0..12).map(|_| r.failed(3, 0)).collect();
        assert_eq!(
            waits,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
                600_000, 600_000
            ]
        );
        assert_eq!(r.failures(3), 12);
        // Many more failures stay bounded (no shift overflow).
        for _ in 0..100 {
            assert_eq!(r.failed(3, 0), SETTLE_RETRY_MS_MAX);
        }
        let mut r = SettleRetries::new();
        r.failed(3, 10_000);
        assert!(!r.is_due(3, 10_999));
        assert!(r.is_due(3, 11_000));
        // Other rounds are not held up.
        assert!(r.is_due(4, 10_000));
        r.settled(3);
        assert!(r.is_due(3, 10_000));
        assert_eq!(r.failures(3), 0);
        r.failed(5, 0);
        r.failed(6, 0);
        r.retain(|i| i == 6);
        assert_eq!((r.failures(5), r.failures(6)), (0, 1));
    }
}
