//! What a lease's ticket may spend, and at what price per task.

use crate::money::Credits;
use crate::pricing::{DeployPlan, PricingParams, TaskPrice};

/// Why no ticket may be issued for a deployment now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// A per-request plan whose allowance is used up.
    #[error("the allowance is spent")]
    AllowanceSpent,
    /// A per-instance plan whose reservation (its key lifetime) has ended.
    #[error("the reservation ended at {ended_at_s}")]
    ReservationEnded {
        /// When it ended (Unix seconds).
        ended_at_s: u64,
    },
}

/// The credit budget of a ticket for a deployment under `plan`, created at `created_at_s`,
/// that paid `upfront` and has `allowance_left`, at `now_s`: a per-request plan's ticket may
/// spend what is left of the allowance; a per-instance plan's, its price while the
/// reservation lasts.
pub fn ticket_budget(
    plan: &DeployPlan,
    allowance_left: Credits,
    upfront: Credits,
    created_at_s: u64,
    now_s: u64,
) -> Result<Credits, BudgetError> {
    match plan {
        DeployPlan::PerRequest(_) => {
            if allowance_left == Credits::ZERO {
                return Err(BudgetError::AllowanceSpent);
            }
            Ok(allowance_left)
        }
        DeployPlan::PerInstance(p) => {
            let ended_at_s = created_at_s.saturating_add(p.key_lifetime_s);
            if now_s >= ended_at_s {
                return Err(BudgetError::ReservationEnded { ended_at_s });
            }
            Ok(upfront)
        }
    }
}

/// The price per task a ticket names, which the node serving it charges against the
/// ticket's budget: a per-request plan's tasks cost what [`PricingParams::task_price`] says
/// for its model (the price the dispatcher charges usage at); when today's prices cannot price
/// the model, every task costs `per_request_max` (what usage is then charged, see
/// [`usage::admit`](super::usage::admit)). A per-instance plan's tasks cost nothing: the
/// reservation paid for them, and the node holds them to the plan's rate instead.
pub fn ticket_price(
    plan: &DeployPlan,
    pricing: &PricingParams,
    model_bytes: u64,
    per_request_max: Credits,
) -> TaskPrice {
    match plan {
        DeployPlan::PerInstance(_) => TaskPrice::FREE,
        DeployPlan::PerRequest(_) => pricing.task_price(model_bytes).unwrap_or(TaskPrice {
            fixed: per_request_max,
            per_block: Credits::ZERO,
            block_bytes: 1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::{PerInstancePlan, PerRequestPlan, UpdateFrequency};

    #[test]
    fn per_request_spends_the_allowance_per_instance_the_reservation() {
        let per_request = DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 1_000,
            credit_allowance: Credits::new(50),
        });
        assert_eq!(
            ticket_budget(
                &per_request,
                Credits::new(7),
                Credits::new(50),
                0,
                1_000_000
            ),
            Ok(Credits::new(7))
        );
        assert_eq!(
            ticket_budget(&per_request, Credits::ZERO, Credits::new(50), 0, 0),
            Err(BudgetError::AllowanceSpent)
        );
        let per_instance = DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 1,
            max_input_bytes: 1_000,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 100,
        });
        assert_eq!(
            ticket_budget(&per_instance, Credits::ZERO, Credits::new(9), 10, 109),
            Ok(Credits::new(9))
        );
        assert_eq!(
            ticket_budget(&per_instance, Credits::ZERO, Credits::new(9), 10, 110),
            Err(BudgetError::ReservationEnded { ended_at_s: 110 })
        );
    }

    #[test]
    fn a_ticket_names_the_price_usage_is_charged_at() {
        let pricing = PricingParams::default();
        let per_request = DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 1 << 20,
            credit_allowance: Credits::new(50),
        });
        let price = ticket_price(&per_request, &pricing, 1 << 20, Credits::new(9));
        for input in [0, 1, 100_000, 1 << 20] {
            assert_eq!(price.cost(input), pricing.request_cost(1 << 20, input).ok());
        }
        // A model today's tiers cannot price: every task at the quoted maximum.
        let unpriced = ticket_price(&per_request, &pricing, u64::MAX, Credits::new(9));
        assert_eq!(unpriced.cost(12_345), Some(Credits::new(9)));
        let per_instance = DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 1,
            max_input_bytes: 1_000,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 100,
        });
        assert_eq!(
            ticket_price(&per_instance, &pricing, 1 << 20, Credits::new(9)),
            TaskPrice::FREE
        );
    }
}
