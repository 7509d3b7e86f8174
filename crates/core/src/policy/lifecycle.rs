//! When a deployment ends by itself (issue 14, item 4): a per-instance reservation when its
//! lifetime (`key_lifetime_s`, paid up front) is over; a per-request deployment once its
//! allowance is spent and it has stayed so for `idle_s` (leases issued before it ran out have
//! expired by then, so no task in flight is cut). The dispatcher stops it as its owner would
//! (replicas released, the allowance left, none here, refunded after the usage window).
//!
//! ```
//! use crat_core::money::Credits;
//! use crat_core::policy::lifecycle::{End, ends};
//! use crat_core::pricing::{DeployPlan, PerRequestPlan};
//!
//! let plan = DeployPlan::PerRequest(PerRequestPlan { max_input_bytes: 1 << 16, credit_allowance: Credits::new(100) });
//! // Spent at 1,000 s: ends 300 s later, not before.
//! assert_eq!(ends(&plan, 0, Credits::ZERO, Some(1_000), 1_299, 300), None);
//! assert_eq!(ends(&plan, 0, Credits::ZERO, Some(1_000), 1_300, 300), Some(End::AllowanceSpent));
//! // Credits left: it goes on.
//! assert_eq!(ends(&plan, 0, Credits::new(1), Some(1_000), 9_999, 300), None);
//! ```

use crate::money::Credits;
use crate::pricing::DeployPlan;

/// Why a deployment ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// A per-instance reservation's lifetime is over.
    LifetimeOver,
    /// A per-request allowance is spent and has stayed so for the idle time.
    AllowanceSpent,
    /// Its model failed to load on several nodes (decided by the dispatch state machine:
    /// `Dispatch::failed_deployments`).
    LoadFailed,
    /// Its owner undeployed it, and the dispatcher finishes that stop: the deployment left
    /// the dispatch state but its stop did not reach the ledger then (a write that failed).
    /// Never returned by [`ends`].
    Undeployed,
}

/// Whether a running deployment of `plan`, created at `created_at_s`, with `allowance_left`,
/// whose allowance was first seen spent at `spent_since_s`, ends at `now_s`.
pub fn ends(
    plan: &DeployPlan,
    created_at_s: u64,
    allowance_left: Credits,
    spent_since_s: Option<u64>,
    now_s: u64,
    idle_s: u64,
) -> Option<End> {
    match plan {
        DeployPlan::PerInstance(p) => {
            (now_s >= created_at_s.saturating_add(p.key_lifetime_s)).then_some(End::LifetimeOver)
        }
        DeployPlan::PerRequest(_) => (allowance_left == Credits::ZERO
            && spent_since_s.is_some_and(|t| now_s >= t.saturating_add(idle_s)))
        .then_some(End::AllowanceSpent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::{PerInstancePlan, UpdateFrequency};

    #[test]
    fn a_reservation_ends_with_its_lifetime() {
        let plan = DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 1,
            max_input_bytes: 1,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 3_600,
        });
        assert_eq!(ends(&plan, 100, Credits::ZERO, None, 3_699, 0), None);
        assert_eq!(
            ends(&plan, 100, Credits::ZERO, None, 3_700, 0),
            Some(End::LifetimeOver)
        );
        assert_eq!(
            ends(&plan, u64::MAX - 1, Credits::ZERO, None, u64::MAX, 0),
            Some(End::LifetimeOver)
        );
    }
}
