//! Tickets this dispatcher issued, remembered until a while after they expire.
//!
//! Usage is charged only under a ticket issued for its deployment whose audience names the
//! reporting node, so a node cannot charge a deployment it was never leased for. The memory
//! is bounded; when it is full of tickets still remembered, no new ticket is issued (the
//! lease is answered `Busy`) rather than forgetting one whose usage may still arrive.

use crate::expiring::{ExpiringMap, Full, WhenFull};
use crate::id::{DeploymentId, NodeId};
use crate::sign::Ticket;

/// Issued tickets by nonce: each one's deployment and audience (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct IssuedTickets {
    by_nonce: ExpiringMap<[u8; 16], (DeploymentId, Vec<NodeId>)>,
}

impl IssuedTickets {
    /// A memory of at most `capacity` tickets (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            by_nonce: ExpiringMap::new(capacity.max(1)),
        }
    }

    /// Forgets the tickets whose time has passed.
    pub fn forget_old(&mut self, now_s: u64) {
        self.by_nonce.forget_expired(now_s);
    }

    /// Remembers `ticket` until `forget_at_s`; [`Full`] when full of tickets still
    /// remembered.
    pub fn insert(&mut self, now_s: u64, ticket: &Ticket, forget_at_s: u64) -> Result<(), Full> {
        self.by_nonce.insert(
            ticket.nonce,
            (ticket.deployment, ticket.audience.clone()),
            forget_at_s,
            now_s,
            WhenFull::Refuse,
        )
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
            .map(|(d, audience)| d == deployment && audience.contains(node))
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
/// [`within_restart_grace`]) and only from a node that serves the deployment now (`serves`,
/// asked only then).
pub fn ticket_allows(
    known: Option<bool>,
    restart_grace: bool,
    serves: impl FnOnce() -> bool,
) -> bool {
    known.unwrap_or_else(|| restart_grace && serves())
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
        Ticket {
            deployment: DeploymentId::from_bytes([deployment; 16]),
            key: KeyId::from_bytes([1; 16]),
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
        let mut t = IssuedTickets::new(2);
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
