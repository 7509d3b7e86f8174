//! [`PgLedger`]: the [`Ledger`] in a PostgreSQL database, which several dispatchers can share.
//!
//! The design is described on the main type.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr, TaskId};
use crat_core::money::Credits;
use crat_core::pricing::DeployPlan;
use crat_core::wire::{ModelSignature, RoundEarnings};
use crat_rewards::{Interval, RoundOutcome};
use rand::Rng as _;

mod acks;
mod leader;
mod pool;
mod redact;
mod rows;
mod schema;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use self::pool::{Pool, Target, Tx};
pub use self::redact::redact_url;
use self::rows::{
    account_at, bytes_at, deployment_row, get, key_row, node_row, round_node_row, round_row, u64_at,
};
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

/// Most times a transaction is run when concurrent transactions keep making it fail
/// (serialization failures, deadlocks); the last failure is returned.
pub const TRANSACTION_ATTEMPTS_MAX: u32 = 32;

/// Longest wait between two attempts of a transaction (the waits grow from 1 ms, randomised).
const RETRY_WAIT_MAX: Duration = Duration::from_millis(200);

/// Stripes of the in-process queue of charging transactions ([`ChargingQueue`]).
const CHARGING_STRIPES: usize = 16;

/// The charging transactions of one process queue here, by deployment, before they reach the
/// database. A charge locks its deployments' rows (`FOR UPDATE`); under `SERIALIZABLE` a
/// transaction that waited on such a lock fails when the holder commits ("could not serialize
/// access due to concurrent update": its snapshot predates the update), so charges of one
/// deployment arriving together failed and ran again, each commit failing every waiter, and
/// under load some ran out of attempts (issue 18's load test: usage reports refused, p99
/// 3.7 s). Waiting here instead, a charge starts its transaction only once the previous charge
/// of the same deployments of this process committed. Charges of other processes (two leaders
/// for a moment) still meet at the row lock and are retried as before.
struct ChargingQueue {
    stripes: [parking_lot::Mutex<()>; CHARGING_STRIPES],
}

impl ChargingQueue {
    fn new() -> Self {
        Self {
            stripes: std::array::from_fn(|_| parking_lot::Mutex::new(())),
        }
    }

    /// Holds the stripes of `deployments`, taken in order so that two callers cannot wait on
    /// each other.
    fn hold<'a>(
        &self,
        deployments: impl IntoIterator<Item = &'a DeploymentId>,
    ) -> Vec<parking_lot::MutexGuard<'_, ()>> {
        let mut wanted = [false; CHARGING_STRIPES];
        for id in deployments {
            let b = id.as_bytes();
            wanted[usize::from(b[0] ^ b[15]) % CHARGING_STRIPES] = true;
        }
        self.hold_stripes(wanted)
    }

    /// Holds every stripe: for a transaction whose deployments are known only once it reads
    /// them.
    fn hold_all(&self) -> Vec<parking_lot::MutexGuard<'_, ()>> {
        self.hold_stripes([true; CHARGING_STRIPES])
    }

    fn hold_stripes(
        &self,
        wanted: [bool; CHARGING_STRIPES],
    ) -> Vec<parking_lot::MutexGuard<'_, ()>> {
        (0..CHARGING_STRIPES)
            .filter(|&i| wanted[i])
            .map(|i| self.stripes[i].lock())
            .collect()
    }
}

/// Options of [`PgLedger::connect_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOptions {
    /// Most connections open at once (default 16); a call waits for a free one.
    pub pool_size: u32,
    /// The PostgreSQL schema that holds the ledger's tables (default `crat`), created when
    /// missing: `[a-z_][a-z0-9_]*`, at most 63 bytes. Dispatchers that share a ledger name the
    /// same database and schema.
    pub schema: String,
    /// How long connecting may take (default 10 s).
    pub connect_timeout: Duration,
    /// How long a call waits for a free connection when all are busy (default 30 s).
    pub pool_wait: Duration,
    /// How long one statement may run on the server (default 30 s).
    pub statement_timeout: Duration,
    /// The certificates (PEM) the server's certificate must chain to, for TLS; `None`: the
    /// Mozilla roots. With a file, TLS is used unless the URL says `sslmode=disable` (see
    /// [`PgLedger`]'s security notes).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            schema: "crat".into(),
            connect_timeout: Duration::from_secs(10),
            pool_wait: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

/// The TLS connector of a ledger: rustls (ring), checking the server's certificate chain and
/// name against the certificates in `ca_file`, or the Mozilla roots.
fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, LedgerError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| LedgerError::Invalid(format!("reading {shown}: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| LedgerError::Invalid(format!("reading {shown}: {e}")))?;
            if certs.is_empty() {
                return Err(LedgerError::Invalid(format!(
                    "{shown} holds no certificate (PEM)"
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| LedgerError::Invalid(format!("a certificate of {shown}: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| LedgerError::Invalid(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The longest schema name PostgreSQL keeps (`NAMEDATALEN - 1`).
const SCHEMA_BYTES_MAX: usize = 63;

fn check_schema(schema: &str) -> Result<(), LedgerError> {
    let mut bytes = schema.bytes();
    let ok = schema.len() <= SCHEMA_BYTES_MAX
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(LedgerError::Invalid(format!(
            "schema name {schema:?} must be 1..={SCHEMA_BYTES_MAX} characters of a-z, 0-9 and _, \
             not starting with a digit"
        )))
    }
}

/// An identifier quoted for SQL (schema names are checked to need no escaping; quoting keeps
/// keywords usable).
fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The [`Ledger`] in PostgreSQL: several dispatcher processes may share one.
///
/// - **One transaction per method.** Every write runs in a `SERIALIZABLE` transaction, every
///   read in a `REPEATABLE READ READ ONLY` one (one snapshot). PostgreSQL's serializable
///   isolation makes concurrent transactions, of this process or of another dispatcher, behave
///   as if they ran one after the other: a read-modify-write of a balance or an allowance never
///   loses an update. A transaction that fails for a concurrent one (a serialization failure
///   or a deadlock) is rolled back and run again, at most [`TRANSACTION_ATTEMPTS_MAX`] times,
///   after short randomised waits. A method that returned `Ok` has committed; an error anywhere
///   rolls the transaction back, so a method commits entirely or changes nothing.
/// - **Charges queue in the process.** Usage charges and acknowledgement settlements lock the
///   rows of the deployments they charge; those of one process wait for each other (by
///   deployment) before their transactions start, rather than failing each other at the row
///   lock and running again.
/// - **Exactly-once usage.** Usage rows are keyed by (deployment, task id, inputs digest), as
///   in SQLite: a second record of a task is a duplicate, whichever dispatcher receives it.
/// - **Migrations.** The schema is a list of steps; the table `schema_version` of the ledger's
///   schema counts those applied. Connecting applies the missing ones in one transaction under
///   an advisory lock (dispatchers starting together migrate once), and refuses a schema newer
///   than this build knows ([`LedgerError::Corrupt`]).
/// - **Integers only.** As in SQLite: amounts, sizes and times are `BIGINT`, and a value above
///   `i64::MAX` is refused ([`LedgerError::Invalid`], or [`LedgerError::Overflow`] when a
///   balance or a sum would pass it), never wrapped.
/// - **Connections.** A bounded pool ([`PgOptions::pool_size`]) of connections made when
///   needed; each sets its `search_path` to the ledger's schema and a statement timeout. The
///   connections' I/O runs on a private runtime thread, so the methods may be called from any
///   thread, inside a tokio runtime or not (they block the caller, as SQLite's do: the
///   dispatcher calls them on tokio's blocking pool).
///
/// # Security
///
/// - **TLS** (rustls): with `sslmode=require` in the URL, or a CA file
///   ([`PgOptions::ca_file`]) and no `sslmode=disable`, every connection is encrypted and the
///   server's certificate is verified, chain and name (libpq's `verify-full`), against the CA
///   file or else the Mozilla roots; a server that cannot prove itself is refused, never used
///   unverified. Without either (the URL's default `sslmode=prefer`), connections are in the
///   clear: then reach the database over a private network, a unix socket
///   (`host=/run/postgresql`) or a tunnel.
/// - A password in the URL never appears in this crate's messages ([`redact_url`]); keep the
///   file or command line that holds it readable by the service only.
///
/// ```no_run
/// use crat_dispatcher::ledger::{AccountName, Ledger, PgLedger, PgOptions};
///
/// # fn main() -> Result<(), crat_dispatcher::ledger::LedgerError> {
/// let ledger = PgLedger::connect("postgres://crat@127.0.0.1:5432/crat")?;
/// ledger.create_account(&AccountName::new("alice")?, 0)?;
///
/// // A ledger of its own in the same database, with fewer connections.
/// let other = PgLedger::connect_with(
///     "postgres://crat@127.0.0.1:5432/crat",
///     &PgOptions {
///         schema: "staging".into(),
///         pool_size: 4,
///         ..PgOptions::default()
///     },
/// )?;
/// # Ok(())
/// # }
/// ```
pub struct PgLedger {
    pool: Pool,
    schema: String,
    /// Transactions run again (see [`PgLedger::transaction_retries`]).
    retries: AtomicU64,
    /// The round-closing lock's session ([`Ledger::lead_rounds`]).
    leader: leader::Leadership,
    /// Charging transactions wait here for the previous ones of their deployments.
    charging: ChargingQueue,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("url", &self.pool.shown())
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PgLedger {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/database`,
    /// or libpq's `key=value` form) with the default [`PgOptions`] and brings its schema up to
    /// date.
    pub fn connect(url: &str) -> Result<Self, LedgerError> {
        Self::connect_with(url, &PgOptions::default())
    }

    /// Connects with `options`: checks them, opens one connection (an unreachable server
    /// fails here), creates the schema when missing and applies the migrations it lacks. A
    /// schema written by a newer build is [`LedgerError::Corrupt`]; it is left untouched.
    pub fn connect_with(url: &str, options: &PgOptions) -> Result<Self, LedgerError> {
        check_schema(&options.schema)?;
        let shown = redact_url(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            LedgerError::Invalid(format!(
                "{shown} is not a PostgreSQL URL: {}",
                pool::describe(&e)
            ))
        })?;
        // TLS when the URL requires it, or a CA file is given (unless the URL disables it);
        // always verified: never TLS that takes any certificate.
        let tls = match (config.get_ssl_mode(), &options.ca_file) {
            (tokio_postgres::config::SslMode::Disable, _)
            | (tokio_postgres::config::SslMode::Prefer, None) => None,
            (_, ca) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tls_connector(ca.as_deref())?)
            }
        };
        config
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .application_name("crat-dispatcher");
        let setup = format!(
            "SET search_path TO {}; SET statement_timeout = {}",
            quote_ident(&options.schema),
            options.statement_timeout.as_millis().max(1)
        );
        let pool = Pool::new(
            Target {
                config,
                setup,
                shown,
                tls,
            },
            options.pool_size,
            options.pool_wait,
        )?;
        {
            let mut conn = pool.get()?;
            schema::migrate(&mut conn, &options.schema)?;
        }
        Ok(Self {
            pool,
            schema: options.schema.clone(),
            retries: AtomicU64::new(0),
            leader: leader::Leadership::default(),
            charging: ChargingQueue::new(),
        })
    }

    /// The schema version of the ledger (the number of migrations applied).
    pub fn schema_version(&self) -> Result<u32, LedgerError> {
        self.read(|tx| {
            let v: i64 = get(&tx.query_one("SELECT version FROM schema_version", &[])?, 0)?;
            u32::try_from(v).map_err(|_| LedgerError::Corrupt(format!("schema version {v}")))
        })
    }

    /// The schema version this build writes.
    pub const fn current_schema_version() -> u32 {
        schema::MIGRATIONS.len() as u32
    }

    /// The PostgreSQL schema that holds the ledger.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// How many times this handle ran a transaction again because a concurrent transaction
    /// made it fail (a serialization failure or a deadlock), since it connected.
    pub fn transaction_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Sums over the whole ledger (balances, allowances, income, grants), read in one
    /// transaction; [`LedgerTotals::is_conserved`] must hold.
    pub fn totals(&self) -> Result<LedgerTotals, LedgerError> {
        self.read(|tx| {
            let row = tx.query_one(
                "SELECT
                     (SELECT COALESCE(SUM(balance), 0)::BIGINT FROM accounts),
                     (SELECT COALESCE(SUM(allowance_left), 0)::BIGINT FROM deployments),
                     (SELECT COALESCE(SUM(amount), 0)::BIGINT FROM journal
                      WHERE counts_as_income),
                     (SELECT COALESCE(SUM(amount), 0)::BIGINT FROM journal
                      WHERE kind = 'grant')",
                &[],
            )?;
            Ok(LedgerTotals {
                balances: Credits::new(u64_at(&row, 0, "balances")?),
                allowances: Credits::new(u64_at(&row, 1, "allowances")?),
                income: Credits::new(u64_at(&row, 2, "income")?),
                granted: Credits::new(u64_at(&row, 3, "granted")?),
            })
        })
    }

    /// Runs `f` in a SERIALIZABLE transaction and commits if it returns `Ok`; runs it again
    /// when it failed for a concurrent transaction.
    fn write<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.transaction("BEGIN ISOLATION LEVEL SERIALIZABLE", f)
    }

    /// Runs `f` in a read-only transaction (one snapshot).
    fn read<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", f)
    }

    fn transaction<T>(
        &self,
        begin: &str,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut attempt = 1u32;
        loop {
            let mut conn = self.pool.get()?;
            if let Err(e) = conn.batch(begin) {
                // A pooled connection the server or the network closed while it sat idle:
                // nothing ran, so another connection may run the transaction.
                if e.as_db_error().is_none() && attempt < TRANSACTION_ATTEMPTS_MAX {
                    drop(conn);
                    attempt += 1;
                    continue;
                }
                return Err(LedgerError::Database(pool::describe(&e)));
            }
            let mut tx = conn.tx();
            let out = f(&mut tx);
            let mut retryable = tx.retryable();
            let failure = match out {
                Ok(value) => match conn.batch("COMMIT") {
                    Ok(()) => return Ok(value),
                    Err(e) => {
                        // A failed COMMIT ends (rolls back) the transaction.
                        retryable = pool::is_retryable(&e);
                        LedgerError::Database(pool::describe(&e))
                    }
                },
                Err(e) => {
                    if conn.batch("ROLLBACK").is_err() {
                        conn.set_broken();
                    }
                    e
                }
            };
            if !retryable || attempt >= TRANSACTION_ATTEMPTS_MAX {
                return Err(failure);
            }
            drop(conn);
            self.retries.fetch_add(1, Ordering::Relaxed);
            let ceiling_us = (1_000u64 << attempt.min(8)).min(RETRY_WAIT_MAX.as_micros() as u64);
            std::thread::sleep(Duration::from_micros(
                rand::thread_rng().gen_range(ceiling_us / 2..=ceiling_us),
            ));
            attempt += 1;
        }
    }

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
            if !tx.exists("SELECT 1 FROM nodes WHERE id = $1", &[node.as_bytes()])? {
                return Err(LedgerError::NotFound(format!("node {node}")));
            }
            tx.execute(sql, &[node.as_bytes(), &start, &end])?;
            Ok(())
        })
    }
}

/// How a stored session takes a later end: extended, never shortened, never past its cut.
macro_rules! extend_session {
    () => {
        "ON CONFLICT (node, start_s) DO UPDATE
         SET end_s = LEAST(GREATEST(sessions.end_s, EXCLUDED.end_s),
                           COALESCE(sessions.cut_s, GREATEST(sessions.end_s, EXCLUDED.end_s)))"
    };
}

/// [`Ledger::record_online`]'s statement: the session created or extended.
const RECORD_ONLINE: &str = concat!(
    "INSERT INTO sessions (node, start_s, end_s) VALUES ($1, $2, $3) ",
    extend_session!()
);

/// [`RECORD_ONLINE`] for a batch (`$1` nodes, `$2` starts, `$3` ends, one row per node and
/// start): the sessions of nodes the ledger holds, written; the nodes written, returned.
const RECORD_ONLINE_MANY: &str = concat!(
    "INSERT INTO sessions (node, start_s, end_s)
     SELECT u.node, u.start_s, u.end_s
     FROM unnest($1::bytea[], $2::int8[], $3::int8[]) AS u(node, start_s, end_s)
     WHERE EXISTS (SELECT 1 FROM nodes WHERE nodes.id = u.node) ",
    extend_session!(),
    " RETURNING node"
);

/// A window bound: times above `i64::MAX` are never stored, so clamping loses nothing.
fn clamp(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// An account's balance, its row locked until the transaction ends.
fn account_balance(tx: &mut Tx<'_>, name: &AccountName) -> Result<Credits, LedgerError> {
    match tx.query_opt(
        "SELECT balance FROM accounts WHERE name = $1 FOR UPDATE",
        &[&name.as_str()],
    )? {
        Some(row) => Ok(Credits::new(u64_at(&row, 0, "balance")?)),
        None => Err(LedgerError::NotFound(format!("account {name}"))),
    }
}

fn set_balance(tx: &mut Tx<'_>, name: &AccountName, balance: Credits) -> Result<(), LedgerError> {
    tx.execute(
        "UPDATE accounts SET balance = $2 WHERE name = $1",
        &[&name.as_str(), &to_i64(balance.get(), "balance")?],
    )?;
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

fn journal(tx: &mut Tx<'_>, m: &Movement<'_>) -> Result<(), LedgerError> {
    tx.execute(
        "INSERT INTO journal (account, kind, amount, deployment, task, at_s, counts_as_income)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &m.account.as_str(),
            &m.kind.as_str(),
            &to_i64(m.amount.get(), "amount")?,
            &m.deployment.map(|d| d.as_bytes().as_slice()),
            &m.task.map(|t| t.as_bytes().as_slice()),
            &to_i64(m.at_s, "at_s")?,
            &m.counts_as_income,
        ],
    )?;
    Ok(())
}

fn get_key(tx: &mut Tx<'_>, id: &KeyId) -> Result<Option<KeyRecord>, LedgerError> {
    tx.query_opt(
        &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"),
        &[id.as_bytes()],
    )?
    .as_ref()
    .map(key_row)
    .transpose()
}

/// The deployments matching `condition` (a fixed SQL expression), oldest first.
fn deployments_where(
    tx: &mut Tx<'_>,
    condition: &'static str,
) -> Result<Vec<DeploymentRecord>, LedgerError> {
    tx.query(
        &format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE {condition}
             ORDER BY created_at_s, seq"
        ),
        &[],
    )?
    .iter()
    .map(deployment_row)
    .collect()
}

/// A deployment; with `lock`, its row locked until the transaction ends.
fn get_deployment(
    tx: &mut Tx<'_>,
    id: &DeploymentId,
    lock: bool,
) -> Result<Option<DeploymentRecord>, LedgerError> {
    let sql = if lock {
        format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1 FOR UPDATE")
    } else {
        format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1")
    };
    tx.query_opt(&sql, &[id.as_bytes()])?
        .as_ref()
        .map(deployment_row)
        .transpose()
}

/// Returns stopped deployment `d`'s allowance left to its account and clears its refund
/// time; the record after.
fn refund(
    tx: &mut Tx<'_>,
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
    tx.execute(
        "UPDATE deployments SET allowance_left = 0, refund_at_s = NULL WHERE id = $1",
        &[d.id.as_bytes()],
    )?;
    Ok(DeploymentRecord {
        allowance_left: Credits::ZERO,
        ..d
    })
}

fn query_rounds(tx: &mut Tx<'_>, sql: &str, param: i64) -> Result<Vec<RoundRecord>, LedgerError> {
    tx.query(sql, &[&param])?.iter().map(round_row).collect()
}

/// Which of `keys` (deployment, task, inputs digest) have a usage row: one query for all.
fn usage_rows_present(
    tx: &mut Tx<'_>,
    keys: &[(&DeploymentId, &TaskId, &[u8; 32])],
) -> Result<HashSet<(DeploymentId, TaskId, [u8; 32])>, LedgerError> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let deployments: Vec<&[u8]> = keys.iter().map(|k| k.0.as_bytes().as_slice()).collect();
    let tasks: Vec<&[u8]> = keys.iter().map(|k| k.1.as_bytes().as_slice()).collect();
    let digests: Vec<&[u8]> = keys.iter().map(|k| k.2.as_slice()).collect();
    tx.query(
        "SELECT u.deployment, u.task, u.inputs_digest
         FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS k(deployment, task, inputs_digest)
         JOIN usage u ON u.deployment = k.deployment AND u.task = k.task
                     AND u.inputs_digest = k.inputs_digest",
        &[&deployments, &tasks, &digests],
    )?
    .iter()
    .map(|row| {
        Ok((
            DeploymentId::from_bytes(bytes_at(row, 0, "deployment id")?),
            TaskId::from_bytes(bytes_at(row, 1, "task id")?),
            bytes_at(row, 2, "inputs digest")?,
        ))
    })
    .collect()
}

/// The rows one charge adds, gathered to be written in one statement per table: a report
/// of thousands of records was two round trips to the server per record.
#[derive(Default)]
struct ChargeRows<'a> {
    tasks: Vec<&'a [u8]>,
    deployments: Vec<&'a [u8]>,
    keys: Vec<&'a [u8]>,
    nodes: Vec<&'a [u8]>,
    input_bytes: Vec<i64>,
    output_bytes: Vec<i64>,
    compute_us: Vec<i64>,
    charged: Vec<i64>,
    uncollected: Vec<i64>,
    at_s: Vec<i64>,
    digests: Vec<&'a [u8]>,
    /// The journal's usage movements: one per (time, deployment).
    movements: UsageMovements,
}

impl ChargeRows<'_> {
    fn write(&self, tx: &mut Tx<'_>) -> Result<(), LedgerError> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        // Every key was checked absent under the deployments' row locks, in this
        // serializable transaction: a row that appeared since is a conflict to retry, not a
        // duplicate to skip after its allowance was counted.
        let inserted = tx.execute(
            "INSERT INTO usage (task, deployment, key, node, input_bytes, output_bytes,
                     compute_us, charged, uncollected, at_s, inputs_digest)
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bytea[],
                     $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                     $10::bigint[], $11::bytea[])",
            &[
                &self.tasks,
                &self.deployments,
                &self.keys,
                &self.nodes,
                &self.input_bytes,
                &self.output_bytes,
                &self.compute_us,
                &self.charged,
                &self.uncollected,
                &self.at_s,
                &self.digests,
            ],
        )?;
        if inserted != self.tasks.len() as u64 {
            return Err(LedgerError::Corrupt(format!(
                "{inserted} usage rows written of {}",
                self.tasks.len()
            )));
        }
        for (at_s, deployment, account, amount) in self.movements.iter() {
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
        Ok(())
    }
}

/// The body of [`Ledger::charge_usage`] and of the charges of [`Ledger::settle_acks`]: the
/// same rules as SQLite's, read and written in a few statements (the deployments locked,
/// the keys already present, then the rows) instead of a few per record.
fn charge_rows(
    tx: &mut Tx<'_>,
    charges: &[UsageCharge],
    charging: Charging,
) -> Result<UsageOutcome, LedgerError> {
    let mut outcome = UsageOutcome::default();
    let mut allowances: HashMap<DeploymentId, Allowance> = HashMap::new();
    for c in charges {
        // Values the columns cannot hold are refused before anything is locked.
        let r = &c.record;
        for (value, what) in [
            (r.input_bytes, "input_bytes"),
            (r.output_bytes, "output_bytes"),
            (r.compute_us, "compute_us"),
            (c.at_s, "at_s"),
            (c.cost.get(), "cost"),
        ] {
            to_i64(value, what)?;
        }
        if let Entry::Vacant(entry) = allowances.entry(c.record.deployment) {
            // Locked: concurrent charges of one allowance queue here.
            let row = tx
                .query_opt(
                    "SELECT account, allowance_left FROM deployments WHERE id = $1 FOR UPDATE",
                    &[c.record.deployment.as_bytes()],
                )?
                .ok_or_else(|| {
                    LedgerError::NotFound(format!("deployment {}", c.record.deployment))
                })?;
            entry.insert(Allowance {
                account: account_at(&row, 0)?,
                left: Credits::new(u64_at(&row, 1, "allowance_left")?),
                changed: false,
            });
        }
    }
    let keys: Vec<_> = charges
        .iter()
        .map(|c| {
            (
                &c.record.deployment,
                &c.record.task,
                &c.record.inputs_digest,
            )
        })
        .collect();
    let mut present = usage_rows_present(tx, &keys)?;
    let mut pairs = Pairs::default();
    let mut rows = ChargeRows::default();
    for (index, c) in charges.iter().enumerate() {
        let r = &c.record;
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
        // Stored before, or earlier in this charge.
        if !present.insert((r.deployment, r.task, r.inputs_digest)) {
            outcome.duplicates += 1;
            outcome.duplicated.push(index as u32);
            continue;
        }
        let allowance = allowances
            .get_mut(&r.deployment)
            .ok_or_else(|| LedgerError::NotFound(format!("deployment {}", r.deployment)))?;
        let (charge, uncollected) = allowance.split(c.cost);
        rows.tasks.push(r.task.as_bytes());
        rows.deployments.push(r.deployment.as_bytes());
        rows.keys.push(r.key.as_bytes());
        rows.nodes.push(c.node.as_bytes());
        let at_s = to_i64(c.at_s, "at_s")?;
        rows.input_bytes.push(to_i64(r.input_bytes, "input_bytes")?);
        rows.output_bytes
            .push(to_i64(r.output_bytes, "output_bytes")?);
        rows.compute_us.push(to_i64(r.compute_us, "compute_us")?);
        rows.charged.push(to_i64(charge.get(), "charge")?);
        rows.uncollected
            .push(to_i64(uncollected.get(), "uncollected")?);
        rows.at_s.push(at_s);
        rows.digests.push(&r.inputs_digest);
        if charging == Charging::Records {
            pairs.count(c, || acks::pair(tx, &c.record.ticket_nonce, &c.node))?;
        }
        outcome.accepted += 1;
        outcome.charged = add(outcome.charged, charge, "charged")?;
        outcome.uncollected = outcome.uncollected.saturating_add(uncollected);
        allowance.take(charge);
        rows.movements
            .add(c.at_s, r.deployment, &allowance.account, charge)?;
    }
    rows.write(tx)?;
    acks::write_charged(tx, pairs)?;
    for (id, allowance) in &allowances {
        if allowance.changed {
            tx.execute(
                "UPDATE deployments SET allowance_left = $2 WHERE id = $1",
                &[
                    id.as_bytes(),
                    &to_i64(allowance.left.get(), "allowance_left")?,
                ],
            )?;
        }
    }
    Ok(outcome)
}

/// Round `index`'s settlement: `None` while unsettled, [`LedgerError::NotFound`] when the
/// round is not closed.
fn read_settlement(tx: &mut Tx<'_>, index: u64) -> Result<Option<RoundSettlement>, LedgerError> {
    let not_found = || LedgerError::NotFound(format!("round {index}"));
    let Ok(idx) = i64::try_from(index) else {
        return Err(not_found());
    };
    let row = tx
        .query_opt(
            "SELECT settled_at_s, settlement_digest FROM rounds WHERE idx = $1",
            &[&idx],
        )?
        .ok_or_else(not_found)?;
    let Some(at) = get::<Option<i64>>(&row, 0)? else {
        return Ok(None);
    };
    let digest = get::<Option<&[u8]>>(&row, 1)?
        .map(|d| {
            <[u8; 32]>::try_from(d)
                .map_err(|_| LedgerError::Corrupt(format!("round {index} settlement digest")))
        })
        .transpose()?;
    Ok(Some(RoundSettlement {
        settled_at_s: from_i64(at, "settled_at_s")?,
        digest,
    }))
}

impl Ledger for PgLedger {
    fn create_account(&self, name: &AccountName, now_s: u64) -> Result<(), LedgerError> {
        let now = to_i64(now_s, "now_s")?;
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO accounts (name, balance, created_at_s) VALUES ($1, 0, $2)
                 ON CONFLICT (name) DO NOTHING",
                &[&name.as_str(), &now],
            )?;
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
        self.read(|tx| {
            match tx.query_opt(
                "SELECT balance FROM accounts WHERE name = $1",
                &[&name.as_str()],
            )? {
                Some(row) => Ok(Credits::new(u64_at(&row, 0, "balance")?)),
                None => Err(LedgerError::NotFound(format!("account {name}"))),
            }
        })
    }

    fn insert_key(&self, key: &KeyRecord) -> Result<(), LedgerError> {
        let created = to_i64(key.created_at_s, "created_at_s")?;
        let expires = opt_to_i64(key.expires_at_s, "expires_at_s")?;
        let revoked = opt_to_i64(key.revoked_at_s, "revoked_at_s")?;
        self.write(|tx| {
            account_balance(tx, &key.account)?;
            let inserted = tx.execute(
                &format!(
                    "INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[
                    key.id.as_bytes(),
                    &key.account.as_str(),
                    &key.secret_hash,
                    &created,
                    &expires,
                    &revoked,
                ],
            )?;
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
            tx.query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE account = $1 ORDER BY created_at_s, seq"
                ),
                &[&account.as_str()],
            )?
            .iter()
            .map(key_row)
            .collect()
        })
    }

    fn revoke_key(&self, id: &KeyId, now_s: u64) -> Result<KeyRecord, LedgerError> {
        let now = to_i64(now_s, "now_s")?;
        self.write(|tx| {
            tx.execute(
                "UPDATE keys SET revoked_at_s = $2 WHERE id = $1 AND revoked_at_s IS NULL",
                &[id.as_bytes(), &now],
            )?;
            get_key(tx, id)?.ok_or_else(|| LedgerError::NotFound(format!("key {id}")))
        })
    }

    fn insert_model(&self, model: &ModelRecord) -> Result<(), LedgerError> {
        let signature = signature_json(model.signature.as_ref())?;
        let bytes = to_i64(model.bytes, "model bytes")?;
        let stored_at = to_i64(model.stored_at_s, "stored_at_s")?;
        self.write(|tx| {
            account_balance(tx, &model.account)?;
            tx.execute(
                "INSERT INTO models (id, bytes, account, stored_at_s, signature)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE
                 SET signature = COALESCE(models.signature, EXCLUDED.signature)",
                &[
                    model.id.as_bytes(),
                    &bytes,
                    &model.account.as_str(),
                    &stored_at,
                    &signature,
                ],
            )?;
            tx.execute(
                "INSERT INTO model_owners (model, account, since_s) VALUES ($1, $2, $3)
                 ON CONFLICT (model, account) DO NOTHING",
                &[model.id.as_bytes(), &model.account.as_str(), &stored_at],
            )?;
            Ok(())
        })
    }

    fn may_use_model(&self, model: &ModelId, account: &AccountName) -> Result<bool, LedgerError> {
        self.read(|tx| {
            tx.exists(
                "SELECT 1 FROM models WHERE id = $1 AND (public OR EXISTS
                    (SELECT 1 FROM model_owners WHERE model = $1 AND account = $2))",
                &[model.as_bytes(), &account.as_str()],
            )
        })
    }

    fn set_model_public(
        &self,
        model: &ModelId,
        account: &AccountName,
        public: bool,
    ) -> Result<(), LedgerError> {
        self.write(|tx| {
            let owner = tx.exists(
                "SELECT 1 FROM model_owners WHERE model = $1 AND account = $2",
                &[model.as_bytes(), &account.as_str()],
            )?;
            if !owner {
                return Err(LedgerError::NotFound(format!(
                    "model {model} of account {}",
                    account.as_str()
                )));
            }
            tx.execute(
                "UPDATE models SET public = $2 WHERE id = $1",
                &[model.as_bytes(), &public],
            )?;
            Ok(())
        })
    }

    fn model(&self, id: &ModelId) -> Result<Option<ModelRecord>, LedgerError> {
        self.read(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT id, bytes, account, stored_at_s, signature FROM models WHERE id = $1",
                &[id.as_bytes()],
            )?
            else {
                return Ok(None);
            };
            let signature: Option<&str> = get(&row, 4)?;
            Ok(Some(ModelRecord {
                id: ModelId::from_bytes(bytes_at(&row, 0, "model id")?),
                bytes: u64_at(&row, 1, "model bytes")?,
                account: account_at(&row, 2)?,
                stored_at_s: u64_at(&row, 3, "stored_at_s")?,
                signature: signature
                    .map(serde_json::from_str)
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
            let changed = tx.execute(
                "UPDATE models SET signature = COALESCE(signature, $2) WHERE id = $1",
                &[id.as_bytes(), &json],
            )?;
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
        let model_bytes = to_i64(d.model_bytes, "model_bytes")?;
        let allowance_i = to_i64(allowance.get(), "allowance")?;
        let created_at = to_i64(d.created_at_s, "created_at_s")?;
        self.write(|tx| {
            if tx.exists(
                "SELECT 1 FROM deployments WHERE id = $1",
                &[d.id.as_bytes()],
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
            if !tx.exists("SELECT 1 FROM models WHERE id = $1", &[d.model.as_bytes()])? {
                return Err(LedgerError::NotFound(format!("model {}", d.model)));
            }
            let after = balance
                .checked_sub(upfront)
                .ok_or(LedgerError::InsufficientCredits {
                    balance,
                    needed: upfront,
                })?;
            set_balance(tx, &d.account, after)?;
            tx.execute(
                &format!(
                    "INSERT INTO deployments ({DEPLOYMENT_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, 0, NULL)"
                ),
                &[
                    d.id.as_bytes(),
                    &d.account.as_str(),
                    d.key.as_bytes(),
                    d.model.as_bytes(),
                    &model_bytes,
                    &plan,
                    &price,
                    &allowance_i,
                    &created_at,
                    &verifiability,
                ],
            )?;
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
        self.read(|tx| get_deployment(tx, id, false))
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
            let d = get_deployment(tx, id, true)?
                .ok_or_else(|| LedgerError::NotFound(format!("deployment {id}")))?;
            if d.stopped_at_s.is_some() {
                return Ok(d);
            }
            tx.execute(
                "UPDATE deployments SET stopped_at_s = $2, refund_at_s = $3 WHERE id = $1",
                &[id.as_bytes(), &now, &refund_at],
            )?;
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
        let model_bytes = to_i64(u.model_bytes, "model_bytes")?;
        let charged = to_i64(u.charged.get(), "charged")?;
        self.write(|tx| {
            let d = get_deployment(tx, &u.deployment, true)?
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
            if !tx.exists("SELECT 1 FROM models WHERE id = $1", &[u.model.as_bytes()])? {
                return Err(LedgerError::NotFound(format!("model {}", u.model)));
            }
            let left = d.allowance_left.checked_sub(u.charged).ok_or(
                LedgerError::InsufficientCredits {
                    balance: d.allowance_left,
                    needed: u.charged,
                },
            )?;
            tx.execute(
                "UPDATE deployments SET model = $2, model_bytes = $3, verifiability = $4,
                 allowance_left = $5, updates = $6, updated_at_s = $7 WHERE id = $1",
                &[
                    u.deployment.as_bytes(),
                    u.model.as_bytes(),
                    &model_bytes,
                    &verifiability,
                    &to_i64(left.get(), "allowance_left")?,
                    &i64::from(u.seq),
                    &at,
                ],
            )?;
            tx.execute(
                "INSERT INTO model_updates
                 (deployment, seq, previous, model, model_bytes, verifiability, charged, at_s)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    u.deployment.as_bytes(),
                    &i64::from(u.seq),
                    u.previous.as_bytes(),
                    u.model.as_bytes(),
                    &model_bytes,
                    &verifiability,
                    &charged,
                    &at,
                ],
            )?;
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
            tx.query(
                "SELECT seq, previous, model, model_bytes, verifiability, charged, at_s
                 FROM model_updates WHERE deployment = $1 ORDER BY seq",
                &[id.as_bytes()],
            )?
            .iter()
            .map(|row| {
                let verifiability: &str = get(row, 4)?;
                Ok(ModelUpdate {
                    deployment: *id,
                    seq: u32::try_from(u64_at(row, 0, "seq")?)
                        .map_err(|_| LedgerError::Corrupt("update seq".into()))?,
                    previous: ModelId::from_bytes(bytes_at(row, 1, "model id")?),
                    model: ModelId::from_bytes(bytes_at(row, 2, "model id")?),
                    model_bytes: u64_at(row, 3, "model_bytes")?,
                    verifiability: serde_json::from_str(verifiability)
                        .map_err(|e| LedgerError::Corrupt(format!("update verifiability: {e}")))?,
                    charged: Credits::new(u64_at(row, 5, "charged")?),
                    at_s: u64_at(row, 6, "at_s")?,
                })
            })
            .collect()
        })
    }

    fn refund_stopped(&self, now_s: u64, limit: u32) -> Result<Vec<DeploymentRecord>, LedgerError> {
        let now = to_i64(now_s, "now_s")?;
        self.write(|tx| {
            let due = tx.query(
                &format!(
                    "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                     WHERE refund_at_s IS NOT NULL AND refund_at_s <= $1
                     ORDER BY refund_at_s, seq LIMIT $2 FOR UPDATE"
                ),
                &[&now, &i64::from(limit)],
            )?;
            let mut out = Vec::with_capacity(due.len());
            for row in &due {
                let d = deployment_row(row)?;
                out.push(refund(tx, d, now_s)?);
            }
            Ok(out)
        })
    }

    fn stopping_deployments(&self) -> Result<Vec<DeploymentRecord>, LedgerError> {
        self.read(|tx| deployments_where(tx, "refund_at_s IS NOT NULL"))
    }

    fn charge_usage(&self, charges: &[UsageCharge]) -> Result<UsageOutcome, LedgerError> {
        let _queued = self
            .charging
            .hold(charges.iter().map(|c| &c.record.deployment));
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
        let _queued = self.charging.hold_all();
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
            tx.query(
                "SELECT task, deployment, node, charged, uncollected, at_s, inputs_digest
                 FROM usage WHERE deployment = $1 AND task = $2
                 ORDER BY at_s, inputs_digest LIMIT $3",
                &[
                    deployment.as_bytes(),
                    task.as_bytes(),
                    &(USAGE_ROWS_PER_TASK_MAX as i64),
                ],
            )?
            .iter()
            .map(|row| {
                Ok(UsageRow {
                    task: TaskId::from_bytes(bytes_at(row, 0, "task id")?),
                    deployment: DeploymentId::from_bytes(bytes_at(row, 1, "deployment id")?),
                    node: NodeId::from_bytes(bytes_at(row, 2, "node id")?),
                    charged: Credits::new(u64_at(row, 3, "charged")?),
                    uncollected: Credits::new(u64_at(row, 4, "uncollected")?),
                    at_s: u64_at(row, 5, "at_s")?,
                    inputs_digest: bytes_at(row, 6, "inputs digest")?,
                })
            })
            .collect()
        })
    }

    fn usage_known(
        &self,
        keys: &[(DeploymentId, TaskId, [u8; 32])],
    ) -> Result<Vec<bool>, LedgerError> {
        self.read(|tx| {
            let refs: Vec<_> = keys.iter().map(|(d, t, digest)| (d, t, digest)).collect();
            let present = usage_rows_present(tx, &refs)?;
            Ok(keys.iter().map(|k| present.contains(k)).collect())
        })
    }

    fn usage_totals(&self, deployment: &DeploymentId) -> Result<(u64, Credits), LedgerError> {
        self.read(|tx| {
            let row = tx.query_one(
                "SELECT COUNT(*), COALESCE(SUM(charged), 0)::BIGINT FROM usage
                 WHERE deployment = $1",
                &[deployment.as_bytes()],
            )?;
            Ok((
                u64_at(&row, 0, "count")?,
                Credits::new(u64_at(&row, 1, "charged")?),
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
        let values = [
            to_i64(node.registered_at_s, "registered_at_s")?,
            to_i64(node.mining_income_usd_micro_per_day.get(), "mining income")?,
            to_i64(node.crat_micro.get(), "crat_micro")?,
            to_i64(node.streak, "streak")?,
            to_i64(node.uptime_total_s, "uptime_total_s")?,
        ];
        self.write(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (id) DO UPDATE SET
                         rating = EXCLUDED.rating, mining_income = EXCLUDED.mining_income"
                ),
                &[
                    node.id.as_bytes(),
                    &i64::from(node.rating),
                    &values[0],
                    &values[1],
                    &values[2],
                    &values[3],
                    &values[4],
                ],
            )?;
            Ok(())
        })
    }

    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, LedgerError> {
        self.read(|tx| {
            tx.query_opt(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"),
                &[id.as_bytes()],
            )?
            .as_ref()
            .map(node_row)
            .transpose()
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, LedgerError> {
        self.read(|tx| {
            // BYTEA order is byte order, which is `NodeId`'s order.
            tx.query(
                &format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"),
                &[],
            )?
            .iter()
            .map(node_row)
            .collect()
        })
    }

    fn round_nodes(&self, from_s: u64, to_s: u64) -> Result<Vec<NodeRecord>, LedgerError> {
        let (from, to) = (clamp(from_s), clamp(to_s));
        self.read(|tx| {
            tx.query(
                &format!(
                    "SELECT {NODE_COLUMNS} FROM nodes WHERE registered_at_s < $2 AND id IN (
                         SELECT node FROM sessions WHERE end_s > $1 AND start_s < $2
                         UNION SELECT node FROM validations WHERE at_s >= $1 AND at_s < $2
                         UNION SELECT id FROM nodes WHERE streak > 0
                     ) ORDER BY id"
                ),
                &[&from, &to],
            )?
            .iter()
            .map(node_row)
            .collect()
        })
    }

    fn forget_idle_nodes(&self, before_s: u64, limit: u32) -> Result<u64, LedgerError> {
        let before = clamp(before_s);
        self.write(|tx| {
            let ids = tx.query(
                "SELECT id FROM nodes n
                 WHERE crat_micro = 0 AND streak = 0 AND registered_at_s < $1
                   AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.node = n.id AND s.end_s >= $1)
                   AND NOT EXISTS (SELECT 1 FROM validations v WHERE v.node = n.id AND v.at_s >= $1)
                 LIMIT $2",
                &[&before, &i64::from(limit)],
            )?;
            for row in &ids {
                let id: &[u8] = get(row, 0)?;
                tx.execute("DELETE FROM sessions WHERE node = $1", &[&id])?;
                tx.execute("DELETE FROM validations WHERE node = $1", &[&id])?;
                tx.execute("DELETE FROM nodes WHERE id = $1", &[&id])?;
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
        // One statement for the whole batch (a flush carries every heartbeat of a tick: two
        // statements a session were 20,000 round trips a second at 100,000 nodes). One row
        // per (node, start), the latest end: a statement may not upsert a row twice.
        let mut merged: HashMap<(NodeId, i64), i64> = HashMap::with_capacity(sessions.len());
        for (node, start, end) in session_rows(sessions)? {
            let e = merged.entry((node, start)).or_insert(end);
            *e = (*e).max(end);
        }
        if merged.is_empty() {
            return Ok(0);
        }
        let mut nodes: Vec<&[u8]> = Vec::with_capacity(merged.len());
        let mut starts = Vec::with_capacity(merged.len());
        let mut ends = Vec::with_capacity(merged.len());
        for ((node, start), end) in &merged {
            nodes.push(node.as_bytes().as_slice());
            starts.push(*start);
            ends.push(*end);
        }
        self.write(|tx| {
            let written = tx.query(RECORD_ONLINE_MANY, &[&nodes, &starts, &ends])?;
            let mut known: HashSet<NodeId> = HashSet::with_capacity(written.len());
            for row in &written {
                known.insert(NodeId::from_bytes(bytes_at(row, 0, "node id")?));
            }
            let skipped = sessions
                .iter()
                .filter(|(n, _, _)| !known.contains(n))
                .count();
            Ok(u32::try_from(skipped).unwrap_or(u32::MAX))
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
            "INSERT INTO sessions (node, start_s, end_s, cut_s) VALUES ($1, $2, $3, $3)
             ON CONFLICT (node, start_s) DO UPDATE
             SET end_s = LEAST(sessions.end_s, EXCLUDED.end_s),
                 cut_s = LEAST(COALESCE(sessions.cut_s, EXCLUDED.cut_s), EXCLUDED.cut_s)",
        )
    }

    fn online_sessions(
        &self,
        node: &NodeId,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<Interval>, LedgerError> {
        let (from, to) = (clamp(from_s), clamp(to_s));
        self.read(|tx| {
            tx.query(
                "SELECT start_s, end_s FROM sessions
                 WHERE node = $1 AND start_s < $3 AND end_s > $2
                 ORDER BY start_s",
                &[node.as_bytes(), &from, &to],
            )?
            .iter()
            .map(|row| {
                Ok(Interval::new(
                    u64_at(row, 0, "start_s")?,
                    u64_at(row, 1, "end_s")?,
                ))
            })
            .collect()
        })
    }

    fn record_validation(&self, node: &NodeId, ok: bool, at_s: u64) -> Result<(), LedgerError> {
        let at = to_i64(at_s, "at_s")?;
        self.write(|tx| {
            if !tx.exists("SELECT 1 FROM nodes WHERE id = $1", &[node.as_bytes()])? {
                return Err(LedgerError::NotFound(format!("node {node}")));
            }
            tx.execute(
                "INSERT INTO validations (node, at_s, ok, failed) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (node, at_s) DO UPDATE SET
                     ok = validations.ok + EXCLUDED.ok,
                     failed = validations.failed + EXCLUDED.failed",
                &[node.as_bytes(), &at, &i64::from(ok), &i64::from(!ok)],
            )?;
            Ok(())
        })
    }

    fn validations(
        &self,
        node: &NodeId,
        from_s: u64,
        to_s: u64,
    ) -> Result<(u64, u64), LedgerError> {
        let (from, to) = (clamp(from_s), clamp(to_s));
        self.read(|tx| {
            let row = tx.query_one(
                "SELECT COALESCE(SUM(ok), 0)::BIGINT, COALESCE(SUM(failed), 0)::BIGINT
                 FROM validations WHERE node = $1 AND at_s >= $2 AND at_s < $3",
                &[node.as_bytes(), &from, &to],
            )?;
            Ok((u64_at(&row, 0, "ok")?, u64_at(&row, 1, "failed")?))
        })
    }

    fn node_rounds(&self, node: &NodeId, limit: u32) -> Result<Vec<RoundEarnings>, LedgerError> {
        let limit = i64::from(limit.min(NODE_ROUNDS_MAX));
        self.read(|tx| {
            tx.query(
                &format!(
                    "SELECT {ROUND_NODE_COLUMNS} FROM round_nodes WHERE node = $1
                     ORDER BY round DESC LIMIT $2"
                ),
                &[node.as_bytes(), &limit],
            )?
            .iter()
            .map(round_node_row)
            .collect()
        })
    }

    fn tasks_served(&self, node: &NodeId, from_s: u64, to_s: u64) -> Result<u64, LedgerError> {
        let (from, to) = (clamp(from_s), clamp(to_s));
        self.read(|tx| {
            let row = tx.query_one(
                "SELECT COUNT(*) FROM usage WHERE node = $1 AND at_s >= $2 AND at_s < $3",
                &[node.as_bytes(), &from, &to],
            )?;
            u64_at(&row, 0, "tasks served")
        })
    }

    fn income(&self, from_s: u64, to_s: u64) -> Result<Credits, LedgerError> {
        let (from, to) = (clamp(from_s), clamp(to_s));
        self.read(|tx| {
            // The sum is NUMERIC: past i64::MAX the cast fails, which is an overflow.
            let row = tx
                .query_one(
                    "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM journal
                     WHERE counts_as_income AND at_s >= $1 AND at_s < $2",
                    &[&from, &to],
                )
                .map_err(|e| match e {
                    LedgerError::Overflow(_) => LedgerError::Overflow("income"),
                    e => e,
                })?;
            Ok(Credits::new(u64_at(&row, 0, "income")?))
        })
    }

    fn close_round(&self, round: &RoundRecord, outcome: &RoundOutcome) -> Result<(), LedgerError> {
        let idx = to_i64(round.index, "round index")?;
        let head = [
            to_i64(round.start_s, "start_s")?,
            to_i64(round.length_s, "length_s")?,
            to_i64(round.income_usd_micro.get(), "income")?,
            to_i64(round.carry_out_usd_micro.get(), "carry_out")?,
            to_i64(round.paid_usd_micro.get(), "paid")?,
        ];
        self.write(|tx| {
            let inserted = tx.execute(
                &format!(
                    "INSERT INTO rounds ({ROUND_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (idx) DO NOTHING"
                ),
                &[
                    &idx,
                    &head[0],
                    &head[1],
                    &head[2],
                    &head[3],
                    &head[4],
                    &round.inputs_json,
                    &round.outcome_json,
                ],
            )?;
            if inserted == 0 {
                return Err(LedgerError::Exists(format!("round {}", round.index)));
            }
            for n in &outcome.nodes {
                tx.execute(
                    &format!(
                        "INSERT INTO round_nodes ({ROUND_NODE_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                    ),
                    &[
                        &idx,
                        n.id.as_bytes(),
                        &head[0],
                        &to_i64(n.uptime_s, "uptime_s")?,
                        &n.committed,
                        &n.rank.map(|r| to_i64(r, "rank")).transpose()?,
                        &to_i64(n.guaranteed_usd_micro.get(), "guaranteed_usd_micro")?,
                        &to_i64(n.bonus_usd_micro.get(), "bonus_usd_micro")?,
                        &to_i64(n.crat_issued_micro.get(), "crat_issued_micro")?,
                        &to_i64(n.crat_slashed_micro.get(), "crat_slashed_micro")?,
                        &to_i64(n.crat_end_micro.get(), "crat_end_micro")?,
                    ],
                )?;
                let changed = tx.execute(
                    "UPDATE nodes SET crat_micro = $2, streak = $3, uptime_total_s = $4
                     WHERE id = $1",
                    &[
                        n.id.as_bytes(),
                        &to_i64(n.crat_end_micro.get(), "crat_end_micro")?,
                        &to_i64(n.streak_end, "streak_end")?,
                        &to_i64(n.uptime_total_s, "uptime_total_s")?,
                    ],
                )?;
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
            let row = tx.query_one(
                "SELECT GREATEST(
                    COALESCE((SELECT MAX(at_s) FROM journal WHERE counts_as_income), 0),
                    COALESCE((SELECT at_s FROM journal ORDER BY id DESC LIMIT 1), 0),
                    COALESCE((SELECT MAX(end_s) FROM sessions), 0),
                    COALESCE((SELECT start_s + length_s FROM rounds ORDER BY idx DESC LIMIT 1), 0)
                 )",
                &[],
            )?;
            u64_at(&row, 0, "latest time")
        })
    }

    fn last_round(&self) -> Result<Option<RoundRecord>, LedgerError> {
        self.read(|tx| {
            let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds ORDER BY idx DESC LIMIT $1");
            Ok(query_rounds(tx, &sql, 1)?.pop())
        })
    }

    fn round(&self, index: u64) -> Result<Option<RoundRecord>, LedgerError> {
        let Ok(idx) = i64::try_from(index) else {
            return Ok(None);
        };
        self.read(|tx| {
            let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds WHERE idx = $1");
            Ok(query_rounds(tx, &sql, idx)?.pop())
        })
    }

    fn rounds(&self, limit: u32) -> Result<Vec<RoundRecord>, LedgerError> {
        self.read(|tx| {
            let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds ORDER BY idx DESC LIMIT $1");
            query_rounds(tx, &sql, i64::from(limit))
        })
    }

    fn unsettled_rounds(&self, limit: u32) -> Result<Vec<u64>, LedgerError> {
        let limit = i64::from(limit.min(UNSETTLED_ROUNDS_MAX));
        self.read(|tx| {
            tx.query(
                "SELECT idx FROM rounds WHERE settled_at_s IS NULL ORDER BY idx LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|row| u64_at(row, 0, "round index"))
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
            tx.execute(
                "UPDATE rounds SET settled_at_s = $2, settlement_digest = $3
                 WHERE idx = $1 AND settled_at_s IS NULL",
                &[&idx, &at, &settlement.digest.as_ref().map(|d| d.as_slice())],
            )?;
            read_settlement(tx, index)?.ok_or_else(|| {
                LedgerError::Corrupt(format!("round {index} is not settled after settling it"))
            })
        })
    }

    fn round_settlement(&self, index: u64) -> Result<Option<RoundSettlement>, LedgerError> {
        self.read(|tx| read_settlement(tx, index))
    }

    fn lead_rounds(&self) -> Result<bool, LedgerError> {
        self.leader.lead(&self.pool, &self.schema)
    }

    fn resign_rounds(&self) {
        self.leader.resign(&self.pool);
    }

    fn announce_active(&self, addr: &PeerAddr) -> Result<(), LedgerError> {
        self.leader.announce(&self.pool, addr)
    }

    fn active_dispatcher(&self) -> Result<Option<PeerAddr>, LedgerError> {
        self.read(|tx| {
            let Some(row) = tx
                .query("SELECT addr FROM active_dispatcher", &[])?
                .into_iter()
                .next()
            else {
                return Ok(None);
            };
            let text: String = get(&row, 0)?;
            PeerAddr::new(text)
                .map(Some)
                .map_err(|e| LedgerError::Corrupt(format!("active dispatcher address: {e}")))
        })
    }
}
