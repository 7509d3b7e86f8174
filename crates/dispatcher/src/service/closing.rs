//! Rounds: the ticker that drives the state machine's clock and closes each round once it
//! is due (ledger → `crat-rewards` → stored outcome → settlement, in [`crate::rounds`]).

use std::time::Duration;

use crat_core::wire::WireError;
use crat_transport::Transport;

use super::{Counters, Dispatcher, DispatcherError};
use crate::ledger::LedgerError;
use crate::rounds::{ClosedRound, close_round};

impl<T: Transport> Dispatcher<T> {
    /// Ticks the state machine every `tick_ms` and closes the rounds that are due.
    pub(super) async fn tick_loop(self) {
        let period = Duration::from_millis(self.inner.config.tick_ms.max(10));
        loop {
            tokio::time::sleep(period).await;
            let now = self.inner.clock.now_s();
            let effects = self.inner.dispatch.lock().tick(now);
            self.apply(effects).await;
            self.settle_acks().await;
            match self.close_due_rounds().await {
                Ok(closed) => {
                    for c in closed {
                        tracing::info!(
                            round = c.record.index,
                            paid_usd_micro = c.record.paid_usd_micro.get(),
                            payouts = c.payouts.payouts.len(),
                            "round closed"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "closing a round failed"),
            }
        }
    }

    /// Closes every round that ended at least `round_close_delay_s` ago and is not closed
    /// yet (the first round is the one the first node registered in). Returns what it
    /// closed.
    pub async fn close_due_rounds(&self) -> Result<Vec<ClosedRound>, DispatcherError> {
        let now = self.inner.clock.now_s();
        let clock = self.inner.config.round_clock();
        let next = {
            let cached = *self.inner.next_round.lock();
            match cached {
                Some(n) => n,
                None => {
                    let (last, first_reg) = self
                        .db(|l| {
                            let last = l.last_round()?;
                            let first = l.nodes()?.iter().map(|n| n.registered_at_s).min();
                            Ok::<_, LedgerError>((last, first))
                        })
                        .await
                        .map_err(|e| DispatcherError::Storage(WireError::from(e).message))?;
                    match (last, first_reg) {
                        (Some(r), _) => r.index + 1,
                        (None, Some(t)) => clock.index_at(t),
                        (None, None) => return Ok(Vec::new()),
                    }
                }
            }
        };
        let mut closed = Vec::new();
        let mut index = next;
        while clock
            .start(index + 1)
            .saturating_add(self.inner.config.round_close_delay_s)
            <= now
        {
            closed.push(self.close_round(index).await?);
            index += 1;
        }
        *self.inner.next_round.lock() = Some(index);
        Ok(closed)
    }

    /// Closes round `index` now (idempotent: a stored round is only settled again).
    pub async fn close_round(&self, index: u64) -> Result<ClosedRound, DispatcherError> {
        let inner = self.inner.clone();
        let closed = tokio::task::spawn_blocking(move || {
            let mut settlement = inner.settlement.lock();
            close_round(
                &*inner.ledger,
                &inner.config.rewards,
                &inner.config.pricing,
                inner.config.round_clock(),
                index,
                &mut **settlement,
            )
        })
        .await
        .map_err(|e| DispatcherError::Storage(format!("round task failed: {e}")))??;
        Counters::add(&self.inner.counters.rounds_closed, 1);
        Ok(closed)
    }
}
