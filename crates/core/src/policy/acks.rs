//! Acknowledged usage: a node is paid only for work its client says it received.
//!
//! Per ticket and per node, the client keeps a [`Tally`] of the answers it received (each with
//! a valid receipt): how many, what they cost at the ticket's price, and an order-independent
//! accumulator over `H(task ‖ inputs digest)`. Now and then it signs the tally as a cumulative
//! [`Ack`] and hands it to the node with its next task and to the dispatcher; the node forwards
//! the latest one with its usage. The dispatcher's [`AckBook`] then charges a usage record
//! only while the node's charged tally stays within what the client acknowledged of it
//! ([`AckBook::admit`]); a record beyond is held (the node keeps it and reports it again after
//! the next acknowledgement). When the ticket's usage window ends, acknowledged work that no
//! record charged (the node died before reporting) is charged from the acknowledgement
//! ([`AckBook::settle`]).
//!
//! So for every ticket and node, whatever order acknowledgements and reports arrive in, the
//! client pays at most what it acknowledged, and, once the window has ended, exactly that:
//! never less than the work both sides agree on. A node inventing tasks or inflating input
//! sizes gains nothing beyond the client's word; a client cannot under-acknowledge without the
//! node noticing (it stops serving a ticket whose unacknowledged work passes a bound).
//!
//! An [`AckProof`] carries the ticket with its acknowledgement, so the dispatcher checks both
//! signatures ([`check_ack`]) without remembering the ticket (after a restart too).
//!
//! The book is memory; the dispatcher keeps the same entries in its ledger (each
//! acknowledgement stored before it is answered, each charge counted in the transaction that
//! makes it) and puts them back after a restart with [`AckBook::restore`], so what was
//! charged before the restart still counts against the acknowledgement.
//!
//! ```
//! use crat_core::id::{DeploymentId, KeyId, NodeId, TaskId};
//! use crat_core::money::Credits;
//! use crat_core::policy::acks::{AckBook, Decision, Tally};
//! use crat_core::sign::Ack;
//!
//! let node = NodeId::from_bytes([1; 32]);
//! let (nonce, deployment, key) = ([2; 16], DeploymentId::from_bytes([3; 16]), KeyId::from_bytes([4; 16]));
//! // The client received two tasks of 5 credits from the node...
//! let mut received = Tally::default();
//! for t in [7u8, 8] {
//!     received.add(&TaskId::from_bytes([t; 16]), &[t; 32], Credits::new(5)).unwrap();
//! }
//! let ack = received.ack(nonce, node);
//! // ...the dispatcher learns it, and charges the node's records within it.
//! let mut book = AckBook::new(1_000);
//! book.acknowledge(&ack, deployment, key, 100).unwrap();
//! let record = |t: u8| (TaskId::from_bytes([t; 16]), [t; 32]);
//! for t in [7, 8] {
//!     let (task, digest) = record(t);
//!     assert_eq!(book.admit(&nonce, &node, &task, &digest, Credits::new(5)), Decision::Charge);
//! }
//! // A task the client did not acknowledge is not charged.
//! let (task, digest) = record(9);
//! assert_eq!(book.admit(&nonce, &node, &task, &digest, Credits::new(5)), Decision::Hold);
//! // When the window ends, nothing is left to charge: the client paid its 10 credits.
//! assert!(book.settle(100).is_empty());
//! ```

use serde::{Deserialize, Serialize};

use crate::expiring::{ExpiringMap, Full, WhenFull};
use crate::id::{DeploymentId, KeyId, NodeId, TaskId};
use crate::money::Credits;
use crate::sign::{Ack, SignatureError, Signed, Ticket};

const TERM_DOMAIN: &[u8] = b"crat/v1/ack-term\0";

/// The accumulator term of one task: `blake3(domain ‖ task ‖ inputs digest)`.
pub fn ack_term(task: &TaskId, inputs_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(TERM_DOMAIN);
    h.update(task.as_bytes());
    h.update(inputs_digest);
    *h.finalize().as_bytes()
}

/// Adds `term` to `acc`, both read as 256-bit little-endian integers, modulo 2²⁵⁶: the sum
/// does not depend on the order terms are added in.
pub fn accumulate(acc: &mut [u8; 32], term: &[u8; 32]) {
    let mut carry = 0u16;
    for (a, t) in acc.iter_mut().zip(term) {
        let sum = u16::from(*a) + u16::from(*t) + carry;
        *a = sum as u8;
        carry = sum >> 8;
    }
}

/// Takes `term` back out of `acc` (the inverse of [`accumulate`]).
pub fn deduct(acc: &mut [u8; 32], term: &[u8; 32]) {
    let mut borrow = 0i16;
    for (a, t) in acc.iter_mut().zip(term) {
        let diff = i16::from(*a) - i16::from(*t) - borrow;
        *a = diff.rem_euclid(256) as u8;
        borrow = i16::from(diff < 0);
    }
}

/// Running totals of the tasks of one ticket at one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Tasks counted.
    pub tasks: u64,
    /// What they cost.
    pub credits: Credits,
    /// Sum of their [`ack_term`]s.
    pub accumulator: [u8; 32],
}

impl Tally {
    /// Counts one task; `None` (and nothing counted) on overflow.
    pub fn add(&mut self, task: &TaskId, inputs_digest: &[u8; 32], cost: Credits) -> Option<()> {
        let tasks = self.tasks.checked_add(1)?;
        let credits = self.credits.checked_add(cost)?;
        self.tasks = tasks;
        self.credits = credits;
        accumulate(&mut self.accumulator, &ack_term(task, inputs_digest));
        Some(())
    }

    /// Uncounts a task counted by [`add`](Self::add).
    pub fn remove(&mut self, task: &TaskId, inputs_digest: &[u8; 32], cost: Credits) {
        self.tasks = self.tasks.saturating_sub(1);
        self.credits = self.credits.saturating_sub(cost);
        deduct(&mut self.accumulator, &ack_term(task, inputs_digest));
    }

    /// This tally as the (unsigned) acknowledgement of `node`'s work under ticket `nonce`.
    pub fn ack(&self, ticket_nonce: [u8; 16], node: NodeId) -> Ack {
        Ack {
            ticket_nonce,
            node,
            tasks: self.tasks,
            credits: self.credits,
            accumulator: self.accumulator,
        }
    }

    /// The tally an acknowledgement states.
    pub fn of(ack: &Ack) -> Self {
        Self {
            tasks: ack.tasks,
            credits: ack.credits,
            accumulator: ack.accumulator,
        }
    }
}

/// Whether a node whose charged work under a ticket would come to `charged` stays within what
/// its client acknowledged of it (`acked`): no more tasks and no more credits. The one rule of
/// acknowledged usage, applied by [`AckBook::admit`] to every record and by [`chargeable`] to
/// a batch (the simulator's usage inventors).
pub fn within_acknowledged(charged: &Tally, acked: &Tally) -> bool {
    charged.tasks <= acked.tasks && charged.credits <= acked.credits
}

/// How many of `records` further usage records of `cost` each a node may be charged after
/// `charged`, against the acknowledgement `acked`: the largest count whose charged tally stays
/// [`within_acknowledged`] (the count [`AckBook::admit`] charges when they come one by one;
/// the rest are held). Records whose count or credits would overflow are never chargeable.
///
/// ```
/// use crat_core::money::Credits;
/// use crat_core::policy::acks::{Tally, chargeable};
///
/// // The client acknowledged 100 tasks of 5 credits; the node reports 250 (150 invented).
/// let acked = Tally { tasks: 100, credits: Credits::new(500), ..Tally::default() };
/// assert_eq!(chargeable(&Tally::default(), &acked, 250, Credits::new(5)), 100);
/// // Inflating the cost of each record does not help either.
/// assert_eq!(chargeable(&Tally::default(), &acked, 100, Credits::new(50)), 10);
/// ```
pub fn chargeable(charged: &Tally, acked: &Tally, records: u64, cost: Credits) -> u64 {
    let after = |k: u64| -> Option<Tally> {
        let credits = Credits::new(cost.get().checked_mul(k)?);
        Some(Tally {
            tasks: charged.tasks.checked_add(k)?,
            credits: charged.credits.checked_add(credits)?,
            accumulator: charged.accumulator,
        })
    };
    let fits = |k: u64| after(k).is_some_and(|t| within_acknowledged(&t, acked));
    if !fits(0) {
        return 0;
    }
    // `fits` holds for a prefix of 0..=records: the largest k is found by bisection.
    let (mut lo, mut hi) = (0u64, records);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// An acknowledgement with the ticket it is about, so that it can be checked without any
/// memory of the ticket.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AckProof {
    /// The ticket, signed by the dispatcher.
    pub ticket: Signed<Ticket>,
    /// The acknowledgement, signed by the ticket's client.
    pub ack: Signed<Ack>,
}

/// Why an acknowledgement is not evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The ticket is not this dispatcher's.
    #[error("ticket: {0}")]
    Ticket(SignatureError),
    /// The acknowledgement is not signed by the ticket's client.
    #[error("acknowledgement: {0}")]
    Signature(SignatureError),
    /// The acknowledgement is about another ticket, or a node outside its audience.
    #[error("the acknowledgement does not match its ticket")]
    Mismatch,
}

/// Checks that `proof`'s ticket is `dispatcher`'s and its acknowledgement is signed by the
/// ticket's client, for that ticket and a node of its audience; returns both bodies.
pub fn check_ack<'a>(
    proof: &'a AckProof,
    dispatcher: &NodeId,
) -> Result<(&'a Ticket, &'a Ack), AckError> {
    let ticket = proof
        .ticket
        .verify(Some(dispatcher))
        .map_err(AckError::Ticket)?;
    let ack = &proof.ack.body;
    if ack.ticket_nonce != ticket.nonce || !ticket.audience.contains(&ack.node) {
        return Err(AckError::Mismatch);
    }
    proof
        .ack
        .verify(Some(&ticket.client))
        .map_err(AckError::Signature)?;
    Ok((ticket, ack))
}

/// Whether a usage record is charged now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Within what the client acknowledged: charge it (it is counted).
    Charge,
    /// Beyond it (or nothing acknowledged yet): not charged now; the node keeps it.
    Hold,
}

/// What the dispatcher knows of one ticket at one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckEntry {
    /// The ticket's deployment.
    pub deployment: DeploymentId,
    /// The SDK key it charges.
    pub key: KeyId,
    /// The latest acknowledgement.
    pub acked: Tally,
    /// What usage records charged so far.
    pub charged: Tally,
}

impl AckEntry {
    /// The acknowledged work no usage record charged (`None` when there is none): what the
    /// settlement of `node`'s work under ticket `ticket_nonce` charges.
    pub fn unreported(&self, ticket_nonce: [u8; 16], node: NodeId) -> Option<Unreported> {
        let credits = self.acked.credits.saturating_sub(self.charged.credits);
        let tasks = self.acked.tasks.saturating_sub(self.charged.tasks);
        (credits > Credits::ZERO || tasks > 0).then_some(Unreported {
            ticket_nonce,
            node,
            deployment: self.deployment,
            key: self.key,
            tasks,
            credits,
        })
    }
}

/// Acknowledged work that no usage record charged, of a ticket whose window ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreported {
    /// The ticket's nonce.
    pub ticket_nonce: [u8; 16],
    /// The node that did the work.
    pub node: NodeId,
    /// The ticket's deployment.
    pub deployment: DeploymentId,
    /// The SDK key to charge.
    pub key: KeyId,
    /// Tasks acknowledged but not charged.
    pub tasks: u64,
    /// Their credits.
    pub credits: Credits,
}

/// The dispatcher's memory of acknowledged and charged work per (ticket, node), each kept
/// until its ticket's usage window ends (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct AckBook {
    entries: ExpiringMap<([u8; 16], NodeId), AckEntry>,
}

impl AckBook {
    /// A book of at most `capacity` (ticket, node) pairs.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: ExpiringMap::new(capacity.max(1)),
        }
    }

    /// Records a checked acknowledgement ([`check_ack`]) of a ticket of `deployment`
    /// charging `key`, kept until `settle_at_s` (the end of the ticket's usage window). An
    /// acknowledgement of more tasks replaces the one held; an older one changes nothing.
    /// [`Full`] when the book holds `capacity` pairs (nothing is forgotten that may still be
    /// charged: the caller keeps it elsewhere or refuses it).
    pub fn acknowledge(
        &mut self,
        ack: &Ack,
        deployment: DeploymentId,
        key: KeyId,
        settle_at_s: u64,
    ) -> Result<(), Full> {
        let entry = AckEntry {
            deployment,
            key,
            acked: Tally::of(ack),
            charged: Tally::default(),
        };
        self.restore(ack.ticket_nonce, ack.node, entry, settle_at_s)
    }

    /// Takes back an entry kept outside the book (the dispatcher's ledger, after a restart),
    /// with what was charged against it already. A pair the book holds keeps its charged
    /// tally (the book's count includes charges still being written) and takes the entry's
    /// acknowledgement only when it is of more tasks; a new pair is held as given, until
    /// `settle_at_s`. [`Full`] as for [`acknowledge`](Self::acknowledge).
    ///
    /// Entries leave the book only through [`settle`](Self::settle), which returns their
    /// unreported work: one due already is kept until the next `settle`.
    pub fn restore(
        &mut self,
        ticket_nonce: [u8; 16],
        node: NodeId,
        entry: AckEntry,
        settle_at_s: u64,
    ) -> Result<(), Full> {
        let pair = (ticket_nonce, node);
        if let Some(held) = self.entries.get_mut(&pair) {
            if entry.acked.tasks > held.acked.tasks {
                held.acked = entry.acked;
            }
            return Ok(());
        }
        // "Now" 0: inserting forgets nothing on the side; due entries wait for `settle`.
        self.entries
            .insert(pair, entry, settle_at_s, 0, WhenFull::Refuse)
    }

    /// Whether a record of `node` under ticket `nonce` (task, inputs digest, cost) is charged
    /// now: only while the node's charged tasks and credits stay within the acknowledgement.
    pub fn admit(
        &mut self,
        nonce: &[u8; 16],
        node: &NodeId,
        task: &TaskId,
        inputs_digest: &[u8; 32],
        cost: Credits,
    ) -> Decision {
        let Some(entry) = self.entries.get_mut(&(*nonce, *node)) else {
            return Decision::Hold;
        };
        let mut after = entry.charged;
        let within = after.add(task, inputs_digest, cost).is_some()
            && within_acknowledged(&after, &entry.acked);
        if !within {
            return Decision::Hold;
        }
        entry.charged = after;
        Decision::Charge
    }

    /// Uncounts a record [`admit`](Self::admit) let be charged that was not charged after all
    /// (the ledger had it already: a duplicate).
    pub fn refund(
        &mut self,
        nonce: &[u8; 16],
        node: &NodeId,
        task: &TaskId,
        inputs_digest: &[u8; 32],
        cost: Credits,
    ) {
        if let Some(entry) = self.entries.get_mut(&(*nonce, *node)) {
            entry.charged.remove(task, inputs_digest, cost);
        }
    }

    /// What is known of `node` under ticket `nonce`.
    pub fn entry(&self, nonce: &[u8; 16], node: &NodeId) -> Option<&AckEntry> {
        self.entries.get(&(*nonce, *node))
    }

    /// Ends the usage window of every ticket due by `now_s`: forgets them and returns the
    /// acknowledged work their records did not charge, to be charged from the
    /// acknowledgement.
    pub fn settle(&mut self, now_s: u64) -> Vec<Unreported> {
        self.entries
            .take_expired(now_s)
            .into_iter()
            .filter_map(|((ticket_nonce, node), e)| e.unreported(ticket_nonce, node))
            .collect()
    }

    /// Pairs held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NONCE: [u8; 16] = [1; 16];
    const DEP: DeploymentId = DeploymentId::from_bytes([2; 16]);
    const KEY: KeyId = KeyId::from_bytes([3; 16]);

    fn node() -> NodeId {
        NodeId::from_bytes([4; 32])
    }

    fn task(i: u32) -> (TaskId, [u8; 32]) {
        let mut t = [0u8; 16];
        t[..4].copy_from_slice(&i.to_le_bytes());
        (TaskId::from_bytes(t), [i as u8; 32])
    }

    #[test]
    fn a_batch_is_charged_as_far_as_records_one_by_one() {
        for (acked_tasks, acked_credits, already, records, cost) in [
            (10u64, 50u64, 0u64, 25u64, 5u64),
            (10, 50, 4, 25, 5),
            (10, 30, 0, 25, 5),
            (10, 50, 0, 3, 5),
            (0, 0, 0, 7, 1),
            (10, 50, 0, 25, 0),
            (u64::MAX, u64::MAX, 0, 5, u64::MAX / 2),
        ] {
            let mut book = AckBook::new(4);
            let ack = Ack {
                ticket_nonce: NONCE,
                node: node(),
                tasks: acked_tasks,
                credits: Credits::new(acked_credits),
                accumulator: [0; 32],
            };
            book.acknowledge(&ack, DEP, KEY, 100).unwrap();
            for i in 0..already {
                let (t, d) = task(10_000 + i as u32);
                assert_eq!(
                    book.admit(&NONCE, &node(), &t, &d, Credits::new(cost)),
                    Decision::Charge
                );
            }
            let charged = book.entry(&NONCE, &node()).unwrap().charged;
            let batch = chargeable(&charged, &Tally::of(&ack), records, Credits::new(cost));
            let one_by_one = (0..records)
                .filter(|i| {
                    let (t, d) = task(*i as u32);
                    book.admit(&NONCE, &node(), &t, &d, Credits::new(cost)) == Decision::Charge
                })
                .count() as u64;
            assert_eq!(
                batch, one_by_one,
                "{acked_tasks} {acked_credits} {records} {cost}"
            );
            assert!(batch <= records);
        }
    }

    #[test]
    fn the_accumulator_ignores_order_and_sees_every_task() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        for i in 0..10 {
            let (t, d) = task(i);
            a.add(&t, &d, Credits::new(1)).unwrap();
            let (t, d) = task(9 - i);
            b.add(&t, &d, Credits::new(1)).unwrap();
        }
        assert_eq!(a, b);
        let (t, d) = task(3);
        let mut c = Tally::default();
        for i in (0..10).filter(|i| *i != 3) {
            let (t, d) = task(i);
            c.add(&t, &d, Credits::new(1)).unwrap();
        }
        c.add(&t, &[99; 32], Credits::new(1)).unwrap();
        assert_eq!((c.tasks, c.credits), (a.tasks, a.credits));
        assert_ne!(c.accumulator, a.accumulator, "other inputs, another sum");
        // Removing a task undoes adding it.
        let mut undone = a;
        undone.add(&t, &[99; 32], Credits::new(4)).unwrap();
        undone.remove(&t, &[99; 32], Credits::new(4));
        assert_eq!(undone, a);
        // Overflow counts nothing.
        let mut full = Tally {
            credits: Credits::new(u64::MAX),
            ..Tally::default()
        };
        assert_eq!(full.add(&t, &d, Credits::new(1)), None);
        assert_eq!(full.tasks, 0);
    }

    #[test]
    fn stale_acknowledgements_do_not_replace_newer_ones_and_the_book_is_bounded() {
        let mut book = AckBook::new(1);
        let ack = |tasks: u64| Ack {
            ticket_nonce: NONCE,
            node: node(),
            tasks,
            credits: Credits::new(tasks * 2),
            accumulator: [0; 32],
        };
        book.acknowledge(&ack(5), DEP, KEY, 100).unwrap();
        book.acknowledge(&ack(3), DEP, KEY, 100).unwrap();
        assert_eq!(book.entry(&NONCE, &node()).unwrap().acked.tasks, 5);
        let other = Ack {
            ticket_nonce: [9; 16],
            ..ack(1)
        };
        assert!(book.acknowledge(&other, DEP, KEY, 100).is_err());
        // Nothing acknowledged, nothing charged.
        let (t, d) = task(1);
        assert_eq!(
            book.admit(&[9; 16], &node(), &t, &d, Credits::ZERO),
            Decision::Hold
        );
    }

    #[test]
    fn a_restored_entry_keeps_what_was_charged_against_it() {
        let cost = Credits::new(5);
        let mut client = Tally::default();
        for i in 0..3 {
            let (t, d) = task(i);
            client.add(&t, &d, cost).unwrap();
        }
        let mut before = AckBook::new(4);
        before
            .acknowledge(&client.ack(NONCE, node()), DEP, KEY, 100)
            .unwrap();
        for i in 0..2 {
            let (t, d) = task(i);
            assert_eq!(
                before.admit(&NONCE, &node(), &t, &d, cost),
                Decision::Charge
            );
        }
        let kept = before.entry(&NONCE, &node()).unwrap().clone();
        assert_eq!(
            (kept.charged.tasks, kept.charged.credits),
            (2, Credits::new(10))
        );

        // After a restart, invented records fill only what was not charged yet.
        let mut after = AckBook::new(4);
        after.restore(NONCE, node(), kept.clone(), 100).unwrap();
        let invented = |i: u32| task(1_000 + i);
        let (t, d) = invented(0);
        assert_eq!(after.admit(&NONCE, &node(), &t, &d, cost), Decision::Charge);
        let (t, d) = invented(1);
        assert_eq!(after.admit(&NONCE, &node(), &t, &d, cost), Decision::Hold);
        assert!(
            after.settle(100).is_empty(),
            "the acknowledgement was charged in full"
        );

        // Restored again over a held pair: an older acknowledgement changes nothing, a newer
        // one is taken, and the charged tally of the book (which counts charges in flight)
        // stays.
        let mut book = AckBook::new(4);
        book.restore(NONCE, node(), kept.clone(), 100).unwrap();
        let (t, d) = task(2);
        assert_eq!(book.admit(&NONCE, &node(), &t, &d, cost), Decision::Charge);
        let older = AckEntry {
            acked: Tally {
                tasks: 1,
                ..kept.acked
            },
            charged: Tally::default(),
            ..kept.clone()
        };
        book.restore(NONCE, node(), older, 100).unwrap();
        let held = book.entry(&NONCE, &node()).unwrap();
        assert_eq!((held.acked.tasks, held.charged.tasks), (3, 3));
        let newer = AckEntry {
            acked: Tally {
                tasks: 4,
                credits: Credits::new(20),
                ..kept.acked
            },
            charged: Tally::default(),
            ..kept
        };
        book.restore(NONCE, node(), newer, 100).unwrap();
        let held = book.entry(&NONCE, &node()).unwrap();
        assert_eq!((held.acked.tasks, held.charged.tasks), (4, 3));
        let unreported = book.settle(100);
        assert_eq!(
            unreported
                .iter()
                .map(|u| (u.tasks, u.credits))
                .collect::<Vec<_>>(),
            vec![(1, Credits::new(5))]
        );
    }

    #[test]
    fn entries_leave_the_book_only_through_settle_and_restore_is_bounded() {
        let entry = AckEntry {
            deployment: DEP,
            key: KEY,
            acked: Tally {
                tasks: 1,
                credits: Credits::new(7),
                accumulator: [0; 32],
            },
            charged: Tally::default(),
        };
        let mut book = AckBook::new(2);
        // Due already when it comes back (the dispatcher was down past the window): held
        // until the next settle, even when another comes in meanwhile.
        book.restore([1; 16], node(), entry.clone(), 10).unwrap();
        book.restore([2; 16], node(), entry.clone(), 500).unwrap();
        assert_eq!(
            book.restore([3; 16], node(), entry.clone(), 500),
            Err(Full { capacity: 2 })
        );
        let settled = book.settle(20);
        assert_eq!(settled.len(), 1);
        assert_eq!(
            (settled[0].ticket_nonce, settled[0].credits),
            ([1; 16], Credits::new(7))
        );
        book.restore([3; 16], node(), entry, 500).unwrap();
        assert_eq!(book.len(), 2);
    }

    /// One event of a ticket's life at one node.
    #[derive(Clone, Debug)]
    enum Event {
        /// The client acknowledges the first `n` tasks it received.
        Ack(usize),
        /// The node reports task `i` it really ran.
        Report(usize),
        /// The node reports a task it invented, at this cost.
        Invent(u32, u64),
        /// The dispatcher restarts: a new book takes back the entry (as its ledger kept it).
        Restart,
    }

    fn events() -> impl Strategy<Value = (Vec<u64>, Vec<Event>)> {
        proptest::collection::vec(0u64..20, 0..12).prop_flat_map(|costs| {
            let n = costs.len();
            let event = prop_oneof![
                (0..=n).prop_map(Event::Ack),
                (0..n.max(1)).prop_map(Event::Report),
                (1000u32..1100, 0u64..40).prop_map(|(i, c)| Event::Invent(i, c)),
                Just(Event::Restart),
            ];
            (Just(costs), proptest::collection::vec(event, 0..40))
        })
    }

    proptest! {
        /// Whatever the interleaving of acknowledgements, reports (honest, repeated or
        /// invented) and restarts, the client pays at most what it acknowledged, and, once the window has
        /// ended, at least what both sides agree on (tasks acknowledged and reported).
        #[test]
        fn charged_is_within_the_acknowledgement_and_covers_the_agreement(
            (costs, events) in events(),
        ) {
            let mut book = AckBook::new(16);
            let mut acked_upto = 0usize;
            let mut client = Tally::default();
            let mut charged = Credits::ZERO;
            let mut reported = std::collections::BTreeSet::new();
            let mut held: Vec<(u32, u64)> = Vec::new();
            let mut charged_tasks = std::collections::BTreeSet::new();
            let mut present = |book: &mut AckBook, i: u32, cost: u64, charged: &mut Credits| {
                // The ledger charges a (task, inputs) once: a record charged before is a duplicate.
                if charged_tasks.contains(&i) {
                    return true;
                }
                let (t, d) = task(i);
                match book.admit(&NONCE, &node(), &t, &d, Credits::new(cost)) {
                    Decision::Charge => {
                        *charged = charged.checked_add(Credits::new(cost)).unwrap();
                        charged_tasks.insert(i);
                        true
                    }
                    Decision::Hold => false,
                }
            };
            for e in &events {
                match *e {
                    Event::Ack(n) if n > acked_upto => {
                        for (i, c) in costs.iter().enumerate().take(n).skip(acked_upto) {
                            let (t, d) = task(i as u32);
                            client.add(&t, &d, Credits::new(*c)).unwrap();
                        }
                        acked_upto = n;
                        book.acknowledge(&client.ack(NONCE, node()), DEP, KEY, 50).unwrap();
                    }
                    Event::Ack(n) => {
                        // A stale acknowledgement of fewer tasks.
                        let mut old = Tally::default();
                        for (i, c) in costs.iter().enumerate().take(n) {
                            let (t, d) = task(i as u32);
                            old.add(&t, &d, Credits::new(*c)).unwrap();
                        }
                        book.acknowledge(&old.ack(NONCE, node()), DEP, KEY, 50).unwrap();
                    }
                    Event::Report(i) if i < costs.len() => {
                        reported.insert(i);
                        if !present(&mut book, i as u32, costs[i], &mut charged) {
                            held.push((i as u32, costs[i]));
                        }
                    }
                    Event::Report(_) => {}
                    Event::Invent(i, c) => {
                        if !present(&mut book, i, c, &mut charged) {
                            held.push((i, c));
                        }
                    }
                    Event::Restart => {
                        let kept = book.entry(&NONCE, &node()).cloned();
                        book = AckBook::new(16);
                        if let Some(entry) = kept {
                            book.restore(NONCE, node(), entry, 50).unwrap();
                        }
                    }
                }
                prop_assert!(charged <= client.credits);
            }
            // Held records are reported again before the window ends.
            for (i, c) in std::mem::take(&mut held) {
                present(&mut book, i, c, &mut charged);
                prop_assert!(charged <= client.credits);
            }
            let settled: Credits = Credits::checked_sum(book.settle(50).iter().map(|u| u.credits)).unwrap();
            let total = charged.checked_add(settled).unwrap();
            let agreed = Credits::checked_sum(
                reported.iter().filter(|i| **i < acked_upto).map(|i| Credits::new(costs[*i])),
            ).unwrap();
            prop_assert!(total <= client.credits, "{total} > acknowledged {}", client.credits);
            prop_assert!(total >= agreed, "{total} < agreed {agreed}");
            prop_assert!(book.is_empty());
        }
    }
}
