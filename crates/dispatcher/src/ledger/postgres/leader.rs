//! Which of the dispatchers sharing one PostgreSQL ledger closes and settles rounds: the one
//! holding a session-level advisory lock of the ledger's schema, taken on a connection of its
//! own ([`super::PgLedger`]'s [`Ledger::lead_rounds`](crate::ledger::Ledger::lead_rounds)).
//!
//! - **One at a time.** PostgreSQL grants the lock to one session; the others' tries answer
//!   `false` at once (`pg_try_advisory_lock`, never a wait).
//! - **A crashed leader is replaced within a bounded time.** The lock lives as long as its
//!   session: a process that dies closes its socket, and the server drops the session (and the
//!   lock) at once; a machine that vanishes is found dead by the server's TCP keepalives, set
//!   on the lock's session to [`KEEPALIVE_IDLE_S`] + [`KEEPALIVE_COUNT`] ×
//!   [`KEEPALIVE_INTERVAL_S`] seconds. The next follower to try then takes it.
//! - **A leader that cannot reach the server stops leading first.** Each call checks the
//!   session with a query answered within [`CHECK_TIMEOUT`], shorter than the server's
//!   keepalive window: a leader cut off from the database says `false` before the server can
//!   have granted the lock to another.
//! - **Nothing depends on that for money.** A round is stored once (`close_round` of a stored
//!   index is `Exists`) and settling is idempotent: two leaders for a moment store nothing
//!   twice and pay nothing twice.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_postgres::Client;

use super::pool::{Pool, describe};
use crat_core::id::PeerAddr;

use crate::ledger::LedgerError;

/// Seconds of silence before the server probes the lock's connection.
pub(super) const KEEPALIVE_IDLE_S: u32 = 5;
/// Seconds between the server's probes.
pub(super) const KEEPALIVE_INTERVAL_S: u32 = 2;
/// Unanswered probes after which the server drops the session and its lock.
pub(super) const KEEPALIVE_COUNT: u32 = 3;
/// How long the leader waits for the check of its session.
pub(super) const CHECK_TIMEOUT: Duration = Duration::from_secs(4);

/// The lock's session, when this handle has one.
#[derive(Default)]
pub(super) struct Leadership {
    state: Mutex<Option<Session>>,
}

struct Session {
    client: Arc<Client>,
    holds: bool,
}

impl Leadership {
    /// Whether this handle holds the lock of `schema` now: checks the session when it holds
    /// it, tries to take it otherwise (see the module documentation).
    pub(super) fn lead(&self, pool: &Pool, schema: &str) -> Result<bool, LedgerError> {
        let mut state = self.state.lock();
        if state.as_ref().is_some_and(|s| s.client.is_closed()) {
            *state = None;
        }
        if state.is_none() {
            let client = pool.dedicated()?;
            let c = client.clone();
            let setup = format!(
                "SET tcp_keepalives_idle = {KEEPALIVE_IDLE_S};
                 SET tcp_keepalives_interval = {KEEPALIVE_INTERVAL_S};
                 SET tcp_keepalives_count = {KEEPALIVE_COUNT}"
            );
            match pool.within(CHECK_TIMEOUT, async move { c.batch_execute(&setup).await })? {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(LedgerError::Database(describe(&e))),
                None => return Ok(false),
            }
            *state = Some(Session {
                client,
                holds: false,
            });
        }
        let session = state.as_mut().expect("a session was made above");
        let client = session.client.clone();
        let answer = if session.holds {
            pool.within(CHECK_TIMEOUT, async move {
                client.simple_query("SELECT 1").await.map(|_| true)
            })?
        } else {
            let key = format!("{schema}/rounds");
            pool.within(CHECK_TIMEOUT, async move {
                let row = client
                    .query_one(
                        "SELECT pg_try_advisory_lock(hashtextextended($1, 8286294502))",
                        &[&key],
                    )
                    .await?;
                row.try_get::<_, bool>(0)
            })?
        };
        match answer {
            Some(Ok(holds)) => {
                session.holds = holds;
                Ok(holds)
            }
            Some(Err(e)) => {
                // The session failed: whatever it held is gone with it.
                *state = None;
                Err(LedgerError::Database(format!(
                    "the round-closing lock's session: {}",
                    describe(&e)
                )))
            }
            None => {
                // No answer in time: this handle must not act as the leader. The session is
                // dropped (a late answer cannot make it lead again).
                *state = None;
                Ok(false)
            }
        }
    }

    /// Records `addr` as the active dispatcher's, on the lock's own session and only while it
    /// holds the lock (so that a dispatcher that lost it cannot overwrite its successor's).
    pub(super) fn announce(&self, pool: &Pool, addr: &PeerAddr) -> Result<(), LedgerError> {
        let state = self.state.lock();
        let Some(session) = state.as_ref().filter(|s| s.holds) else {
            return Err(LedgerError::Invalid(
                "only the dispatcher that leads announces itself".into(),
            ));
        };
        let client = session.client.clone();
        let addr = addr.as_str().to_owned();
        match pool.within(CHECK_TIMEOUT, async move {
            client
                .execute(
                    "INSERT INTO active_dispatcher (one, addr) VALUES (TRUE, $1)
                     ON CONFLICT (one) DO UPDATE SET addr = EXCLUDED.addr",
                    &[&addr],
                )
                .await
        })? {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(LedgerError::Database(describe(&e))),
            None => Err(LedgerError::Database(
                "announcing the active dispatcher timed out".into(),
            )),
        }
    }

    /// Lets go of the lock, so that another dispatcher takes it at once: unlocked on its own
    /// session, which is then closed. (Closing alone releases it too, but only once the server
    /// has noticed the socket close, a moment later.)
    pub(super) fn resign(&self, pool: &Pool) {
        let Some(session) = self.state.lock().take() else {
            return;
        };
        if session.holds {
            let client = session.client.clone();
            // Best effort: if it fails or times out, closing the session releases the lock.
            let _ = pool.within(CHECK_TIMEOUT, async move {
                client.simple_query("SELECT pg_advisory_unlock_all()").await
            });
        }
    }
}
