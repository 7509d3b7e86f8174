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
use crate::ledger::{AckRecord, LedgerError, StoredAck, UsageCharge};

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

/// Whether the pair (`nonce`, `node`) has a settled acknowledgement.
pub(super) fn settled(
    tx: &mut Tx<'_>,
    nonce: &[u8; 16],
    node: &NodeId,
) -> Result<bool, LedgerError> {
    tx.exists(
        "SELECT 1 FROM acks WHERE ticket_nonce = $1 AND node = $2 AND settled_at_s IS NOT NULL",
        &[&nonce.as_slice(), node.as_bytes()],
    )
}

/// Counts a charged record in the charged tally of its pair's acknowledgement, if one is
/// stored and not settled.
pub(super) fn count(tx: &mut Tx<'_>, c: &UsageCharge) -> Result<(), LedgerError> {
    let nonce = c.record.ticket_nonce.as_slice();
    let node = c.node.as_bytes().as_slice();
    let Some(held) = tx.query_opt(
        "SELECT charged_tasks, charged_credits, charged_accumulator FROM acks
         WHERE ticket_nonce = $1 AND node = $2 AND settled_at_s IS NULL FOR UPDATE",
        &[&nonce, &node],
    )?
    else {
        return Ok(());
    };
    let mut charged = Tally {
        tasks: from_i64(get(&held, 0)?, "charged tasks")?,
        credits: Credits::new(from_i64(get(&held, 1)?, "charged credits")?),
        accumulator: bytes_at(&held, 2, "charged accumulator")?,
    };
    charged
        .add(&c.record.task, &c.record.inputs_digest, c.cost)
        .ok_or(LedgerError::Overflow("charged tally"))?;
    tx.execute(
        "UPDATE acks SET charged_tasks = $3, charged_credits = $4, charged_accumulator = $5
         WHERE ticket_nonce = $1 AND node = $2",
        &[
            &nonce,
            &node,
            &to_i64(charged.tasks, "charged tasks")?,
            &to_i64(charged.credits.get(), "charged credits")?,
            &charged.accumulator,
        ],
    )?;
    Ok(())
}
