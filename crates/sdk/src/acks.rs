//! What a deployment handle received from each node under each ticket, and the signed,
//! cumulative acknowledgements it gives for it (see `crat_core::policy::acks`): with the next
//! task sent to that node every [`ClientConfig::ack_every_tasks`](crate::ClientConfig)
//! answers, and to the dispatcher every [`ClientConfig::ack_flush_ms`](crate::ClientConfig),
//! at lease renewals and on [`Deployment::flush_acks`](crate::Deployment::flush_acks).
//!
//! The answer the caller gets is acknowledged at its price; a spot check's other answers are
//! acknowledged at no cost (the client pays a task once; validators are paid in CRAT).

use std::collections::HashMap;

use crat_core::id::{NodeId, TaskId};
use crat_core::money::Credits;
use crat_core::policy::acks::{AckProof, Tally};
use crat_core::sign::{Ack, Signed, TICKET_LIFETIME_S_MAX, Ticket};
use ed25519_dalek::SigningKey;

/// One ticket at one node.
struct Received {
    ticket: Signed<Ticket>,
    tally: Tally,
    /// Tasks in the last acknowledgement given to the node.
    given: u64,
    /// Tasks in the last acknowledgement the dispatcher accepted.
    reported: u64,
}

/// A (ticket nonce, node) pair.
pub(crate) type Pair = ([u8; 16], NodeId);

/// The acknowledgements of one deployment handle.
pub(crate) struct AckLedger {
    entries: HashMap<Pair, Received>,
}

impl AckLedger {
    pub(crate) fn new() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }

    /// Counts an answer to `task` (inputs `inputs_digest`) received from `node` under
    /// `ticket`, at `cost`.
    pub(crate) fn received(
        &mut self,
        ticket: &Signed<Ticket>,
        node: NodeId,
        task: &TaskId,
        inputs_digest: &[u8; 32],
        cost: Credits,
    ) {
        let entry = self
            .entries
            .entry((ticket.body.nonce, node))
            .or_insert_with(|| Received {
                ticket: ticket.clone(),
                tally: Tally::default(),
                given: 0,
                reported: 0,
            });
        // A tally that would overflow stays as it is: the node stops serving the ticket
        // long before, and a new lease starts a new one.
        let _ = entry.tally.add(task, inputs_digest, cost);
    }

    /// A fresh acknowledgement for `node` under ticket `nonce` when at least `every` answers
    /// came since the last one it was given.
    pub(crate) fn due(
        &mut self,
        nonce: [u8; 16],
        node: NodeId,
        every: u64,
        identity: &SigningKey,
    ) -> Option<Signed<Ack>> {
        let entry = self.entries.get_mut(&(nonce, node))?;
        if entry.tally.tasks < entry.given.saturating_add(every.max(1)) {
            return None;
        }
        entry.given = entry.tally.tasks;
        Some(Signed::sign(entry.tally.ack(nonce, node), identity))
    }

    /// Signed acknowledgements of every pair with answers the dispatcher has not been told
    /// of, with the task counts to [`mark_reported`](Self::mark_reported) once it accepted
    /// them; first forgets the pairs of tickets expired by `now_s` that it was told of, and
    /// those whose ticket expired more than [`TICKET_LIFETIME_S_MAX`] ago whatever they are
    /// (a day: far past a dispatcher's usage window, an hour by default), so the ledger stays
    /// bounded when the dispatcher cannot be reached.
    pub(crate) fn pending(
        &mut self,
        now_s: u64,
        identity: &SigningKey,
    ) -> Vec<(Pair, u64, AckProof)> {
        self.entries.retain(|_, r| {
            let expires = r.ticket.body.expires_at_s;
            expires > now_s
                || (r.reported < r.tally.tasks
                    && expires.saturating_add(TICKET_LIFETIME_S_MAX) > now_s)
        });
        self.entries
            .iter()
            .filter(|(_, r)| r.reported < r.tally.tasks)
            .map(|(pair, r)| {
                let ack = Signed::sign(r.tally.ack(pair.0, pair.1), identity);
                (
                    *pair,
                    r.tally.tasks,
                    AckProof {
                        ticket: r.ticket.clone(),
                        ack,
                    },
                )
            })
            .collect()
    }

    /// The dispatcher accepted the acknowledgements of `pairs` up to their task counts.
    pub(crate) fn mark_reported(&mut self, pairs: &[(Pair, u64)]) {
        for (pair, tasks) in pairs {
            if let Some(r) = self.entries.get_mut(pair) {
                r.reported = r.reported.max(*tasks);
            }
        }
    }
}
