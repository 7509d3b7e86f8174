//! Paying out a closed round: the [`Settlement`] trait and the [`PayoutBatch`] it pays.
//!
//! A batch lists, per node, the USD a round owes it (guaranteed + bonus). Settlement is
//! idempotent by `(round, node)`: paying the same batch twice pays once. The default
//! implementation, [`crate::file_export::FileSettlement`], writes the batch as CSV and JSON
//! with a blake3 digest for an operator or an accounting system to pick up; adapters that pay
//! on a chain (the litepaper pays in tokens on Everscale) implement the same trait.

use crat_core::id::NodeId;
use crat_core::money::MicroUsd;
use serde::{Deserialize, Serialize};

use crate::{RewardsError, RoundOutcome};

/// What one node is owed for one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payout {
    /// The node.
    pub node: NodeId,
    /// Guaranteed USD.
    pub guaranteed_usd_micro: MicroUsd,
    /// Bonus USD.
    pub bonus_usd_micro: MicroUsd,
    /// Guaranteed + bonus.
    pub total_usd_micro: MicroUsd,
}

/// A round's payouts: every node owed a non-zero amount, sorted by node id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutBatch {
    /// The round paid.
    pub round_index: u64,
    /// Sum of all payouts.
    pub total_usd_micro: MicroUsd,
    /// The payouts, sorted by node id.
    pub payouts: Vec<Payout>,
}

/// CSV header of [`PayoutBatch::to_csv`].
pub const PAYOUT_CSV_HEADER: &str =
    "round_index,node,guaranteed_usd_micro,bonus_usd_micro,total_usd_micro";

impl PayoutBatch {
    /// The batch for round `round_index` with outcome `outcome`.
    pub fn from_outcome(round_index: u64, outcome: &RoundOutcome) -> Result<Self, RewardsError> {
        let mut payouts = Vec::new();
        let mut total = MicroUsd::ZERO;
        for o in &outcome.nodes {
            let sum = o
                .guaranteed_usd_micro
                .checked_add(o.bonus_usd_micro)
                .ok_or_else(|| RewardsError::overflow(format!("node {}", o.id), "payout"))?;
            if sum == MicroUsd::ZERO {
                continue;
            }
            total = total
                .checked_add(sum)
                .ok_or_else(|| RewardsError::overflow("nodes", "payout total"))?;
            payouts.push(Payout {
                node: o.id,
                guaranteed_usd_micro: o.guaranteed_usd_micro,
                bonus_usd_micro: o.bonus_usd_micro,
                total_usd_micro: sum,
            });
        }
        payouts.sort_unstable_by_key(|p| p.node);
        Ok(Self {
            round_index,
            total_usd_micro: total,
            payouts,
        })
    }

    /// The batch as JSON, pretty-printed; the bytes the digest is taken over.
    pub fn to_json(&self) -> String {
        // Plain integers and hex strings always serialize.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The batch as CSV with header [`PAYOUT_CSV_HEADER`], one row per payout.
    pub fn to_csv(&self) -> String {
        let mut s = String::with_capacity(32 + self.payouts.len() * 110);
        s.push_str(PAYOUT_CSV_HEADER);
        s.push('\n');
        for p in &self.payouts {
            s.push_str(&format!(
                "{},{},{},{},{}\n",
                self.round_index,
                p.node,
                p.guaranteed_usd_micro.get(),
                p.bonus_usd_micro.get(),
                p.total_usd_micro.get()
            ));
        }
        s
    }

    /// blake3 of [`PayoutBatch::to_json`], as 64 lowercase hex digits.
    pub fn digest_hex(&self) -> String {
        blake3::hash(self.to_json().as_bytes()).to_hex().to_string()
    }

    /// The first node whose payout differs between `self` and `other` (present in one only,
    /// or with different amounts), for conflict reports.
    pub fn first_difference(&self, other: &PayoutBatch) -> Option<NodeId> {
        let (mut a, mut b) = (
            self.payouts.iter().peekable(),
            other.payouts.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return None,
                (Some(x), None) => return Some(x.node),
                (None, Some(y)) => return Some(y.node),
                (Some(x), Some(y)) if x.node != y.node => return Some(x.node.min(y.node)),
                (Some(x), Some(y)) if x != y => return Some(x.node),
                _ => {
                    a.next();
                    b.next();
                }
            }
        }
    }
}

/// What a settlement did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettlementReceipt {
    /// The round.
    pub round_index: u64,
    /// Payouts in the batch.
    pub payouts: usize,
    /// Sum of the batch.
    pub total_usd_micro: MicroUsd,
    /// [`PayoutBatch::digest_hex`] of the batch.
    pub digest_hex: String,
    /// `false` when this exact batch had been settled before and nothing was paid again.
    pub newly_settled: bool,
}

/// Pays out closed rounds.
///
/// Contract: idempotent by `(round, node)`. Settling a batch whose every `(round, node)`
/// amount was already settled pays nothing and returns `newly_settled: false`; a batch that
/// disagrees with an earlier one for the same round (another amount, or another set of
/// nodes) is an error, never a second payment.
///
/// A caller may settle a round again at any time, and must be able to: the dispatcher records
/// a round as settled in its ledger only after `settle` returned, so a crash in between, or a
/// failure, makes it call `settle` again for that round after a restart (with backoff, and
/// for as long as it fails). Rounds may be settled out of order: a round whose settlement
/// keeps failing does not hold up the next ones, so an implementation must not assume that
/// round `N` is settled before round `N + 1`.
///
/// The trait is object-safe: a dispatcher holds a `Box<dyn Settlement>` chosen at start-up.
/// An adapter's own failures (a chain node, a payment API) are [`SettlementError::Adapter`].
pub trait Settlement: Send {
    /// Pays `batch`, or recognises it as already paid.
    fn settle(&mut self, batch: &PayoutBatch) -> Result<SettlementReceipt, SettlementError>;
}

/// Why a settlement failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettlementError {
    /// Reading or writing a settlement file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The round was settled before with different payouts.
    #[error("round {round_index} was already settled with a different payout for node {node}")]
    Conflict {
        /// The round.
        round_index: u64,
        /// The first node whose payout differs.
        node: NodeId,
    },
    /// A settled batch on record does not match its digest or does not parse.
    #[error("{path}: settled batch is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An adapter's own failure (a chain node, a payment API): nothing was paid, or the
    /// adapter can tell by `(round, node)` on a retry.
    #[error("{adapter}: {source}")]
    Adapter {
        /// Which adapter.
        adapter: &'static str,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}
