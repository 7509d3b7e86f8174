//! One bounded map whose entries expire: the memory behind every "seen once" rule.
//!
//! [`ExpiringMap`] holds at most `capacity` entries, each with the second at which it is
//! forgotten. Entries are dropped in expiry order (ties in insertion order) without a scan.
//! When it is full it either refuses the newcomer ([`WhenFull::Refuse`]: a live entry is
//! never forgotten early, as single-use nonces need) or forgets the entry that would expire
//! soonest ([`WhenFull::ForgetSoonest`]: with one expiry for all, the oldest, as a
//! first-in-first-out memory does). It backs [`NonceTracker`](crate::sign::NonceTracker),
//! the dispatcher's issued-ticket memory ([`crate::policy::tickets`]) and its report and
//! suspect memories ([`crate::policy::reports`]).
//!
//! ```
//! use crat_core::expiring::{ExpiringMap, Full, WhenFull};
//!
//! let mut m = ExpiringMap::new(2);
//! m.insert("a", 1, 100, 0, WhenFull::Refuse)?;
//! m.insert("b", 2, 50, 0, WhenFull::Refuse)?;
//! assert_eq!(m.insert("c", 3, 100, 10, WhenFull::Refuse), Err(Full { capacity: 2 }));
//! // At 50 "b" is forgotten and "c" fits.
//! m.insert("c", 3, 100, 50, WhenFull::Refuse)?;
//! assert_eq!(m.get(&"b"), None);
//! // A first-in-first-out memory: the soonest to expire (here the oldest) makes room.
//! m.insert("d", 4, 100, 50, WhenFull::ForgetSoonest)?;
//! assert_eq!((m.get(&"a"), m.get(&"d")), (None, Some(&4)));
//! # Ok::<(), crat_core::expiring::Full>(())
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

/// What [`ExpiringMap::insert`] does when the map holds `capacity` live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse the new entry ([`Full`]).
    Refuse,
    /// Forget the entry that expires soonest (the oldest among equal expiries).
    ForgetSoonest,
}

/// The map is full of live entries and refused a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{capacity} entries are held already")]
pub struct Full {
    /// The most entries held at once.
    pub capacity: usize,
}

/// A bounded map whose entries are forgotten at their expiry (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct ExpiringMap<K, V> {
    capacity: usize,
    entries: HashMap<K, (V, u64)>,
    /// The same keys by expiry second, each second's in insertion order. Memories that give
    /// every entry the same lifetime (tickets, nonces) or none (first-in-first-out sets) have
    /// few distinct seconds, so this stays a short map of queues.
    order: BTreeMap<u64, VecDeque<K>>,
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// A map holding at most `capacity` entries (0 holds nothing and refuses everything).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Forgets every entry whose expiry is at or before `now_s`.
    pub fn forget_expired(&mut self, now_s: u64) {
        drop(self.take_expired(now_s));
    }

    /// Removes every entry whose expiry is at or before `now_s` and returns them, soonest
    /// first.
    pub fn take_expired(&mut self, now_s: u64) -> Vec<(K, V)> {
        let mut out = Vec::new();
        while let Some(entry) = self.order.first_entry() {
            if *entry.key() > now_s {
                break;
            }
            for key in entry.remove() {
                if let Some((value, _)) = self.entries.remove(&key) {
                    out.push((key, value));
                }
            }
        }
        out
    }

    /// Adds `key` → `value` until `expires_at_s`, after forgetting what expired by `now_s`.
    /// A key already held keeps its value and expiry (nothing is refreshed). When the map is
    /// full, `when_full` decides.
    pub fn insert(
        &mut self,
        key: K,
        value: V,
        expires_at_s: u64,
        now_s: u64,
        when_full: WhenFull,
    ) -> Result<(), Full> {
        self.forget_expired(now_s);
        if self.entries.contains_key(&key) {
            return Ok(());
        }
        if self.entries.len() >= self.capacity {
            match when_full {
                WhenFull::Refuse => {
                    return Err(Full {
                        capacity: self.capacity,
                    });
                }
                WhenFull::ForgetSoonest => {
                    let Some(mut first) = self.order.first_entry() else {
                        return Err(Full {
                            capacity: self.capacity,
                        });
                    };
                    if let Some(soonest) = first.get_mut().pop_front() {
                        self.entries.remove(&soonest);
                    }
                    if first.get().is_empty() {
                        first.remove();
                    }
                }
            }
        }
        self.order
            .entry(expires_at_s)
            .or_default()
            .push_back(key.clone());
        self.entries.insert(key, (value, expires_at_s));
        Ok(())
    }

    /// The value held for `key`, to change in place (its expiry stays).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(v, _)| v)
    }

    /// The value held for `key` (expired entries may linger until the next
    /// [`forget_expired`](Self::forget_expired) or [`insert`](Self::insert)).
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// When `key` is forgotten, if it is held.
    pub fn expires_at_s(&self, key: &K) -> Option<u64> {
        self.entries.get(key).map(|(_, t)| *t)
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_when_full_of_live_entries_and_frees_at_expiry() {
        let mut m = ExpiringMap::new(2);
        assert_eq!(m.insert(1u8, 'a', 100, 0, WhenFull::Refuse), Ok(()));
        assert_eq!(m.insert(2u8, 'b', 150, 0, WhenFull::Refuse), Ok(()));
        assert_eq!(
            m.insert(3u8, 'c', 200, 50, WhenFull::Refuse),
            Err(Full { capacity: 2 })
        );
        assert_eq!(m.get(&1), Some(&'a'));
        // The first one's time passes: room again, and it is forgotten.
        assert_eq!(m.insert(3u8, 'c', 200, 100, WhenFull::Refuse), Ok(()));
        assert_eq!(m.get(&1), None);
        m.forget_expired(1_000);
        assert!(m.is_empty());
    }

    #[test]
    fn forgets_the_oldest_among_equal_expiries() {
        let mut m = ExpiringMap::new(3);
        for k in 0..10u32 {
            m.insert(k, (), u64::MAX, 0, WhenFull::ForgetSoonest)
                .expect("never refuses");
            // Present keys are not re-inserted, nor moved to the back.
            m.insert(k, (), u64::MAX, 0, WhenFull::ForgetSoonest)
                .expect("never refuses");
        }
        assert_eq!(m.len(), 3);
        assert!((0..7).all(|k| !m.contains(&k)));
        assert!((7..10).all(|k| m.contains(&k)));
    }

    #[test]
    fn present_keys_keep_their_value_and_expiry() {
        let mut m = ExpiringMap::new(1);
        m.insert("k", 1, 10, 0, WhenFull::Refuse).expect("room");
        m.insert("k", 2, 99, 0, WhenFull::Refuse).expect("present");
        assert_eq!((m.get(&"k"), m.expires_at_s(&"k")), (Some(&1), Some(10)));
        assert_eq!(m.len(), 1);
        m.insert("j", 3, 10, 10, WhenFull::Refuse)
            .expect("room at its expiry");
        assert_eq!((m.get(&"k"), m.len()), (None, 1));
    }

    #[test]
    fn forgets_the_soonest_expiry_first_whatever_the_insertion_order() {
        let mut m = ExpiringMap::new(2);
        m.insert(1u8, (), 50, 0, WhenFull::Refuse).expect("room");
        m.insert(2u8, (), 20, 0, WhenFull::Refuse).expect("room");
        m.insert(3u8, (), 90, 0, WhenFull::ForgetSoonest)
            .expect("forgets one");
        assert!(!m.contains(&2) && m.contains(&1) && m.contains(&3));
        m.forget_expired(50);
        assert!(!m.contains(&1) && m.contains(&3));
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let mut m = ExpiringMap::<u8, ()>::new(0);
        assert!(m.insert(1, (), 5, 0, WhenFull::Refuse).is_err());
        assert!(m.insert(1, (), 5, 0, WhenFull::ForgetSoonest).is_err());
    }
}
