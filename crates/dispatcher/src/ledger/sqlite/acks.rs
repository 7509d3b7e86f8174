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
use crate::ledger::common::ACK_COLUMNS as COLUMNS;
use crate::ledger::common::{Pair, Pairs};
use crate::ledger::{AckRecord, LedgerError, StoredAck};

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

/// The acknowledgement of the pair (`nonce`, `node`), read for a charge's
/// [`Pairs`](crate::ledger::common::Pairs).
pub(super) fn pair(
    tx: &Transaction<'_>,
    nonce: &[u8; 16],
    node: &NodeId,
) -> Result<Pair, LedgerError> {
    let held: Option<(Option<i64>, i64, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT settled_at_s, charged_tasks, charged_credits, charged_accumulator
             FROM acks WHERE ticket_nonce = ?1 AND node = ?2",
        )
        .db()?
        .query_row(
            params![nonce.as_slice(), node.as_bytes().as_slice()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()
        .db()?;
    Ok(match held {
        None => Pair::Absent,
        Some((Some(_), ..)) => Pair::Settled,
        Some((None, tasks, credits, accumulator)) => Pair::Open {
            charged: Tally {
                tasks: from_i64(tasks, "charged tasks")?,
                credits: Credits::new(from_i64(credits, "charged credits")?),
                accumulator: accumulator
                    .try_into()
                    .map_err(|_| LedgerError::Corrupt("charged accumulator".into()))?,
            },
            changed: false,
        },
    })
}

/// Writes the charged tallies a charge changed.
pub(super) fn write_charged(tx: &Transaction<'_>, pairs: Pairs) -> Result<(), LedgerError> {
    for (nonce, node, charged) in pairs.changed() {
        tx.prepare_cached(
            "UPDATE acks SET charged_tasks = ?3, charged_credits = ?4, charged_accumulator = ?5
             WHERE ticket_nonce = ?1 AND node = ?2",
        )
        .db()?
        .execute(params![
            nonce.as_slice(),
            node.as_bytes().as_slice(),
            to_i64(charged.tasks, "charged tasks")?,
            to_i64(charged.credits.get(), "charged credits")?,
            charged.accumulator.as_slice(),
        ])
        .db()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The acknowledgements' tests that read old SQLite schemas; the others are the suite's
    //! ([`crate::ledger::suite::acks`]).

    use rusqlite::Connection;

    use super::super::tests::temp;
    use super::super::{MIGRATIONS, SqliteLedger};
    use super::*;
    use crate::ledger::Ledger;
    use crate::ledger::suite::acks::{NONCE, ack, record, tally};
    use crate::ledger::suite::{dep_id, name, per_request};

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
