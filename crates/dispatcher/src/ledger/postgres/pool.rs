//! The connections of a [`super::PgLedger`]: a bounded pool of `tokio-postgres` clients whose
//! connection tasks run on a private runtime, and [`Tx`], one transaction on one of them, with
//! synchronous statements.
//!
//! Why not the synchronous `postgres` crate: it drives each connection with `block_on` on a
//! runtime of its own, which panics when the calling thread is inside a tokio runtime, and the
//! dispatcher calls its ledger synchronously from async code in places (at start-up, in
//! tests). Here the connections' I/O runs on the ledger's own runtime thread, and a caller waits
//! for a statement's answer with `futures_executor::block_on`, which polls only channels and
//! works on any thread, inside a runtime or not.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use crate::ledger::LedgerError;

/// Most prepared statements a connection keeps (the ledger's statements are fewer: a fixed set).
const STATEMENTS_CACHED_MAX: usize = 256;

/// Waits for `future` on the calling thread (any thread: see the module documentation).
pub(super) fn wait<F: Future>(future: F) -> F::Output {
    futures_executor::block_on(future)
}

/// A `tokio-postgres` error with its causes (its `Display` alone says only "db error").
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a transaction that failed with `e` may succeed when run again: a serialization
/// failure or a deadlock between concurrent transactions.
pub(super) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// A `tokio-postgres` error as a [`LedgerError`]: an integer out of range (a sum or an
/// addition past `i64::MAX`) is [`LedgerError::Overflow`], anything else
/// [`LedgerError::Database`].
fn ledger_error(e: &tokio_postgres::Error) -> LedgerError {
    if e.code() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE) {
        LedgerError::Overflow("a sum or count of stored integers")
    } else {
        LedgerError::Database(describe(e))
    }
}

/// One connection with its prepared statements.
pub(super) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    fn statement(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = wait(self.client.prepare(sql))?;
        if self.statements.len() >= STATEMENTS_CACHED_MAX {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// How the pool connects.
pub(super) struct Target {
    /// The parsed URL (with the connect timeout and keepalives set).
    pub(super) config: Config,
    /// Statements run on every new connection (the schema's `search_path`, timeouts).
    pub(super) setup: String,
    /// The URL without its password, for messages.
    pub(super) shown: String,
    /// TLS to the server (verified), or `None` for a plain connection.
    pub(super) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

struct Slots {
    idle: Vec<Conn>,
    /// Connections that exist (idle or lent).
    open: u32,
}

/// A bounded pool of connections, made when needed.
pub(super) struct Pool {
    /// The runtime the connections' tasks run on (taken when the pool is dropped).
    runtime: Option<tokio::runtime::Runtime>,
    target: Target,
    size_max: u32,
    wait_max: Duration,
    slots: Mutex<Slots>,
    freed: Condvar,
}

impl Pool {
    pub(super) fn new(
        target: Target,
        size_max: u32,
        wait_max: Duration,
    ) -> Result<Self, LedgerError> {
        if size_max == 0 {
            return Err(LedgerError::Invalid(
                "the pool needs at least one connection".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("crat-ledger-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                LedgerError::Database(format!("cannot start the ledger's runtime: {e}"))
            })?;
        Ok(Self {
            runtime: Some(runtime),
            target,
            size_max,
            wait_max,
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    pub(super) fn shown(&self) -> &str {
        &self.target.shown
    }

    /// Connects once more (the caller holds a slot for it).
    fn connect(&self) -> Result<Conn, LedgerError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| LedgerError::Database("the ledger is closed".into()))?;
        let config = self.target.config.clone();
        let setup = self.target.setup.clone();
        let shown = self.target.shown.clone();
        let handle = runtime.handle().clone();
        let tls = self.target.tls.clone();
        let task = runtime.spawn(async move {
            let failed = |e: tokio_postgres::Error| {
                tracing::warn!(error = %describe(&e), "a ledger connection to PostgreSQL failed");
            };
            let client = match tls {
                Some(tls) => {
                    let (client, connection) = config.connect(tls).await?;
                    handle.spawn(async move { connection.await.unwrap_or_else(failed) });
                    client
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await?;
                    handle.spawn(async move { connection.await.unwrap_or_else(failed) });
                    client
                }
            };
            client.batch_execute(&setup).await?;
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = wait(task)
            .map_err(|e| LedgerError::Database(format!("connecting to {shown}: {e}")))?
            .map_err(|e| {
                LedgerError::Database(format!("connecting to {shown}: {}", describe(&e)))
            })?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// A connection of its own, outside the pool's slots (the round-closing lock's, which
    /// must outlive any transaction): set up like the pool's, shared with the task that runs
    /// its statements.
    pub(super) fn dedicated(&self) -> Result<std::sync::Arc<Client>, LedgerError> {
        Ok(std::sync::Arc::new(self.connect()?.client))
    }

    /// Waits for `future`, run on the ledger's runtime, at most `limit`; `None` when the time
    /// ran out first (a server or network that stopped answering).
    pub(super) fn within<F>(
        &self,
        limit: Duration,
        future: F,
    ) -> Result<Option<F::Output>, LedgerError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| LedgerError::Database("the ledger is closed".into()))?;
        let task = runtime.spawn(async move { tokio::time::timeout(limit, future).await.ok() });
        wait(task).map_err(|e| LedgerError::Database(format!("a ledger task failed: {e}")))
    }

    /// A connection: an idle one, a new one while fewer than the pool's size exist, else the
    /// first one given back within the pool's wait.
    pub(super) fn get(&self) -> Result<Lent<'_>, LedgerError> {
        let deadline = Instant::now() + self.wait_max;
        let mut slots = self.slots.lock();
        loop {
            while let Some(conn) = slots.idle.pop() {
                if conn.client.is_closed() {
                    slots.open -= 1;
                    continue;
                }
                return Ok(Lent {
                    pool: self,
                    conn: Some(conn),
                    broken: false,
                });
            }
            if slots.open < self.size_max {
                slots.open += 1;
                drop(slots);
                return match self.connect() {
                    Ok(conn) => Ok(Lent {
                        pool: self,
                        conn: Some(conn),
                        broken: false,
                    }),
                    Err(e) => {
                        self.slots.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            if self.freed.wait_until(&mut slots, deadline).timed_out() {
                return Err(LedgerError::Database(format!(
                    "all {} connections to {} stayed busy for {:?}",
                    self.size_max, self.target.shown, self.wait_max
                )));
            }
        }
    }

    fn give_back(&self, conn: Conn, broken: bool) {
        let mut slots = self.slots.lock();
        if broken || conn.client.is_closed() {
            slots.open -= 1;
            drop(slots);
            drop(conn);
        } else {
            slots.idle.push(conn);
        }
        self.freed.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Dropping the clients closes their connections; the runtime's threads are left to
        // finish on their own (a runtime may not be dropped inside another one's context).
        self.slots.lock().idle.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A lent connection, given back to its pool when dropped (closed instead when `broken`).
pub(super) struct Lent<'p> {
    pool: &'p Pool,
    conn: Option<Conn>,
    broken: bool,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn, self.broken);
        }
    }
}

impl Lent<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lent connection is present from its creation until it is dropped")
    }

    /// Runs `sql` (statements without parameters). A failure other than the server's refusal
    /// (the connection failed) leaves the connection broken.
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        let result = wait(self.conn().client.batch_execute(sql));
        if result.as_ref().is_err_and(|e| e.as_db_error().is_none()) {
            self.broken = true;
        }
        result
    }

    /// Marks the connection broken (closed when given back).
    pub(super) fn set_broken(&mut self) {
        self.broken = true;
    }

    /// A transaction on this connection, begun by the caller.
    pub(super) fn tx(&mut self) -> Tx<'_> {
        Tx {
            conn: self.conn(),
            retryable: false,
        }
    }
}

/// The parameters of a statement.
pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// One transaction's statements. A statement that fails fails the transaction (PostgreSQL
/// refuses further statements until it is rolled back); [`Tx::retryable`] says whether it
/// failed for a concurrent transaction, so that running it again may succeed.
pub(super) struct Tx<'c> {
    conn: &'c mut Conn,
    retryable: bool,
}

impl Tx<'_> {
    fn fail(&mut self, e: &tokio_postgres::Error) -> LedgerError {
        if is_retryable(e) {
            self.retryable = true;
        }
        ledger_error(e)
    }

    /// Whether a statement failed for a concurrent transaction.
    pub(super) fn retryable(&self) -> bool {
        self.retryable
    }

    /// Runs a statement; the number of rows it changed.
    pub(super) fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64, LedgerError> {
        let result = match self.conn.statement(sql) {
            Ok(s) => wait(self.conn.client.execute(&s, params)),
            Err(e) => Err(e),
        };
        result.map_err(|e| self.fail(&e))
    }

    /// Runs a query; its rows.
    pub(super) fn query(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, LedgerError> {
        let result = match self.conn.statement(sql) {
            Ok(s) => wait(self.conn.client.query(&s, params)),
            Err(e) => Err(e),
        };
        result.map_err(|e| self.fail(&e))
    }

    /// Runs a query of at most one row.
    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, LedgerError> {
        let result = match self.conn.statement(sql) {
            Ok(s) => wait(self.conn.client.query_opt(&s, params)),
            Err(e) => Err(e),
        };
        result.map_err(|e| self.fail(&e))
    }

    /// Runs a query of exactly one row.
    pub(super) fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row, LedgerError> {
        let result = match self.conn.statement(sql) {
            Ok(s) => wait(self.conn.client.query_one(&s, params)),
            Err(e) => Err(e),
        };
        result.map_err(|e| self.fail(&e))
    }

    /// Whether a query returns a row.
    pub(super) fn exists(&mut self, sql: &str, params: &Params<'_>) -> Result<bool, LedgerError> {
        Ok(self.query_opt(sql, params)?.is_some())
    }
}
