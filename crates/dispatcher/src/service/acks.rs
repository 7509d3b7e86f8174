//! Acknowledged usage: the glue between [`crat_core::policy::acks`] and the ledger.
//!
//! Clients send their signed acknowledgements ([`ClientCall::Acknowledge`]), nodes forward the
//! latest ones with their usage; both land in the [`AckBook`](crat_core::policy::acks::AckBook)
//! after [`check_ack`]. Usage records are charged only within them (see `node.rs`), and every
//! tick the tickets whose usage window ended are settled: acknowledged work that no record
//! charged is charged from the acknowledgement, as one usage row per (ticket, node).
//!
//! [`ClientCall::Acknowledge`]: crat_core::wire::ClientCall::Acknowledge

use crat_core::id::{NodeId, TaskId};
use crat_core::policy::acks::{AckError, AckProof, check_ack};
use crat_core::wire::{ACKS_MAX, ErrorCode, UsageRecord};
use crat_transport::Transport;

use super::node::charge_and_reload;
use super::reply::{Refusal, err};
use super::{Counters, Dispatcher};
use crate::ledger::UsageCharge;

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

impl<T: Transport> Dispatcher<T> {
    /// Checks and records acknowledgements a client sends (at most [`ACKS_MAX`]). One that
    /// does not check out refuses the call; one the book has no room for answers `Busy` (the
    /// client sends it again later).
    pub(super) fn acknowledge(&self, proofs: &[AckProof], now: u64) -> Result<(), Refusal> {
        check_ack_count(proofs.len())?;
        for proof in proofs {
            self.acknowledge_one(proof, None, now)?;
        }
        Ok(())
    }

    /// Records the acknowledgements `node` forwards with its usage (of its own work only),
    /// skipping (and logging) any that do not check out: its records stay held until a good
    /// one comes.
    pub(super) fn forwarded_acks(&self, proofs: &[AckProof], node: NodeId, now: u64) {
        for proof in proofs.iter().take(ACKS_MAX) {
            if let Err(e) = self.acknowledge_one(proof, Some(node), now) {
                tracing::warn!(%node, error = ?e, "forwarded acknowledgement not taken");
            }
        }
    }

    /// Records one acknowledgement; `forwarder`, when a node forwards it, must be the node
    /// whose work it acknowledges.
    fn acknowledge_one(
        &self,
        proof: &AckProof,
        forwarder: Option<NodeId>,
        now: u64,
    ) -> Result<(), Refusal> {
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
        let settle_at_s = ticket
            .expires_at_s
            .saturating_add(self.inner.config.usage_grace_s);
        self.inner
            .acks
            .lock()
            .acknowledge(ack, ticket.deployment, ticket.key, settle_at_s, now)
            .map_err(|e| err(ErrorCode::Busy, format!("acknowledgements: {e}")))?;
        Counters::add(&self.inner.counters.acks, 1);
        Ok(())
    }

    /// Charges the acknowledged work that no usage record charged, of the tickets whose
    /// usage window ended by now (a node that died before reporting, say).
    pub(super) async fn settle_acks(&self) {
        let now = self.inner.clock.now_s();
        let unreported = self.inner.acks.lock().settle(now);
        if unreported.is_empty() {
            return;
        }
        let charges: Vec<UsageCharge> = unreported
            .into_iter()
            .filter(|u| self.inner.deployments.read().contains_key(&u.deployment))
            .map(|u| {
                let mut id = blake3::Hasher::new();
                id.update(b"crat/v1/unreported-usage\0");
                id.update(&u.ticket_nonce);
                id.update(u.node.as_bytes());
                let mut task = [0u8; 16];
                task.copy_from_slice(&id.finalize().as_bytes()[..16]);
                tracing::info!(node = %u.node, deployment = %u.deployment, tasks = u.tasks, credits = %u.credits, "acknowledged work never reported: charged from the acknowledgement");
                UsageCharge {
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
                }
            })
            .collect();
        let n = charges.len() as u64;
        match self.db(move |l| charge_and_reload(l, &charges)).await {
            Ok((_, after)) => {
                Counters::add(&self.inner.counters.usage_settled, n);
                self.store_deployments(after);
            }
            Err(e) => tracing::error!(error = ?e, "acknowledged usage not settled"),
        }
    }
}
