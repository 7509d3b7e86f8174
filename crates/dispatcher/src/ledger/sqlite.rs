//! [`SqliteLedger`]: the embedded [`Ledger`], one SQLite file.
//!
//! The design is described on the main type.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::time::Duration;

use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr, TaskId};
use crat_core::money::{Credits, MicroCrat, MicroUsd};
use crat_core::pricing::DeployPlan;
use crat_core::wire::{ModelSignature, RoundEarnings};
use crat_rewards::{Interval, RoundOutcome};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

mod acks;

use super::common::{
    Allowance, Charging, DEPLOYMENT_COLUMNS, KEY_COLUMNS, Kind, LedgerTotals, NODE_COLUMNS, Pairs,
    ROUND_COLUMNS, ROUND_NODE_COLUMNS, UsageMovements, add, from_i64, opt_to_i64, session_rows,
    signature_json, to_i64,
};
use super::{
    AccountName, AckRecord, AckSettlement, DeploymentRecord, KeyRecord, Ledger, LedgerError,
    ModelRecord, ModelUpdate, NODE_ROUNDS_MAX, NodeRecord, RoundRecord, RoundSettlement, StoredAck,
    UNSETTLED_ROUNDS_MAX, USAGE_ROWS_PER_TASK_MAX, UsageCharge, UsageOutcome, UsageRow,
};

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// How a stored session takes a later end: extended, never shortened, never past its cut.
macro_rules! extend_session {
    () => {
        "ON CONFLICT(node, start_s) DO UPDATE
         SET end_s = min(max(end_s, excluded.end_s), coalesce(cut_s, max(end_s, excluded.end_s)))"
    };
}

/// [`Ledger::record_online`]'s statement: the session created or extended.
const RECORD_ONLINE: &str = concat!(
    "INSERT INTO sessions (node, start_s, end_s) VALUES (?1, ?2, ?3) ",
    extend_session!()
);

/// [`RECORD_ONLINE`] when the ledger holds the node, in one statement: no row changes
/// otherwise.
const RECORD_ONLINE_KNOWN: &str = concat!(
    "INSERT INTO sessions (node, start_s, end_s)
     SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM nodes WHERE id = ?1) ",
    extend_session!()
);

/// SQLite's page cache per ledger connection, in KiB (64 MiB).
const PAGE_CACHE_KIB: i64 = 64 * 1024;

/// The schema, one step per entry; `PRAGMA user_version` is the number of steps applied.
/// Append new steps; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY NOT NULL,
        balance INTEGER NOT NULL CHECK (balance >= 0),
        created_at_s INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE keys (
        id BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
        account TEXT NOT NULL REFERENCES accounts(name),
        secret_hash BLOB NOT NULL CHECK (length(secret_hash) = 32),
        created_at_s INTEGER NOT NULL,
        expires_at_s INTEGER,
        revoked_at_s INTEGER
    ) STRICT;
    CREATE INDEX keys_by_account ON keys(account, created_at_s);

    CREATE TABLE models (
        id BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 32),
        bytes INTEGER NOT NULL CHECK (bytes >= 0),
        account TEXT NOT NULL REFERENCES accounts(name),
        stored_at_s INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE deployments (
        id BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
        account TEXT NOT NULL REFERENCES accounts(name),
        key BLOB NOT NULL REFERENCES keys(id),
        model BLOB NOT NULL REFERENCES models(id),
        model_bytes INTEGER NOT NULL CHECK (model_bytes >= 0),
        plan TEXT NOT NULL,
        price TEXT NOT NULL,
        allowance_left INTEGER NOT NULL CHECK (allowance_left >= 0),
        created_at_s INTEGER NOT NULL,
        stopped_at_s INTEGER
    ) STRICT;
    CREATE INDEX deployments_active ON deployments(created_at_s) WHERE stopped_at_s IS NULL;

    CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL REFERENCES accounts(name),
        kind TEXT NOT NULL CHECK (kind IN ('grant', 'deploy', 'usage', 'refund')),
        amount INTEGER NOT NULL CHECK (amount >= 0),
        deployment BLOB,
        task BLOB,
        at_s INTEGER NOT NULL,
        counts_as_income INTEGER NOT NULL CHECK (counts_as_income IN (0, 1))
    ) STRICT;
    CREATE INDEX journal_income ON journal(at_s) WHERE counts_as_income = 1;

    CREATE TABLE usage (
        task BLOB PRIMARY KEY NOT NULL CHECK (length(task) = 16),
        deployment BLOB NOT NULL REFERENCES deployments(id),
        key BLOB NOT NULL,
        node BLOB NOT NULL,
        input_bytes INTEGER NOT NULL,
        output_bytes INTEGER NOT NULL,
        compute_us INTEGER NOT NULL,
        charged INTEGER NOT NULL CHECK (charged >= 0),
        uncollected INTEGER NOT NULL CHECK (uncollected >= 0),
        at_s INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX usage_by_deployment ON usage(deployment);

    CREATE TABLE nodes (
        id BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 32),
        rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
        registered_at_s INTEGER NOT NULL,
        mining_income INTEGER NOT NULL,
        crat_micro INTEGER NOT NULL,
        streak INTEGER NOT NULL,
        uptime_total_s INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE sessions (
        node BLOB NOT NULL REFERENCES nodes(id),
        start_s INTEGER NOT NULL,
        end_s INTEGER NOT NULL CHECK (end_s >= start_s),
        PRIMARY KEY (node, start_s)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE validations (
        node BLOB NOT NULL REFERENCES nodes(id),
        at_s INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        PRIMARY KEY (node, at_s)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE rounds (
        idx INTEGER PRIMARY KEY NOT NULL,
        start_s INTEGER NOT NULL,
        length_s INTEGER NOT NULL,
        income INTEGER NOT NULL,
        carry_out INTEGER NOT NULL,
        paid INTEGER NOT NULL,
        inputs_json TEXT NOT NULL,
        outcome_json TEXT NOT NULL
    ) STRICT;
    ",
    // 2: usage is keyed by (deployment, task, inputs digest): a task id reused with other
    // inputs is another task, a retry of the same task is not. Rows recorded before carry the
    // all-zero digest (their inputs were not recorded).
    "
    CREATE TABLE usage_by_inputs (
        deployment BLOB NOT NULL REFERENCES deployments(id),
        task BLOB NOT NULL CHECK (length(task) = 16),
        inputs_digest BLOB NOT NULL CHECK (length(inputs_digest) = 32),
        key BLOB NOT NULL,
        node BLOB NOT NULL,
        input_bytes INTEGER NOT NULL,
        output_bytes INTEGER NOT NULL,
        compute_us INTEGER NOT NULL,
        charged INTEGER NOT NULL CHECK (charged >= 0),
        uncollected INTEGER NOT NULL CHECK (uncollected >= 0),
        at_s INTEGER NOT NULL,
        PRIMARY KEY (deployment, task, inputs_digest)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO usage_by_inputs
        SELECT deployment, task, zeroblob(32), key, node, input_bytes, output_bytes,
               compute_us, charged, uncollected, at_s
        FROM usage;
    DROP TABLE usage;
    ALTER TABLE usage_by_inputs RENAME TO usage;
    ",
    // 3: the determinism gate's verdict on a deployment's model (`Verifiability` as JSON).
    // Deployments stored before the gate existed keep the rules they were made under.
    "ALTER TABLE deployments ADD COLUMN verifiability TEXT NOT NULL DEFAULT '\"Verifiable\"';",
    // 4: a session ended by a failed compute challenge keeps that end (`cut_s`): uptime
    // reported before the failure never extends it again.
    "ALTER TABLE sessions ADD COLUMN cut_s INTEGER;",
    // 5: clients' acknowledgements per (ticket nonce, node): the latest acknowledged tally,
    // what usage charged against it (counted in the charge's transaction), and when its usage
    // window was settled (NULL until then). Tallies are (tasks, credits, 32-byte accumulator).
    "
    CREATE TABLE acks (
        ticket_nonce BLOB NOT NULL CHECK (length(ticket_nonce) = 16),
        node BLOB NOT NULL CHECK (length(node) = 32),
        deployment BLOB NOT NULL CHECK (length(deployment) = 16),
        key BLOB NOT NULL CHECK (length(key) = 16),
        settle_at_s INTEGER NOT NULL,
        acked_tasks INTEGER NOT NULL CHECK (acked_tasks >= 0),
        acked_credits INTEGER NOT NULL CHECK (acked_credits >= 0),
        acked_accumulator BLOB NOT NULL CHECK (length(acked_accumulator) = 32),
        charged_tasks INTEGER NOT NULL DEFAULT 0 CHECK (charged_tasks >= 0),
        charged_credits INTEGER NOT NULL DEFAULT 0 CHECK (charged_credits >= 0),
        charged_accumulator BLOB NOT NULL DEFAULT (zeroblob(32))
            CHECK (length(charged_accumulator) = 32),
        settled_at_s INTEGER,
        PRIMARY KEY (ticket_nonce, node)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX acks_unsettled ON acks(settle_at_s, ticket_nonce, node)
        WHERE settled_at_s IS NULL;
    ",
    // 6: models are used only by the accounts that uploaded them (each one proved it has the
    // bytes), or by anyone once an owner made them public. The first uploader recorded in
    // `models` is the first owner.
    "
    CREATE TABLE model_owners (
        model BLOB NOT NULL REFERENCES models(id),
        account TEXT NOT NULL REFERENCES accounts(name),
        since_s INTEGER NOT NULL,
        PRIMARY KEY (model, account)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO model_owners (model, account, since_s) SELECT id, account, stored_at_s FROM models;
    ALTER TABLE models ADD COLUMN public INTEGER NOT NULL DEFAULT 0 CHECK (public IN (0, 1));
    ",
    // 7: whether each closed round was settled (paid out), when, and the settlement receipt's
    // 32-byte digest. Rounds closed before read as unsettled: the dispatcher settles them
    // again, which the `Settlement` contract makes a no-op for those paid already.
    "
    ALTER TABLE rounds ADD COLUMN settled_at_s INTEGER;
    ALTER TABLE rounds ADD COLUMN settlement_digest BLOB
        CHECK (settlement_digest IS NULL OR length(settlement_digest) = 32);
    CREATE INDEX rounds_unsettled ON rounds(idx) WHERE settled_at_s IS NULL;
    ",
    // 8: a stopped deployment's allowance goes back to its account only at `refund_at_s`
    // (NULL once refunded, and for deployments stopped before: refunded when they stopped),
    // so that usage served before the stop and reported after it is still charged.
    "
    ALTER TABLE deployments ADD COLUMN refund_at_s INTEGER;
    CREATE INDEX deployments_refund_due ON deployments(refund_at_s) WHERE refund_at_s IS NOT NULL;
    ",
    // 9: a round is closed over the nodes active in it (`Ledger::round_nodes`), found through
    // sessions by end and validations by time; nodes with a streak to end are few and indexed.
    "
    CREATE INDEX sessions_by_end ON sessions(end_s);
    CREATE INDEX validations_by_time ON validations(at_s);
    CREATE INDEX nodes_streaking ON nodes(id) WHERE streak > 0;
    ",
    // 10: what each model takes and returns (`ModelSignature` as JSON), from the upload
    // check; NULL for models stored before (filled in from their bytes when first asked).
    "ALTER TABLE models ADD COLUMN signature TEXT;",
    // 11: model updates. Each deployment counts its updates (and when it had the last), each
    // update is a row of `model_updates`, and a per-request deployment's update is paid from
    // its allowance: a new journal kind, 'update' (SQLite cannot widen a CHECK in place, so
    // the journal is copied into a table with the wider CHECK, ids kept).
    "
    ALTER TABLE deployments ADD COLUMN updates INTEGER NOT NULL DEFAULT 0 CHECK (updates >= 0);
    ALTER TABLE deployments ADD COLUMN updated_at_s INTEGER;
    CREATE TABLE model_updates (
        deployment BLOB NOT NULL REFERENCES deployments(id),
        seq INTEGER NOT NULL CHECK (seq >= 1),
        previous BLOB NOT NULL CHECK (length(previous) = 32),
        model BLOB NOT NULL REFERENCES models(id),
        model_bytes INTEGER NOT NULL CHECK (model_bytes >= 0),
        verifiability TEXT NOT NULL,
        charged INTEGER NOT NULL CHECK (charged >= 0),
        at_s INTEGER NOT NULL,
        PRIMARY KEY (deployment, seq)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE journal_11 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL REFERENCES accounts(name),
        kind TEXT NOT NULL CHECK (kind IN ('grant', 'deploy', 'usage', 'refund', 'update')),
        amount INTEGER NOT NULL CHECK (amount >= 0),
        deployment BLOB,
        task BLOB,
        at_s INTEGER NOT NULL,
        counts_as_income INTEGER NOT NULL CHECK (counts_as_income IN (0, 1))
    ) STRICT;
    INSERT INTO journal_11 (id, account, kind, amount, deployment, task, at_s, counts_as_income)
        SELECT id, account, kind, amount, deployment, task, at_s, counts_as_income FROM journal;
    DROP TABLE journal;
    ALTER TABLE journal_11 RENAME TO journal;
    CREATE INDEX journal_income ON journal(at_s) WHERE counts_as_income = 1;
    ",
    // 12: the operator's view. Each node's outcome of each closed round as a row (written
    // with the round; rounds closed before are copied from their outcome JSON), and usage by
    // node and time (tasks served in a round).
    "
    CREATE TABLE round_nodes (
        round INTEGER NOT NULL REFERENCES rounds(idx),
        node BLOB NOT NULL CHECK (length(node) = 32),
        start_s INTEGER NOT NULL,
        uptime_s INTEGER NOT NULL CHECK (uptime_s >= 0),
        committed INTEGER NOT NULL CHECK (committed IN (0, 1)),
        rank INTEGER CHECK (rank >= 1),
        guaranteed INTEGER NOT NULL CHECK (guaranteed >= 0),
        bonus INTEGER NOT NULL CHECK (bonus >= 0),
        crat_issued INTEGER NOT NULL CHECK (crat_issued >= 0),
        crat_slashed INTEGER NOT NULL CHECK (crat_slashed >= 0),
        crat_end INTEGER NOT NULL CHECK (crat_end >= 0),
        PRIMARY KEY (node, round)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO round_nodes
        SELECT r.idx, unhex(json_extract(n.value, '$.id')), r.start_s,
               json_extract(n.value, '$.uptime_s'), json_extract(n.value, '$.committed'),
               json_extract(n.value, '$.rank'), json_extract(n.value, '$.guaranteed_usd_micro'),
               json_extract(n.value, '$.bonus_usd_micro'),
               json_extract(n.value, '$.crat_issued_micro'),
               json_extract(n.value, '$.crat_slashed_micro'),
               json_extract(n.value, '$.crat_end_micro')
        FROM rounds r, json_each(r.outcome_json, '$.nodes') n;
    CREATE INDEX usage_by_node ON usage(node, at_s);
    ",
];

/// The embedded [`Ledger`]: one SQLite file.
///
/// - **Durability.** The file runs in WAL mode with `synchronous=FULL`, so a method that
///   returned `Ok` has reached the disk: a restart (or a crash right after) loses nothing
///   that was acknowledged.
/// - **One transaction per method.** The connection sits behind a mutex; every write runs
///   in an `IMMEDIATE` transaction (it takes the write lock before reading, so a
///   read-modify-write never races another process), every read in a deferred one. An error
///   anywhere drops the transaction, which rolls it back: a method commits entirely or
///   changes nothing.
/// - **Migrations.** The schema is a list of steps (`MIGRATIONS`); `PRAGMA user_version`
///   counts the steps applied. Opening applies the missing ones in one transaction, and
///   refuses a file whose version is newer than this build knows
///   ([`LedgerError::Corrupt`]).
/// - **Integers only.** Money, sizes and times are `u64` in Rust and `INTEGER` (`i64`) in
///   SQLite: a value above `i64::MAX` is refused with [`LedgerError::Invalid`] (or
///   [`LedgerError::Overflow`] when it is the result of a balance update), never wrapped.
///   Ids are `BLOB`s of their bytes; plans and prices are JSON text.
/// - **The journal.** Every credit movement is a row of `journal` (grant, deploy, usage,
///   refund), written in the same transaction as the balance it moves. Income is the sum of
///   the rows that count as income, so [`SqliteLedger::totals`] can check at any time that
///   money is conserved.
pub struct SqliteLedger {
    /// The one connection. A panic inside a method drops its transaction, which rolls it
    /// back, so the connection stays consistent (`parking_lot` locks do not poison).
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger").finish_non_exhaustive()
    }
}

impl SqliteLedger {
    /// Runs `sql` (parameters: node, start, end) for a stored node's session
    /// `[session_start_s, end_s)`.
    fn write_session(
        &self,
        node: &NodeId,
        session_start_s: u64,
        end_s: u64,
        sql: &str,
    ) -> Result<(), LedgerError> {
        if end_s < session_start_s {
            return Err(LedgerError::Invalid(format!(
                "online session ends at {end_s}, before its start {session_start_s}"
            )));
        }
        let start = to_i64(session_start_s, "session_start_s")?;
        let end = to_i64(end_s, "end_s")?;
        self.write(|tx| {
            if !exists(
                tx,
                "SELECT 1 FROM nodes WHERE id = ?1",
                &node.as_bytes().as_slice(),
            )? {
                return Err(LedgerError::NotFound(format!("node {node}")));
            }
            tx.prepare_cached(sql)
                .db()?
                .execute(params![node.as_bytes().as_slice(), start, end])
                .db()?;
            Ok(())
        })
    }

    /// Opens (or creates) the ledger file at `path` and brings its schema up to date.
    ///
    /// A file written by a newer build (a `user_version` above this build's) is
    /// [`LedgerError::Corrupt`]; it is left untouched.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = Connection::open(path)
            .map_err(|e| LedgerError::Database(format!("cannot open {}: {e}", path.display())))?;
        Self::init(conn, true)
    }

    /// A ledger in memory, gone when dropped (tests and simulations).
    pub fn open_in_memory() -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory().db()?, false)
    }

    fn init(mut conn: Connection, wal: bool) -> Result<Self, LedgerError> {
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .db()?;
        if wal {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .db()?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(LedgerError::Database(format!(
                    "cannot switch the journal to WAL (it is {mode:?})"
                )));
            }
        }
        conn.pragma_update(None, "synchronous", "FULL").db()?;
        conn.pragma_update(None, "foreign_keys", "ON").db()?;
        // Usage rows arrive for every task and land at random places in the indexes: with
        // SQLite's default 2 MiB page cache, nearly every one re-reads its pages from the
        // operating system's cache.
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
            .db()?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version of the file (the number of migrations applied).
    pub fn schema_version(&self) -> Result<u32, LedgerError> {
        self.read(|tx| {
            let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).db()?;
            u32::try_from(v).map_err(|_| LedgerError::Corrupt(format!("user_version {v}")))
        })
    }

    /// The schema version this build writes.
    pub const fn current_schema_version() -> u32 {
        MIGRATIONS.len() as u32
    }

    /// Sums over the whole ledger (balances, allowances, income, grants), read in one
    /// transaction; [`LedgerTotals::is_conserved`] must hold.
    pub fn totals(&self) -> Result<LedgerTotals, LedgerError> {
        self.read(|tx| {
            let sum = |sql: &str| -> Result<Credits, LedgerError> {
                let v: i64 = tx.query_row(sql, [], |r| r.get(0)).db()?;
                Ok(Credits::new(from_i64(v, "sum")?))
            };
            Ok(LedgerTotals {
                balances: sum("SELECT COALESCE(SUM(balance), 0) FROM accounts")?,
                allowances: sum("SELECT COALESCE(SUM(allowance_left), 0) FROM deployments")?,
                income: sum(
                    "SELECT COALESCE(SUM(amount), 0) FROM journal WHERE counts_as_income = 1",
                )?,
                granted: sum("SELECT COALESCE(SUM(amount), 0) FROM journal WHERE kind = 'grant'")?,
            })
        })
    }

    /// Runs `f` in an IMMEDIATE transaction and commits if it returns `Ok`.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let out = f(&tx)?;
        tx.commit().db()?;
        Ok(out)
    }

    /// Runs `f` in a deferred (read) transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .db()?;
        let out = f(&tx)?;
        tx.commit().db()?;
        Ok(out)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).db()?;
    let known = MIGRATIONS.len();
    let applied = usize::try_from(version).map_err(|_| {
        LedgerError::Corrupt(format!("the ledger's schema version {version} is negative"))
    })?;
    if applied > known {
        return Err(LedgerError::Corrupt(format!(
            "the ledger's schema version is {applied}, newer than this build knows ({known}): \
             it was written by a newer dispatcher; upgrade instead of downgrading"
        )));
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)
            .map_err(|e| LedgerError::Database(format!("migration {}: {e}", step + 1)))?;
        tx.pragma_update(None, "user_version", step as i64 + 1)
            .db()?;
    }
    tx.commit().db()?;
    Ok(())
}

/// `rusqlite` errors as [`LedgerError::Database`], without a public `From` impl.
trait Db<T> {
    fn db(self) -> Result<T, LedgerError>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, LedgerError> {
        self.map_err(|e| LedgerError::Database(e.to_string()))
    }
}

fn u64_at(row: &Row<'_>, idx: usize, what: &str) -> Result<u64, LedgerError> {
    from_i64(row.get::<_, i64>(idx).db()?, what)
}

fn opt_u64_at(row: &Row<'_>, idx: usize, what: &str) -> Result<Option<u64>, LedgerError> {
    row.get::<_, Option<i64>>(idx)
        .db()?
        .map(|v| from_i64(v, what))
        .transpose()
}

fn bytes_at<const N: usize>(row: &Row<'_>, idx: usize, what: &str) -> Result<[u8; N], LedgerError> {
    let value = row.get_ref(idx).db()?;
    let blob = value
        .as_blob()
        .map_err(|_| LedgerError::Corrupt(format!("{what} is not a blob")))?;
    blob.try_into()
        .map_err(|_| LedgerError::Corrupt(format!("{what} has {} bytes, not {N}", blob.len())))
}

fn account_at(row: &Row<'_>, idx: usize) -> Result<AccountName, LedgerError> {
    let name: String = row.get(idx).db()?;
    AccountName::new(name).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

fn account_balance(tx: &Transaction<'_>, name: &AccountName) -> Result<Credits, LedgerError> {
    let balance: Option<i64> = tx
        .prepare_cached("SELECT balance FROM accounts WHERE name = ?1")
        .db()?
        .query_row([name.as_str()], |r| r.get(0))
        .optional()
        .db()?;
    match balance {
        Some(b) => Ok(Credits::new(from_i64(b, "balance")?)),
        None => Err(LedgerError::NotFound(format!("account {name}"))),
    }
}

fn set_balance(
    tx: &Transaction<'_>,
    name: &AccountName,
    balance: Credits,
) -> Result<(), LedgerError> {
    tx.prepare_cached("UPDATE accounts SET balance = ?2 WHERE name = ?1")
        .db()?
        .execute(params![name.as_str(), to_i64(balance.get(), "balance")?])
        .db()?;
    Ok(())
}

struct Movement<'a> {
    account: &'a AccountName,
    kind: Kind,
    amount: Credits,
    deployment: Option<&'a DeploymentId>,
    task: Option<&'a TaskId>,
    at_s: u64,
    counts_as_income: bool,
}

fn journal(tx: &Transaction<'_>, m: &Movement<'_>) -> Result<(), LedgerError> {
    tx.prepare_cached(
        "INSERT INTO journal (account, kind, amount, deployment, task, at_s, counts_as_income)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .db()?
    .execute(params![
        m.account.as_str(),
        m.kind.as_str(),
        to_i64(m.amount.get(), "amount")?,
        m.deployment.map(|d| d.as_bytes().as_slice()),
        m.task.map(|t| t.as_bytes().as_slice()),
        to_i64(m.at_s, "at_s")?,
        m.counts_as_income,
    ])
    .db()?;
    Ok(())
}

fn exists(tx: &Transaction<'_>, sql: &str, key: &dyn rusqlite::ToSql) -> Result<bool, LedgerError> {
    tx.prepare_cached(sql)
        .db()?
        .query_row([key], |_| Ok(()))
        .optional()
        .db()
        .map(|r| r.is_some())
}

fn key_row(row: &Row<'_>) -> Result<KeyRecord, LedgerError> {
    Ok(KeyRecord {
        id: KeyId::from_bytes(bytes_at(row, 0, "key id")?),
        account: account_at(row, 1)?,
        secret_hash: bytes_at(row, 2, "secret hash")?,
        created_at_s: u64_at(row, 3, "created_at_s")?,
        expires_at_s: opt_u64_at(row, 4, "expires_at_s")?,
        revoked_at_s: opt_u64_at(row, 5, "revoked_at_s")?,
    })
}

fn get_key(tx: &Transaction<'_>, id: &KeyId) -> Result<Option<KeyRecord>, LedgerError> {
    let mut stmt = tx
        .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"))
        .db()?;
    let mut rows = stmt.query([id.as_bytes().as_slice()]).db()?;
    rows.next().db()?.map(key_row).transpose()
}

fn deployment_row(row: &Row<'_>) -> Result<DeploymentRecord, LedgerError> {
    let plan: String = row.get(5).db()?;
    let price: String = row.get(6).db()?;
    let verifiability: String = row.get(10).db()?;
    Ok(DeploymentRecord {
        id: DeploymentId::from_bytes(bytes_at(row, 0, "deployment id")?),
        account: account_at(row, 1)?,
        key: KeyId::from_bytes(bytes_at(row, 2, "key id")?),
        model: ModelId::from_bytes(bytes_at(row, 3, "model id")?),
        model_bytes: u64_at(row, 4, "model_bytes")?,
        plan: serde_json::from_str(&plan)
            .map_err(|e| LedgerError::Corrupt(format!("deployment plan: {e}")))?,
        price: serde_json::from_str(&price)
            .map_err(|e| LedgerError::Corrupt(format!("deployment price: {e}")))?,
        allowance_left: Credits::new(u64_at(row, 7, "allowance_left")?),
        created_at_s: u64_at(row, 8, "created_at_s")?,
        stopped_at_s: opt_u64_at(row, 9, "stopped_at_s")?,
        verifiability: serde_json::from_str(&verifiability)
            .map_err(|e| LedgerError::Corrupt(format!("deployment verifiability: {e}")))?,
        updates: u32::try_from(u64_at(row, 11, "updates")?)
            .map_err(|_| LedgerError::Corrupt("deployment updates".into()))?,
        updated_at_s: opt_u64_at(row, 12, "updated_at_s")?,
    })
}

/// The deployments matching `condition` (a fixed SQL expression), oldest first.
fn deployments_where(
    tx: &Transaction<'_>,
    condition: &'static str,
) -> Result<Vec<DeploymentRecord>, LedgerError> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE {condition}
             ORDER BY created_at_s, rowid"
        ))
        .db()?;
    let mut rows = stmt.query([]).db()?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().db()? {
        out.push(deployment_row(row)?);
    }
    Ok(out)
}

/// Returns stopped deployment `d`'s allowance left to its account and clears its refund
/// time; the record after.
fn refund(
    tx: &Transaction<'_>,
    d: DeploymentRecord,
    now_s: u64,
) -> Result<DeploymentRecord, LedgerError> {
    let amount = d.allowance_left;
    if amount > Credits::ZERO {
        let balance = add(account_balance(tx, &d.account)?, amount, "balance")?;
        set_balance(tx, &d.account, balance)?;
        journal(
            tx,
            &Movement {
                account: &d.account,
                kind: Kind::Refund,
                amount,
                deployment: Some(&d.id),
                task: None,
                at_s: now_s,
                counts_as_income: false,
            },
        )?;
    }
    tx.prepare_cached(
        "UPDATE deployments SET allowance_left = 0, refund_at_s = NULL WHERE id = ?1",
    )
    .db()?
    .execute(params![d.id.as_bytes().as_slice()])
    .db()?;
    Ok(DeploymentRecord {
        allowance_left: Credits::ZERO,
        ..d
    })
}

fn get_deployment(
    tx: &Transaction<'_>,
    id: &DeploymentId,
) -> Result<Option<DeploymentRecord>, LedgerError> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"
        ))
        .db()?;
    let mut rows = stmt.query([id.as_bytes().as_slice()]).db()?;
    rows.next().db()?.map(deployment_row).transpose()
}

fn node_row(row: &Row<'_>) -> Result<NodeRecord, LedgerError> {
    let rating: i64 = row.get(1).db()?;
    Ok(NodeRecord {
        id: NodeId::from_bytes(bytes_at(row, 0, "node id")?),
        rating: u8::try_from(rating)
            .map_err(|_| LedgerError::Corrupt(format!("node rating {rating}")))?,
        registered_at_s: u64_at(row, 2, "registered_at_s")?,
        mining_income_usd_micro_per_day: MicroUsd::new(u64_at(row, 3, "mining_income")?),
        crat_micro: MicroCrat::new(u64_at(row, 4, "crat_micro")?),
        streak: u64_at(row, 5, "streak")?,
        uptime_total_s: u64_at(row, 6, "uptime_total_s")?,
    })
}

fn round_node_row(row: &Row<'_>) -> Result<RoundEarnings, LedgerError> {
    let committed: i64 = row.get(4).db()?;
    let rank: Option<i64> = row.get(5).db()?;
    Ok(RoundEarnings {
        index: u64_at(row, 0, "round")?,
        start_s: u64_at(row, 2, "start_s")?,
        uptime_s: u64_at(row, 3, "uptime_s")?,
        committed: committed != 0,
        rank: rank.map(|r| from_i64(r, "rank")).transpose()?,
        guaranteed_usd_micro: MicroUsd::new(u64_at(row, 6, "guaranteed")?),
        bonus_usd_micro: MicroUsd::new(u64_at(row, 7, "bonus")?),
        crat_issued_micro: MicroCrat::new(u64_at(row, 8, "crat_issued")?),
        crat_slashed_micro: MicroCrat::new(u64_at(row, 9, "crat_slashed")?),
        crat_end_micro: MicroCrat::new(u64_at(row, 10, "crat_end")?),
    })
}

fn round_row(row: &Row<'_>) -> Result<RoundRecord, LedgerError> {
    Ok(RoundRecord {
        index: u64_at(row, 0, "round index")?,
        start_s: u64_at(row, 1, "start_s")?,
        length_s: u64_at(row, 2, "length_s")?,
        income_usd_micro: MicroUsd::new(u64_at(row, 3, "income")?),
        carry_out_usd_micro: MicroUsd::new(u64_at(row, 4, "carry_out")?),
        paid_usd_micro: MicroUsd::new(u64_at(row, 5, "paid")?),
        inputs_json: row.get(6).db()?,
        outcome_json: row.get(7).db()?,
    })
}

fn query_rounds(
    tx: &Transaction<'_>,
    sql: &str,
    param: i64,
) -> Result<Vec<RoundRecord>, LedgerError> {
    let mut stmt = tx.prepare_cached(sql).db()?;
    let mut rows = stmt.query([param]).db()?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().db()? {
        out.push(round_row(row)?);
    }
    Ok(out)
}

/// The body of [`Ledger::charge_usage`] and of the charges of [`Ledger::settle_acks`].
fn charge_rows(
    tx: &Transaction<'_>,
    charges: &[UsageCharge],
    charging: Charging,
) -> Result<UsageOutcome, LedgerError> {
    let mut outcome = UsageOutcome::default();
    let mut allowances: HashMap<DeploymentId, Allowance> = HashMap::new();
    let mut pairs = Pairs::default();
    let mut movements = UsageMovements::default();
    for (index, c) in charges.iter().enumerate() {
        let r = &c.record;
        let input_bytes = to_i64(r.input_bytes, "input_bytes")?;
        let output_bytes = to_i64(r.output_bytes, "output_bytes")?;
        let compute_us = to_i64(r.compute_us, "compute_us")?;
        let at_s = to_i64(c.at_s, "at_s")?;
        to_i64(c.cost.get(), "cost")?;
        let allowance = match allowances.entry(r.deployment) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let (account, left) = tx
                    .prepare_cached("SELECT account, allowance_left FROM deployments WHERE id = ?1")
                    .db()?
                    .query_row([r.deployment.as_bytes().as_slice()], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                    })
                    .optional()
                    .db()?
                    .ok_or_else(|| LedgerError::NotFound(format!("deployment {}", r.deployment)))?;
                entry.insert(Allowance {
                    account: AccountName::new(account)
                        .map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                    left: Credits::new(from_i64(left, "allowance_left")?),
                    changed: false,
                })
            }
        };
        if charging == Charging::Records
            && pairs.settled(&r.ticket_nonce, &c.node, || {
                acks::pair(tx, &r.ticket_nonce, &c.node)
            })?
        {
            // The settlement of its acknowledgement charged its work already.
            outcome.duplicates += 1;
            outcome.duplicated.push(index as u32);
            continue;
        }
        let (charge, uncollected) = allowance.split(c.cost);
        let inserted = tx
            .prepare_cached(
                "INSERT INTO usage (task, deployment, key, node, input_bytes,
                         output_bytes, compute_us, charged, uncollected, at_s, inputs_digest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT(deployment, task, inputs_digest) DO NOTHING",
            )
            .db()?
            .execute(params![
                r.task.as_bytes().as_slice(),
                r.deployment.as_bytes().as_slice(),
                r.key.as_bytes().as_slice(),
                c.node.as_bytes().as_slice(),
                input_bytes,
                output_bytes,
                compute_us,
                to_i64(charge.get(), "charge")?,
                to_i64(uncollected.get(), "uncollected")?,
                at_s,
                r.inputs_digest.as_slice(),
            ])
            .db()?;
        if inserted == 0 {
            outcome.duplicates += 1;
            outcome.duplicated.push(index as u32);
            continue;
        }
        if charging == Charging::Records {
            pairs.count(c, || acks::pair(tx, &c.record.ticket_nonce, &c.node))?;
        }
        outcome.accepted += 1;
        outcome.charged = add(outcome.charged, charge, "charged")?;
        outcome.uncollected = outcome.uncollected.saturating_add(uncollected);
        allowance.take(charge);
        movements.add(c.at_s, r.deployment, &allowance.account, charge)?;
    }
    acks::write_charged(tx, pairs)?;
    for (at_s, deployment, account, amount) in movements.iter() {
        journal(
            tx,
            &Movement {
                account,
                kind: Kind::Usage,
                amount,
                deployment: Some(deployment),
                task: None,
                at_s,
                counts_as_income: true,
            },
        )?;
    }
    for (id, allowance) in &allowances {
        if allowance.changed {
            tx.prepare_cached("UPDATE deployments SET allowance_left = ?2 WHERE id = ?1")
                .db()?
                .execute(params![
                    id.as_bytes().as_slice(),
                    to_i64(allowance.left.get(), "allowance_left")?
                ])
                .db()?;
        }
    }
    Ok(outcome)
}

impl Ledger for SqliteLedger {
    fn create_account(&self, name: &AccountName, now_s: u64) -> Result<(), LedgerError> {
        self.write(|tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO accounts (name, balance, created_at_s) VALUES (?1, 0, ?2)
                     ON CONFLICT(name) DO NOTHING",
                )
                .db()?
                .execute(params![name.as_str(), to_i64(now_s, "now_s")?])
                .db()?;
            if inserted == 0 {
                return Err(LedgerError::Exists(format!("account {name}")));
            }
            Ok(())
        })
    }

    fn grant(
        &self,
        name: &AccountName,
        credits: Credits,
        now_s: u64,
    ) -> Result<Credits, LedgerError> {
        to_i64(credits.get(), "grant")?;
        self.write(|tx| {
            let balance = add(account_balance(tx, name)?, credits, "balance")?;
            set_balance(tx, name, balance)?;
            journal(
                tx,
                &Movement {
                    account: name,
                    kind: Kind::Grant,
                    amount: credits,
                    deployment: None,
                    task: None,
                    at_s: now_s,
                    counts_as_income: false,
                },
            )?;
            Ok(balance)
        })
    }

    fn balance(&self, name: &AccountName) -> Result<Credits, LedgerError> {
        self.read(|tx| account_balance(tx, name))
    }

    fn insert_key(&self, key: &KeyRecord) -> Result<(), LedgerError> {
        self.write(|tx| {
            account_balance(tx, &key.account)?;
            let inserted = tx
                .prepare_cached(&format!(
                    "INSERT INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(id) DO NOTHING"
                ))
                .db()?
                .execute(params![
                    key.id.as_bytes().as_slice(),
                    key.account.as_str(),
                    key.secret_hash.as_slice(),
                    to_i64(key.created_at_s, "created_at_s")?,
                    opt_to_i64(key.expires_at_s, "expires_at_s")?,
                    opt_to_i64(key.revoked_at_s, "revoked_at_s")?,
                ])
                .db()?;
            if inserted == 0 {
                return Err(LedgerError::Exists(format!("key {}", key.id)));
            }
            Ok(())
        })
    }

    fn key(&self, id: &KeyId) -> Result<Option<KeyRecord>, LedgerError> {
        self.read(|tx| get_key(tx, id))
    }

    fn keys(&self, account: &AccountName) -> Result<Vec<KeyRecord>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE account = ?1
                     ORDER BY created_at_s, rowid"
                ))
                .db()?;
            let mut rows = stmt.query([account.as_str()]).db()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().db()? {
                out.push(key_row(row)?);
            }
            Ok(out)
        })
    }

    fn revoke_key(&self, id: &KeyId, now_s: u64) -> Result<KeyRecord, LedgerError> {
        let now = to_i64(now_s, "now_s")?;
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE keys SET revoked_at_s = ?2 WHERE id = ?1 AND revoked_at_s IS NULL",
            )
            .db()?
            .execute(params![id.as_bytes().as_slice(), now])
            .db()?;
            get_key(tx, id)?.ok_or_else(|| LedgerError::NotFound(format!("key {id}")))
        })
    }

    fn insert_model(&self, model: &ModelRecord) -> Result<(), LedgerError> {
        self.write(|tx| {
            account_balance(tx, &model.account)?;
            let signature = signature_json(model.signature.as_ref())?;
            tx.prepare_cached(
                "INSERT INTO models (id, bytes, account, stored_at_s, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET signature = coalesce(signature, excluded.signature)",
            )
            .db()?
            .execute(params![
                model.id.as_bytes().as_slice(),
                to_i64(model.bytes, "model bytes")?,
                model.account.as_str(),
                to_i64(model.stored_at_s, "stored_at_s")?,
                signature,
            ])
            .db()?;
            tx.prepare_cached(
                "INSERT INTO model_owners (model, account, since_s) VALUES (?1, ?2, ?3)
                 ON CONFLICT(model, account) DO NOTHING",
            )
            .db()?
            .execute(params![
                model.id.as_bytes().as_slice(),
                model.account.as_str(),
                to_i64(model.stored_at_s, "stored_at_s")?,
            ])
            .db()?;
            Ok(())
        })
    }

    fn may_use_model(&self, model: &ModelId, account: &AccountName) -> Result<bool, LedgerError> {
        self.read(|tx| {
            tx.prepare_cached(
                "SELECT 1 FROM models WHERE id = ?1 AND (public = 1 OR EXISTS
                    (SELECT 1 FROM model_owners WHERE model = ?1 AND account = ?2))",
            )
            .db()?
            .exists(params![model.as_bytes().as_slice(), account.as_str()])
            .db()
        })
    }

    fn set_model_public(
        &self,
        model: &ModelId,
        account: &AccountName,
        public: bool,
    ) -> Result<(), LedgerError> {
        self.write(|tx| {
            let owner = tx
                .prepare_cached("SELECT 1 FROM model_owners WHERE model = ?1 AND account = ?2")
                .db()?
                .exists(params![model.as_bytes().as_slice(), account.as_str()])
                .db()?;
            if !owner {
                return Err(LedgerError::NotFound(format!(
                    "model {model} of account {}",
                    account.as_str()
                )));
            }
            tx.prepare_cached("UPDATE models SET public = ?2 WHERE id = ?1")
                .db()?
                .execute(params![model.as_bytes().as_slice(), i64::from(public)])
                .db()?;
            Ok(())
        })
    }

    fn model(&self, id: &ModelId) -> Result<Option<ModelRecord>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, bytes, account, stored_at_s, signature FROM models WHERE id = ?1",
                )
                .db()?;
            let mut rows = stmt.query([id.as_bytes().as_slice()]).db()?;
            let Some(row) = rows.next().db()? else {
                return Ok(None);
            };
            let signature: Option<String> = row.get(4).db()?;
            Ok(Some(ModelRecord {
                id: ModelId::from_bytes(bytes_at(row, 0, "model id")?),
                bytes: u64_at(row, 1, "model bytes")?,
                account: account_at(row, 2)?,
                stored_at_s: u64_at(row, 3, "stored_at_s")?,
                signature: signature
                    .map(|j| serde_json::from_str(&j))
                    .transpose()
                    .map_err(|e| LedgerError::Corrupt(format!("model signature: {e}")))?,
            }))
        })
    }

    fn set_model_signature(
        &self,
        id: &ModelId,
        signature: &ModelSignature,
    ) -> Result<(), LedgerError> {
        let json = signature_json(Some(signature))?;
        self.write(|tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE models SET signature = coalesce(signature, ?2) WHERE id = ?1",
                )
                .db()?
                .execute(params![id.as_bytes().as_slice(), json])
                .db()?;
            if changed == 0 {
                return Err(LedgerError::NotFound(format!("model {id}")));
            }
            Ok(())
        })
    }

    fn create_deployment(&self, d: &DeploymentRecord) -> Result<Credits, LedgerError> {
        let upfront = d.price.upfront;
        to_i64(upfront.get(), "price.upfront")?;
        let per_instance = match d.plan {
            DeployPlan::PerInstance(_) => true,
            DeployPlan::PerRequest(_) => false,
        };
        let allowance = if per_instance { Credits::ZERO } else { upfront };
        if d.allowance_left != allowance {
            return Err(LedgerError::Invalid(format!(
                "a new deployment's allowance_left must be {allowance} (the up-front price of a \
                 per-request plan, 0 for a per-instance plan), not {}",
                d.allowance_left
            )));
        }
        if d.stopped_at_s.is_some() || d.updates != 0 || d.updated_at_s.is_some() {
            return Err(LedgerError::Invalid(
                "a new deployment cannot be stopped or updated already".into(),
            ));
        }
        let plan = serde_json::to_string(&d.plan)
            .map_err(|e| LedgerError::Invalid(format!("plan: {e}")))?;
        let price = serde_json::to_string(&d.price)
            .map_err(|e| LedgerError::Invalid(format!("price: {e}")))?;
        let verifiability = serde_json::to_string(&d.verifiability)
            .map_err(|e| LedgerError::Invalid(format!("verifiability: {e}")))?;
        self.write(|tx| {
            if exists(
                tx,
                "SELECT 1 FROM deployments WHERE id = ?1",
                &d.id.as_bytes().as_slice(),
            )? {
                return Err(LedgerError::Exists(format!("deployment {}", d.id)));
            }
            let balance = account_balance(tx, &d.account)?;
            match get_key(tx, &d.key)? {
                None => return Err(LedgerError::NotFound(format!("key {}", d.key))),
                Some(key) if key.account != d.account => {
                    return Err(LedgerError::Invalid(format!(
                        "key {} belongs to account {}, not {}",
                        d.key, key.account, d.account
                    )));
                }
                Some(_) => {}
            }
            if !exists(
                tx,
                "SELECT 1 FROM models WHERE id = ?1",
                &d.model.as_bytes().as_slice(),
            )? {
                return Err(LedgerError::NotFound(format!("model {}", d.model)));
            }
            let after = balance
                .checked_sub(upfront)
                .ok_or(LedgerError::InsufficientCredits {
                    balance,
                    needed: upfront,
                })?;
            set_balance(tx, &d.account, after)?;
            tx.prepare_cached(&format!(
                "INSERT INTO deployments ({DEPLOYMENT_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10, 0, NULL)"
            ))
            .db()?
            .execute(params![
                d.id.as_bytes().as_slice(),
                d.account.as_str(),
                d.key.as_bytes().as_slice(),
                d.model.as_bytes().as_slice(),
                to_i64(d.model_bytes, "model_bytes")?,
                plan,
                price,
                to_i64(allowance.get(), "allowance")?,
                to_i64(d.created_at_s, "created_at_s")?,
                verifiability,
            ])
            .db()?;
            journal(
                tx,
                &Movement {
                    account: &d.account,
                    kind: Kind::Deploy,
                    amount: upfront,
                    deployment: Some(&d.id),
                    task: None,
                    at_s: d.created_at_s,
                    counts_as_income: per_instance,
                },
            )?;
            Ok(after)
        })
    }

    fn deployment(&self, id: &DeploymentId) -> Result<Option<DeploymentRecord>, LedgerError> {
        self.read(|tx| get_deployment(tx, id))
    }

    fn active_deployments(&self) -> Result<Vec<DeploymentRecord>, LedgerError> {
        self.read(|tx| deployments_where(tx, "stopped_at_s IS NULL"))
    }

    fn stop_deployment(
        &self,
        id: &DeploymentId,
        now_s: u64,
        refund_at_s: u64,
    ) -> Result<DeploymentRecord, LedgerError> {
        let now = to_i64(now_s, "now_s")?;
        let refund_at = to_i64(refund_at_s, "refund_at_s")?;
        self.write(|tx| {
            let d = get_deployment(tx, id)?
                .ok_or_else(|| LedgerError::NotFound(format!("deployment {id}")))?;
            if d.stopped_at_s.is_some() {
                return Ok(d);
            }
            tx.prepare_cached(
                "UPDATE deployments SET stopped_at_s = ?2, refund_at_s = ?3 WHERE id = ?1",
            )
            .db()?
            .execute(params![id.as_bytes().as_slice(), now, refund_at])
            .db()?;
            let stopped = DeploymentRecord {
                stopped_at_s: Some(now_s),
                ..d
            };
            if refund_at_s <= now_s {
                return refund(tx, stopped, now_s);
            }
            Ok(stopped)
        })
    }

    fn update_deployment_model(&self, u: &ModelUpdate) -> Result<DeploymentRecord, LedgerError> {
        let at = to_i64(u.at_s, "at_s")?;
        let verifiability = serde_json::to_string(&u.verifiability)
            .map_err(|e| LedgerError::Invalid(format!("verifiability: {e}")))?;
        self.write(|tx| {
            let d = get_deployment(tx, &u.deployment)?
                .ok_or_else(|| LedgerError::NotFound(format!("deployment {}", u.deployment)))?;
            if d.stopped_at_s.is_some() {
                return Err(LedgerError::NotFound(format!(
                    "deployment {} is stopped",
                    u.deployment
                )));
            }
            if u.seq != d.updates.saturating_add(1) || u.previous != d.model {
                return Err(LedgerError::Invalid(format!(
                    "update {} of {} from model {} does not follow the stored state (update {}, \
                     model {})",
                    u.seq,
                    u.deployment,
                    u.previous,
                    d.updates.saturating_add(1),
                    d.model
                )));
            }
            if !exists(
                tx,
                "SELECT 1 FROM models WHERE id = ?1",
                &u.model.as_bytes().as_slice(),
            )? {
                return Err(LedgerError::NotFound(format!("model {}", u.model)));
            }
            let left = d.allowance_left.checked_sub(u.charged).ok_or(
                LedgerError::InsufficientCredits {
                    balance: d.allowance_left,
                    needed: u.charged,
                },
            )?;
            tx.prepare_cached(
                "UPDATE deployments SET model = ?2, model_bytes = ?3, verifiability = ?4,
                 allowance_left = ?5, updates = ?6, updated_at_s = ?7 WHERE id = ?1",
            )
            .db()?
            .execute(params![
                u.deployment.as_bytes().as_slice(),
                u.model.as_bytes().as_slice(),
                to_i64(u.model_bytes, "model_bytes")?,
                verifiability,
                to_i64(left.get(), "allowance_left")?,
                i64::from(u.seq),
                at,
            ])
            .db()?;
            tx.prepare_cached(
                "INSERT INTO model_updates
                 (deployment, seq, previous, model, model_bytes, verifiability, charged, at_s)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .db()?
            .execute(params![
                u.deployment.as_bytes().as_slice(),
                i64::from(u.seq),
                u.previous.as_bytes().as_slice(),
                u.model.as_bytes().as_slice(),
                to_i64(u.model_bytes, "model_bytes")?,
                verifiability,
                to_i64(u.charged.get(), "charged")?,
                at,
            ])
            .db()?;
            if u.charged > Credits::ZERO {
                journal(
                    tx,
                    &Movement {
                        account: &d.account,
                        kind: Kind::Update,
                        amount: u.charged,
                        deployment: Some(&u.deployment),
                        task: None,
                        at_s: u.at_s,
                        counts_as_income: true,
                    },
                )?;
            }
            Ok(DeploymentRecord {
                model: u.model,
                model_bytes: u.model_bytes,
                verifiability: u.verifiability,
                allowance_left: left,
                updates: u.seq,
                updated_at_s: Some(u.at_s),
                ..d
            })
        })
    }

    fn model_updates(&self, id: &DeploymentId) -> Result<Vec<ModelUpdate>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, previous, model, model_bytes, verifiability, charged, at_s
                     FROM model_updates WHERE deployment = ?1 ORDER BY seq",
                )
                .db()?;
            let mut rows = stmt.query([id.as_bytes().as_slice()]).db()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().db()? {
                let verifiability: String = row.get(4).db()?;
                out.push(ModelUpdate {
                    deployment: *id,
                    seq: u32::try_from(u64_at(row, 0, "seq")?)
                        .map_err(|_| LedgerError::Corrupt("update seq".into()))?,
                    previous: ModelId::from_bytes(bytes_at(row, 1, "model id")?),
                    model: ModelId::from_bytes(bytes_at(row, 2, "model id")?),
                    model_bytes: u64_at(row, 3, "model_bytes")?,
                    verifiability: serde_json::from_str(&verifiability)
                        .map_err(|e| LedgerError::Corrupt(format!("update verifiability: {e}")))?,
                    charged: Credits::new(u64_at(row, 5, "charged")?),
                    at_s: u64_at(row, 6, "at_s")?,
                });
            }
            Ok(out)
        })
    }

    fn refund_stopped(&self, now_s: u64, limit: u32) -> Result<Vec<DeploymentRecord>, LedgerError> {
        let now = to_i64(now_s, "now_s")?;
        self.write(|tx| {
            let due: Vec<Vec<u8>> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id FROM deployments WHERE refund_at_s IS NOT NULL AND refund_at_s <= ?1
                         ORDER BY refund_at_s, rowid LIMIT ?2",
                    )
                    .db()?;
                let rows = stmt
                    .query_map(params![now, i64::from(limit)], |row| row.get(0))
                    .db()?;
                rows.collect::<Result<_, _>>().db()?
            };
            let mut out = Vec::with_capacity(due.len());
            for id in due {
                let id = DeploymentId::from_bytes(
                    id.try_into()
                        .map_err(|_| LedgerError::Corrupt("deployment id".into()))?,
                );
                let d = get_deployment(tx, &id)?
                    .ok_or_else(|| LedgerError::Corrupt(format!("deployment {id}")))?;
                out.push(refund(tx, d, now_s)?);
            }
            Ok(out)
        })
    }

    fn stopping_deployments(&self) -> Result<Vec<DeploymentRecord>, LedgerError> {
        self.read(|tx| deployments_where(tx, "refund_at_s IS NOT NULL"))
    }

    fn charge_usage(&self, charges: &[UsageCharge]) -> Result<UsageOutcome, LedgerError> {
        self.write(|tx| charge_rows(tx, charges, Charging::Records))
    }

    fn store_acks(&self, records: &[AckRecord]) -> Result<Vec<Option<StoredAck>>, LedgerError> {
        self.write(|tx| records.iter().map(|r| acks::store(tx, r)).collect())
    }

    fn unsettled_acks(&self, limit: u32) -> Result<Vec<StoredAck>, LedgerError> {
        self.read(|tx| acks::unsettled(tx, None, limit))
    }

    fn settle_acks(
        &self,
        now_s: u64,
        limit: u32,
        charge_of: &mut dyn FnMut(&StoredAck) -> Option<UsageCharge>,
    ) -> Result<AckSettlement, LedgerError> {
        self.write(|tx| {
            let due = acks::unsettled(tx, Some(now_s), limit)?;
            let charges: Vec<UsageCharge> = due.iter().filter_map(&mut *charge_of).collect();
            let outcome = charge_rows(tx, &charges, Charging::Settlement)?;
            for a in &due {
                acks::mark_settled(tx, a, now_s)?;
            }
            Ok(AckSettlement {
                settled: u32::try_from(due.len()).unwrap_or(u32::MAX),
                charges,
                outcome,
            })
        })
    }

    fn usage(
        &self,
        deployment: &DeploymentId,
        task: &TaskId,
    ) -> Result<Vec<UsageRow>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT task, deployment, node, charged, uncollected, at_s, inputs_digest
                     FROM usage WHERE deployment = ?1 AND task = ?2
                     ORDER BY at_s, inputs_digest LIMIT ?3",
                )
                .db()?;
            let mut rows = stmt
                .query(params![
                    deployment.as_bytes().as_slice(),
                    task.as_bytes().as_slice(),
                    USAGE_ROWS_PER_TASK_MAX as i64
                ])
                .db()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().db()? {
                out.push(UsageRow {
                    task: TaskId::from_bytes(bytes_at(row, 0, "task id")?),
                    deployment: DeploymentId::from_bytes(bytes_at(row, 1, "deployment id")?),
                    node: NodeId::from_bytes(bytes_at(row, 2, "node id")?),
                    charged: Credits::new(u64_at(row, 3, "charged")?),
                    uncollected: Credits::new(u64_at(row, 4, "uncollected")?),
                    at_s: u64_at(row, 5, "at_s")?,
                    inputs_digest: bytes_at(row, 6, "inputs digest")?,
                });
            }
            Ok(out)
        })
    }

    fn usage_known(
        &self,
        keys: &[(DeploymentId, TaskId, [u8; 32])],
    ) -> Result<Vec<bool>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT 1 FROM usage WHERE deployment = ?1 AND task = ?2 AND inputs_digest = ?3",
                )
                .db()?;
            keys.iter()
                .map(|(d, t, digest)| {
                    stmt.exists(params![
                        d.as_bytes().as_slice(),
                        t.as_bytes().as_slice(),
                        digest.as_slice()
                    ])
                    .db()
                })
                .collect()
        })
    }

    fn usage_totals(&self, deployment: &DeploymentId) -> Result<(u64, Credits), LedgerError> {
        self.read(|tx| {
            let (count, charged): (i64, i64) = tx
                .prepare_cached(
                    "SELECT COUNT(*), COALESCE(SUM(charged), 0) FROM usage WHERE deployment = ?1",
                )
                .db()?
                .query_row([deployment.as_bytes().as_slice()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .db()?;
            Ok((
                from_i64(count, "count")?,
                Credits::new(from_i64(charged, "charged")?),
            ))
        })
    }

    fn upsert_node(&self, node: &NodeRecord) -> Result<(), LedgerError> {
        if !(1..=5).contains(&node.rating) {
            return Err(LedgerError::Invalid(format!(
                "node rating {} is outside 1..=5",
                node.rating
            )));
        }
        self.write(|tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET
                     rating = excluded.rating, mining_income = excluded.mining_income"
            ))
            .db()?
            .execute(params![
                node.id.as_bytes().as_slice(),
                i64::from(node.rating),
                to_i64(node.registered_at_s, "registered_at_s")?,
                to_i64(node.mining_income_usd_micro_per_day.get(), "mining income")?,
                to_i64(node.crat_micro.get(), "crat_micro")?,
                to_i64(node.streak, "streak")?,
                to_i64(node.uptime_total_s, "uptime_total_s")?,
            ])
            .db()?;
            Ok(())
        })
    }

    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, LedgerError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"))
                .db()?;
            let mut rows = stmt.query([id.as_bytes().as_slice()]).db()?;
            rows.next().db()?.map(node_row).transpose()
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, LedgerError> {
        self.read(|tx| {
            // BLOB order is byte order, which is `NodeId`'s order.
            let mut stmt = tx
                .prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))
                .db()?;
            let mut rows = stmt.query([]).db()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().db()? {
                out.push(node_row(row)?);
            }
            Ok(out)
        })
    }

    fn round_nodes(&self, from_s: u64, to_s: u64) -> Result<Vec<NodeRecord>, LedgerError> {
        let from = i64::try_from(from_s).unwrap_or(i64::MAX);
        let to = i64::try_from(to_s).unwrap_or(i64::MAX);
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {NODE_COLUMNS} FROM nodes WHERE registered_at_s < ?2 AND id IN (
                         SELECT node FROM sessions WHERE end_s > ?1 AND start_s < ?2
                         UNION SELECT node FROM validations WHERE at_s >= ?1 AND at_s < ?2
                         UNION SELECT id FROM nodes WHERE streak > 0
                     ) ORDER BY id"
                ))
                .db()?;
            let mut rows = stmt.query([from, to]).db()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().db()? {
                out.push(node_row(row)?);
            }
            Ok(out)
        })
    }

    fn forget_idle_nodes(&self, before_s: u64, limit: u32) -> Result<u64, LedgerError> {
        let before = i64::try_from(before_s).unwrap_or(i64::MAX);
        self.write(|tx| {
            let ids: Vec<Vec<u8>> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id FROM nodes n
                         WHERE crat_micro = 0 AND streak = 0 AND registered_at_s < ?1
                           AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.node = n.id AND s.end_s >= ?1)
                           AND NOT EXISTS (SELECT 1 FROM validations v WHERE v.node = n.id AND v.at_s >= ?1)
                         LIMIT ?2",
                    )
                    .db()?;
                let rows = stmt
                    .query_map(params![before, i64::from(limit)], |r| r.get(0))
                    .db()?;
                rows.collect::<Result<_, _>>().db()?
            };
            for id in &ids {
                tx.prepare_cached("DELETE FROM sessions WHERE node = ?1")
                    .db()?
                    .execute([id])
                    .db()?;
                tx.prepare_cached("DELETE FROM validations WHERE node = ?1")
                    .db()?
                    .execute([id])
                    .db()?;
                tx.prepare_cached("DELETE FROM nodes WHERE id = ?1")
                    .db()?
                    .execute([id])
                    .db()?;
            }
            Ok(ids.len() as u64)
        })
    }

    fn record_online(
        &self,
        node: &NodeId,
        session_start_s: u64,
        end_s: u64,
    ) -> Result<(), LedgerError> {
        self.write_session(node, session_start_s, end_s, RECORD_ONLINE)
    }

    fn record_online_many(&self, sessions: &[(NodeId, u64, u64)]) -> Result<u32, LedgerError> {
        let rows = session_rows(sessions)?;
        self.write(|tx| {
            let mut record = tx.prepare_cached(RECORD_ONLINE_KNOWN).db()?;
            let mut skipped = 0u32;
            for (node, start, end) in &rows {
                // No row changed: the ledger does not hold the node.
                let changed = record
                    .execute(params![node.as_bytes().as_slice(), start, end])
                    .db()?;
                if changed == 0 {
                    skipped += 1;
                }
            }
            Ok(skipped)
        })
    }

    fn cut_online(
        &self,
        node: &NodeId,
        session_start_s: u64,
        end_s: u64,
    ) -> Result<(), LedgerError> {
        self.write_session(
            node,
            session_start_s,
            end_s,
            "INSERT INTO sessions (node, start_s, end_s, cut_s) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(node, start_s) DO UPDATE
             SET end_s = min(end_s, excluded.end_s),
                 cut_s = min(coalesce(cut_s, excluded.cut_s), excluded.cut_s)",
        )
    }

    fn online_sessions(
        &self,
        node: &NodeId,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<Interval>, LedgerError> {
        // Times above i64::MAX are never stored, so clamping the window loses nothing.
        let from = i64::try_from(from_s).unwrap_or(i64::MAX);
        let to = i64::try_from(to_s).unwrap_or(i64::MAX);
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT start_s, end_s FROM sessions
                     WHERE node = ?1 AND start_s < ?3 AND end_s > ?2
                     ORDER BY start_s",
                )
                .db()?;
            let mut rows = stmt
                .query(params![node.as_bytes().as_slice(), from, to])
                .db()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().db()? {
                out.push(Interval::new(
                    u64_at(row, 0, "start_s")?,
                    u64_at(row, 1, "end_s")?,
                ));
            }
            Ok(out)
        })
    }

    fn record_validation(&self, node: &NodeId, ok: bool, at_s: u64) -> Result<(), LedgerError> {
        let at = to_i64(at_s, "at_s")?;
        self.write(|tx| {
            if !exists(
                tx,
                "SELECT 1 FROM nodes WHERE id = ?1",
                &node.as_bytes().as_slice(),
            )? {
                return Err(LedgerError::NotFound(format!("node {node}")));
            }
            tx.prepare_cached(
                "INSERT INTO validations (node, at_s, ok, failed) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(node, at_s) DO UPDATE SET
                     ok = ok + excluded.ok, failed = failed + excluded.failed",
            )
            .db()?
            .execute(params![
                node.as_bytes().as_slice(),
                at,
                i64::from(ok),
                i64::from(!ok)
            ])
            .db()?;
            Ok(())
        })
    }

    fn validations(
        &self,
        node: &NodeId,
        from_s: u64,
        to_s: u64,
    ) -> Result<(u64, u64), LedgerError> {
        let from = i64::try_from(from_s).unwrap_or(i64::MAX);
        let to = i64::try_from(to_s).unwrap_or(i64::MAX);
        self.read(|tx| {
            let (ok, failed): (i64, i64) = tx
                .prepare_cached(
                    "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(failed), 0) FROM validations
                     WHERE node = ?1 AND at_s >= ?2 AND at_s < ?3",
                )
                .db()?
                .query_row(params![node.as_bytes().as_slice(), from, to], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .db()?;
            Ok((from_i64(ok, "ok")?, from_i64(failed, "failed")?))
        })
    }

    fn node_rounds(&self, node: &NodeId, limit: u32) -> Result<Vec<RoundEarnings>, LedgerError> {
        let limit = i64::from(limit.min(NODE_ROUNDS_MAX));
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {ROUND_NODE_COLUMNS} FROM round_nodes WHERE node = ?1
                     ORDER BY round DESC LIMIT ?2"
                ))
                .db()?;
            let mut rows = stmt
                .query(params![node.as_bytes().as_slice(), limit])
                .db()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().db()? {
                out.push(round_node_row(row)?);
            }
            Ok(out)
        })
    }

    fn tasks_served(&self, node: &NodeId, from_s: u64, to_s: u64) -> Result<u64, LedgerError> {
        let from = i64::try_from(from_s).unwrap_or(i64::MAX);
        let to = i64::try_from(to_s).unwrap_or(i64::MAX);
        self.read(|tx| {
            let n: i64 = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM usage WHERE node = ?1 AND at_s >= ?2 AND at_s < ?3",
                )
                .db()?
                .query_row(params![node.as_bytes().as_slice(), from, to], |r| r.get(0))
                .db()?;
            from_i64(n, "tasks served")
        })
    }

    fn income(&self, from_s: u64, to_s: u64) -> Result<Credits, LedgerError> {
        let from = i64::try_from(from_s).unwrap_or(i64::MAX);
        let to = i64::try_from(to_s).unwrap_or(i64::MAX);
        self.read(|tx| {
            let sum: i64 = tx
                .prepare_cached(
                    "SELECT COALESCE(SUM(amount), 0) FROM journal
                     WHERE counts_as_income = 1 AND at_s >= ?1 AND at_s < ?2",
                )
                .db()?
                .query_row([from, to], |r| r.get(0))
                .map_err(|e| match e {
                    // SQLite's SUM refuses to wrap: an integer overflow is an error.
                    rusqlite::Error::SqliteFailure(_, Some(msg)) if msg.contains("overflow") => {
                        LedgerError::Overflow("income")
                    }
                    e => LedgerError::Database(e.to_string()),
                })?;
            Ok(Credits::new(from_i64(sum, "income")?))
        })
    }

    fn close_round(&self, round: &RoundRecord, outcome: &RoundOutcome) -> Result<(), LedgerError> {
        let idx = to_i64(round.index, "round index")?;
        self.write(|tx| {
            let inserted = tx
                .prepare_cached(&format!(
                    "INSERT INTO rounds ({ROUND_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(idx) DO NOTHING"
                ))
                .db()?
                .execute(params![
                    idx,
                    to_i64(round.start_s, "start_s")?,
                    to_i64(round.length_s, "length_s")?,
                    to_i64(round.income_usd_micro.get(), "income")?,
                    to_i64(round.carry_out_usd_micro.get(), "carry_out")?,
                    to_i64(round.paid_usd_micro.get(), "paid")?,
                    round.inputs_json,
                    round.outcome_json,
                ])
                .db()?;
            if inserted == 0 {
                return Err(LedgerError::Exists(format!("round {}", round.index)));
            }
            let mut update = tx
                .prepare_cached(
                    "UPDATE nodes SET crat_micro = ?2, streak = ?3, uptime_total_s = ?4
                     WHERE id = ?1",
                )
                .db()?;
            let mut earned = tx
                .prepare_cached(&format!(
                    "INSERT INTO round_nodes ({ROUND_NODE_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ))
                .db()?;
            for n in &outcome.nodes {
                earned
                    .execute(params![
                        idx,
                        n.id.as_bytes().as_slice(),
                        to_i64(round.start_s, "start_s")?,
                        to_i64(n.uptime_s, "uptime_s")?,
                        i64::from(n.committed),
                        n.rank.map(|r| to_i64(r, "rank")).transpose()?,
                        to_i64(n.guaranteed_usd_micro.get(), "guaranteed_usd_micro")?,
                        to_i64(n.bonus_usd_micro.get(), "bonus_usd_micro")?,
                        to_i64(n.crat_issued_micro.get(), "crat_issued_micro")?,
                        to_i64(n.crat_slashed_micro.get(), "crat_slashed_micro")?,
                        to_i64(n.crat_end_micro.get(), "crat_end_micro")?,
                    ])
                    .db()?;
                let changed = update
                    .execute(params![
                        n.id.as_bytes().as_slice(),
                        to_i64(n.crat_end_micro.get(), "crat_end_micro")?,
                        to_i64(n.streak_end, "streak_end")?,
                        to_i64(n.uptime_total_s, "uptime_total_s")?,
                    ])
                    .db()?;
                if changed == 0 {
                    return Err(LedgerError::NotFound(format!(
                        "node {} of round {}",
                        n.id, round.index
                    )));
                }
            }
            Ok(())
        })
    }

    fn latest_time_s(&self) -> Result<u64, LedgerError> {
        self.read(|tx| {
            // Each part reads an index (income, the journal's newest row, the newest round)
            // except the sessions, scanned once per start.
            let latest: i64 = tx
                .query_row(
                    "SELECT MAX(
                        COALESCE((SELECT MAX(at_s) FROM journal WHERE counts_as_income = 1), 0),
                        COALESCE((SELECT at_s FROM journal ORDER BY id DESC LIMIT 1), 0),
                        COALESCE((SELECT MAX(end_s) FROM sessions), 0),
                        COALESCE((SELECT start_s + length_s FROM rounds ORDER BY idx DESC LIMIT 1), 0)
                     )",
                    [],
                    |r| r.get(0),
                )
                .db()?;
            from_i64(latest, "latest time")
        })
    }

    fn last_round(&self) -> Result<Option<RoundRecord>, LedgerError> {
        self.read(|tx| {
            let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds ORDER BY idx DESC LIMIT ?1");
            Ok(query_rounds(tx, &sql, 1)?.pop())
        })
    }

    fn round(&self, index: u64) -> Result<Option<RoundRecord>, LedgerError> {
        let Ok(idx) = i64::try_from(index) else {
            return Ok(None);
        };
        self.read(|tx| {
            let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds WHERE idx = ?1");
            Ok(query_rounds(tx, &sql, idx)?.pop())
        })
    }

    fn rounds(&self, limit: u32) -> Result<Vec<RoundRecord>, LedgerError> {
        self.read(|tx| {
            let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds ORDER BY idx DESC LIMIT ?1");
            query_rounds(tx, &sql, i64::from(limit))
        })
    }

    fn unsettled_rounds(&self, limit: u32) -> Result<Vec<u64>, LedgerError> {
        let limit = i64::from(limit.min(UNSETTLED_ROUNDS_MAX));
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT idx FROM rounds WHERE settled_at_s IS NULL ORDER BY idx LIMIT ?1",
                )
                .db()?;
            let rows = stmt
                .query_map([limit], |r| r.get::<_, i64>(0))
                .db()?
                .collect::<Result<Vec<_>, _>>()
                .db()?;
            rows.into_iter()
                .map(|i| from_i64(i, "round index"))
                .collect()
        })
    }

    fn mark_round_settled(
        &self,
        index: u64,
        settlement: &RoundSettlement,
    ) -> Result<RoundSettlement, LedgerError> {
        let idx = to_i64(index, "round index")?;
        let at = to_i64(settlement.settled_at_s, "settled_at_s")?;
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE rounds SET settled_at_s = ?2, settlement_digest = ?3
                 WHERE idx = ?1 AND settled_at_s IS NULL",
            )
            .db()?
            .execute(params![
                idx,
                at,
                settlement.digest.as_ref().map(|d| d.as_slice())
            ])
            .db()?;
            read_settlement(tx, index)?.ok_or_else(|| {
                LedgerError::Corrupt(format!("round {index} is not settled after settling it"))
            })
        })
    }

    fn round_settlement(&self, index: u64) -> Result<Option<RoundSettlement>, LedgerError> {
        self.read(|tx| read_settlement(tx, index))
    }

    /// A SQLite file belongs to one dispatcher: it always leads.
    fn lead_rounds(&self) -> Result<bool, LedgerError> {
        Ok(true)
    }

    fn resign_rounds(&self) {}

    fn announce_active(&self, _addr: &PeerAddr) -> Result<(), LedgerError> {
        Ok(())
    }

    fn active_dispatcher(&self) -> Result<Option<PeerAddr>, LedgerError> {
        Ok(None)
    }
}

/// Round `index`'s settlement: `None` while unsettled, [`LedgerError::NotFound`] when the
/// round is not closed.
fn read_settlement(
    tx: &Transaction<'_>,
    index: u64,
) -> Result<Option<RoundSettlement>, LedgerError> {
    let not_found = || LedgerError::NotFound(format!("round {index}"));
    let Ok(idx) = i64::try_from(index) else {
        return Err(not_found());
    };
    let row: Option<(Option<i64>, Option<Vec<u8>>)> = tx
        .prepare_cached("SELECT settled_at_s, settlement_digest FROM rounds WHERE idx = ?1")
        .db()?
        .query_row([idx], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .db()?;
    let (at, digest) = row.ok_or_else(not_found)?;
    let Some(at) = at else {
        return Ok(None);
    };
    let digest = digest
        .map(|d| {
            <[u8; 32]>::try_from(d.as_slice())
                .map_err(|_| LedgerError::Corrupt(format!("round {index} settlement digest")))
        })
        .transpose()?;
    Ok(Some(RoundSettlement {
        settled_at_s: from_i64(at, "settled_at_s")?,
        digest,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The SQLite backend's own tests: migrations from old schemas, the file's settings. The
    //! [`Ledger`] trait's behaviour is tested by the backend-independent suite
    //! ([`crate::ledger::suite`]), run here on [`SqliteFactory`]'s ledgers (module `suite`).

    use std::cell::Cell;
    use std::path::PathBuf;

    use super::*;
    use crate::ledger::suite::{
        LedgerFactory, charge, dep_id, key_id, model_id, name, node, outcome, per_request, round,
        setup, task,
    };

    pub(super) fn temp() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        (dir, path)
    }

    /// The suite's SQLite ledgers: files in a temporary directory (removed with the factory),
    /// opened as the dispatcher opens its ledger (WAL, `synchronous=FULL`).
    ///
    /// The directory is on `/dev/shm` where there is one: on a tmpfs the files' fsyncs cost
    /// nothing (a loaded disk made the suite's thousands of commits take seconds), and no test
    /// of the suite can tell (none crashes the machine).
    pub(super) struct SqliteFactory {
        dir: tempfile::TempDir,
        files: Cell<u32>,
    }

    impl SqliteFactory {
        pub(super) fn new() -> Self {
            let shm = std::path::Path::new("/dev/shm");
            let dir = if shm.is_dir() {
                tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
            } else {
                tempfile::tempdir()
            };
            Self {
                dir: dir.unwrap(),
                files: Cell::new(0),
            }
        }
    }

    impl LedgerFactory for SqliteFactory {
        type L = SqliteLedger;

        fn fresh(&self) -> SqliteLedger {
            let n = self.files.get();
            self.files.set(n + 1);
            SqliteLedger::open(&self.dir.path().join(format!("ledger-{n}.sqlite"))).unwrap()
        }

        fn reopen(&self, ledger: SqliteLedger) -> SqliteLedger {
            let path = PathBuf::from(ledger.conn.lock().path().unwrap());
            drop(ledger);
            SqliteLedger::open(&path).unwrap()
        }

        fn totals(&self, ledger: &SqliteLedger) -> Result<LedgerTotals, LedgerError> {
            ledger.totals()
        }
    }

    mod suite {
        crate::ledger::suite::ledger_suite!(super::SqliteFactory::new());
    }

    #[test]
    fn a_charge_journals_one_usage_movement_per_deployment_and_time() {
        let f = SqliteFactory::new();
        let ledger = f.fresh();
        let a = setup(&ledger, 1000);
        for d in [1, 2] {
            ledger
                .create_deployment(&per_request(&a, d, 300, 20))
                .unwrap();
        }
        ledger
            .charge_usage(&[
                charge(1, 1, 5, 30),
                charge(2, 2, 7, 30),
                charge(1, 3, 11, 30),
                charge(1, 4, 13, 31),
                // Nothing charged (the task is a duplicate): no movement.
                charge(1, 1, 5, 32),
            ])
            .unwrap();
        let conn = ledger.conn.lock();
        let mut stmt = conn
            .prepare(
                "SELECT deployment, task IS NULL, amount, at_s FROM journal
                 WHERE kind = 'usage' ORDER BY id",
            )
            .unwrap();
        let rows: Vec<(Vec<u8>, bool, i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let d = |n: u8| dep_id(n).as_bytes().to_vec();
        assert_eq!(
            rows,
            [
                (d(1), true, 16, 30),
                (d(2), true, 7, 30),
                (d(1), true, 13, 31)
            ]
        );
        drop(stmt);
        drop(conn);
        // Each task's charge stays in the usage table.
        assert_eq!(
            ledger.usage(&dep_id(1), &task(3)).unwrap()[0].charged,
            Credits::new(11)
        );
        assert_eq!(ledger.income(0, 100).unwrap(), Credits::new(36));
        assert!(ledger.totals().unwrap().is_conserved());
    }

    #[test]
    fn migrations_run_once_and_data_survives_a_reopen() {
        let (_dir, path) = temp();
        {
            let ledger = SqliteLedger::open(&path).unwrap();
            assert_eq!(
                ledger.schema_version().unwrap(),
                SqliteLedger::current_schema_version()
            );
            let a = setup(&ledger, 100);
            ledger
                .create_deployment(&per_request(&a, 1, 60, 20))
                .unwrap();
            ledger.charge_usage(&[charge(1, 1, 5, 30)]).unwrap();
        }
        let ledger = SqliteLedger::open(&path).unwrap();
        assert_eq!(
            ledger.schema_version().unwrap(),
            SqliteLedger::current_schema_version()
        );
        let a = name("alice");
        assert_eq!(ledger.balance(&a).unwrap(), Credits::new(40));
        let d = ledger.deployment(&dep_id(1)).unwrap().unwrap();
        assert_eq!(d, per_request(&a, 1, 60, 20).with_allowance(55));
        assert_eq!(ledger.key(&key_id(1)).unwrap().unwrap().account, a);
        assert_eq!(ledger.model(&model_id()).unwrap().unwrap().bytes, 1000);
        assert_eq!(
            ledger.usage(&dep_id(1), &task(1)).unwrap()[0].charged,
            Credits::new(5)
        );
        let mode: String = ledger
            .conn
            .lock()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let cache: i64 = ledger
            .conn
            .lock()
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(cache, -PAGE_CACHE_KIB);
    }

    /// Migrations 2 and 3 on a file written by migration 1: a stored deployment reads as verifiable.
    #[test]
    fn deployments_from_before_the_gate_read_as_verifiable() {
        let (_dir, path) = temp();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            let d = per_request(&name("alice"), 1, 60, 20);
            conn.execute_batch(&format!(
                "INSERT INTO accounts VALUES ('alice', 40, 0);
                 INSERT INTO keys VALUES (x'{key}', 'alice', zeroblob(32), 0, NULL, NULL);
                 INSERT INTO models VALUES (x'{model}', 1000, 'alice', 0);
                 INSERT INTO deployments VALUES (x'{id}', 'alice', x'{key}', x'{model}', 1000,
                     '{plan}', '{price}', 60, 20, NULL);",
                key = hex::encode(d.key.as_bytes()),
                model = hex::encode(d.model.as_bytes()),
                id = hex::encode(d.id.as_bytes()),
                plan = serde_json::to_string(&d.plan).unwrap(),
                price = serde_json::to_string(&d.price).unwrap(),
            ))
            .unwrap();
        }
        let ledger = SqliteLedger::open(&path).unwrap();
        assert_eq!(
            ledger.schema_version().unwrap(),
            SqliteLedger::current_schema_version()
        );
        assert_eq!(
            ledger.deployment(&dep_id(1)).unwrap().unwrap(),
            per_request(&name("alice"), 1, 60, 20)
        );
        // The model's first uploader owns it; nobody else may use it.
        let model = per_request(&name("alice"), 1, 60, 20).model;
        assert!(ledger.may_use_model(&model, &name("alice")).unwrap());
        ledger.create_account(&name("bob"), 0).unwrap();
        assert!(!ledger.may_use_model(&model, &name("bob")).unwrap());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let (_dir, path) = temp();
        drop(SqliteLedger::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = SqliteLedger::open(&path).unwrap_err();
        assert!(
            matches!(&err, LedgerError::Corrupt(m) if m.contains("99") && m.contains("newer")),
            "{err}"
        );
    }

    #[test]
    fn usage_recorded_before_input_digests_survives_the_migration() {
        let (_dir, path) = temp();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO accounts VALUES ('alice', 0, 1);
                 INSERT INTO keys VALUES (x'01010101010101010101010101010101', 'alice',
                     zeroblob(32), 1, NULL, NULL);
                 INSERT INTO models VALUES (zeroblob(32), 10, 'alice', 1);
                 INSERT INTO deployments VALUES (x'02020202020202020202020202020202', 'alice',
                     x'01010101010101010101010101010101', zeroblob(32), 10, '{}', '{}', 0, 1,
                     NULL);
                 INSERT INTO usage VALUES (x'03030303030303030303030303030303',
                     x'02020202020202020202020202020202', x'01010101010101010101010101010101',
                     zeroblob(32), 7, 8, 9, 4, 0, 5);",
            )
            .unwrap();
        }
        let ledger = SqliteLedger::open(&path).unwrap();
        assert_eq!(
            ledger.schema_version().unwrap(),
            SqliteLedger::current_schema_version()
        );
        let rows = ledger
            .usage(
                &DeploymentId::from_bytes([2; 16]),
                &TaskId::from_bytes([3; 16]),
            )
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].inputs_digest, [0; 32]);
        assert_eq!((rows[0].charged, rows[0].at_s), (Credits::new(4), 5));
    }

    #[test]
    fn rounds_closed_before_migration_12_are_read_per_node() {
        let (_dir, path) = temp();
        let outcome = {
            let mut o = outcome(&[(1, 10, 1, 100)]);
            o.nodes[0].rank = Some(2);
            o.nodes[0].guaranteed_usd_micro = MicroUsd::new(1_234);
            o
        };
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for (step, sql) in MIGRATIONS.iter().enumerate().take(11) {
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", step as i64 + 1)
                    .unwrap();
            }
            tx.execute(
                &format!(
                    "INSERT INTO rounds ({ROUND_COLUMNS}) VALUES (4, 400, 100, 0, 0, 0, '{{}}', ?1)"
                ),
                [outcome.to_json()],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let ledger = SqliteLedger::open(&path).unwrap();
        let got = ledger.node_rounds(&node(1).id, 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].index,
                got[0].start_s,
                got[0].rank,
                got[0].guaranteed_usd_micro
            ),
            (4, 400, Some(2), MicroUsd::new(1_234))
        );
        assert_eq!(got[0].crat_end_micro, MicroCrat::new(10));
    }

    /// Migration 7 (and 2 to 6) on a file written by migration 1: rounds closed before settlements were
    /// recorded read as unsettled (the dispatcher settles them again, a no-op for those paid),
    /// and a settlement survives a reopen.
    #[test]
    fn rounds_from_before_settlement_records_read_as_unsettled() {
        let (_dir, path) = temp();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO rounds VALUES (0, 0, 86400, 5, 1, 4, '{}', '{}');
                 INSERT INTO rounds VALUES (1, 86400, 86400, 5, 1, 4, '{}', '{}');",
            )
            .unwrap();
        }
        {
            let ledger = SqliteLedger::open(&path).unwrap();
            assert_eq!(
                ledger.schema_version().unwrap(),
                SqliteLedger::current_schema_version()
            );
            assert_eq!(ledger.round(1).unwrap(), Some(round(1)));
            assert_eq!(ledger.unsettled_rounds(10).unwrap(), [0, 1]);
            ledger
                .mark_round_settled(
                    0,
                    &RoundSettlement {
                        settled_at_s: 100,
                        digest: Some([3; 32]),
                    },
                )
                .unwrap();
        }
        let ledger = SqliteLedger::open(&path).unwrap();
        assert_eq!(ledger.unsettled_rounds(10).unwrap(), [1]);
        assert_eq!(
            ledger.round_settlement(0).unwrap(),
            Some(RoundSettlement {
                settled_at_s: 100,
                digest: Some([3; 32]),
            })
        );
        // The digest column holds 32 bytes or nothing.
        let bad = ledger.conn.lock().execute(
            "UPDATE rounds SET settled_at_s = 1, settlement_digest = x'00' WHERE idx = 1",
            [],
        );
        assert!(bad.is_err());
    }
}
