//! Rounds: the ticker that drives the state machine's clock and closes each round once it
//! is due (ledger → `crat-rewards` → stored outcome, [`crate::rounds::store_round`]), and the
//! settler that pays closed rounds out ([`crate::rounds::settle_round`]).
//!
//! The two are separate loops so that settlement never holds up closing: a round is stored
//! when it is due whatever happened to the rounds before it. The settler lists the unsettled
//! rounds from the ledger on start and every tick and tries them oldest first; a round whose
//! settlement fails waits out [`SettleRetries`]' backoff (1 s doubling to 10 min, kept in
//! memory) while the others go on. Nothing of this state needs saving: after a restart the
//! ledger still lists every round not marked settled, and each is tried at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crat_core::id::DeploymentId;
use crat_core::money::Credits;
use crat_core::policy::lifecycle::{End, ends};
use crat_core::pricing::DeployPlan;
use crat_core::wire::WireError;
use crat_rewards::SettlementReceipt;
use crat_transport::Transport;

use super::{Counters, Dispatcher, DispatcherError};
use crate::ledger::{LedgerError, NODE_RECORDS_FORGOTTEN_PER_ROUND, UNSETTLED_ROUNDS_MAX};
use crate::rounds::{ClosedRound, RoundError, SettleRetries, settle_round, store_round};

impl<T: Transport> Dispatcher<T> {
    /// Ticks the state machine every `tick_ms` and closes the rounds that are due.
    pub(super) async fn tick_loop(self) {
        let period = Duration::from_millis(self.inner.config.tick_ms.max(10));
        loop {
            tokio::time::sleep(period).await;
            let now = self.inner.clock.now_s();
            let (effects, online) = {
                let mut d = self.inner.dispatch.lock();
                (d.tick(now), d.online_count())
            };
            metrics::gauge!(crate::metrics::NODES_ONLINE).set(online as f64);
            self.apply(effects).await;
            self.flush_sessions().await;
            self.settle_acks().await;
            self.refund_stopped().await;
            self.end_due_deployments(now).await;
            if self.lead_rounds().await
                && let Err(e) = self.store_due_rounds().await
            {
                // Another dispatcher may have stored it (two leaders for a moment): the next
                // round to close is read again from the ledger.
                *self.inner.next_round.lock() = None;
                tracing::error!(error = %e, "closing a round failed");
            }
        }
    }

    /// Asks the ledger whether this dispatcher closes rounds now ([`Ledger::lead_rounds`]),
    /// and notes a change: a dispatcher that starts leading reads the next round to close from
    /// the ledger (the one it remembered may have been closed by another meanwhile).
    ///
    /// [`Ledger::lead_rounds`]: crate::ledger::Ledger::lead_rounds
    async fn lead_rounds(&self) -> bool {
        let leads = match self.db(|l| l.lead_rounds()).await {
            Ok(leads) => leads,
            Err(e) => {
                // The database is out of reach: no round is closed meanwhile, and the lock is
                // asked for again next tick (this dispatcher goes on if nobody took it).
                tracing::warn!(error = ?e, "cannot tell whether this dispatcher closes rounds");
                self.inner.leading.store(false, Ordering::Relaxed);
                return false;
            }
        };
        if !leads {
            // Another dispatcher sharing the ledger holds the lock: it is the active one.
            self.inner.superseded.notify_one();
        }
        let was = self.inner.leading.swap(leads, Ordering::Relaxed);
        if leads != was {
            *self.inner.next_round.lock() = None;
            metrics::gauge!(crate::metrics::ROUND_LEADER).set(f64::from(u8::from(leads)));
            if leads {
                tracing::info!("this dispatcher now closes and settles rounds");
                self.announce().await;
            } else {
                tracing::warn!(
                    "this dispatcher no longer closes rounds (another one of its ledger does)"
                );
            }
        }
        leads
    }

    /// Settles the closed rounds not settled yet, every `tick_ms` while this dispatcher leads
    /// ([`Dispatcher::leads_rounds`]; at once on start when it does).
    pub(super) async fn settle_loop(self) {
        let period = Duration::from_millis(self.inner.config.tick_ms.max(10));
        loop {
            if self.inner.leading.load(Ordering::Relaxed)
                && let Err(e) = self.settle_pending().await
            {
                tracing::error!(error = %e, "listing unsettled rounds failed");
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Closes every round that ended at least `round_close_delay_s` ago and is not closed
    /// yet (the first round is the one the first node registered in), then settles what is
    /// unsettled ([`Dispatcher::settle_pending`]). Returns the rounds it closed, each with its
    /// receipt if it was settled now. A settlement failure does not stop the closing: the
    /// round is returned without a receipt and retried later.
    pub async fn close_due_rounds(&self) -> Result<Vec<ClosedRound>, DispatcherError> {
        let mut closed = self.store_due_rounds().await?;
        let receipts = self.settle_pending().await?;
        for c in &mut closed {
            c.receipt = receipts
                .iter()
                .find(|r| r.round_index == c.record.index)
                .cloned();
        }
        Ok(closed)
    }

    /// Stores every round that is due and not stored yet (no settlement).
    async fn store_due_rounds(&self) -> Result<Vec<ClosedRound>, DispatcherError> {
        // The rounds are closed over the sessions the ledger holds: the waiting ones first.
        self.flush_sessions().await;
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
            let inner = self.inner.clone();
            let (record, outcome) = tokio::task::spawn_blocking(move || inner.store(index))
                .await
                .map_err(|e| DispatcherError::Storage(format!("round task failed: {e}")))??;
            let payouts = crat_rewards::PayoutBatch::from_outcome(index, &outcome)
                .map_err(RoundError::from)?;
            // Records of nodes idle since well before this round hold nothing: forget them.
            let before_s = record
                .start_s
                .saturating_sub(self.inner.config.node_records_kept_s);
            match self
                .db(move |l| l.forget_idle_nodes(before_s, NODE_RECORDS_FORGOTTEN_PER_ROUND))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(round = index, nodes = n, "idle node records forgotten"),
                Err(e) => tracing::warn!(error = ?e, "forgetting idle node records failed"),
            }
            tracing::info!(
                round = index,
                paid_usd_micro = record.paid_usd_micro.get(),
                payouts = payouts.payouts.len(),
                "round closed"
            );
            Counters::add(&self.inner.counters.rounds_closed, 1);
            metrics::counter!(crate::metrics::ROUNDS_CLOSED_TOTAL).increment(1);
            closed.push(ClosedRound {
                record,
                outcome,
                payouts,
                receipt: None,
            });
            index += 1;
            *self.inner.next_round.lock() = Some(index);
        }
        *self.inner.next_round.lock() = Some(index);
        Ok(closed)
    }

    /// One pass over the closed rounds the ledger lists as unsettled (oldest first, at most
    /// [`UNSETTLED_ROUNDS_MAX`]): each whose backoff has run out is settled now. A failure is
    /// logged and backs that round off; the pass goes on with the next round. Returns the
    /// receipts of the rounds settled by this pass. Passes never overlap.
    pub async fn settle_pending(&self) -> Result<Vec<SettlementReceipt>, DispatcherError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut retries = inner.settle_retries.lock();
            let pending = inner.ledger.unsettled_rounds(UNSETTLED_ROUNDS_MAX)?;
            retries.retain(|i| pending.binary_search(&i).is_ok());
            let mut receipts = Vec::new();
            for index in pending {
                let now_ms = inner.monotonic_ms();
                if !retries.is_due(index, now_ms) {
                    continue;
                }
                match inner.settle_now(index) {
                    Ok(closed) => {
                        retries.settled(index);
                        if let Some(r) = closed.receipt {
                            inner.count_settled(&r);
                            receipts.push(r);
                        }
                    }
                    Err(e) => {
                        let wait_ms = retries.failed(index, now_ms);
                        Counters::add(&inner.counters.settlement_failures, 1);
                        metrics::counter!(crate::metrics::SETTLEMENT_FAILURES_TOTAL).increment(1);
                        tracing::warn!(
                            round = index,
                            error = %e,
                            failures = retries.failures(index),
                            retry_in_ms = wait_ms,
                            "settling a round failed; it stays unsettled and is retried"
                        );
                    }
                }
            }
            Ok::<_, DispatcherError>(receipts)
        })
        .await
        .map_err(|e| DispatcherError::Storage(format!("settlement task failed: {e}")))?
    }

    /// Closes round `index` now and settles it now, whatever its backoff (idempotent: a
    /// stored round is only settled again, which pays nothing twice). A settlement failure
    /// is returned; the round stays stored and unsettled, and the settler retries it.
    pub async fn close_round(&self, index: u64) -> Result<ClosedRound, DispatcherError> {
        self.flush_sessions().await;
        let inner = self.inner.clone();
        let closed = tokio::task::spawn_blocking(move || {
            let stored = inner.ledger.round(index)?.is_some();
            inner.store(index)?;
            if !stored {
                Counters::add(&inner.counters.rounds_closed, 1);
                metrics::counter!(crate::metrics::ROUNDS_CLOSED_TOTAL).increment(1);
            }
            let mut retries = inner.settle_retries.lock();
            let result = inner.settle_now(index);
            match &result {
                Ok(closed) => {
                    retries.settled(index);
                    if let Some(r) = &closed.receipt {
                        inner.count_settled(r);
                    }
                }
                Err(_) => {
                    retries.failed(index, inner.monotonic_ms());
                    Counters::add(&inner.counters.settlement_failures, 1);
                    metrics::counter!(crate::metrics::SETTLEMENT_FAILURES_TOTAL).increment(1);
                }
            }
            result
        })
        .await
        .map_err(|e| DispatcherError::Storage(format!("round task failed: {e}")))??;
        Ok(closed)
    }
}

impl<T: Transport> super::Inner<T> {
    /// Milliseconds since the dispatcher started, on the monotonic clock (backoff only:
    /// wall-clock jumps neither hasten nor stall retries).
    fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Computes and stores round `index` (blocking; see [`store_round`]).
    fn store(
        &self,
        index: u64,
    ) -> Result<(crate::ledger::RoundRecord, crat_rewards::RoundOutcome), RoundError> {
        store_round(
            &*self.ledger,
            &self.config.rewards,
            &self.config.pricing,
            self.config.round_clock(),
            index,
        )
    }

    /// Settles stored round `index` with the settlement (blocking; its lock held meanwhile).
    fn settle_now(&self, index: u64) -> Result<ClosedRound, RoundError> {
        let mut settlement = self.settlement.lock();
        settle_round(&*self.ledger, index, &mut **settlement, self.clock.now_s())
    }

    fn count_settled(&self, r: &SettlementReceipt) {
        if r.newly_settled {
            Counters::add(&self.counters.rounds_settled, 1);
        }
        tracing::info!(
            round = r.round_index,
            payouts = r.payouts,
            total_usd_micro = r.total_usd_micro.get(),
            digest = %r.digest_hex,
            newly_settled = r.newly_settled,
            "round settled"
        );
    }
}

/// A fresh settler's state (no round failing yet).
pub(super) fn settle_retries() -> parking_lot::Mutex<SettleRetries> {
    parking_lot::Mutex::new(SettleRetries::new())
}

impl<T: Transport> Dispatcher<T> {
    /// Stops the deployments that end by themselves at `now` ([`crat_core::policy::lifecycle`]):
    /// per-instance reservations past their lifetime, per-request deployments spent for
    /// [`DispatcherConfig::spent_deployment_idle_s`](super::DispatcherConfig), and those
    /// whose model failed to load on several nodes
    /// ([`crat_core::dispatch::Dispatch::failed_deployments`]; they describe themselves as
    /// `Failed` with the nodes' reasons); and finishes the stops that did not reach the ledger
    /// (an owner's undeploy or a load failure whose write failed). Runs every tick; returns
    /// what it stopped.
    pub async fn end_due_deployments(&self, now: u64) -> Vec<(DeploymentId, End)> {
        let idle_s = self.inner.config.spent_deployment_idle_s;
        let mut ending: Vec<(DeploymentId, End)> = {
            let deployments = self.inner.deployments.read();
            let mut spent = self.inner.spent_since.lock();
            spent.retain(|id, _| {
                deployments
                    .get(id)
                    .is_some_and(|d| d.stopped_at_s.is_none())
            });
            deployments
                .values()
                .filter(|d| d.stopped_at_s.is_none())
                .filter_map(|d| {
                    let since = match d.plan {
                        DeployPlan::PerRequest(_) if d.allowance_left == Credits::ZERO => {
                            Some(*spent.entry(d.id).or_insert(now))
                        }
                        _ => None,
                    };
                    ends(
                        &d.plan,
                        d.created_at_s,
                        d.allowance_left,
                        since,
                        now,
                        idle_s,
                    )
                    .map(|end| (d.id, end))
                })
                .collect()
        };
        // Models that failed to load on several nodes (the dispatch state machine counts):
        // their reasons are recorded first (a deployment described between leaving the
        // dispatch state and its stop reaching the ledger reads as failed, with them).
        let failed = self.inner.dispatch.lock().failed_deployments();
        {
            let mut failures = self.inner.load_failures.lock();
            for (id, reasons) in &failed {
                failures.insert(*id, reasons.join("; "));
            }
        }
        let failed = failed.into_iter().map(|(id, _)| id);
        // A deployment the ledger does not record as stopped that the dispatch state no
        // longer holds is one whose stop did not reach the ledger: the write failed (or is
        // under way; a stop is idempotent). Deploying enters the dispatch state before the
        // ledger and this map, and stopping leaves it first, so nothing else looks like
        // that. Without this, nothing would name it again before a restart (which would serve
        // it once more), and its allowance would stay held. Read one lock at a time.
        let unstopped: Vec<DeploymentId> = self
            .inner
            .deployments
            .read()
            .values()
            .filter(|d| d.stopped_at_s.is_none())
            .map(|d| d.id)
            .collect();
        let orphaned: Vec<DeploymentId> = {
            let dispatch = self.inner.dispatch.lock();
            unstopped
                .into_iter()
                .filter(|id| dispatch.deployment_state(id).is_none())
                .collect()
        };
        for id in failed.chain(orphaned) {
            let end = if self.inner.load_failures.lock().contains_key(&id) {
                End::LoadFailed
            } else {
                End::Undeployed
            };
            match ending.iter_mut().find(|(e, _)| *e == id) {
                Some(entry) => entry.1 = end,
                None => ending.push((id, end)),
            }
        }
        let mut stopped = Vec::with_capacity(ending.len());
        for (id, end) in ending {
            tracing::info!(deployment = %id, ?end, "deployment ended");
            match self.stop(id, now).await {
                Ok(()) => stopped.push((id, end)),
                Err(e) => {
                    tracing::error!(deployment = %id, error = ?e, "ending a deployment failed");
                }
            }
        }
        stopped
    }
}
