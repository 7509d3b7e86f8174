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
    /// An acknowledgement is being signed beside the tasks ([`AckLedger::due`]).
    signing: bool,
    /// One signed beside the tasks, not given yet.
    ready: Option<Signed<Ack>>,
}

/// What [`AckLedger::due`] says of the next task to a node.
#[derive(Debug)]
pub(crate) enum Due {
    /// It carries no acknowledgement.
    No,
    /// It carries this one.
    Ready(Signed<Ack>),
    /// It carries none, and this one is to be signed beside it and handed back with
    /// [`AckLedger::signed`]: the next task carries it.
    Sign(Ack),
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
                signing: false,
                ready: None,
            });
        // A tally that would overflow stays as it is: the node stops serving the ticket
        // long before, and a new lease starts a new one.
        let _ = entry.tally.add(task, inputs_digest, cost);
    }

    /// The acknowledgement for `node` under ticket `nonce` the next task carries: one is due
    /// when at least `every` answers came since the last one it was given. It is signed beside
    /// the tasks (an ed25519 signature costs about as much as a small model's run): the first
    /// task that finds one due asks for it to be signed ([`Due::Sign`]), and the next one
    /// carries it, cumulative, counting at least the answers it was due for.
    pub(crate) fn due(&mut self, nonce: [u8; 16], node: NodeId, every: u64) -> Due {
        let Some(entry) = self.entries.get_mut(&(nonce, node)) else {
            return Due::No;
        };
        if entry.tally.tasks < entry.given.saturating_add(every.max(1)) {
            return Due::No;
        }
        if let Some(ack) = entry.ready.take() {
            entry.given = ack.body.tasks;
            return Due::Ready(ack);
        }
        if entry.signing {
            return Due::No;
        }
        entry.signing = true;
        Due::Sign(entry.tally.ack(nonce, node))
    }

    /// Takes back an acknowledgement [`due`](Self::due) asked to be signed.
    pub(crate) fn signed(&mut self, ack: Signed<Ack>) {
        let Some(entry) = self
            .entries
            .get_mut(&(ack.body.ticket_nonce, ack.body.node))
        else {
            return;
        };
        entry.signing = false;
        if ack.body.tasks > entry.given {
            entry.ready = Some(ack);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crat_core::id::{DeploymentId, KeyId, TaskId};
    use crat_core::money::Credits;
    use crat_core::pricing::TaskPrice;

    fn ticket() -> Signed<Ticket> {
        let key = SigningKey::from_bytes(&[1; 32]);
        Signed::sign(
            Ticket {
                deployment: DeploymentId::from_bytes([1; 16]),
                key: KeyId::from_bytes([2; 16]),
                credit_budget: Credits::new(1_000),
                issued_at_s: 0,
                expires_at_s: 100,
                nonce: [4; 16],
                audience: vec![],
                client: NodeId::from_bytes([3; 32]),
                price: TaskPrice {
                    fixed: Credits::new(1),
                    per_block: Credits::ZERO,
                    block_bytes: 1,
                },
            },
            &key,
        )
    }

    /// An acknowledgement is signed beside the tasks: asked for by the first task it is due
    /// at, carried by the next one, never asked twice at once, and cumulative.
    #[test]
    fn acknowledgements_are_signed_beside_the_tasks_and_carried_by_the_next() {
        let (t, node) = (ticket(), NodeId::from_bytes([9; 32]));
        let identity = SigningKey::from_bytes(&[5; 32]);
        let mut ledger = AckLedger::new();
        let answer = |ledger: &mut AckLedger, i: u8| {
            ledger.received(
                &t,
                node,
                &TaskId::from_bytes([i; 16]),
                &[i; 32],
                Credits::new(1),
            );
        };
        assert!(
            matches!(ledger.due([4; 16], node, 2), Due::No),
            "nothing received"
        );
        answer(&mut ledger, 1);
        assert!(
            matches!(ledger.due([4; 16], node, 2), Due::No),
            "one answer of two"
        );
        answer(&mut ledger, 2);
        let Due::Sign(body) = ledger.due([4; 16], node, 2) else {
            panic!("due after two answers");
        };
        assert_eq!(body.tasks, 2);
        // Being signed: the next tasks carry nothing and ask for nothing more.
        answer(&mut ledger, 3);
        assert!(matches!(ledger.due([4; 16], node, 2), Due::No));
        ledger.signed(Signed::sign(body, &identity));
        let Due::Ready(ack) = ledger.due([4; 16], node, 2) else {
            panic!("the signed acknowledgement goes with the next task");
        };
        assert_eq!(ack.body.tasks, 2);
        // Given: the next one is due two answers after it.
        assert!(matches!(ledger.due([4; 16], node, 2), Due::No));
        answer(&mut ledger, 4);
        let Due::Sign(next) = ledger.due([4; 16], node, 2) else {
            panic!("due again two answers after the one given");
        };
        assert_eq!(next.tasks, 4);
        // One signed for a count already given is dropped.
        ledger.signed(Signed::sign(ack.body.clone(), &identity));
        assert!(matches!(ledger.due([4; 16], node, 2), Due::Sign(_)));
    }
}
