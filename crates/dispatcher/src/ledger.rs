//! The ledger: every record that is money or that money is computed from, in a transactional
//! database. Nothing is acknowledged to a peer before the ledger has committed it.
//!
//! [`Ledger`] is the trait the dispatcher uses; [`SqliteLedger`] is the embedded default (one
//! file under the data directory, WAL journal, versioned migrations). `PgLedger` (the
//! `postgres` feature) implements the same trait in a PostgreSQL database that several
//! dispatchers can share (serializable transactions retried on conflicts, versioned
//! migrations, a bounded connection pool). One test suite (the test-only module
//! `ledger::suite`) tests the trait's behaviour; each backend runs all of it on its own
//! ledgers (PostgreSQL's need a server: `CRAT_TEST_POSTGRES_URL`, set by `scripts/test.sh`).
//!
//! Credits move in exactly four ways, each journalled and applied to a balance in the same
//! transaction: a **grant** adds to an account; a **deploy** takes the plan's up-front price
//! from the account (for a per-request plan that is the allowance, held by the deployment); a
//! **usage** charge takes a task's cost from its deployment's allowance, once per task id
//! (each task's charge is a row of the usage table; the journal has one movement per
//! deployment and time of each charge, their sum); an **undeploy** returns what is left of an
//! allowance to the account. A round's client income is the deploy charges of per-instance
//! plans plus the usage charges made inside the round.
//!
//! The ledger also keeps the clients' **acknowledgements** (per ticket and node: the latest
//! acknowledged tally, what usage charged against it, whether its usage window was settled),
//! so that a restarted dispatcher charges no more and no less than before (see
//! [`Ledger::store_acks`], [`Ledger::charge_usage`] and [`Ledger::settle_acks`]).

use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr, TaskId};
use crat_core::money::{Credits, MicroCrat, MicroUsd};
use crat_core::policy::acks::{AckEntry, Tally};
use crat_core::pricing::{DeployPlan, PriceQuote};
use crat_core::wire::{ModelSignature, RoundEarnings, UsageRecord, Verifiability};
use crat_rewards::{Interval, RoundOutcome};

mod common;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod suite;

pub use common::LedgerTotals;
#[cfg(feature = "postgres")]
pub use postgres::{PgLedger, PgOptions, TRANSACTION_ATTEMPTS_MAX, redact_url};
pub use sqlite::SqliteLedger;

/// An account name: 1..=64 bytes of `[a-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AccountName(String);

impl AccountName {
    /// Longest account name.
    pub const BYTES_MAX: usize = 64;

    /// Checks and wraps a name.
    pub fn new(name: impl Into<String>) -> Result<Self, LedgerError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= Self::BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name))
        } else {
            Err(LedgerError::Invalid(format!(
                "account name {name:?} must be 1..={} characters of a-z, 0-9, _ and -",
                Self::BYTES_MAX
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AccountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An SDK key as stored: never the secret, only its blake3 hash.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyRecord {
    /// The key's public id.
    pub id: KeyId,
    /// The account it spends from.
    pub account: AccountName,
    /// blake3 of the 32-byte secret.
    pub secret_hash: [u8; 32],
    /// Unix seconds.
    pub created_at_s: u64,
    /// Unix seconds; `None` never expires.
    pub expires_at_s: Option<u64>,
    /// Unix seconds it was revoked at, if it was.
    pub revoked_at_s: Option<u64>,
}

/// A stored model's metadata (the bytes live in the blob store).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ModelRecord {
    /// Content address.
    pub id: ModelId,
    /// Size in bytes.
    pub bytes: u64,
    /// Who uploaded it first (every account that uploaded it owns it: see
    /// [`Ledger::may_use_model`]).
    pub account: AccountName,
    /// Unix seconds.
    pub stored_at_s: u64,
    /// What it takes and returns (from the upload check); `None` for a model stored before
    /// signatures were (the dispatcher fills it in from the model's bytes when first asked,
    /// [`Ledger::set_model_signature`]) or one the wire cannot carry.
    pub signature: Option<ModelSignature>,
}

/// A deployment as stored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeploymentRecord {
    /// Its id.
    pub id: DeploymentId,
    /// The account that pays.
    pub account: AccountName,
    /// The key that created it.
    pub key: KeyId,
    /// The model.
    pub model: ModelId,
    /// The model's size.
    pub model_bytes: u64,
    /// The plan.
    pub plan: DeployPlan,
    /// The price when deployed.
    pub price: PriceQuote,
    /// What is left of a per-request allowance (0 for per-instance plans).
    pub allowance_left: Credits,
    /// Unix seconds.
    pub created_at_s: u64,
    /// Unix seconds it was stopped at, if it was.
    pub stopped_at_s: Option<u64>,
    /// Whether canaries and spot checks count for it: the determinism gate's verdict on its
    /// model when it was deployed, or last updated (deployments stored before the gate
    /// existed read as verifiable).
    pub verifiability: Verifiability,
    /// Model updates made ([`Ledger::update_deployment_model`]).
    pub updates: u32,
    /// When the last one was made.
    pub updated_at_s: Option<u64>,
}

/// One model update of a deployment, as stored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ModelUpdate {
    /// The deployment.
    pub deployment: DeploymentId,
    /// Its number, from 1: the deployment's `updates` after it.
    pub seq: u32,
    /// The model before.
    pub previous: ModelId,
    /// The new model.
    pub model: ModelId,
    /// Its size.
    pub model_bytes: u64,
    /// The determinism gate's verdict on the new model.
    pub verifiability: Verifiability,
    /// What it cost from the deployment's allowance (counted as income).
    pub charged: Credits,
    /// When (Unix seconds).
    pub at_s: u64,
}

/// One task to charge: a node's usage record with the cost the dispatcher priced it at.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UsageCharge {
    /// The record as the node reported it.
    pub record: UsageRecord,
    /// The node that ran it.
    pub node: NodeId,
    /// Its price under the deployment's plan (0 for per-instance plans).
    pub cost: Credits,
    /// When the dispatcher received it (Unix seconds).
    pub at_s: u64,
}

/// What [`Ledger::charge_usage`] did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct UsageOutcome {
    /// Records stored and charged now.
    pub accepted: u32,
    /// Records whose task id was already stored (nothing charged again).
    pub duplicates: u32,
    /// Credits taken from allowances by this call.
    pub charged: Credits,
    /// Credits that could not be taken because an allowance ran out (recorded per task).
    pub uncollected: Credits,
    /// Indices (into the charges given) of the duplicates, ascending.
    pub duplicated: Vec<u32>,
}

/// A stored usage record (for audits and tests).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UsageRow {
    /// The task.
    pub task: TaskId,
    /// Its deployment.
    pub deployment: DeploymentId,
    /// The node that ran it.
    pub node: NodeId,
    /// Credits charged.
    pub charged: Credits,
    /// Credits owed but not collected (allowance exhausted).
    pub uncollected: Credits,
    /// Unix seconds.
    pub at_s: u64,
    /// The digest of the task's inputs (all zero for rows recorded before digests were).
    pub inputs_digest: [u8; 32],
}

/// A client's acknowledgement of a node's work under a ticket, checked, to store
/// ([`Ledger::store_acks`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AckRecord {
    /// The ticket's nonce.
    pub ticket_nonce: [u8; 16],
    /// The node whose work it acknowledges.
    pub node: NodeId,
    /// The ticket's deployment.
    pub deployment: DeploymentId,
    /// The SDK key the ticket charges.
    pub key: KeyId,
    /// When the ticket's usage window ends (Unix seconds).
    pub settle_at_s: u64,
    /// What the client acknowledged.
    pub acked: Tally,
}

/// A (ticket, node) pair's acknowledgement as stored, with what usage charged against it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredAck {
    /// The ticket's nonce.
    pub ticket_nonce: [u8; 16],
    /// The node.
    pub node: NodeId,
    /// When the ticket's usage window ends (Unix seconds).
    pub settle_at_s: u64,
    /// Deployment, key, the latest acknowledgement and the charged tally.
    pub entry: AckEntry,
}

/// What [`Ledger::settle_acks`] did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AckSettlement {
    /// Pairs marked settled.
    pub settled: u32,
    /// The charges made of them (pairs with nothing to charge make none).
    pub charges: Vec<UsageCharge>,
    /// What charging them did.
    pub outcome: UsageOutcome,
}

/// The largest amount, count or time a ledger stores (its databases' signed 64-bit
/// integers); see [`Ledger`].
pub const INTEGER_MAX: u64 = i64::MAX as u64;

/// Most rows [`Ledger::usage`] returns for one task id.
pub const USAGE_ROWS_PER_TASK_MAX: usize = 1_024;

/// A node as the ledger keeps it between rounds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeRecord {
    /// The node.
    pub id: NodeId,
    /// Its current power rating (1..=5).
    pub rating: u8,
    /// First registration (Unix seconds); never changes once stored.
    pub registered_at_s: u64,
    /// Average mining income of its GPU per day.
    pub mining_income_usd_micro_per_day: MicroUsd,
    /// CRAT held now (after the last closed round).
    pub crat_micro: MicroCrat,
    /// Consecutive committed rounds up to the last closed round.
    pub streak: u64,
    /// Uptime in all closed rounds.
    pub uptime_total_s: u64,
}

/// One closed round.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RoundRecord {
    /// Round index (0, 1, …).
    pub index: u64,
    /// Unix seconds.
    pub start_s: u64,
    /// Seconds.
    pub length_s: u64,
    /// Client income of the round.
    pub income_usd_micro: MicroUsd,
    /// Bonus pool carried out to the next round.
    pub carry_out_usd_micro: MicroUsd,
    /// Total paid (guaranteed + bonus).
    pub paid_usd_micro: MicroUsd,
    /// The rewards inputs, in the interchange JSON of `docs/economics.md`.
    pub inputs_json: String,
    /// The outcome, in the interchange JSON.
    pub outcome_json: String,
}

/// That a closed round was settled ([`Ledger::mark_round_settled`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RoundSettlement {
    /// When the dispatcher recorded it (Unix seconds).
    pub settled_at_s: u64,
    /// The settlement receipt's digest of the payout batch, if the receipt had one in the
    /// 32-byte form ([`crat_rewards::PayoutBatch::digest_hex`]).
    pub digest: Option<[u8; 32]>,
}

/// Most rounds [`Ledger::node_rounds`] returns.
pub const NODE_ROUNDS_MAX: u32 = 1_024;

/// Most rounds [`Ledger::unsettled_rounds`] returns.
pub const UNSETTLED_ROUNDS_MAX: u32 = 1_024;

/// Most idle node records the dispatcher removes after one round closes
/// ([`Ledger::forget_idle_nodes`]; the rest go after the next round).
pub const NODE_RECORDS_FORGOTTEN_PER_ROUND: u32 = 10_000;

/// Why the ledger refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Something that must exist does not.
    #[error("{0} not found")]
    NotFound(String),
    /// Something that must be new exists already.
    #[error("{0} already exists")]
    Exists(String),
    /// The account balance does not cover a charge.
    #[error("balance {balance} credits does not cover {needed}")]
    InsufficientCredits {
        /// Balance now.
        balance: Credits,
        /// What was asked.
        needed: Credits,
    },
    /// A value outside its domain.
    #[error("invalid: {0}")]
    Invalid(String),
    /// An arithmetic overflow in a balance.
    #[error("overflow in {0}")]
    Overflow(&'static str),
    /// The database failed.
    #[error("database: {0}")]
    Database(String),
    /// Stored data does not decode (corruption or a newer schema).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// The dispatcher's database. Every method is one transaction: it commits entirely or
/// changes nothing. Implementations are internally synchronised.
///
/// Integers are stored as signed 64-bit database integers: an amount, size or time above
/// `i64::MAX` is refused ([`LedgerError::Invalid`], or [`LedgerError::Overflow`] when a
/// balance would pass it), never wrapped.
pub trait Ledger: Send + Sync + 'static {
    /// Creates an account with a zero balance.
    fn create_account(&self, name: &AccountName, now_s: u64) -> Result<(), LedgerError>;
    /// Adds credits to an account; returns the new balance.
    fn grant(
        &self,
        name: &AccountName,
        credits: Credits,
        now_s: u64,
    ) -> Result<Credits, LedgerError>;
    /// An account's balance.
    fn balance(&self, name: &AccountName) -> Result<Credits, LedgerError>;

    /// Stores a new key (its account must exist).
    fn insert_key(&self, key: &KeyRecord) -> Result<(), LedgerError>;
    /// A key by id.
    fn key(&self, id: &KeyId) -> Result<Option<KeyRecord>, LedgerError>;
    /// Keys of an account, oldest first.
    fn keys(&self, account: &AccountName) -> Result<Vec<KeyRecord>, LedgerError>;
    /// Marks a key revoked (no-op if it already is); returns the record after.
    fn revoke_key(&self, id: &KeyId, now_s: u64) -> Result<KeyRecord, LedgerError>;

    /// Stores a model's metadata (a model already stored is left as it is) and makes
    /// `model.account` one of its owners.
    fn insert_model(&self, model: &ModelRecord) -> Result<(), LedgerError>;
    /// A model by id.
    fn model(&self, id: &ModelId) -> Result<Option<ModelRecord>, LedgerError>;
    /// Records a stored model's signature (one recorded already is kept); a model that is
    /// not stored is [`LedgerError::NotFound`].
    fn set_model_signature(
        &self,
        id: &ModelId,
        signature: &ModelSignature,
    ) -> Result<(), LedgerError>;
    /// Whether `account` may quote and deploy `model`: it is one of its owners (it uploaded
    /// the bytes), or an owner made the model public.
    fn may_use_model(&self, model: &ModelId, account: &AccountName) -> Result<bool, LedgerError>;
    /// An owner makes `model` public (anyone may deploy it by its hash) or private again;
    /// [`LedgerError::NotFound`] for anyone else.
    fn set_model_public(
        &self,
        model: &ModelId,
        account: &AccountName,
        public: bool,
    ) -> Result<(), LedgerError>;

    /// Stores a deployment and takes `deployment.price.upfront` from its account, atomically;
    /// [`LedgerError::InsufficientCredits`] (and nothing stored) if the balance is short.
    /// Returns the balance after. The account, the key (of that account) and the model must
    /// exist ([`LedgerError::NotFound`]); the record must be new: `stopped_at_s` `None` and
    /// `allowance_left` equal to `price.upfront` for a per-request plan, zero for a
    /// per-instance plan ([`LedgerError::Invalid`] otherwise).
    fn create_deployment(&self, deployment: &DeploymentRecord) -> Result<Credits, LedgerError>;
    /// A deployment by id.
    fn deployment(&self, id: &DeploymentId) -> Result<Option<DeploymentRecord>, LedgerError>;
    /// Deployments not stopped, oldest first.
    fn active_deployments(&self) -> Result<Vec<DeploymentRecord>, LedgerError>;
    /// Stops a deployment; returns the record after. Its allowance left goes back to the
    /// account at `refund_at_s` ([`Ledger::refund_stopped`]): until then usage already served
    /// under its tickets (reported late, or charged from clients' acknowledgements when their
    /// window ends) is still charged from it. A `refund_at_s` at or before `now_s` refunds at
    /// once. Stopping a stopped deployment changes nothing.
    fn stop_deployment(
        &self,
        id: &DeploymentId,
        now_s: u64,
        refund_at_s: u64,
    ) -> Result<DeploymentRecord, LedgerError>;
    /// Replaces a running deployment's model, atomically: the deployment's model, size and
    /// verifiability become the update's, `charged` moves from its allowance to income
    /// ([`LedgerError::InsufficientCredits`] if the allowance is short), and the update is
    /// kept in its history ([`Ledger::model_updates`]). The update must follow the stored
    /// state: `seq` one more than the deployment's `updates` and `previous` its model
    /// ([`LedgerError::Invalid`] otherwise, so that two racing updates cannot both apply);
    /// the deployment must run and the model exist ([`LedgerError::NotFound`]). Returns the
    /// record after.
    fn update_deployment_model(
        &self,
        update: &ModelUpdate,
    ) -> Result<DeploymentRecord, LedgerError>;
    /// A deployment's model updates, oldest first.
    fn model_updates(&self, id: &DeploymentId) -> Result<Vec<ModelUpdate>, LedgerError>;
    /// Refunds the allowance left of every stopped deployment whose refund time is at or
    /// before `now_s` (at most `limit`); returns them, after.
    fn refund_stopped(&self, now_s: u64, limit: u32) -> Result<Vec<DeploymentRecord>, LedgerError>;
    /// Deployments stopped whose allowance is not refunded yet (usage under their tickets is
    /// still charged), oldest first.
    fn stopping_deployments(&self) -> Result<Vec<DeploymentRecord>, LedgerError>;

    /// Stores and charges usage records, once per (deployment, task id, inputs digest): a
    /// task already stored is counted as a duplicate and charged nothing (a failover's second
    /// record), while a task id reused with other inputs is another task. Each cost is taken
    /// from the deployment's allowance; what the allowance cannot cover is recorded as
    /// uncollected. A record of an unknown deployment fails the whole call
    /// ([`LedgerError::NotFound`], nothing stored).
    ///
    /// A record whose (ticket nonce, node) has a stored acknowledgement ([`Ledger::store_acks`])
    /// is counted in its charged tally ([`Tally::add`] of task, inputs digest and cost) in the
    /// same transaction; one whose acknowledgement was settled already is a duplicate (the
    /// settlement charged its work).
    fn charge_usage(&self, charges: &[UsageCharge]) -> Result<UsageOutcome, LedgerError>;
    /// Stores checked acknowledgements, in one transaction. Per (ticket nonce, node) the one
    /// of most tasks is kept (one of fewer or as many tasks changes nothing); deployment, key
    /// and settlement time stay those first stored. Returns, for each given, the pair as
    /// stored after the call (with its charged tally), or `None` when the pair was settled
    /// already (nothing stored: its work was charged). A tally or time above `i64::MAX` is
    /// [`LedgerError::Invalid`] (nothing stored).
    fn store_acks(&self, acks: &[AckRecord]) -> Result<Vec<Option<StoredAck>>, LedgerError>;
    /// Pairs not settled yet, soonest settlement first (then by ticket nonce and node), at
    /// most `limit`.
    fn unsettled_acks(&self, limit: u32) -> Result<Vec<StoredAck>, LedgerError>;
    /// Settles, in one transaction, the pairs not settled yet whose settlement time is at or
    /// before `now_s` (at most `limit`, soonest first): each is marked settled, and the charge
    /// `charge_of` makes of it (the acknowledged work no record charged; `None` when there is
    /// none to charge) is charged as [`Ledger::charge_usage`] does. A settled pair is never
    /// settled again; a charge of an unknown deployment fails the whole call (nothing
    /// settled).
    fn settle_acks(
        &self,
        now_s: u64,
        limit: u32,
        charge_of: &mut dyn FnMut(&StoredAck) -> Option<UsageCharge>,
    ) -> Result<AckSettlement, LedgerError>;
    /// The stored usage records of a task id of a deployment, one per distinct inputs, oldest
    /// first, at most [`USAGE_ROWS_PER_TASK_MAX`].
    fn usage(&self, deployment: &DeploymentId, task: &TaskId)
    -> Result<Vec<UsageRow>, LedgerError>;
    /// For each (deployment, task id, inputs digest), whether usage of it is stored already.
    fn usage_known(
        &self,
        keys: &[(DeploymentId, TaskId, [u8; 32])],
    ) -> Result<Vec<bool>, LedgerError>;
    /// Number of stored usage records and the credits charged for them, for a deployment
    /// (`(0, 0)` for a deployment without usage, known or not).
    fn usage_totals(&self, deployment: &DeploymentId) -> Result<(u64, Credits), LedgerError>;

    /// Stores a node on first registration, or updates its rating and mining income
    /// (`registered_at_s`, CRAT, streak and uptime total are kept from the stored record).
    fn upsert_node(&self, node: &NodeRecord) -> Result<(), LedgerError>;
    /// A node by id.
    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, LedgerError>;
    /// All nodes, in id order.
    fn nodes(&self) -> Result<Vec<NodeRecord>, LedgerError>;
    /// Records that `node` was online during `[session_start_s, end_s)`: the session that
    /// started at `session_start_s` is created or extended to `end_s` (never shortened, and
    /// never past where [`Ledger::cut_online`] ended it).
    /// The node must be stored ([`LedgerError::NotFound`]).
    fn record_online(
        &self,
        node: &NodeId,
        session_start_s: u64,
        end_s: u64,
    ) -> Result<(), LedgerError>;
    /// [`Ledger::record_online`] of many sessions `(node, session_start_s, end_s)`, in one
    /// transaction. A session of a node that is not stored is skipped (it was forgotten, or
    /// never stored); returns how many were. A session ending before it starts is
    /// [`LedgerError::Invalid`], and nothing is recorded.
    fn record_online_many(&self, sessions: &[(NodeId, u64, u64)]) -> Result<u32, LedgerError>;
    /// Ends the session that started at `session_start_s` at `end_s`, shortening it if more
    /// was recorded (a missed or failed compute challenge ends a session at the last passed
    /// one); later [`Ledger::record_online`] calls never extend it past `end_s`. The node must
    /// be stored ([`LedgerError::NotFound`]).
    fn cut_online(
        &self,
        node: &NodeId,
        session_start_s: u64,
        end_s: u64,
    ) -> Result<(), LedgerError>;
    /// The nodes a round over `[from_s, to_s)` is closed over, by id: those registered before
    /// `to_s` that were online or validated in the window, and those with a streak the round
    /// ends. For any other node the round's outcome is nothing (no uptime, no CRAT, no
    /// payment, its streak 0 already), so leaving it out changes no payment and keeps the
    /// cost of a round proportional to the nodes active in it, not to every node ever seen.
    fn round_nodes(&self, from_s: u64, to_s: u64) -> Result<Vec<NodeRecord>, LedgerError>;
    /// Removes at most `limit` node records that hold nothing and did nothing since
    /// `before_s`: no CRAT, no streak, registered before `before_s`, and no online session
    /// ending and no validation at or after `before_s`. Their sessions and validations go
    /// with them (the closed rounds' inputs keep that history). A removed node that comes back
    /// registers as new. Returns how many were removed.
    fn forget_idle_nodes(&self, before_s: u64, limit: u32) -> Result<u64, LedgerError>;
    /// A node's online sessions that overlap `[from_s, to_s)`, unclipped, by start.
    fn online_sessions(
        &self,
        node: &NodeId,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<Interval>, LedgerError>;
    /// Records one validation outcome of a node's work at `at_s` (the node must be stored).
    fn record_validation(&self, node: &NodeId, ok: bool, at_s: u64) -> Result<(), LedgerError>;
    /// (ok, failed) validations of a node with `at_s` in `[from_s, to_s)`.
    fn validations(&self, node: &NodeId, from_s: u64, to_s: u64)
    -> Result<(u64, u64), LedgerError>;

    /// `node`'s outcomes of closed rounds, newest first, at most `limit` (and at most
    /// [`NODE_ROUNDS_MAX`]): stored by [`Ledger::close_round`], equal to the round's outcome.
    fn node_rounds(&self, node: &NodeId, limit: u32) -> Result<Vec<RoundEarnings>, LedgerError>;
    /// Tasks `node` served that were charged (acknowledged usage) with `at_s` in
    /// `[from_s, to_s)`.
    fn tasks_served(&self, node: &NodeId, from_s: u64, to_s: u64) -> Result<u64, LedgerError>;

    /// Client income in credits with charge time in `[from_s, to_s)`: per-instance deploy
    /// charges plus usage charges.
    fn income(&self, from_s: u64, to_s: u64) -> Result<Credits, LedgerError>;
    /// Stores a closed round and applies its outcome to the node records (CRAT, streak,
    /// uptime total), atomically. Storing a round index twice is [`LedgerError::Exists`]; an
    /// outcome naming a node that is not stored is [`LedgerError::NotFound`].
    fn close_round(&self, round: &RoundRecord, outcome: &RoundOutcome) -> Result<(), LedgerError>;
    /// The latest time the ledger recorded: the latest income charge, journal entry, online
    /// session end and closed round end (0 for an empty ledger). A dispatcher starts its clock
    /// no earlier ([`crat_core::clock::Clock::raise_to`]), so that time never goes back across
    /// a restart, even when the wall clock did.
    fn latest_time_s(&self) -> Result<u64, LedgerError>;
    /// The last closed round.
    fn last_round(&self) -> Result<Option<RoundRecord>, LedgerError>;
    /// A closed round by index.
    fn round(&self, index: u64) -> Result<Option<RoundRecord>, LedgerError>;
    /// Closed rounds, newest first, at most `limit`.
    fn rounds(&self, limit: u32) -> Result<Vec<RoundRecord>, LedgerError>;

    /// Indices of the closed rounds not settled yet, oldest first, at most `limit` (and at
    /// most [`UNSETTLED_ROUNDS_MAX`]). A round is unsettled from [`Ledger::close_round`] until
    /// [`Ledger::mark_round_settled`]; rounds closed before the ledger recorded settlements
    /// read as unsettled (settling them again is a no-op by the `Settlement` contract).
    fn unsettled_rounds(&self, limit: u32) -> Result<Vec<u64>, LedgerError>;
    /// Records that round `index` was settled; returns the settlement as stored. A round
    /// settled already keeps its first record (and that is returned). A round that is not
    /// closed is [`LedgerError::NotFound`].
    fn mark_round_settled(
        &self,
        index: u64,
        settlement: &RoundSettlement,
    ) -> Result<RoundSettlement, LedgerError>;
    /// How round `index` was settled; `None` while it is not. A round that is not closed is
    /// [`LedgerError::NotFound`].
    fn round_settlement(&self, index: u64) -> Result<Option<RoundSettlement>, LedgerError>;

    /// Whether the dispatcher holding this handle closes and settles rounds now. Of the
    /// dispatchers sharing one ledger, one at a time is answered `true`; a ledger one process
    /// owns (SQLite) always answers `true`. Asked every tick: a leader that crashed or lost
    /// the database is replaced within a bounded time (PostgreSQL: an advisory lock, see
    /// `PgLedger`). Closing and settling are safe against two leaders for a moment (a round
    /// is stored once, settling is idempotent); the lock keeps them from duplicating work.
    fn lead_rounds(&self) -> Result<bool, LedgerError>;
    /// Gives up leading (a dispatcher stopping cleanly), so that another takes over at once.
    fn resign_rounds(&self);
    /// Records, while this handle leads ([`Ledger::lead_rounds`]; otherwise
    /// [`LedgerError::Invalid`]), that the active dispatcher is reached at `addr`: the
    /// standbys sharing the ledger forward their nodes and clients there
    /// ([`crate::cluster`]). A ledger one process owns (SQLite) has no standbys and records
    /// nothing.
    fn announce_active(&self, addr: &PeerAddr) -> Result<(), LedgerError>;
    /// Where the active dispatcher said it is reached ([`Ledger::announce_active`]), if one
    /// did (it may have died since: a standby that cannot reach it tries again).
    fn active_dispatcher(&self) -> Result<Option<PeerAddr>, LedgerError>;
}
