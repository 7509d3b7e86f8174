//! Acknowledged usage: the glue between [`crat_core::policy::acks`] and the ledger.
//!
//! Clients send their signed acknowledgements ([`ClientCall::Acknowledge`]), nodes forward the
//! latest ones with their usage. After [`check_ack`], each that is new to the
//! [`AckBook`](crat_core::policy::acks::AckBook) (a pair it does not hold, or more tasks than
//! it holds) is stored in the ledger ([`Ledger::store_acks`], one transaction per message)
//! before the client is answered, and only then taken into the book, with what the ledger
//! says was charged against it already. Usage records are charged only within the book's
//! entries (see `node.rs`), and the ledger counts each charge against its acknowledgement in
//! the charge's own transaction. Every tick the pairs whose usage window ended are settled by
//! the ledger ([`Ledger::settle_acks`]): acknowledged work that no record charged is charged
//! from the acknowledgement, as one usage row per (ticket, node), and the pair is marked
//! settled in the same transaction.
//!
//! So nothing acknowledged is lost to a restart, nothing is settled twice, and a restarted
//! dispatcher takes back (`Dispatcher::new`) the unsettled pairs with their charged tallies:
//! a node's records are admitted only within what was not charged before the restart.
//!
//! **Beyond the book's capacity** (`acks_tracked_max`): an acknowledgement the book has no
//! room for is stored all the same and answered `Ok`; so are the unsettled pairs a restart
//! finds beyond the capacity (a warning says how many). Nothing of them is dropped: their
//! records are held (nodes report them again) until the window ends, and the ledger's
//! settlement then charges the acknowledged work from the acknowledgement. A later
//! acknowledgement of such a pair, once the book has room, takes it into the book with its
//! charged tally.
//!
//! [`ClientCall::Acknowledge`]: crat_core::wire::ClientCall::Acknowledge
//! [`Ledger::store_acks`]: crate::ledger::Ledger::store_acks
//! [`Ledger::settle_acks`]: crate::ledger::Ledger::settle_acks

use std::collections::HashSet;

use crat_core::id::{DeploymentId, NodeId, TaskId};
use crat_core::policy::acks::{AckError, AckProof, Tally, check_ack};
use crat_core::wire::{ACKS_MAX, ErrorCode, UsageRecord};
use crat_transport::Transport;

use super::node::deployments_touched;
use super::reply::{Refusal, err};
use super::{Counters, Dispatcher};
use crate::ledger::{AckRecord, INTEGER_MAX, StoredAck, UsageCharge};

/// Most stopped deployments refunded per tick; more wait for the next tick.
const STOPPED_REFUNDED_PER_TICK_MAX: u32 = 1_024;

/// Most (ticket, node) pairs the ledger settles per tick; more wait for the next tick.
const ACKS_SETTLED_PER_TICK_MAX: u32 = 1_024;

/// [`ErrorCode::TooLarge`] for more than [`ACKS_MAX`] acknowledgements in one message.
pub(super) fn check_ack_count(n: usize) -> Result<(), Refusal> {
    if n > ACKS_MAX {
        return Err(err(
            ErrorCode::TooLarge,
            format!("more than {ACKS_MAX} acknowledgements"),
        )
        .into());
    }
    Ok(())
}

/// The inputs digest of a settlement row: no task's inputs hash to it in practice (all 0xff),
/// and it keeps settlement rows apart from every task's.
const SETTLEMENT_DIGEST: [u8; 32] = [0xff; 32];

/// The charge settling `a` at `now` (its acknowledged work no record charged), as one usage
/// row with a task id of its own per (ticket, node); `None` when nothing is left to charge
/// or its deployment is no longer active (its allowance went back to the account).
fn settlement_charge(
    a: &StoredAck,
    now: u64,
    active: &HashSet<DeploymentId>,
) -> Option<UsageCharge> {
    let u = a.entry.unreported(a.ticket_nonce, a.node)?;
    if !active.contains(&u.deployment) {
        return None;
    }
    let mut id = blake3::Hasher::new();
    id.update(b"crat/v1/unreported-usage\0");
    id.update(&u.ticket_nonce);
    id.update(u.node.as_bytes());
    let mut task = [0u8; 16];
    task.copy_from_slice(&id.finalize().as_bytes()[..16]);
    tracing::info!(node = %u.node, deployment = %u.deployment, tasks = u.tasks, credits = %u.credits, "acknowledged work never reported: charged from the acknowledgement");
    Some(UsageCharge {
        record: UsageRecord {
            task: TaskId::from_bytes(task),
            deployment: u.deployment,
            inputs_digest: SETTLEMENT_DIGEST,
            key: u.key,
            ticket_nonce: u.ticket_nonce,
            input_bytes: 0,
            output_bytes: 0,
            compute_us: 0,
        },
        node: u.node,
        cost: u.credits,
        at_s: now,
    })
}

impl<T: Transport> Dispatcher<T> {
    /// Checks, stores and records acknowledgements a client sends (at most [`ACKS_MAX`]).
    /// One that does not check out refuses the call (none is stored); the answer comes after
    /// the ledger committed them.
    pub(super) async fn acknowledge(&self, proofs: &[AckProof]) -> Result<(), Refusal> {
        check_ack_count(proofs.len())?;
        let records = proofs
            .iter()
            .map(|p| self.checked_ack(p, None))
            .collect::<Result<Vec<_>, _>>()?;
        self.take_acks(records).await
    }

    /// Stores and records the acknowledgements `node` forwards with its usage (of its own
    /// work only), skipping (and logging) any that do not check out: its records stay held
    /// until a good one comes.
    pub(super) async fn forwarded_acks(&self, proofs: &[AckProof], node: NodeId) {
        let records = proofs
            .iter()
            .take(ACKS_MAX)
            .filter_map(|proof| match self.checked_ack(proof, Some(node)) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(%node, error = ?e, "forwarded acknowledgement not taken");
                    None
                }
            })
            .collect();
        if let Err(e) = self.take_acks(records).await {
            tracing::warn!(%node, error = ?e, "forwarded acknowledgements not stored");
        }
    }

    /// Checks one acknowledgement; `forwarder`, when a node forwards it, must be the node
    /// whose work it acknowledges.
    fn checked_ack(
        &self,
        proof: &AckProof,
        forwarder: Option<NodeId>,
    ) -> Result<AckRecord, Refusal> {
        let (ticket, ack) = check_ack(proof, &self.inner.id).map_err(|e| match e {
            AckError::Mismatch => err(ErrorCode::BadRequest, e.to_string()),
            _ => err(ErrorCode::Unauthenticated, e.to_string()),
        })?;
        if forwarder.is_some_and(|n| n != ack.node) {
            return Err(err(
                ErrorCode::BadRequest,
                "an acknowledgement of another node's work",
            )
            .into());
        }
        if ack.tasks > INTEGER_MAX || ack.credits.get() > INTEGER_MAX {
            return Err(err(
                ErrorCode::BadRequest,
                format!("an acknowledgement of more than {INTEGER_MAX} tasks or credits"),
            )
            .into());
        }
        Ok(AckRecord {
            ticket_nonce: ack.ticket_nonce,
            node: ack.node,
            deployment: ticket.deployment,
            key: ticket.key,
            settle_at_s: ticket
                .expires_at_s
                .saturating_add(self.inner.config.usage_grace_s),
            acked: Tally::of(ack),
        })
    }

    /// Stores checked acknowledgements in one ledger transaction, then takes them into the
    /// book with what the ledger says was charged. One the book holds already with as many
    /// tasks or more is stored already (the book takes nothing the ledger has not).
    async fn take_acks(&self, records: Vec<AckRecord>) -> Result<(), Refusal> {
        let taken = records.len() as u64;
        let fresh: Vec<AckRecord> = {
            let book = self.inner.acks.lock();
            records
                .into_iter()
                .filter(|r| {
                    book.entry(&r.ticket_nonce, &r.node)
                        .is_none_or(|held| r.acked.tasks > held.acked.tasks)
                })
                .collect()
        };
        if !fresh.is_empty() {
            let stored = self.db(move |l| l.store_acks(&fresh)).await?;
            let mut untracked = 0u32;
            {
                let mut book = self.inner.acks.lock();
                for s in stored.into_iter().flatten() {
                    if book
                        .restore(s.ticket_nonce, s.node, s.entry, s.settle_at_s)
                        .is_err()
                    {
                        untracked += 1;
                    }
                }
            }
            if untracked > 0 {
                tracing::warn!(
                    untracked,
                    "acknowledgements beyond the book's capacity: stored, their records held \
                     until their windows end, then settled from the ledger"
                );
            }
        }
        Counters::add(&self.inner.counters.acks, taken);
        Ok(())
    }

    /// Settles the pairs whose usage window ended by now: the book forgets them, and the
    /// ledger charges the acknowledged work that no usage record charged (a node that died
    /// before reporting, say) and marks them settled, in one transaction, from its own
    /// tallies (they hold every committed charge; a charge committed after the settlement
    /// finds its pair settled and charges nothing). Pairs the book never held (beyond its
    /// capacity) and pairs a failed settlement left are settled the same way.
    pub(super) async fn settle_acks(&self) {
        let now = self.inner.clock.now_s();
        drop(self.inner.acks.lock().settle(now));
        let active: HashSet<DeploymentId> = self.inner.deployments.read().keys().copied().collect();
        let settled = self
            .db(move |l| {
                let s = l.settle_acks(now, ACKS_SETTLED_PER_TICK_MAX, &mut |a| {
                    settlement_charge(a, now, &active)
                })?;
                let after = deployments_touched(l, &s.charges)?;
                Ok((s, after))
            })
            .await;
        match settled {
            Ok((s, after)) => {
                Counters::add(
                    &self.inner.counters.usage_settled,
                    u64::from(s.outcome.accepted),
                );
                crate::metrics::usage_records("settled", u64::from(s.outcome.accepted));
                self.store_deployments(after);
            }
            Err(e) => tracing::error!(error = ?e, "acknowledged usage not settled"),
        }
    }

    /// Refunds the stopped deployments whose usage window ended (after their
    /// acknowledgements were settled, earlier in the same tick) and forgets them.
    pub(super) async fn refund_stopped(&self) {
        // Every stopping deployment is in memory (loaded at start too): without one, no
        // write transaction is opened.
        let stopping = self
            .inner
            .deployments
            .read()
            .values()
            .any(|d| d.stopped_at_s.is_some());
        if !stopping {
            return;
        }
        let now = self.inner.clock.now_s();
        match self
            .db(move |l| l.refund_stopped(now, STOPPED_REFUNDED_PER_TICK_MAX))
            .await
        {
            Ok(refunded) => {
                let mut deployments = self.inner.deployments.write();
                let mut failures = self.inner.load_failures.lock();
                for d in refunded {
                    tracing::info!(deployment = %d.id, "stopped deployment refunded");
                    deployments.remove(&d.id);
                    failures.remove(&d.id);
                }
            }
            Err(e) => tracing::error!(error = ?e, "stopped deployments not refunded"),
        }
    }
}
