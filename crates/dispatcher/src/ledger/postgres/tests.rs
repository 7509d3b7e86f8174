//! The PostgreSQL backend's tests: the ledger suite ([`crate::ledger::suite`]) on
//! [`PgFactory`]'s ledgers, and what only a server shared by several processes has (handles
//! racing on one allowance, serialization failures retried, the schema table).
//!
//! They need a PostgreSQL server: its URL in `CRAT_TEST_POSTGRES_URL` (`scripts/test.sh` starts
//! one and sets it). Without it every test here fails, saying so.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::pool::{Pool, Target};
use super::*;
use crate::ledger::suite::{LedgerFactory, charge, dep_id, name, per_request, setup};

/// The variable that holds the test server's URL.
const URL_VAR: &str = "CRAT_TEST_POSTGRES_URL";

fn test_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{URL_VAR} is not set: the PostgreSQL ledger's tests need a server. Run the tests \
             through scripts/test.sh (it starts one), or start one with \
             `scripts/postgres.sh start` and set {URL_VAR} to the URL it prints"
        ),
    }
}

/// A connection pool on `schema` of the test database, for statements the ledger does not make.
fn raw(url: &str, schema: &str) -> Pool {
    let config: tokio_postgres::Config = url.parse().unwrap();
    Pool::new(
        Target {
            config,
            setup: format!("SET search_path TO {}", quote_ident(schema)),
            shown: redact_url(url),
            tls: None,
        },
        2,
        Duration::from_secs(30),
    )
    .unwrap()
}

/// The suite's PostgreSQL ledgers: each a schema of its own in the test database (named after
/// the process and a random number, so that test runs sharing a server never meet), dropped
/// with the factory. A schema per ledger keeps a test's set-up to one `CREATE SCHEMA` and the
/// tables, on one server.
pub(super) struct PgFactory {
    url: String,
    prefix: String,
    made: Cell<u32>,
    schemas: RefCell<Vec<String>>,
}

impl PgFactory {
    pub(super) fn new() -> Self {
        Self {
            url: test_url(),
            prefix: format!("t{}_{:08x}", std::process::id(), rand::random::<u32>()),
            made: Cell::new(0),
            schemas: RefCell::new(Vec::new()),
        }
    }

    fn options(schema: &str) -> PgOptions {
        PgOptions {
            schema: schema.to_owned(),
            pool_size: 4,
            ..PgOptions::default()
        }
    }

    /// Another handle on `ledger`'s database, as a second dispatcher opens it.
    fn another(&self, ledger: &PgLedger) -> PgLedger {
        PgLedger::connect_with(&self.url, &Self::options(ledger.schema())).unwrap()
    }
}

impl Drop for PgFactory {
    fn drop(&mut self) {
        let schemas = self.schemas.take();
        if schemas.is_empty() {
            return;
        }
        let pool = raw(&self.url, "public");
        if let Ok(mut conn) = pool.get() {
            for s in schemas {
                let _ = conn.batch(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    quote_ident(&s)
                ));
            }
        }
    }
}

impl LedgerFactory for PgFactory {
    type L = PgLedger;

    fn fresh(&self) -> PgLedger {
        let n = self.made.get();
        self.made.set(n + 1);
        let schema = format!("{}_{n}", self.prefix);
        self.schemas.borrow_mut().push(schema.clone());
        PgLedger::connect_with(&self.url, &Self::options(&schema)).unwrap()
    }

    fn reopen(&self, ledger: PgLedger) -> PgLedger {
        let schema = ledger.schema().to_owned();
        drop(ledger);
        PgLedger::connect_with(&self.url, &Self::options(&schema)).unwrap()
    }

    fn totals(&self, ledger: &PgLedger) -> Result<LedgerTotals, LedgerError> {
        ledger.totals()
    }
}

mod suite {
    crate::ledger::suite::ledger_suite!(super::PgFactory::new());
}

#[test]
fn a_fresh_ledger_has_the_current_schema_and_a_newer_one_is_refused() {
    let f = PgFactory::new();
    let ledger = f.fresh();
    assert_eq!(
        ledger.schema_version().unwrap(),
        PgLedger::current_schema_version()
    );
    let schema = ledger.schema().to_owned();
    drop(ledger);
    let pool = raw(&f.url, &schema);
    pool.get()
        .unwrap()
        .batch("UPDATE schema_version SET version = 99")
        .unwrap();
    let err = PgLedger::connect_with(&f.url, &PgFactory::options(&schema)).unwrap_err();
    assert!(
        matches!(&err, LedgerError::Corrupt(m) if m.contains("99") && m.contains("newer")),
        "{err}"
    );
}

#[test]
fn bad_options_and_urls_are_refused_without_showing_the_password() {
    let url = test_url();
    for schema in ["", "Crat", "1crat", "crat-x", "crat;drop", &"x".repeat(64)] {
        let options = PgOptions {
            schema: schema.into(),
            ..PgOptions::default()
        };
        assert!(
            matches!(
                PgLedger::connect_with(&url, &options),
                Err(LedgerError::Invalid(_))
            ),
            "{schema:?}"
        );
    }
    let options = PgOptions {
        pool_size: 0,
        ..PgOptions::default()
    };
    assert!(matches!(
        PgLedger::connect_with(&url, &options),
        Err(LedgerError::Invalid(_))
    ));
    let err = PgLedger::connect("postgres://crat:hunter2@127.0.0.1:notaport/crat").unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("hunter2") && text.contains("***"), "{text}");
    // Nobody listens on port 1: connecting fails, and says where without the password.
    let err = PgLedger::connect_with(
        "postgres://crat:hunter2@127.0.0.1:1/crat",
        &PgOptions {
            connect_timeout: Duration::from_secs(2),
            ..PgOptions::default()
        },
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LedgerError::Database(_)), "{text}");
    assert!(
        !text.contains("hunter2") && text.contains("127.0.0.1:1"),
        "{text}"
    );
}

/// Two handles on one database (two dispatchers), several threads each, charge the same
/// allowance with overlapping task ids and grant to the same account: every distinct task is
/// charged exactly once, the allowance is spent exactly, and money is conserved.
#[test]
fn two_handles_charging_one_allowance_from_many_threads_lose_nothing_and_charge_once() {
    const THREADS_PER_HANDLE: u64 = 4;
    const TASKS_PER_THREAD: u64 = 60;
    const COST: u64 = 3;
    const ALLOWANCE: u64 = 500;
    let f = PgFactory::new();
    let first = f.fresh();
    let a = setup(&first, 1_000);
    first
        .create_deployment(&per_request(&a, 1, ALLOWANCE, 20))
        .unwrap();
    let second = f.another(&first);
    let handles = [&first, &second];
    let threads = 2 * THREADS_PER_HANDLE;
    let outcomes: Vec<UsageOutcome> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let ledger = handles[(t % 2) as usize];
                let a = a.clone();
                s.spawn(move || {
                    let mut total = UsageOutcome::default();
                    // Thread t charges tasks t*30 .. t*30+60: each task id is sent by two
                    // threads (one of each handle for odd/even neighbours).
                    let tasks: Vec<u64> = (0..TASKS_PER_THREAD)
                        .map(|i| t * TASKS_PER_THREAD / 2 + i)
                        .collect();
                    for batch in tasks.chunks(5) {
                        let charges: Vec<_> =
                            batch.iter().map(|&k| charge(1, k, COST, 30)).collect();
                        let out = ledger.charge_usage(&charges).unwrap();
                        total.accepted += out.accepted;
                        total.duplicates += out.duplicates;
                        total.charged = total.charged.saturating_add(out.charged);
                        total.uncollected = total.uncollected.saturating_add(out.uncollected);
                        ledger.grant(&a, Credits::new(1), 40).unwrap();
                    }
                    total
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let distinct = (threads - 1) * TASKS_PER_THREAD / 2 + TASKS_PER_THREAD;
    let sent = threads * TASKS_PER_THREAD;
    let accepted: u64 = outcomes.iter().map(|o| u64::from(o.accepted)).sum();
    let duplicates: u64 = outcomes.iter().map(|o| u64::from(o.duplicates)).sum();
    let charged: u64 = outcomes.iter().map(|o| o.charged.get()).sum();
    let uncollected: u64 = outcomes.iter().map(|o| o.uncollected.get()).sum();
    assert_eq!(accepted, distinct);
    assert_eq!(duplicates, sent - distinct);
    assert!(distinct * COST > ALLOWANCE, "the allowance must run out");
    assert_eq!(charged, ALLOWANCE);
    assert_eq!(charged + uncollected, distinct * COST);
    let d = first.deployment(&dep_id(1)).unwrap().unwrap();
    assert_eq!(d.allowance_left, Credits::ZERO);
    assert_eq!(
        second.usage_totals(&dep_id(1)).unwrap(),
        (distinct, Credits::new(ALLOWANCE))
    );
    let grants = threads * TASKS_PER_THREAD / 5;
    assert_eq!(
        first.balance(&a).unwrap(),
        Credits::new(1_000 - ALLOWANCE + grants)
    );
    let t = first.totals().unwrap();
    assert!(t.is_conserved(), "{t:?}");
    assert_eq!(t.granted, Credits::new(1_000 + grants));
    assert_eq!(second.income(0, u64::MAX).unwrap(), Credits::new(ALLOWANCE));
}

/// Charges of one deployment arriving together on one handle (a dispatcher's usage reports
/// under load) wait for each other in the process rather than at the row lock: none fails
/// for another and runs again. Before they queued, each commit failed every charge waiting
/// for the row ("could not serialize access due to concurrent update"), and under load some
/// ran out of attempts.
#[test]
fn charges_of_one_deployment_on_one_handle_do_not_fail_each_other() {
    const THREADS: u64 = 8;
    const BATCHES: u64 = 10;
    const PER_BATCH: u64 = 5;
    const COST: u64 = 2;
    let f = PgFactory::new();
    let ledger = f.fresh();
    let a = setup(&ledger, 10_000);
    ledger
        .create_deployment(&per_request(&a, 1, 5_000, 20))
        .unwrap();
    let accepted: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let ledger = &ledger;
                s.spawn(move || {
                    let mut accepted = 0u64;
                    for b in 0..BATCHES {
                        let first = (t * BATCHES + b) * PER_BATCH;
                        let charges: Vec<_> = (first..first + PER_BATCH)
                            .map(|k| charge(1, k, COST, 30))
                            .collect();
                        accepted += u64::from(ledger.charge_usage(&charges).unwrap().accepted);
                    }
                    accepted
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(accepted, THREADS * BATCHES * PER_BATCH);
    assert_eq!(ledger.transaction_retries(), 0);
    let d = ledger.deployment(&dep_id(1)).unwrap().unwrap();
    assert_eq!(d.allowance_left, Credits::new(5_000 - accepted * COST));
    assert!(ledger.totals().unwrap().is_conserved());
}

/// A transaction that a concurrent one makes fail (here: a grant whose account row another
/// transaction updates and commits while the grant waits for it) is run again, and succeeds.
#[test]
fn a_serialization_failure_is_retried() {
    let f = PgFactory::new();
    let ledger = f.fresh();
    let a = setup(&ledger, 100);
    let other = raw(&f.url, ledger.schema());
    let watcher = raw(&f.url, ledger.schema());
    let mut blocker = other.get().unwrap();
    blocker
        .batch("BEGIN; UPDATE accounts SET balance = balance + 5 WHERE name = 'alice'")
        .unwrap();
    let granted = AtomicBool::new(false);
    let balance = std::thread::scope(|s| {
        let grant = s.spawn(|| {
            let b = ledger.grant(&a, Credits::new(7), 50);
            granted.store(true, Ordering::SeqCst);
            b
        });
        // Wait until the grant waits for the blocker's row lock, then commit the blocker: the
        // grant's snapshot is older than the committed update, a serialization failure.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut watch = watcher.get().unwrap();
        loop {
            let mut tx = watch.tx();
            let waiting = tx
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .unwrap();
            if waiting.get::<_, i64>(0) >= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the grant never waited for the lock"
            );
            assert!(!granted.load(Ordering::SeqCst), "the grant did not wait");
            std::thread::sleep(Duration::from_millis(10));
        }
        blocker.batch("COMMIT").unwrap();
        grant.join().unwrap()
    });
    // 100 granted, 5 added by the other transaction, then 7.
    assert_eq!(balance.unwrap(), Credits::new(112));
    assert!(ledger.transaction_retries() >= 1);
    assert_eq!(ledger.balance(&a).unwrap(), Credits::new(112));
}

#[test]
fn a_handle_works_inside_a_tokio_runtime() {
    let f = PgFactory::new();
    let ledger = f.fresh();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The dispatcher reads its ledger synchronously from async code at start-up.
    runtime.block_on(async {
        ledger.create_account(&name("bob"), 0).unwrap();
        assert_eq!(ledger.balance(&name("bob")).unwrap(), Credits::ZERO);
    });
    drop(runtime);
    assert!(ledger.latest_time_s().is_ok());
}

/// Dispatchers starting together on a new schema: one creates it and migrates, under the
/// advisory lock; every one connects, and the schema is migrated once.
#[test]
fn handles_connecting_together_migrate_once() {
    let f = PgFactory::new();
    let schema = format!("{}_together", f.prefix);
    f.schemas.borrow_mut().push(schema.clone());
    let ledgers: Vec<PgLedger> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PgLedger::connect_with(&f.url, &PgFactory::options(&schema))))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap().unwrap())
            .collect()
    });
    for l in &ledgers {
        assert_eq!(
            l.schema_version().unwrap(),
            PgLedger::current_schema_version()
        );
    }
    ledgers[0].create_account(&name("carol"), 0).unwrap();
    assert_eq!(ledgers[3].balance(&name("carol")).unwrap(), Credits::ZERO);
}

/// A pooled connection the server closed (a restart, an idle timeout) is replaced: the next
/// call runs on a new one. (Here the pool sees it closed when lending it; one whose closing
/// is noticed only at `BEGIN` is replaced by the transaction loop, a race this test does not
/// force.)
#[test]
fn a_connection_the_server_closed_is_replaced() {
    let f = PgFactory::new();
    let ledger = f.fresh();
    ledger.create_account(&name("dave"), 0).unwrap();
    let pid: i32 = {
        let mut conn = ledger.pool.get().unwrap();
        let mut tx = conn.tx();
        tx.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
    };
    terminate(&f.url, ledger.schema(), pid);
    assert_eq!(
        ledger.grant(&name("dave"), Credits::new(3), 1).unwrap(),
        Credits::new(3)
    );
    assert_eq!(ledger.balance(&name("dave")).unwrap(), Credits::new(3));
}

/// Ends the server session `pid` (as an administrator or a network cut would) and waits
/// until it is gone.
fn terminate(url: &str, schema: &str, pid: i32) {
    let killer = raw(url, schema);
    let mut conn = killer.get().unwrap();
    let mut tx = conn.tx();
    assert!(
        tx.query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap()
            .get::<_, bool>(0)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while tx
        .exists("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .unwrap()
    {
        assert!(Instant::now() < deadline, "backend {pid} never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The backend pid of the session holding the round-closing lock of `schema`, if one does.
fn round_lock_holder(url: &str, schema: &str) -> Option<i32> {
    let pool = raw(url, schema);
    let mut conn = pool.get().unwrap();
    let mut tx = conn.tx();
    tx.query(
        "SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 8286294502)",
        &[&format!("{schema}/rounds")],
    )
    .unwrap()
    .first()
    .map(|r| r.get(0))
}

/// Of three handles on one ledger, one at a time leads the round closing; one that resigns,
/// or is dropped (its process ended), is replaced by the next to ask; a handle on another
/// schema leads its own ledger meanwhile.
#[test]
fn one_handle_at_a_time_leads_the_round_closing() {
    let f = PgFactory::new();
    let a = f.fresh();
    let b = f.another(&a);
    let c = f.another(&a);
    let elsewhere = f.fresh();
    assert!(a.lead_rounds().unwrap());
    assert!(!b.lead_rounds().unwrap());
    assert!(!c.lead_rounds().unwrap());
    assert!(a.lead_rounds().unwrap(), "the leader still leads");
    assert!(
        elsewhere.lead_rounds().unwrap(),
        "another ledger has a leader of its own"
    );
    assert!(round_lock_holder(&f.url, a.schema()).is_some());
    a.resign_rounds();
    assert!(
        b.lead_rounds().unwrap(),
        "a resigned leader is replaced at once"
    );
    assert!(!a.lead_rounds().unwrap());
    assert!(!c.lead_rounds().unwrap());
    drop(b);
    // The server ends the dropped handle's session when its socket closes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.lead_rounds().unwrap() {
        assert!(
            Instant::now() < deadline,
            "nobody took over from a dropped leader"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!a.lead_rounds().unwrap());
}

/// A leader whose session the server ended (an administrator, a network cut the server's
/// keepalives found) does not go on leading: it says so, and another handle takes over.
#[test]
fn a_leader_whose_session_ended_stops_leading() {
    let f = PgFactory::new();
    let a = f.fresh();
    let b = f.another(&a);
    assert!(a.lead_rounds().unwrap());
    assert!(!b.lead_rounds().unwrap());
    let pid = round_lock_holder(&f.url, a.schema()).expect("the leader's session holds the lock");
    terminate(&f.url, a.schema(), pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.lead_rounds().unwrap() {
        assert!(
            Instant::now() < deadline,
            "nobody took over from an ended session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !a.lead_rounds().unwrap_or(false),
        "the old leader no longer leads"
    );
    assert!(!a.lead_rounds().unwrap());
    assert_ne!(round_lock_holder(&f.url, a.schema()), Some(pid));
}

/// The CA the test server's TLS certificate is signed with (`scripts/postgres.sh ca`, which
/// `scripts/test.sh` exports as `CRAT_TEST_POSTGRES_CA`).
fn test_ca() -> std::path::PathBuf {
    match std::env::var("CRAT_TEST_POSTGRES_CA") {
        Ok(path) if !path.is_empty() => path.into(),
        _ => panic!(
            "CRAT_TEST_POSTGRES_CA is not set: the TLS tests need the test server's CA. Run the \
             tests through scripts/test.sh, or set it to what `scripts/postgres.sh ca` prints"
        ),
    }
}

/// Whether the pooled connection `ledger` lends is encrypted, as the server sees it.
fn encrypted(ledger: &PgLedger) -> bool {
    let mut conn = ledger.pool.get().unwrap();
    let mut tx = conn.tx();
    tx.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .unwrap()
    .get(0)
}

/// `sslmode=require` with the server's CA: every connection is TLS, and the ledger works on
/// it. A CA file alone turns TLS on; `sslmode=disable` turns it off. Without the CA the
/// server's certificate chains to no trusted root, and the ledger refuses to connect rather
/// than use TLS unverified; a CA file that holds no certificate is refused.
#[test]
fn tls_to_the_server_is_verified_against_the_ca() {
    let f = PgFactory::new();
    let schema = format!("{}_tls", f.prefix);
    f.schemas.borrow_mut().push(schema.clone());
    let with_ca = PgOptions {
        ca_file: Some(test_ca()),
        ..PgFactory::options(&schema)
    };
    let required = format!("{}?sslmode=require", f.url);
    let ledger = PgLedger::connect_with(&required, &with_ca).unwrap();
    ledger.create_account(&name("tina"), 0).unwrap();
    assert_eq!(
        ledger.grant(&name("tina"), Credits::new(5), 1).unwrap(),
        Credits::new(5)
    );
    assert!(encrypted(&ledger));
    assert!(encrypted(
        &PgLedger::connect_with(&f.url, &with_ca).unwrap()
    ));
    let disabled = format!("{}?sslmode=disable", f.url);
    assert!(!encrypted(
        &PgLedger::connect_with(&disabled, &with_ca).unwrap()
    ));
    assert!(
        !encrypted(&f.another(&ledger)),
        "no TLS asked for, none used"
    );

    let e = PgLedger::connect_with(&required, &PgFactory::options(&schema)).unwrap_err();
    assert!(
        matches!(&e, LedgerError::Database(m) if m.contains("certificate")),
        "{e}"
    );
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "no certificate here").unwrap();
    let e = PgLedger::connect_with(
        &required,
        &PgOptions {
            ca_file: Some(not_pem.path().to_owned()),
            ..PgFactory::options(&schema)
        },
    )
    .unwrap_err();
    assert!(matches!(e, LedgerError::Invalid(_)), "{e}");
}
