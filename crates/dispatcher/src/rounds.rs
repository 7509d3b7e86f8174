//! Closing a round: the ledger's records of the round become the rewards inputs of
//! `docs/economics.md`, `crat-rewards` computes the outcome, the ledger stores both and
//! applies the outcome to the nodes, and the payouts go to a [`Settlement`].
//!
//! Nothing here is computed twice: the payouts *are* `crat_rewards::compute` on the stored
//! inputs, so anyone holding a round's `inputs_json` can recompute its payouts with
//! `crat rewards compute`.

use crat_core::money::MicroUsd;
use crat_core::pricing::PricingParams;
use crat_rewards::{
    NodeInput, Params, PayoutBatch, Round, RoundInputs, RoundOutcome, Settlement,
    SettlementReceipt, compute,
};

use crate::ledger::{Ledger, LedgerError, RoundRecord};

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
    for n in ledger.nodes()? {
        if n.registered_at_s >= end_s {
            continue;
        }
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
    /// The settlement's receipt.
    pub receipt: SettlementReceipt,
}

/// Closes round `index`: inputs from the ledger → `crat_rewards::compute` → stored (with the
/// outcome applied to nodes) → settled. A round already stored is only settled again (which
/// the [`Settlement`] contract makes a no-op).
pub fn close_round(
    ledger: &dyn Ledger,
    params: &Params,
    pricing: &PricingParams,
    clock: RoundClock,
    index: u64,
    settlement: &mut dyn Settlement,
) -> Result<ClosedRound, RoundError> {
    let (record, outcome) = match ledger.round(index)? {
        Some(record) => {
            let outcome = RoundOutcome::from_json(&record.outcome_json)?;
            (record, outcome)
        }
        None => {
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
            (record, outcome)
        }
    };
    let payouts = PayoutBatch::from_outcome(index, &outcome)?;
    let receipt = settlement.settle(&payouts)?;
    Ok(ClosedRound {
        record,
        outcome,
        payouts,
        receipt,
    })
}
