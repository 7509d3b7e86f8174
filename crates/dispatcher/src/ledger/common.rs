//! What the ledger backends share: the audit sums, the conversions between Rust's `u64` and
//! the databases' signed 64-bit integers, the journal's kinds, the columns read back and the
//! encodings of records as stored.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crat_core::id::NodeId;
use crat_core::money::Credits;
use crat_core::policy::acks::Tally;
use crat_core::wire::ModelSignature;

use super::{AccountName, LedgerError, UsageCharge};

/// Sums over the whole ledger, for audits: see [`LedgerTotals::is_conserved`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LedgerTotals {
    /// Σ account balances.
    pub balances: Credits,
    /// Σ allowances left in deployments.
    pub allowances: Credits,
    /// Σ credits that counted as income (all time).
    pub income: Credits,
    /// Σ grants (all time).
    pub granted: Credits,
}

impl LedgerTotals {
    /// Money is conserved: every granted credit is in a balance, in an allowance, or was
    /// earned as income (`balances + allowances + income == granted`).
    pub fn is_conserved(&self) -> bool {
        Credits::checked_sum([self.balances, self.allowances, self.income]) == Some(self.granted)
    }
}

/// A `u64` as the database's `i64`, refused (never wrapped) above `i64::MAX`.
pub(super) fn to_i64(value: u64, what: &str) -> Result<i64, LedgerError> {
    i64::try_from(value).map_err(|_| {
        LedgerError::Invalid(format!(
            "{what} = {value} is above the largest storable value {}",
            i64::MAX
        ))
    })
}

/// The sessions of [`Ledger::record_online_many`](super::Ledger::record_online_many) as stored
/// integers, checked first (a session ending before it starts, or a time above `i64::MAX`, is
/// [`LedgerError::Invalid`], and nothing is recorded).
pub(super) fn session_rows(
    sessions: &[(NodeId, u64, u64)],
) -> Result<Vec<(NodeId, i64, i64)>, LedgerError> {
    sessions
        .iter()
        .map(|&(node, start, end)| {
            if end < start {
                return Err(LedgerError::Invalid(format!(
                    "online session ends at {end}, before its start {start}"
                )));
            }
            Ok((
                node,
                to_i64(start, "session_start_s")?,
                to_i64(end, "end_s")?,
            ))
        })
        .collect()
}

pub(super) fn opt_to_i64(value: Option<u64>, what: &str) -> Result<Option<i64>, LedgerError> {
    value.map(|v| to_i64(v, what)).transpose()
}

pub(super) fn from_i64(value: i64, what: &str) -> Result<u64, LedgerError> {
    u64::try_from(value).map_err(|_| LedgerError::Corrupt(format!("{what} = {value} is negative")))
}

pub(super) fn add(a: Credits, b: Credits, what: &'static str) -> Result<Credits, LedgerError> {
    a.checked_add(b)
        .filter(|sum| sum.get() <= i64::MAX as u64)
        .ok_or(LedgerError::Overflow(what))
}

/// The journal kinds.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Grant,
    Deploy,
    Usage,
    Refund,
    Update,
}

impl Kind {
    pub(super) const fn as_str(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Deploy => "deploy",
            Kind::Usage => "usage",
            Kind::Refund => "refund",
            Kind::Update => "update",
        }
    }
}

pub(super) const KEY_COLUMNS: &str =
    "id, account, secret_hash, created_at_s, expires_at_s, revoked_at_s";

pub(super) const DEPLOYMENT_COLUMNS: &str = "id, account, key, model, model_bytes, plan, price, \
                                  allowance_left, created_at_s, stopped_at_s, verifiability, \
                                  updates, updated_at_s";

/// A model signature as stored (JSON), refused beyond what the wire carries.
pub(super) fn signature_json(
    signature: Option<&ModelSignature>,
) -> Result<Option<String>, LedgerError> {
    signature
        .map(|s| {
            if !s.is_bounded() {
                return Err(LedgerError::Invalid(
                    "model signature beyond the wire's limits".into(),
                ));
            }
            serde_json::to_string(s)
                .map_err(|e| LedgerError::Invalid(format!("model signature: {e}")))
        })
        .transpose()
}

pub(super) const NODE_COLUMNS: &str =
    "id, rating, registered_at_s, mining_income, crat_micro, streak, uptime_total_s";

pub(super) const ROUND_NODE_COLUMNS: &str = "round, node, start_s, uptime_s, committed, rank, guaranteed, \
                                  bonus, crat_issued, crat_slashed, crat_end";

pub(super) const ROUND_COLUMNS: &str =
    "idx, start_s, length_s, income, carry_out, paid, inputs_json, outcome_json";

/// A deployment's allowance as a backend's `charge_usage` tracks it during one call.
pub(super) struct Allowance {
    pub(super) account: AccountName,
    pub(super) left: Credits,
    pub(super) changed: bool,
}

impl Allowance {
    /// How a usage record costing `cost` is charged: what the allowance left covers, and
    /// the rest, recorded as uncollected.
    pub(super) fn split(&self, cost: Credits) -> (Credits, Credits) {
        let charge = cost.min(self.left);
        (charge, cost.saturating_sub(charge))
    }

    /// Takes `charge` (from [`Allowance::split`]) from the allowance.
    pub(super) fn take(&mut self, charge: Credits) {
        if charge > Credits::ZERO {
            self.left = self.left.saturating_sub(charge);
            self.changed = true;
        }
    }
}

/// The journal's usage movements of one charge: one per (time, deployment), the sum of the
/// credits its records took from the allowance. The usage table keeps each task's charge;
/// the journal keeps the movements of money, which every reader sums (income by time,
/// audits). A movement per task was half of what a usage record cost: `cargo bench -p
/// crat-benches --bench ledger`, one report of 2,000 records, alternated with the build
/// before on the 2-core VM of `benches/compare/README.md` (2026-12-07): SQLite 23.1–23.3 →
/// 11.1–11.4 ms, PostgreSQL (on the same cores) 51.4–51.8 → 30.3 ms.
#[derive(Default)]
pub(super) struct UsageMovements {
    /// (time, deployment) → the deployment's account and the credits taken.
    sums: std::collections::BTreeMap<(u64, crat_core::id::DeploymentId), (AccountName, Credits)>,
}

impl UsageMovements {
    /// Counts `charge`, taken from `deployment`'s allowance (held for `account`) at `at_s`.
    pub(super) fn add(
        &mut self,
        at_s: u64,
        deployment: crat_core::id::DeploymentId,
        account: &AccountName,
        charge: Credits,
    ) -> Result<(), LedgerError> {
        if charge > Credits::ZERO {
            let (_, sum) = self
                .sums
                .entry((at_s, deployment))
                .or_insert_with(|| (account.clone(), Credits::ZERO));
            *sum = add(*sum, charge, "usage movement")?;
        }
        Ok(())
    }

    /// The movements, oldest first: (time, deployment, account, credits).
    pub(super) fn iter(
        &self,
    ) -> impl Iterator<Item = (u64, &crat_core::id::DeploymentId, &AccountName, Credits)> + '_ {
        self.sums
            .iter()
            .map(|((at_s, d), (account, c))| (*at_s, d, account, *c))
    }
}

/// What a backend's usage charging charges.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Charging {
    /// Usage records: each counted against its acknowledgement; one of a settled pair is a
    /// duplicate.
    Records,
    /// Settlements of acknowledgements (the pairs are being settled: nothing is counted).
    Settlement,
}

/// The columns of an acknowledgement read back, in the order both backends decode them.
pub(super) const ACK_COLUMNS: &str = "ticket_nonce, node, deployment, key, settle_at_s, \
     acked_tasks, acked_credits, acked_accumulator, charged_tasks, charged_credits, \
     charged_accumulator";

/// The acknowledgement of a pair (ticket nonce, node) as one charge found it.
pub(super) enum Pair {
    /// No acknowledgement stored: nothing to count.
    Absent,
    /// Its usage window was settled (the settlement charged its work).
    Settled,
    /// Stored and open: the charged tally, and whether this charge changed it.
    Open { charged: Tally, changed: bool },
}

/// What one charge of usage records (each backend's `charge_rows`) knows of the
/// acknowledgements of the pairs its records name: each pair's row is read once (`load`,
/// the backend's), its charged tally counted in memory, and the tallies it changed written
/// once at the end ([`Self::changed`]). Nothing else in the transaction touches these rows,
/// so this is the reading and writing per record it replaces, without a lookup and an update
/// per record. Bounded by the records of one charge.
#[derive(Default)]
pub(super) struct Pairs {
    pairs: HashMap<([u8; 16], NodeId), Pair>,
}

impl Pairs {
    fn pair(
        &mut self,
        nonce: &[u8; 16],
        node: &NodeId,
        load: impl FnOnce() -> Result<Pair, LedgerError>,
    ) -> Result<&mut Pair, LedgerError> {
        match self.pairs.entry((*nonce, *node)) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => Ok(e.insert(load()?)),
        }
    }

    /// Whether the pair (`nonce`, `node`) has a settled acknowledgement.
    pub(super) fn settled(
        &mut self,
        nonce: &[u8; 16],
        node: &NodeId,
        load: impl FnOnce() -> Result<Pair, LedgerError>,
    ) -> Result<bool, LedgerError> {
        Ok(matches!(self.pair(nonce, node, load)?, Pair::Settled))
    }

    /// Counts a charged record in the charged tally of its pair's acknowledgement, if one is
    /// stored and not settled.
    pub(super) fn count(
        &mut self,
        c: &UsageCharge,
        load: impl FnOnce() -> Result<Pair, LedgerError>,
    ) -> Result<(), LedgerError> {
        if let Pair::Open { charged, changed } = self.pair(&c.record.ticket_nonce, &c.node, load)? {
            charged
                .add(&c.record.task, &c.record.inputs_digest, c.cost)
                .ok_or(LedgerError::Overflow("charged tally"))?;
            *changed = true;
        }
        Ok(())
    }

    /// The charged tallies this charge changed, to write.
    pub(super) fn changed(self) -> impl Iterator<Item = ([u8; 16], NodeId, Tally)> {
        self.pairs
            .into_iter()
            .filter_map(|((nonce, node), pair)| match pair {
                Pair::Open {
                    charged,
                    changed: true,
                } => Some((nonce, node, charged)),
                _ => None,
            })
    }
}
