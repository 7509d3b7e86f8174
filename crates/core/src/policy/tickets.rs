//! Tickets this dispatcher issued, remembered until a while after they expire.
//!
//! Usage is charged only under a ticket issued for its deployment whose audience names the
//! reporting node, so a node cannot charge a deployment it was never leased for. The memory
//! is bounded; when it is full of tickets still remembered, no new ticket is issued (the
//! lease is answered `Busy`) rather than forgetting one whose usage may still arrive.
//!
//! Each SDK key may hold at most a share of the memory (`per_key_max` tickets remembered):
//! one key leasing as fast as it may fills its own share and is refused
//! ([`TicketsFull::KeyQuota`]), while every other key still leases.

use std::collections::HashMap;

use crate::expiring::{ExpiringMap, WhenFull};
use crate::id::{DeploymentId, KeyId, NodeId};
use crate::sign::Ticket;

/// Why a ticket is not remembered (and so not issued).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketsFull {
    /// The memory is full of tickets still remembered.
    #[error("the ticket memory is full ({capacity} tickets still remembered)")]
    Full {
        /// Its capacity.
        capacity: usize,
    },
    /// The ticket's key holds its whole share.
    #[error("the key holds {max} tickets still remembered, its share")]
    KeyQuota {
        /// The share.
        max: usize,
    },
}

/// Issued tickets by nonce: each one's deployment, key and audience (see the
/// [module docs](self)).
#[derive(Clone, Debug)]
pub struct IssuedTickets {
    by_nonce: ExpiringMap<[u8; 16], (DeploymentId, KeyId, Vec<NodeId>)>,
    /// Tickets remembered per key (keys with none are removed).
    per_key: HashMap<KeyId, usize>,
    per_key_max: usize,
}

impl IssuedTickets {
    /// A memory of at most `capacity` tickets (at least one), at most `per_key_max` (at
    /// least one) of them of one key.
    pub fn new(capacity: usize, per_key_max: usize) -> Self {
        Self {
            by_nonce: ExpiringMap::new(capacity.max(1)),
            per_key: HashMap::new(),
            per_key_max: per_key_max.max(1),
        }
    }

    /// Forgets the tickets whose time has passed.
    pub fn forget_old(&mut self, now_s: u64) {
        for (_, (_, key, _)) in self.by_nonce.take_expired(now_s) {
            if let Some(n) = self.per_key.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.per_key.remove(&key);
                }
            }
        }
    }

    /// Remembers `ticket` until `forget_at_s`, unless the memory is full of tickets still
    /// remembered or the ticket's key holds its share ([`TicketsFull`]).
    pub fn insert(
        &mut self,
        now_s: u64,
        ticket: &Ticket,
        forget_at_s: u64,
    ) -> Result<(), TicketsFull> {
        self.forget_old(now_s);
        if self.by_nonce.contains(&ticket.nonce) {
            return Ok(());
        }
        let held = self.per_key.get(&ticket.key).copied().unwrap_or(0);
        if held >= self.per_key_max {
            return Err(TicketsFull::KeyQuota {
                max: self.per_key_max,
            });
        }
        self.by_nonce
            .insert(
                ticket.nonce,
                (ticket.deployment, ticket.key, ticket.audience.clone()),
                forget_at_s,
                now_s,
                WhenFull::Refuse,
            )
            .map_err(|f| TicketsFull::Full {
                capacity: f.capacity,
            })?;
        *self.per_key.entry(ticket.key).or_insert(0) += 1;
        Ok(())
    }

    /// Tickets of `key` remembered now.
    pub fn of_key(&self, key: &KeyId) -> usize {
        self.per_key.get(key).copied().unwrap_or(0)
    }

    /// Whether usage under ticket `nonce` for `deployment` by `node` is allowed; `None`
    /// when the ticket is not known.
    pub fn allows(
        &self,
        nonce: &[u8; 16],
        deployment: &DeploymentId,
        node: &NodeId,
    ) -> Option<bool> {
        self.by_nonce
            .get(nonce)
            .map(|(d, _, audience)| d == deployment && audience.contains(node))
    }

    /// Tickets remembered now.
    pub fn len(&self) -> usize {
        self.by_nonce.len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_nonce.is_empty()
    }
}

/// Whether a usage record's ticket lets it be charged.
///
/// `known` is [`IssuedTickets::allows`]. A ticket this dispatcher does not remember may be one
/// it issued before a restart: such usage counts only within `restart_grace` (see
/// [`within_restart_grace`]) and only from a node that vouches for it (`vouched`, asked only
/// then: the dispatcher asks whether the node serves the deployment now, or whether the
/// client acknowledged the node's work under that ticket).
pub fn ticket_allows(
    known: Option<bool>,
    restart_grace: bool,
    vouched: impl FnOnce() -> bool,
) -> bool {
    known.unwrap_or_else(|| restart_grace && vouched())
}

/// Whether a process that started `running_s` seconds ago may still receive usage under
/// tickets of its previous run: a ticket's lifetime plus the usage grace.
pub fn within_restart_grace(running_s: u64, ticket_lifetime_s: u64, usage_grace_s: u64) -> bool {
    running_s < ticket_lifetime_s.saturating_add(usage_grace_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::KeyId;
    use crate::money::Credits;

    fn ticket(nonce: u8, deployment: u8, audience: &[u8]) -> Ticket {
        keyed(nonce, deployment, audience, 1)
    }

    fn keyed(nonce: u8, deployment: u8, audience: &[u8], key: u8) -> Ticket {
        Ticket {
            deployment: DeploymentId::from_bytes([deployment; 16]),
            key: KeyId::from_bytes([key; 16]),
            credit_budget: Credits::new(10),
            issued_at_s: 0,
            expires_at_s: 10,
            nonce: [nonce; 16],
            audience: audience
                .iter()
                .map(|b| NodeId::from_bytes([*b; 32]))
                .collect(),
            client: NodeId::from_bytes([0; 32]),
            price: crate::pricing::TaskPrice::FREE,
        }
    }

    #[test]
    fn issued_tickets_name_deployment_and_audience_and_are_bounded() {
        let mut t = IssuedTickets::new(2, 2);
        let node = |b: u8| NodeId::from_bytes([b; 32]);
        let dep = |b: u8| DeploymentId::from_bytes([b; 16]);
        assert!(t.insert(0, &ticket(1, 7, &[1, 2]), 100).is_ok());
        assert!(t.insert(0, &ticket(2, 7, &[3]), 150).is_ok());
        assert_eq!(t.allows(&[1; 16], &dep(7), &node(2)), Some(true));
        assert_eq!(t.allows(&[1; 16], &dep(7), &node(3)), Some(false));
        assert_eq!(t.allows(&[1; 16], &dep(8), &node(1)), Some(false));
        assert_eq!(t.allows(&[3; 16], &dep(7), &node(1)), None);
        // Full of remembered tickets: refused, nothing forgotten early.
        assert!(t.insert(50, &ticket(3, 7, &[1]), 200).is_err());
        assert_eq!(t.allows(&[1; 16], &dep(7), &node(1)), Some(true));
        // The first one's time passes: room again, and it is forgotten.
        assert!(t.insert(100, &ticket(3, 7, &[1]), 200).is_ok());
        assert_eq!(t.allows(&[1; 16], &dep(7), &node(1)), None);
        t.forget_old(1_000);
        assert_eq!(t.allows(&[3; 16], &dep(7), &node(1)), None);
    }

    #[test]
    fn one_key_fills_only_its_share() {
        let mut t = IssuedTickets::new(10, 3);
        for n in 0..3 {
            assert!(t.insert(0, &keyed(n, 7, &[1], 1), 100).is_ok());
        }
        // The fourth of key 1 is refused; key 2 still gets tickets.
        assert_eq!(
            t.insert(0, &keyed(3, 7, &[1], 1), 100),
            Err(TicketsFull::KeyQuota { max: 3 })
        );
        assert!(t.insert(0, &keyed(4, 7, &[1], 2), 100).is_ok());
        assert_eq!((t.of_key(&KeyId::from_bytes([1; 16])), t.len()), (3, 4));
        // The same ticket again is no new ticket.
        assert!(t.insert(0, &keyed(0, 7, &[1], 1), 100).is_ok());
        // Forgotten tickets free the key's share.
        assert!(t.insert(100, &keyed(5, 7, &[1], 1), 200).is_ok());
        assert_eq!(t.of_key(&KeyId::from_bytes([1; 16])), 1);
        assert_eq!(t.of_key(&KeyId::from_bytes([2; 16])), 0);
        // Full of several keys' tickets: the memory's own limit.
        let mut small = IssuedTickets::new(2, 2);
        assert!(small.insert(0, &keyed(1, 7, &[1], 1), 100).is_ok());
        assert!(small.insert(0, &keyed(2, 7, &[1], 2), 100).is_ok());
        assert_eq!(
            small.insert(0, &keyed(3, 7, &[1], 3), 100),
            Err(TicketsFull::Full { capacity: 2 })
        );
    }

    #[test]
    fn unknown_tickets_count_only_after_a_restart_from_a_serving_node() {
        assert!(ticket_allows(Some(true), false, || false));
        assert!(!ticket_allows(Some(false), true, || true));
        assert!(ticket_allows(None, true, || true));
        assert!(!ticket_allows(None, true, || false));
        assert!(!ticket_allows(None, false, || panic!(
            "not asked outside the grace"
        )));
        assert!(within_restart_grace(3_899, 300, 3_600));
        assert!(!within_restart_grace(3_900, 300, 3_600));
        assert!(within_restart_grace(u64::MAX - 1, u64::MAX, 1));
    }
}
