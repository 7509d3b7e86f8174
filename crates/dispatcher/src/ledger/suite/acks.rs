//! The suite's tests of clients' acknowledgements ([`Ledger::store_acks`],
//! [`Ledger::settle_acks`] and the charged tally [`Ledger::charge_usage`] keeps).

use crat_core::id::{NodeId, TaskId};
use crat_core::money::Credits;
use crat_core::policy::acks::Tally;
use crat_core::wire::UsageRecord;

use super::{LedgerFactory, dep_id, key_id, per_request, setup};
use crate::ledger::{AckRecord, AckSettlement, Ledger, LedgerError, StoredAck, UsageCharge};

pub(crate) const NONCE: [u8; 16] = [5; 16];

fn node() -> NodeId {
    NodeId::from_bytes([6; 32])
}

pub(crate) fn tally(tasks: u64, credits: u64) -> Tally {
    let mut t = Tally::default();
    for i in 0..tasks {
        t.add(
            &TaskId::from_bytes([i as u8; 16]),
            &[i as u8; 32],
            Credits::ZERO,
        )
        .unwrap();
    }
    t.credits = Credits::new(credits);
    t
}

pub(crate) fn ack(nonce: [u8; 16], tasks: u64, credits: u64, settle_at_s: u64) -> AckRecord {
    AckRecord {
        ticket_nonce: nonce,
        node: node(),
        deployment: dep_id(1),
        key: key_id(1),
        settle_at_s,
        acked: tally(tasks, credits),
    }
}

pub(crate) fn record(nonce: [u8; 16], t: u8, cost: u64) -> UsageCharge {
    UsageCharge {
        record: UsageRecord {
            task: TaskId::from_bytes([t; 16]),
            deployment: dep_id(1),
            inputs_digest: [t; 32],
            key: key_id(1),
            ticket_nonce: nonce,
            input_bytes: 10,
            output_bytes: 10,
            compute_us: 1,
        },
        node: node(),
        cost: Credits::new(cost),
        at_s: 40,
    }
}

/// The settlement charge the dispatcher makes: what was acknowledged and not charged.
fn settlement(a: &StoredAck) -> Option<UsageCharge> {
    let u = a.entry.unreported(a.ticket_nonce, a.node)?;
    let mut c = record(a.ticket_nonce, 0, u.credits.get());
    c.record.task = TaskId::from_bytes(a.ticket_nonce);
    c.record.inputs_digest = [0xff; 32];
    Some(c)
}

pub(crate) fn acknowledgements_and_what_was_charged_survive_a_reopen(f: &impl LedgerFactory) {
    let ledger = {
        let ledger = f.fresh();
        let a = setup(&ledger, 1_000);
        ledger
            .create_deployment(&per_request(&a, 1, 100, 20))
            .unwrap();
        let stored = ledger
            .store_acks(&[ack(NONCE, 3, 15, 90), ack([7; 16], 1, 4, 95)])
            .unwrap();
        assert_eq!(stored[0].as_ref().unwrap().entry.acked, tally(3, 15));
        // An older acknowledgement changes nothing; a newer one replaces it.
        let older = ledger.store_acks(&[ack(NONCE, 2, 10, 90)]).unwrap();
        assert_eq!(older[0].as_ref().unwrap().entry.acked, tally(3, 15));
        ledger.store_acks(&[ack(NONCE, 4, 20, 999)]).unwrap();
        // Two records charged under it are counted in the same transaction; a duplicate
        // and a record of another ticket without an acknowledgement are not.
        let outcome = ledger
            .charge_usage(&[
                record(NONCE, 1, 5),
                record(NONCE, 2, 5),
                record(NONCE, 1, 5),
            ])
            .unwrap();
        assert_eq!((outcome.accepted, outcome.duplicates), (2, 1));
        ledger.charge_usage(&[record([8; 16], 3, 5)]).unwrap();
        ledger
    };
    let ledger = f.reopen(ledger);
    let back = ledger.unsettled_acks(10).unwrap();
    assert_eq!(back.len(), 2);
    let first = &back[0];
    assert_eq!((first.ticket_nonce, first.node), (NONCE, node()));
    assert_eq!(first.settle_at_s, 90, "the first settlement time stays");
    assert_eq!(first.entry.acked, tally(4, 20));
    let mut charged = Tally::default();
    for t in [1u8, 2] {
        charged
            .add(&TaskId::from_bytes([t; 16]), &[t; 32], Credits::new(5))
            .unwrap();
    }
    assert_eq!(first.entry.charged, charged);
    assert_eq!(
        (first.entry.deployment, first.entry.key),
        (dep_id(1), key_id(1))
    );
    assert_eq!(back[1].ticket_nonce, [7; 16]);
    assert_eq!(back[1].entry.charged, Tally::default());
    assert_eq!(ledger.unsettled_acks(1).unwrap().len(), 1, "bounded");
}

pub(crate) fn a_settlement_charges_once_and_later_records_and_acknowledgements_are_refused(
    f: &impl LedgerFactory,
) {
    let ledger = {
        let ledger = f.fresh();
        let a = setup(&ledger, 1_000);
        ledger
            .create_deployment(&per_request(&a, 1, 100, 20))
            .unwrap();
        ledger
            .store_acks(&[ack(NONCE, 3, 15, 90), ack([7; 16], 1, 4, 95)])
            .unwrap();
        ledger.charge_usage(&[record(NONCE, 1, 5)]).unwrap();
        // Nothing is due before its time.
        let early = ledger.settle_acks(89, 10, &mut settlement).unwrap();
        assert_eq!(early, AckSettlement::default());
        // At 90 only the first pair is due: 10 credits acknowledged and never reported.
        let s = ledger.settle_acks(90, 10, &mut settlement).unwrap();
        assert_eq!((s.settled, s.charges.len()), (1, 1));
        assert_eq!(s.outcome.charged, Credits::new(10));
        ledger
    };
    let ledger = f.reopen(ledger);
    assert_eq!(ledger.usage_totals(&dep_id(1)).unwrap().1, Credits::new(15));
    // Reopened: the settled pair is neither reloaded nor settled again.
    let back = ledger.unsettled_acks(10).unwrap();
    assert_eq!(
        back.iter().map(|a| a.ticket_nonce).collect::<Vec<_>>(),
        vec![[7; 16]]
    );
    let s = ledger.settle_acks(94, 10, &mut settlement).unwrap();
    assert_eq!(s.settled, 0);
    // A late record of the settled pair is a duplicate of its settlement; a late
    // acknowledgement of it is not stored.
    let late = ledger.charge_usage(&[record(NONCE, 2, 5)]).unwrap();
    assert_eq!((late.accepted, late.duplicated), (0, vec![0]));
    assert_eq!(
        ledger.store_acks(&[ack(NONCE, 9, 45, 90)]).unwrap(),
        vec![None]
    );
    let s = ledger.settle_acks(200, 10, &mut settlement).unwrap();
    assert_eq!((s.settled, s.outcome.charged), (1, Credits::new(4)));
    assert_eq!(ledger.usage_totals(&dep_id(1)).unwrap().1, Credits::new(19));
    assert!(ledger.unsettled_acks(10).unwrap().is_empty());
    assert!(f.totals(&ledger).unwrap().is_conserved());
}

pub(crate) fn a_failed_settlement_settles_nothing(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let a = setup(&ledger, 1_000);
    ledger
        .create_deployment(&per_request(&a, 1, 100, 20))
        .unwrap();
    ledger.store_acks(&[ack(NONCE, 1, 5, 10)]).unwrap();
    let err = ledger
        .settle_acks(10, 10, &mut |a| {
            let mut c = settlement(a)?;
            c.record.deployment = dep_id(9);
            Some(c)
        })
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotFound(_)), "{err}");
    assert_eq!(ledger.unsettled_acks(10).unwrap().len(), 1);
}

pub(crate) fn values_beyond_the_database_are_refused_and_nothing_is_stored(f: &impl LedgerFactory) {
    let ledger = f.fresh();
    let mut huge = ack([9; 16], 1, 1, 10);
    huge.acked.tasks = u64::MAX;
    let err = ledger
        .store_acks(&[ack(NONCE, 1, 1, 10), huge])
        .unwrap_err();
    assert!(matches!(err, LedgerError::Invalid(_)), "{err}");
    assert!(ledger.unsettled_acks(10).unwrap().is_empty());
}
