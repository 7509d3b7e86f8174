//! The `acks` table in PostgreSQL: clients' acknowledgements per (ticket nonce, node), what
//! usage charged against each, and whether its usage window was settled; the same rules as
//! SQLite's (`crate::ledger::sqlite::acks`), which are [`crat_core::policy::acks`]'s.

use crat_core::id::{DeploymentId, KeyId, NodeId};
use crat_core::money::Credits;
use crat_core::policy::acks::{AckEntry, Tally};
use tokio_postgres::Row;

use super::pool::Tx;
use super::{bytes_at, from_i64, get, to_i64, u64_at};
use crate::ledger::common::ACK_COLUMNS as COLUMNS;
use crate::ledger::common::{Pair, Pairs};
use crate::ledger::{AckRecord, LedgerError, StoredAck};

fn row(row: &Row) -> Result<StoredAck, LedgerError> {
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
pub(super) fn store(tx: &mut Tx<'_>, r: &AckRecord) -> Result<Option<StoredAck>, LedgerError> {
    let nonce = r.ticket_nonce.as_slice();
    let node = r.node.as_bytes().as_slice();
    let tasks = to_i64(r.acked.tasks, "acknowledged tasks")?;
    let credits = to_i64(r.acked.credits.get(), "acknowledged credits")?;
    let settle_at_s = to_i64(r.settle_at_s, "settle_at_s")?;
    let held = tx.query_opt(
        "SELECT acked_tasks, settled_at_s FROM acks
         WHERE ticket_nonce = $1 AND node = $2 FOR UPDATE",
        &[&nonce, &node],
    )?;
    let held = match held {
        Some(row) => Some((get::<i64>(&row, 0)?, get::<Option<i64>>(&row, 1)?)),
        None => None,
    };
    match held {
        Some((_, Some(_))) => return Ok(None),
        Some((held_tasks, None)) if tasks > held_tasks => {
            tx.execute(
                "UPDATE acks SET acked_tasks = $3, acked_credits = $4, acked_accumulator = $5
                 WHERE ticket_nonce = $1 AND node = $2",
                &[&nonce, &node, &tasks, &credits, &r.acked.accumulator],
            )?;
        }
        Some(_) => {}
        None => {
            tx.execute(
                "INSERT INTO acks (ticket_nonce, node, deployment, key, settle_at_s,
                     acked_tasks, acked_credits, acked_accumulator)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &nonce,
                    &node,
                    r.deployment.as_bytes(),
                    r.key.as_bytes(),
                    &settle_at_s,
                    &tasks,
                    &credits,
                    &r.acked.accumulator,
                ],
            )?;
        }
    }
    match tx.query_opt(
        &format!("SELECT {COLUMNS} FROM acks WHERE ticket_nonce = $1 AND node = $2"),
        &[&nonce, &node],
    )? {
        Some(r) => row(&r).map(Some),
        None => Err(LedgerError::Corrupt(
            "an acknowledgement just stored is not there".into(),
        )),
    }
}

/// Pairs not settled, soonest settlement first, at most `limit`; only those due by `due_s`
/// when it is given.
pub(super) fn unsettled(
    tx: &mut Tx<'_>,
    due_s: Option<u64>,
    limit: u32,
) -> Result<Vec<StoredAck>, LedgerError> {
    let due = due_s
        .map(|s| to_i64(s, "now_s"))
        .transpose()?
        .unwrap_or(i64::MAX);
    tx.query(
        &format!(
            "SELECT {COLUMNS} FROM acks WHERE settled_at_s IS NULL AND settle_at_s <= $1
             ORDER BY settle_at_s, ticket_nonce, node LIMIT $2"
        ),
        &[&due, &i64::from(limit)],
    )?
    .iter()
    .map(row)
    .collect()
}

/// Marks `a`'s pair settled at `now_s`.
pub(super) fn mark_settled(tx: &mut Tx<'_>, a: &StoredAck, now_s: u64) -> Result<(), LedgerError> {
    tx.execute(
        "UPDATE acks SET settled_at_s = $3
         WHERE ticket_nonce = $1 AND node = $2 AND settled_at_s IS NULL",
        &[
            &a.ticket_nonce.as_slice(),
            a.node.as_bytes(),
            &to_i64(now_s, "now_s")?,
        ],
    )?;
    Ok(())
}

/// The acknowledgement of the pair (`nonce`, `node`), read for a charge's
/// [`Pairs`](crate::ledger::common::Pairs); locked, so a settlement of the pair waits for
/// the charge's counts.
pub(super) fn pair(tx: &mut Tx<'_>, nonce: &[u8; 16], node: &NodeId) -> Result<Pair, LedgerError> {
    let held = tx.query_opt(
        "SELECT settled_at_s, charged_tasks, charged_credits, charged_accumulator
         FROM acks WHERE ticket_nonce = $1 AND node = $2 FOR UPDATE",
        &[&nonce.as_slice(), node.as_bytes()],
    )?;
    Ok(match held {
        None => Pair::Absent,
        Some(row) if get::<Option<i64>>(&row, 0)?.is_some() => Pair::Settled,
        Some(row) => Pair::Open {
            charged: Tally {
                tasks: from_i64(get(&row, 1)?, "charged tasks")?,
                credits: Credits::new(from_i64(get(&row, 2)?, "charged credits")?),
                accumulator: bytes_at(&row, 3, "charged accumulator")?,
            },
            changed: false,
        },
    })
}

/// Writes the charged tallies a charge changed.
pub(super) fn write_charged(tx: &mut Tx<'_>, pairs: Pairs) -> Result<(), LedgerError> {
    for (nonce, node, charged) in pairs.changed() {
        tx.execute(
            "UPDATE acks SET charged_tasks = $3, charged_credits = $4, charged_accumulator = $5
             WHERE ticket_nonce = $1 AND node = $2",
            &[
                &nonce.as_slice(),
                node.as_bytes(),
                &to_i64(charged.tasks, "charged tasks")?,
                &to_i64(charged.credits.get(), "charged credits")?,
                &charged.accumulator,
            ],
        )?;
    }
    Ok(())
}
