//! Operator actions on the ledger: accounts, credits and SDK keys. The `crat keys` and
//! `crat credits` commands call these on the dispatcher's ledger file; a running dispatcher
//! sees a revocation within its key cache time (`DispatcherConfig::key_cache_ms`).

use crat_core::id::KeyId;
use crat_core::id::SdkKey;
use crat_core::money::Credits;
use crat_core::wire::{KeyInfo, KeyStatus};

use crate::ledger::{AccountName, KeyRecord, Ledger, LedgerError};

/// Creates an SDK key for `account` (creating the account if it does not exist), valid for
/// `lifetime_s` seconds from `now_s` (`None`: until revoked). The secret exists only in the
/// returned key; the ledger keeps its blake3 hash.
pub fn create_key(
    ledger: &dyn Ledger,
    account: &AccountName,
    now_s: u64,
    lifetime_s: Option<u64>,
) -> Result<SdkKey, LedgerError> {
    ensure_account(ledger, account, now_s)?;
    let mut id = [0u8; 16];
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    let key = SdkKey {
        id: KeyId::from_bytes(id),
        secret,
    };
    ledger.insert_key(&KeyRecord {
        id: key.id,
        account: account.clone(),
        secret_hash: *blake3::hash(&secret).as_bytes(),
        created_at_s: now_s,
        expires_at_s: lifetime_s.map(|l| now_s.saturating_add(l)),
        revoked_at_s: None,
    })?;
    Ok(key)
}

/// Creates `account` unless it exists.
pub fn ensure_account(
    ledger: &dyn Ledger,
    account: &AccountName,
    now_s: u64,
) -> Result<(), LedgerError> {
    match ledger.create_account(account, now_s) {
        Ok(()) | Err(LedgerError::Exists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Adds credits to `account` (creating it if needed); returns the new balance.
pub fn grant(
    ledger: &dyn Ledger,
    account: &AccountName,
    credits: Credits,
    now_s: u64,
) -> Result<Credits, LedgerError> {
    ensure_account(ledger, account, now_s)?;
    ledger.grant(account, credits, now_s)
}

/// A key's status at `now_s`.
pub fn key_info(record: &KeyRecord, now_s: u64) -> KeyInfo {
    let status = if record.revoked_at_s.is_some() {
        KeyStatus::Revoked
    } else if record.expires_at_s.is_some_and(|t| t <= now_s) {
        KeyStatus::Expired
    } else {
        KeyStatus::Active
    };
    KeyInfo {
        id: record.id,
        status,
        created_at_s: record.created_at_s,
        expires_at_s: record.expires_at_s,
    }
}
