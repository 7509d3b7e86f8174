//! The soak's checks on what the network left: the ledger file (through the `Ledger` trait,
//! and read-only SQL for the sums it does not offer), the payout files and the processes' logs.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use crat_core::id::{DeploymentId, TaskId};
use crat_core::money::Credits;
use crat_dispatcher::ledger::{AccountName, Ledger, SqliteLedger, UNSETTLED_ROUNDS_MAX};
use crat_rewards::file_export::FileSettlement;
use crat_rewards::{PayoutBatch, RoundInputs, RoundOutcome};

use crate::clients::Traffic;
use crate::processes::NodeProc;
use crate::{GRANT, SETTLEMENT_DIGEST};

/// In how many of the dispatcher's lives `node` registered (from the dispatcher's logs).
pub(crate) fn steady_registrations(logs: &Path, node: &NodeProc) -> anyhow::Result<u32> {
    // "node <id> serving on <addr>"
    let first = std::fs::read_to_string(logs.join(format!("node{}-001.out", node.index)))?;
    let id = first
        .lines()
        .find(|l| l.contains("serving on"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("the node printed no id")?
        .to_owned();
    let marker = format!("node registered node={id}");
    let mut lives = 0;
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        if is_dispatcher_log(&path) && std::fs::read_to_string(&path)?.contains(&marker) {
            lives += 1;
        }
    }
    Ok(lives)
}

/// Whether `path` is the stderr (tracing) log of one of the dispatcher's lives.
pub(crate) fn is_dispatcher_log(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("dispatcher-") && n.ends_with(".err"))
}

/// A read-only connection to the ledger file, for the audit's sums (the dispatcher may still
/// be writing it: SQLite's WAL lets a reader in).
pub(crate) fn read_only(ledger: &Path) -> anyhow::Result<rusqlite::Connection> {
    Ok(rusqlite::Connection::open_with_flags(
        ledger,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
}

/// What is not done yet of the quiet time's work (empty when all is).
pub(crate) fn pending_work(
    ledger: &Path,
    last_due_round: u64,
    nodes: &[NodeProc],
) -> anyhow::Result<Vec<String>> {
    let db = read_only(ledger)?;
    let mut pending = Vec::new();
    let last: Option<i64> = db.query_row("SELECT MAX(idx) FROM rounds", [], |r| r.get(0))?;
    if last.is_none_or(|l| u64::try_from(l).unwrap_or(0) < last_due_round) {
        pending.push(format!(
            "last closed round {last:?}, round {last_due_round} is due"
        ));
    }
    let unsettled: i64 = db.query_row(
        "SELECT COUNT(*) FROM rounds WHERE settled_at_s IS NULL",
        [],
        |r| r.get(0),
    )?;
    if unsettled > 0 {
        pending.push(format!("{unsettled} rounds unsettled"));
    }
    let acks: i64 = db.query_row(
        "SELECT COUNT(*) FROM acks WHERE settled_at_s IS NULL",
        [],
        |r| r.get(0),
    )?;
    if acks > 0 {
        pending.push(format!("{acks} acknowledgements unsettled"));
    }
    for n in nodes {
        let records = n.journal()?;
        if !records.is_empty() {
            pending.push(format!(
                "node {} journal holds {} records",
                n.index,
                records.len()
            ));
        }
    }
    Ok(pending)
}

/// Audits the ledger and payout files after the soak; returns the report's lines, or the
/// first violation.
pub(crate) fn audit(
    data: &Path,
    logs: &Path,
    deployments: &[DeploymentId],
    traffic: &[Arc<Traffic>],
    task_cost: &[Credits],
) -> anyhow::Result<String> {
    let ledger_path = data.join("ledger.sqlite");
    let ledger = SqliteLedger::open(&ledger_path)?;
    let db = read_only(&ledger_path)?;
    let mut report = String::new();

    // Money is conserved, and the grants are the operator's.
    let totals = ledger.totals()?;
    ensure!(totals.is_conserved(), "money not conserved: {totals:?}");
    ensure!(
        totals.granted == Credits::new(2 * GRANT),
        "grants {:?}, the operator granted {}",
        totals.granted,
        2 * GRANT
    );
    writeln!(
        report,
        "money conserved: balances {} + allowances {} + income {} = grants {} credits",
        totals.balances.get(),
        totals.allowances.get(),
        totals.income.get(),
        totals.granted.get()
    )?;

    // Every charge exactly once: at most one usage row per task, and the journal's usage
    // movements (one per deployment and time of each charge) come, per deployment and time,
    // to what the usage rows charged.
    let doubled: i64 = db.query_row(
        "SELECT COUNT(*) FROM (SELECT 1 FROM usage GROUP BY deployment, task HAVING COUNT(*) > 1)",
        [],
        |r| r.get(0),
    )?;
    ensure!(doubled == 0, "{doubled} tasks have more than one usage row");
    let (rows_charging, rows_sum): (i64, i64) = db.query_row(
        "SELECT COUNT(*), COALESCE(SUM(charged), 0) FROM usage WHERE charged > 0",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (movements, journal_sum): (i64, i64) = db.query_row(
        "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM journal WHERE kind = 'usage'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    ensure!(
        rows_sum == journal_sum,
        "usage rows charged {rows_sum} credits ({rows_charging} rows), the usage journal \
         {journal_sum} ({movements} movements)"
    );
    let unmatched: i64 = db.query_row(
        "WITH j AS (SELECT deployment, at_s, SUM(amount) FROM journal WHERE kind = 'usage'
                        GROUP BY deployment, at_s),
              u AS (SELECT deployment, at_s, SUM(charged) FROM usage WHERE charged > 0
                        GROUP BY deployment, at_s)
         SELECT (SELECT COUNT(*) FROM (SELECT * FROM j EXCEPT SELECT * FROM u))
              + (SELECT COUNT(*) FROM (SELECT * FROM u EXCEPT SELECT * FROM j))",
        [],
        |r| r.get(0),
    )?;
    ensure!(
        unmatched == 0,
        "{unmatched} (deployment, second) pairs where the usage journal and the usage rows differ"
    );
    writeln!(
        report,
        "charges: {rows_charging} usage rows charged, each task once, {rows_sum} credits; the journal's {movements} usage movements come to the same per deployment and second"
    )?;

    // Every answered task billed at most once, and every one billed.
    let mut loss_tasks = 0u64;
    let mut losses = Vec::new();
    for ((d, t), cost) in deployments.iter().zip(traffic).zip(task_cost) {
        let answered = t.answered.lock().clone();
        let distinct: HashSet<TaskId> = answered.iter().copied().collect();
        ensure!(distinct.len() == answered.len(), "a task id was used twice");
        let mut with_row = 0u64;
        for task in &answered {
            let rows = ledger.usage(d, task)?;
            ensure!(
                rows.len() <= 1,
                "task {task} of {d} billed {} times",
                rows.len()
            );
            with_row += rows.len() as u64;
        }
        let blob = d.as_bytes().as_slice();
        let (pairs, acked_tasks, acked_credits, charged_tasks, unsettled): (
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(acked_tasks), 0), COALESCE(SUM(acked_credits), 0),
                        COALESCE(SUM(charged_tasks), 0),
                        COALESCE(SUM(settled_at_s IS NULL), 0)
                 FROM acks WHERE deployment = ?1",
            [blob],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        ensure!(
            unsettled == 0,
            "{unsettled} acknowledgements of {d} unsettled"
        );
        let (task_rows, settlement_rows, billed_credits): (i64, i64, i64) = db.query_row(
            "SELECT COALESCE(SUM(inputs_digest != ?2), 0), COALESCE(SUM(inputs_digest = ?2), 0),
                    COALESCE(SUM(charged + uncollected), 0)
             FROM usage WHERE deployment = ?1",
            rusqlite::params![blob, SETTLEMENT_DIGEST.as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        // What settlements charged: per pair, the acknowledged tasks no record charged.
        let settled_tasks = acked_tasks - charged_tasks;
        let billed = task_rows + settled_tasks;
        let n = answered.len() as i64;
        let expected_credits = i64::try_from(cost.get())? * n;
        let line = format!(
            "{d}: {n} answered; acknowledged {acked_tasks} in {pairs} (ticket, node) pairs; \
             billed {billed} = {task_rows} usage rows ({with_row} of them of answered tasks) + \
             {settled_tasks} settled from acknowledgements in {settlement_rows} rows; \
             {billed_credits} credits (price {} × {n} = {expected_credits})",
            cost.get()
        );
        writeln!(report, "{line}")?;
        // Never more than the answers: no acknowledgement of more than the client got, no
        // bill beyond the acknowledgements, in tasks or in credits.
        ensure!(
            acked_tasks <= n && acked_credits <= expected_credits,
            "acknowledged more than the client got: {line}"
        );
        ensure!(billed <= acked_tasks, "over-billed: {line}");
        ensure!(
            billed_credits <= acked_credits,
            "over-charged ({acked_credits} credits acknowledged): {line}"
        );
        // Loss: answered work billed neither from its node's usage record nor from the
        // client's acknowledgement, i.e. the acknowledgement did not reach the dispatcher
        // (from the client, or forwarded by the node) before the ticket's usage window ended.
        let lost = n - billed;
        loss_tasks += u64::try_from(lost)?;
        if lost > 0 || billed_credits != expected_credits {
            losses.push(format!(
                "{lost} tasks, {} credits: {line}",
                expected_credits - billed_credits
            ));
        }
    }
    writeln!(
        report,
        "loss: {loss_tasks} answered tasks never billed (work whose acknowledgement reached the \
         dispatcher neither from the client nor from the node before its ticket's usage window \
         ended: the protocol's one window of loss; the clients here stay up and acknowledge \
         everything, so there must be none)"
    )?;
    ensure!(losses.is_empty(), "loss: {}", losses.join("; "));

    // Uploads: every one the SDK reported done is stored.
    let mut uploads = 0;
    for (i, t) in traffic.iter().enumerate() {
        let account = AccountName::new(["per-request", "per-instance"][i])?;
        for (model, bytes) in t.uploads.lock().iter() {
            let record = ledger
                .model(model)?
                .with_context(|| format!("upload {model} acknowledged, not stored"))?;
            ensure!(
                record.bytes == *bytes,
                "upload {model}: {} bytes stored",
                record.bytes
            );
            ensure!(
                ledger.may_use_model(model, &account)?,
                "upload {model} not usable by {account}"
            );
            uploads += 1;
        }
    }
    writeln!(report, "uploads: {uploads}, each stored with its size")?;

    // Rounds: contiguous, all settled, files verify, outcomes recomputed.
    let rounds = ledger.rounds(u32::MAX)?;
    ensure!(!rounds.is_empty(), "no round closed");
    let indices: Vec<u64> = rounds.iter().rev().map(|r| r.index).collect();
    let (first, last) = (indices[0], indices[indices.len() - 1]);
    ensure!(
        indices == (first..=last).collect::<Vec<_>>(),
        "rounds not contiguous: {indices:?}"
    );
    let unsettled = ledger.unsettled_rounds(UNSETTLED_ROUNDS_MAX)?;
    ensure!(unsettled.is_empty(), "rounds unsettled: {unsettled:?}");
    let files = FileSettlement::new(data.join("payouts"));
    let mut paid_usd_micro = 0u64;
    for r in &rounds {
        let outcome = RoundOutcome::from_json(&r.outcome_json)?;
        let recomputed = crat_rewards::compute(&RoundInputs::from_json(&r.inputs_json)?)?;
        ensure!(
            recomputed == outcome,
            "round {}: the stored outcome is not what its stored inputs compute",
            r.index
        );
        let batch = PayoutBatch::from_outcome(r.index, &outcome)?;
        let json = std::fs::read_to_string(files.path(r.index, "json"))
            .with_context(|| format!("round {} JSON", r.index))?;
        ensure!(json == batch.to_json(), "round {} JSON differs", r.index);
        ensure!(
            std::fs::read_to_string(files.path(r.index, "csv"))? == batch.to_csv(),
            "round {} CSV differs",
            r.index
        );
        let digest = std::fs::read_to_string(files.path(r.index, "blake3"))?;
        ensure!(
            digest.split_whitespace().next()
                == Some(blake3::hash(json.as_bytes()).to_hex().as_str()),
            "round {} digest file differs",
            r.index
        );
        let settled = ledger
            .round_settlement(r.index)?
            .with_context(|| format!("round {} not marked settled", r.index))?;
        ensure!(
            settled.digest.map(hex::encode) == Some(batch.digest_hex()),
            "round {}: the ledger's settlement digest is not the batch's",
            r.index
        );
        paid_usd_micro += batch.total_usd_micro.get();
    }
    // Newly paid at most once per round across every life of the dispatcher (a round whose
    // files were written just before a kill is recognised as paid after the restart).
    let mut newly: BTreeMap<u64, u32> = BTreeMap::new();
    let mut again = 0u32;
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        if !is_dispatcher_log(&path) {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            if !line.contains("round settled") {
                continue;
            }
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            let round: u64 = field("round=")
                .with_context(|| format!("no round in {line:?}"))?
                .parse()?;
            match field("newly_settled=").as_deref() {
                Some("true") => *newly.entry(round).or_default() += 1,
                Some("false") => again += 1,
                _ => bail!("no newly_settled in {line:?}"),
            }
        }
    }
    let twice: Vec<_> = newly.iter().filter(|&(_, &n)| n > 1).collect();
    ensure!(
        twice.is_empty(),
        "rounds newly paid more than once: {twice:?}"
    );
    ensure!(
        newly.keys().all(|i| (first..=last).contains(i)),
        "a round was paid that the ledger does not hold: {newly:?}"
    );
    writeln!(
        report,
        "rounds: {} closed ({first}..={last}), all settled once, files verified, outcomes recomputed; \
         newly paid {} times (once each), recognised as paid after a restart {again} times; \
         paid in all ${}.{:06}",
        rounds.len(),
        newly.len(),
        paid_usd_micro / 1_000_000,
        paid_usd_micro % 1_000_000
    )?;
    Ok(report)
}
