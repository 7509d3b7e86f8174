//! Request-rate limits per key: a token bucket for each key, in a bounded map.
//!
//! Sans-IO: the caller passes the time as milliseconds on any monotonic clock (`now_ms`); the
//! arithmetic is integer (tokens are counted in thousandths), so the same calls give the same
//! answers everywhere.
//!
//! ```
//! use crat_core::limit::{KeyedRateLimiter, RateLimit};
//!
//! // 2 requests a second per key, bursts of up to 3, at most 1,000 keys remembered.
//! let mut limits = KeyedRateLimiter::new(RateLimit { per_s: 2, burst: 3 }, 1_000);
//! for _ in 0..3 {
//!     assert!(limits.allow(&"alice", 0).is_ok());
//! }
//! assert!(limits.allow(&"alice", 0).is_err()); // the burst is spent
//! assert!(limits.allow(&"bob", 0).is_ok()); // each key has its own bucket
//! assert!(limits.allow(&"alice", 500).is_ok()); // half a second refills one token
//! ```

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// Thousandths of a token per token: buckets count in these so refills are exact integers.
const MILLI: u64 = 1_000;

/// A sustained rate with a burst allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub per_s: u32,
    /// Requests allowed at once after a quiet period (the bucket's size); at least 1 is used.
    pub burst: u32,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// The key spent its bucket; a token is back after `retry_after_ms`.
    #[error("over the rate of {per_s} requests/s; retry in {retry_after_ms} ms")]
    Limited {
        /// The sustained rate in force.
        per_s: u32,
        /// Milliseconds until one request would be allowed.
        retry_after_ms: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Thousandths of a token.
    milli_tokens: u64,
    /// When `milli_tokens` was last brought up to date.
    at_ms: u64,
}

/// One token bucket per key, for at most `keys_max` keys.
///
/// A key seen for the first time starts with a full bucket. When the map is full, buckets that
/// have refilled completely are dropped first (forgetting them changes nothing: a new bucket is
/// full too); if every bucket is still in use, the least recently used one is dropped, which
/// at worst gives that key one more burst. Memory is bounded by `keys_max` either way.
#[derive(Clone, Debug)]
pub struct KeyedRateLimiter<K> {
    limit: RateLimit,
    keys_max: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> KeyedRateLimiter<K> {
    /// A limiter applying `limit` to each key, remembering at most `keys_max` keys (at least 1).
    pub fn new(limit: RateLimit, keys_max: usize) -> Self {
        Self {
            limit,
            keys_max: keys_max.max(1),
            buckets: HashMap::new(),
        }
    }

    /// The limit applied to each key.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn capacity(&self) -> u64 {
        u64::from(self.limit.burst.max(1)) * MILLI
    }

    /// The bucket brought up to `now_ms` (a clock that went backwards refills nothing).
    fn refilled(&self, b: Bucket, now_ms: u64) -> Bucket {
        let elapsed = now_ms.saturating_sub(b.at_ms);
        // per_s tokens a second is per_s thousandths of a token a millisecond.
        let refill = elapsed.saturating_mul(u64::from(self.limit.per_s));
        Bucket {
            milli_tokens: b.milli_tokens.saturating_add(refill).min(self.capacity()),
            at_ms: now_ms.max(b.at_ms),
        }
    }

    /// Takes one token from `key`'s bucket at `now_ms`, or says how long until one is back.
    pub fn allow(&mut self, key: &K, now_ms: u64) -> Result<(), RateError> {
        let full = Bucket {
            milli_tokens: self.capacity(),
            at_ms: now_ms,
        };
        let bucket = match self.buckets.get(key) {
            Some(b) => self.refilled(*b, now_ms),
            None => {
                self.make_room(now_ms);
                full
            }
        };
        if bucket.milli_tokens >= MILLI {
            self.buckets.insert(
                key.clone(),
                Bucket {
                    milli_tokens: bucket.milli_tokens - MILLI,
                    ..bucket
                },
            );
            return Ok(());
        }
        self.buckets.insert(key.clone(), bucket);
        let missing = MILLI - bucket.milli_tokens;
        let per_s = u64::from(self.limit.per_s);
        Err(RateError::Limited {
            per_s: self.limit.per_s,
            retry_after_ms: if per_s == 0 {
                u64::MAX
            } else {
                missing.div_ceil(per_s)
            },
        })
    }

    /// Frees a slot for a new key when the map is full.
    fn make_room(&mut self, now_ms: u64) {
        if self.buckets.len() < self.keys_max {
            return;
        }
        let capacity = self.capacity();
        let per_s = u64::from(self.limit.per_s);
        self.buckets.retain(|_, b| {
            let refill = now_ms.saturating_sub(b.at_ms).saturating_mul(per_s);
            b.milli_tokens.saturating_add(refill) < capacity
        });
        if self.buckets.len() < self.keys_max {
            return;
        }
        let oldest = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.at_ms)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.buckets.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let mut l = KeyedRateLimiter::new(
            RateLimit {
                per_s: 10,
                burst: 5,
            },
            16,
        );
        for _ in 0..5 {
            assert_eq!(l.allow(&1u8, 1_000), Ok(()));
        }
        assert_eq!(
            l.allow(&1u8, 1_000),
            Err(RateError::Limited {
                per_s: 10,
                retry_after_ms: 100
            })
        );
        // 10/s: one token per 100 ms, not before.
        assert!(l.allow(&1u8, 1_099).is_err());
        assert_eq!(l.allow(&1u8, 1_100), Ok(()));
        assert!(l.allow(&1u8, 1_150).is_err());
        // Over ten seconds at most burst + 10 × 10 requests pass, however they are spread.
        let mut passed = 0;
        for ms in 2_000..12_000u64 {
            if l.allow(&2u8, ms).is_ok() {
                passed += 1;
            }
        }
        assert!(passed <= 5 + 100, "{passed}");
        assert!(passed >= 100, "{passed}");
        // A long quiet period refills to the burst, never beyond.
        let mut passed = 0;
        while l.allow(&2u8, 1_000_000).is_ok() {
            passed += 1;
        }
        assert_eq!(passed, 5);
    }

    #[test]
    fn keys_are_independent_and_the_map_is_bounded() {
        let limit = RateLimit { per_s: 1, burst: 2 };
        let mut l = KeyedRateLimiter::new(limit, 4);
        for k in 0..4u32 {
            assert!(l.allow(&k, 0).is_ok());
            assert!(l.allow(&k, 0).is_ok());
            assert!(l.allow(&k, 0).is_err());
        }
        assert_eq!(l.len(), 4);
        // Every bucket is in use: a fifth key evicts the least recently used one.
        assert!(l.allow(&1, 10).is_err());
        assert!(l.allow(&99, 20).is_ok());
        assert_eq!(l.len(), 4);
        // Keys whose buckets refilled are dropped before any live one.
        assert!(l.allow(&100, 10_000).is_ok());
        assert_eq!(l.len(), 1, "all others had refilled by then");
        // Thousands of keys never hold more than keys_max buckets.
        for k in 0..10_000u32 {
            let _ = l.allow(&k, 20_000);
            assert!(l.len() <= 4);
        }
    }

    #[test]
    fn odd_limits_and_clocks() {
        // A zero rate allows the burst once and then nothing.
        let mut l = KeyedRateLimiter::new(RateLimit { per_s: 0, burst: 1 }, 1);
        assert!(l.allow(&0u8, 0).is_ok());
        assert_eq!(
            l.allow(&0u8, u64::MAX),
            Err(RateError::Limited {
                per_s: 0,
                retry_after_ms: u64::MAX
            })
        );
        // A zero burst is treated as one; huge rates and times saturate instead of wrapping.
        let mut l = KeyedRateLimiter::new(
            RateLimit {
                per_s: u32::MAX,
                burst: 0,
            },
            0,
        );
        assert!(l.allow(&0u8, u64::MAX).is_ok());
        // A clock going backwards refills nothing and breaks nothing.
        assert!(l.allow(&0u8, 5).is_err());
        assert!(l.allow(&0u8, u64::MAX).is_err());
    }
}
