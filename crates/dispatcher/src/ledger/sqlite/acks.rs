//! The `acks` table: clients' acknowledgements per (ticket nonce, node), what usage charged
//! against each, and whether its usage window was settled (schema step 5).
//!
//! The rules (which acknowledgement replaces which, what a charge adds to a tally, what a
//! settlement charges) are [`crat_core::policy::acks`]'s; this stores their state.

use crat_core::id::{DeploymentId, KeyId, NodeId};
use crat_core::money::Credits;
use crat_core::policy::acks::{AckEntry, Tally};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{Db, bytes_at, from_i64, to_i64, u64_at};
use crate::ledger::{AckRecord, LedgerError, StoredAck, UsageCharge};

const COLUMNS: &str = "ticket_nonce, node, deployment, key, settle_at_s, acked_tasks, \
     acked_credits, acked_accumulator, charged_tasks, charged_credits, charged_accumulator";

fn row(row: &Row<'_>) -> Result<StoredAck, LedgerError> {
    let tally = |at: usize, what: &str| -> Result<Tally, LedgerError> {
        Ok(Tally {
            tasks: u64_at(row, at, what)?,
            credits: Credits::new(u64_at(row, at + 1, what)?),
            accumulator: bytes_at(row, at + 2, what)?,
        })
    };
    Ok(StoredAck {
        ticket_nonce: bytes_at(row, 0, "ticket nonce")?,
        node: NodeId::from_bytes(bytes_at(row, 1, "node id")?),
        settle_at_s: u64_at(row, 4, "settle_at_s")?,
        entry: AckEntry {
            deployment: DeploymentId::from_bytes(bytes_at(row, 2, "deployment id")?),
            key: KeyId::from_bytes(bytes_at(row, 3, "key id")?),
            acked: tally(5, "acknowledged tally")?,
            charged: tally(8, "charged tally")?,
        },
    })
}

/// Stores `r` (see [`crate::ledger::Ledger::store_acks`]); the pair after, `None` if settled.
pub(super) fn store(tx: &Transaction<'_>, r: &AckRecord) -> Result<Option<StoredAck>, LedgerError> {
    let nonce = r.ticket_nonce.as_slice();
    let node = r.node.as_bytes().as_slice();
    let tasks = to_i64(r.acked.tasks, "acknowledged tasks")?;
    let credits = to_i64(r.acked.credits.get(), "acknowledged credits")?;
    let settle_at_s = to_i64(r.settle_at_s, "settle_at_s")?;
    let held: Option<(i64, Option<i64>)> = tx
        .prepare_cached(
            "SELECT acked_tasks, settled_at_s FROM acks WHERE ticket_nonce = ?1 AND node = ?2",
        )
        .db()?
        .query_row(params![nonce, node], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .db()?;
    match held {
        Some((_, Some(_))) => return Ok(None),
        Some((held_tasks, None)) if tasks > held_tasks => {
            tx.prepare_cached(
                "UPDATE acks SET acked_tasks = ?3, acked_credits = ?4, acked_accumulator = ?5
                 WHERE ticket_nonce = ?1 AND node = ?2",
            )
            .db()?
            .execute(params![
                nonce,
                node,
                tasks,
                credits,
                r.acked.accumulator.as_slice()
            ])
            .db()?;
        }
        Some(_) => {}
        None => {
            tx.prepare_cached(
                "INSERT INTO acks (ticket_nonce, node, deployment, key, settle_at_s,
                     acked_tasks, acked_credits, acked_accumulator)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .db()?
            .execute(params![
                nonce,
                node,
                r.deployment.as_bytes().as_slice(),
                r.key.as_bytes().as_slice(),
                settle_at_s,
                tasks,
                credits,
                r.acked.accumulator.as_slice(),
            ])
            .db()?;
        }
    }
    let sql = format!("SELECT {COLUMNS} FROM acks WHERE ticket_nonce = ?1 AND node = ?2");
    let mut stmt = tx.prepare_cached(&sql).db()?;
    let mut rows = stmt.query(params![nonce, node]).db()?;
    match rows.next().db()? {
        Some(r) => row(r).map(Some),
        None => Err(LedgerError::Corrupt(
            "an acknowledgement just stored is not there".into(),
        )),
    }
}

/// Pairs not settled, soonest settlement first, at most `limit`; only those due by `due_s`
/// when it is given.
pub(super) fn unsettled(
    tx: &Transaction<'_>,
    due_s: Option<u64>,
    limit: u32,
) -> Result<Vec<StoredAck>, LedgerError> {
    let due = due_s
        .map(|s| to_i64(s, "now_s"))
        .transpose()?
        .unwrap_or(i64::MAX);
    let sql = format!(
        "SELECT {COLUMNS} FROM acks WHERE settled_at_s IS NULL AND settle_at_s <= ?1
         ORDER BY settle_at_s, ticket_nonce, node LIMIT ?2"
    );
    let mut stmt = tx.prepare_cached(&sql).db()?;
    let mut rows = stmt.query(params![due, i64::from(limit)]).db()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().db()? {
        out.push(row(r)?);
    }
    Ok(out)
}

/// Marks `a`'s pair settled at `now_s`.
pub(super) fn mark_settled(
    tx: &Transaction<'_>,
    a: &StoredAck,
    now_s: u64,
) -> Result<(), LedgerError> {
    tx.prepare_cached(
        "UPDATE acks SET settled_at_s = ?3
         WHERE ticket_nonce = ?1 AND node = ?2 AND settled_at_s IS NULL",
    )
    .db()?
    .execute(params![
        a.ticket_nonce.as_slice(),
        a.node.as_bytes().as_slice(),
        to_i64(now_s, "now_s")?
    ])
    .db()?;
    Ok(())
}

/// Whether the pair (`nonce`, `node`) has a settled acknowledgement.
pub(super) fn settled(
    tx: &Transaction<'_>,
    nonce: &[u8; 16],
    node: &NodeId,
) -> Result<bool, LedgerError> {
    tx.prepare_cached(
        "SELECT 1 FROM acks WHERE ticket_nonce = ?1 AND node = ?2 AND settled_at_s IS NOT NULL",
    )
    .db()?
    .exists(params![nonce.as_slice(), node.as_bytes().as_slice()])
    .db()
}

/// Counts a charged record in the charged tally of its pair's acknowledgement, if one is
/// stored and not settled.
pub(super) fn count(tx: &Transaction<'_>, c: &UsageCharge) -> Result<(), LedgerError> {
    let nonce = c.record.ticket_nonce.as_slice();
    let node = c.node.as_bytes().as_slice();
    let held: Option<(i64, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT charged_tasks, charged_credits, charged_accumulator FROM acks
             WHERE ticket_nonce = ?1 AND node = ?2 AND settled_at_s IS NULL",
        )
        .db()?
        .query_row(params![nonce, node], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()
        .db()?;
    let Some((tasks, credits, accumulator)) = held else {
        return Ok(());
    };
    let mut charged = Tally {
        tasks: from_i64(tasks, "charged tasks")?,
        credits: Credits::new(from_i64(credits, "charged credits")?),
        accumulator: accumulator
            .try_into()
            .map_err(|_| LedgerError::Corrupt("charged accumulator".into()))?,
    };
    charged
        .add(&c.record.task, &c.record.inputs_digest, c.cost)
        .ok_or(LedgerError::Overflow("charged tally"))?;
    tx.prepare_cached(
        "UPDATE acks SET charged_tasks = ?3, charged_credits = ?4, charged_accumulator = ?5
         WHERE ticket_nonce = ?1 AND node = ?2",
    )
    .db()?
    .execute(params![
        nonce,
        node,
        to_i64(charged.tasks, "charged tasks")?,
        to_i64(charged.credits.get(), "charged credits")?,
        charged.accumulator.as_slice(),
    ])
    .db()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crat_core::id::TaskId;
    use crat_core::wire::UsageRecord;
    use rusqlite::Connection;

    use super::super::tests::{dep_id, key_id, name, per_request, setup, temp};
    use super::super::{MIGRATIONS, SqliteLedger};
    use super::*;
    use crate::ledger::{AckSettlement, Ledger};

    const NONCE: [u8; 16] = [5; 16];

    fn node() -> NodeId {
        NodeId::from_bytes([6; 32])
    }

    fn tally(tasks: u64, credits: u64) -> Tally {
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

    fn ack(nonce: [u8; 16], tasks: u64, credits: u64, settle_at_s: u64) -> AckRecord {
        AckRecord {
            ticket_nonce: nonce,
            node: node(),
            deployment: dep_id(1),
            key: key_id(1),
            settle_at_s,
            acked: tally(tasks, credits),
        }
    }

    fn record(nonce: [u8; 16], t: u8, cost: u64) -> UsageCharge {
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

    #[test]
    fn acknowledgements_and_what_was_charged_survive_a_reopen() {
        let (_dir, path) = temp();
        {
            let ledger = SqliteLedger::open(&path).unwrap();
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
        }
        let ledger = SqliteLedger::open(&path).unwrap();
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

    #[test]
    fn a_settlement_charges_once_and_later_records_and_acknowledgements_are_refused() {
        let (_dir, path) = temp();
        {
            let ledger = SqliteLedger::open(&path).unwrap();
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
        }
        let ledger = SqliteLedger::open(&path).unwrap();
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
        assert!(ledger.totals().unwrap().is_conserved());
    }

    #[test]
    fn a_failed_settlement_settles_nothing() {
        let ledger = SqliteLedger::open_in_memory().unwrap();
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

    #[test]
    fn values_beyond_the_database_are_refused_and_nothing_is_stored() {
        let ledger = SqliteLedger::open_in_memory().unwrap();
        let mut huge = ack([9; 16], 1, 1, 10);
        huge.acked.tasks = u64::MAX;
        let err = ledger
            .store_acks(&[ack(NONCE, 1, 1, 10), huge])
            .unwrap_err();
        assert!(matches!(err, LedgerError::Invalid(_)), "{err}");
        assert!(ledger.unsettled_acks(10).unwrap().is_empty());
    }

    /// Migration 5 on a file written by migration 1 (with usage in it): acknowledgements are
    /// stored and read back after it.
    #[test]
    fn acknowledgements_are_kept_on_a_file_written_by_migration_1() {
        let (_dir, path) = temp();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            let d = per_request(&name("alice"), 1, 100, 20);
            conn.execute_batch(&format!(
                "INSERT INTO accounts VALUES ('alice', 40, 0);
                 INSERT INTO keys VALUES (x'{key}', 'alice', zeroblob(32), 0, NULL, NULL);
                 INSERT INTO models VALUES (x'{model}', 1000, 'alice', 0);
                 INSERT INTO deployments VALUES (x'{id}', 'alice', x'{key}', x'{model}', 1000,
                     '{plan}', '{price}', 100, 20, NULL);
                 INSERT INTO usage VALUES (x'03030303030303030303030303030303', x'{id}',
                     x'{key}', zeroblob(32), 7, 8, 9, 4, 0, 5);",
                key = hex::encode(d.key.as_bytes()),
                model = hex::encode(d.model.as_bytes()),
                id = hex::encode(d.id.as_bytes()),
                plan = serde_json::to_string(&d.plan).unwrap(),
                price = serde_json::to_string(&d.price).unwrap(),
            ))
            .unwrap();
        }
        {
            let ledger = SqliteLedger::open(&path).unwrap();
            assert_eq!(
                ledger.schema_version().unwrap(),
                SqliteLedger::current_schema_version()
            );
            assert!(ledger.unsettled_acks(10).unwrap().is_empty());
            ledger.store_acks(&[ack(NONCE, 2, 10, 90)]).unwrap();
            ledger.charge_usage(&[record(NONCE, 1, 5)]).unwrap();
        }
        let ledger = SqliteLedger::open(&path).unwrap();
        let back = ledger.unsettled_acks(10).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].entry.acked, tally(2, 10));
        assert_eq!(back[0].entry.charged.credits, Credits::new(5));
        assert_eq!(
            ledger.usage_totals(&dep_id(1)).unwrap(),
            (2, Credits::new(9))
        );
    }
}
