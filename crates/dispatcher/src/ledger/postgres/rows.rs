//! Decoding the PostgreSQL ledger's rows into records: integers checked back into `u64`,
//! fixed-size ids from `BYTEA`, JSON columns parsed; anything else is
//! [`LedgerError::Corrupt`].

use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId};
use crat_core::money::{Credits, MicroCrat, MicroUsd};
use crat_core::wire::RoundEarnings;
use tokio_postgres::Row;

use super::pool;
use crate::ledger::common::from_i64;
use crate::ledger::{
    AccountName, DeploymentRecord, KeyRecord, LedgerError, NodeRecord, RoundRecord,
};

pub(super) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, LedgerError> {
    row.try_get(idx)
        .map_err(|e| LedgerError::Corrupt(format!("column {idx}: {}", pool::describe(&e))))
}

pub(super) fn u64_at(row: &Row, idx: usize, what: &str) -> Result<u64, LedgerError> {
    from_i64(get(row, idx)?, what)
}

pub(super) fn opt_u64_at(row: &Row, idx: usize, what: &str) -> Result<Option<u64>, LedgerError> {
    get::<Option<i64>>(row, idx)?
        .map(|v| from_i64(v, what))
        .transpose()
}

pub(super) fn bytes_at<const N: usize>(
    row: &Row,
    idx: usize,
    what: &str,
) -> Result<[u8; N], LedgerError> {
    let blob: &[u8] = get(row, idx)?;
    blob.try_into()
        .map_err(|_| LedgerError::Corrupt(format!("{what} has {} bytes, not {N}", blob.len())))
}

pub(super) fn account_at(row: &Row, idx: usize) -> Result<AccountName, LedgerError> {
    let name: String = get(row, idx)?;
    AccountName::new(name).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

pub(super) fn key_row(row: &Row) -> Result<KeyRecord, LedgerError> {
    Ok(KeyRecord {
        id: KeyId::from_bytes(bytes_at(row, 0, "key id")?),
        account: account_at(row, 1)?,
        secret_hash: bytes_at(row, 2, "secret hash")?,
        created_at_s: u64_at(row, 3, "created_at_s")?,
        expires_at_s: opt_u64_at(row, 4, "expires_at_s")?,
        revoked_at_s: opt_u64_at(row, 5, "revoked_at_s")?,
    })
}

pub(super) fn deployment_row(row: &Row) -> Result<DeploymentRecord, LedgerError> {
    let plan: &str = get(row, 5)?;
    let price: &str = get(row, 6)?;
    let verifiability: &str = get(row, 10)?;
    Ok(DeploymentRecord {
        id: DeploymentId::from_bytes(bytes_at(row, 0, "deployment id")?),
        account: account_at(row, 1)?,
        key: KeyId::from_bytes(bytes_at(row, 2, "key id")?),
        model: ModelId::from_bytes(bytes_at(row, 3, "model id")?),
        model_bytes: u64_at(row, 4, "model_bytes")?,
        plan: serde_json::from_str(plan)
            .map_err(|e| LedgerError::Corrupt(format!("deployment plan: {e}")))?,
        price: serde_json::from_str(price)
            .map_err(|e| LedgerError::Corrupt(format!("deployment price: {e}")))?,
        allowance_left: Credits::new(u64_at(row, 7, "allowance_left")?),
        created_at_s: u64_at(row, 8, "created_at_s")?,
        stopped_at_s: opt_u64_at(row, 9, "stopped_at_s")?,
        verifiability: serde_json::from_str(verifiability)
            .map_err(|e| LedgerError::Corrupt(format!("deployment verifiability: {e}")))?,
        updates: u32::try_from(u64_at(row, 11, "updates")?)
            .map_err(|_| LedgerError::Corrupt("deployment updates".into()))?,
        updated_at_s: opt_u64_at(row, 12, "updated_at_s")?,
    })
}

pub(super) fn node_row(row: &Row) -> Result<NodeRecord, LedgerError> {
    let rating: i64 = get(row, 1)?;
    Ok(NodeRecord {
        id: NodeId::from_bytes(bytes_at(row, 0, "node id")?),
        rating: u8::try_from(rating)
            .map_err(|_| LedgerError::Corrupt(format!("node rating {rating}")))?,
        registered_at_s: u64_at(row, 2, "registered_at_s")?,
        mining_income_usd_micro_per_day: MicroUsd::new(u64_at(row, 3, "mining_income")?),
        crat_micro: MicroCrat::new(u64_at(row, 4, "crat_micro")?),
        streak: u64_at(row, 5, "streak")?,
        uptime_total_s: u64_at(row, 6, "uptime_total_s")?,
    })
}

pub(super) fn round_node_row(row: &Row) -> Result<RoundEarnings, LedgerError> {
    Ok(RoundEarnings {
        index: u64_at(row, 0, "round")?,
        start_s: u64_at(row, 2, "start_s")?,
        uptime_s: u64_at(row, 3, "uptime_s")?,
        committed: get(row, 4)?,
        rank: opt_u64_at(row, 5, "rank")?,
        guaranteed_usd_micro: MicroUsd::new(u64_at(row, 6, "guaranteed")?),
        bonus_usd_micro: MicroUsd::new(u64_at(row, 7, "bonus")?),
        crat_issued_micro: MicroCrat::new(u64_at(row, 8, "crat_issued")?),
        crat_slashed_micro: MicroCrat::new(u64_at(row, 9, "crat_slashed")?),
        crat_end_micro: MicroCrat::new(u64_at(row, 10, "crat_end")?),
    })
}

pub(super) fn round_row(row: &Row) -> Result<RoundRecord, LedgerError> {
    Ok(RoundRecord {
        index: u64_at(row, 0, "round index")?,
        start_s: u64_at(row, 1, "start_s")?,
        length_s: u64_at(row, 2, "length_s")?,
        income_usd_micro: MicroUsd::new(u64_at(row, 3, "income")?),
        carry_out_usd_micro: MicroUsd::new(u64_at(row, 4, "carry_out")?),
        paid_usd_micro: MicroUsd::new(u64_at(row, 5, "paid")?),
        inputs_json: get(row, 6)?,
        outcome_json: get(row, 7)?,
    })
}
