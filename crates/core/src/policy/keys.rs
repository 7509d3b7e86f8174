//! Whether an SDK key may be served.

use crate::id::KeyId;

/// What the dispatcher stores of an SDK key that this rule reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyStanding {
    /// The key's id.
    pub id: KeyId,
    /// blake3 of its 32-byte secret.
    pub secret_hash: [u8; 32],
    /// When it expires (Unix seconds); `None`: never.
    pub expires_at_s: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_at_s: Option<u64>,
}

/// Why an SDK key is not served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The secret presented is not the key's.
    #[error("wrong SDK key secret")]
    WrongSecret,
    /// The key was revoked.
    #[error("{0} was revoked")]
    Revoked(KeyId),
    /// The key has expired.
    #[error("{0} has expired")]
    Expired(KeyId),
}

/// Whether a key presented with `secret` may be served at `now_s`: the secret matches (in
/// constant time), it is not revoked, it has not expired.
pub fn check_key(key: &KeyStanding, secret: &[u8; 32], now_s: u64) -> Result<(), KeyError> {
    // blake3::Hash compares in constant time.
    if blake3::hash(secret) != blake3::Hash::from_bytes(key.secret_hash) {
        return Err(KeyError::WrongSecret);
    }
    if key.revoked_at_s.is_some() {
        return Err(KeyError::Revoked(key.id));
    }
    if key.expires_at_s.is_some_and(|t| t <= now_s) {
        return Err(KeyError::Expired(key.id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_revocation_and_expiry_are_checked_in_that_order() {
        let secret = [7u8; 32];
        let key = KeyStanding {
            id: KeyId::from_bytes([1; 16]),
            secret_hash: *blake3::hash(&secret).as_bytes(),
            expires_at_s: Some(100),
            revoked_at_s: None,
        };
        assert_eq!(check_key(&key, &secret, 99), Ok(()));
        assert_eq!(
            check_key(&key, &secret, 100),
            Err(KeyError::Expired(key.id))
        );
        assert_eq!(check_key(&key, &[8; 32], 0), Err(KeyError::WrongSecret));
        let revoked = KeyStanding {
            revoked_at_s: Some(5),
            ..key
        };
        assert_eq!(
            check_key(&revoked, &secret, 200),
            Err(KeyError::Revoked(key.id))
        );
    }
}
