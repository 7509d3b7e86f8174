//! Model updates: when a deployment's plan allows the next one and what it costs
//! ([`ClientCall::UpdateModel`](crate::wire::ClientCall::UpdateModel)).
//!
//! - **Per-instance plans** paid their updates up front: ⌊key lifetime / period⌋ of them at
//!   the plan's [`UpdateFrequency`] ([`PricingParams::instance_price`]). The first may come at
//!   any time, each next one a period after the one before, and no more than were paid for;
//!   [`UpdateFrequency::Never`] allows none. The new model may not cost more under the plan
//!   than the price paid (a larger model in a dearer size row would be served at the old
//!   price): such a model is deployed anew.
//! - **Per-request plans** pay each update from the deployment's allowance
//!   ([`PricingParams::update_cost`] of the new model), at most one per `interval_s` (the
//!   dispatcher's setting), so that a deployment cannot keep every replica reloading.
//!
//! ```
//! use crat_core::policy::updates::{UpdateHistory, next_update_at};
//! use crat_core::pricing::{DeployPlan, PerInstancePlan, UpdateFrequency};
//!
//! let plan = DeployPlan::PerInstance(PerInstancePlan {
//!     guaranteed_rps: 10,
//!     max_input_bytes: 4_096,
//!     update_frequency: UpdateFrequency::Hourly,
//!     key_lifetime_s: 2 * 3_600,
//! });
//! let fresh = UpdateHistory { created_at_s: 1_000, updates: 0, last_update_at_s: None };
//! assert_eq!(next_update_at(&plan, &fresh, 60), Some(1_000));
//! let once = UpdateHistory { created_at_s: 1_000, updates: 1, last_update_at_s: Some(1_500) };
//! assert_eq!(next_update_at(&plan, &once, 60), Some(1_500 + 3_600));
//! // Two paid for (2 hours at one an hour): a third is never allowed.
//! let twice = UpdateHistory { created_at_s: 1_000, updates: 2, last_update_at_s: Some(5_100) };
//! assert_eq!(next_update_at(&plan, &twice, 60), None);
//! ```

use crate::money::Credits;
#[cfg(doc)]
use crate::pricing::UpdateFrequency;
use crate::pricing::{DeployPlan, PriceQuote, PricingError, PricingParams};

/// A deployment's updates so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UpdateHistory {
    /// When it was deployed (Unix seconds).
    pub created_at_s: u64,
    /// Updates made.
    pub updates: u32,
    /// When the last one was made.
    pub last_update_at_s: Option<u64>,
}

/// Why an update is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateRefusal {
    /// The plan allows no update now; `next_at_s` is when it allows the next (`None`: never
    /// again under this plan).
    #[error("{}", too_soon(*next_at_s))]
    TooSoon {
        /// When the next update is allowed.
        next_at_s: Option<u64>,
    },
    /// The new model costs more under the deployment's plan than the price paid.
    #[error(
        "the new model costs {new} credits under this plan, more than the {paid} paid: deploy it \
         anew"
    )]
    CostsMore {
        /// The new model's up-front price.
        new: Credits,
        /// The price paid.
        paid: Credits,
    },
    /// The new model cannot be priced.
    #[error("{0}")]
    Pricing(#[from] PricingError),
}

fn too_soon(next_at_s: Option<u64>) -> String {
    match next_at_s {
        Some(at) => format!("the plan allows the next model update at {at} (Unix seconds)"),
        None => "the plan allows no more model updates (its update frequency and key \
                 lifetime paid for no more)"
            .into(),
    }
}

/// When the plan allows the deployment's next update (`None`: never again); an update is
/// allowed at `now_s` when this is `Some(t)` with `t ≤ now_s`. `interval_s` spaces the
/// updates of per-request plans.
pub fn next_update_at(plan: &DeployPlan, history: &UpdateHistory, interval_s: u64) -> Option<u64> {
    let spacing = match plan {
        DeployPlan::PerInstance(p) => {
            let period = p.update_frequency.period_s()?;
            if u64::from(history.updates) >= p.key_lifetime_s / period {
                return None;
            }
            period
        }
        DeployPlan::PerRequest(_) => interval_s,
    };
    Some(match history.last_update_at_s {
        None => history.created_at_s,
        Some(last) => last.saturating_add(spacing),
    })
}

/// Checks that an update to a model of `model_bytes` is allowed at `now_s`; returns what it
/// costs from the deployment's allowance (zero under a per-instance plan, whose updates were
/// paid up front). `paid` is the quote the deployment was created with.
pub fn check_update(
    pricing: &PricingParams,
    plan: &DeployPlan,
    paid: &PriceQuote,
    history: &UpdateHistory,
    interval_s: u64,
    model_bytes: u64,
    now_s: u64,
) -> Result<Credits, UpdateRefusal> {
    match next_update_at(plan, history, interval_s) {
        Some(at) if at <= now_s => {}
        next_at_s => return Err(UpdateRefusal::TooSoon { next_at_s }),
    }
    let new = pricing.quote(model_bytes, plan)?;
    match plan {
        DeployPlan::PerInstance(_) => {
            if new.upfront > paid.upfront {
                return Err(UpdateRefusal::CostsMore {
                    new: new.upfront,
                    paid: paid.upfront,
                });
            }
            Ok(Credits::ZERO)
        }
        DeployPlan::PerRequest(_) => Ok(Credits::new(pricing.update_cost(model_bytes))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::pricing::{PerInstancePlan, PerRequestPlan, UpdateFrequency};

    fn instance(frequency: UpdateFrequency, lifetime: u64) -> DeployPlan {
        DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 10,
            max_input_bytes: 4_096,
            update_frequency: frequency,
            key_lifetime_s: lifetime,
        })
    }

    fn history(updates: u32, last: Option<u64>) -> UpdateHistory {
        UpdateHistory {
            created_at_s: 100,
            updates,
            last_update_at_s: last,
        }
    }

    #[test]
    fn never_allows_none_and_a_lifetime_shorter_than_the_period_none() {
        let pricing = PricingParams::default();
        for plan in [
            instance(UpdateFrequency::Never, 86_400),
            instance(UpdateFrequency::Daily, 3_600),
        ] {
            assert_eq!(next_update_at(&plan, &history(0, None), 60), None);
            let paid = pricing.quote(1_000, &plan).unwrap();
            assert_eq!(
                check_update(
                    &pricing,
                    &plan,
                    &paid,
                    &history(0, None),
                    60,
                    1_000,
                    1_000_000
                ),
                Err(UpdateRefusal::TooSoon { next_at_s: None })
            );
        }
    }

    #[test]
    fn per_instance_updates_are_spaced_by_the_period_and_counted() {
        let pricing = PricingParams::default();
        let plan = instance(UpdateFrequency::Hourly, 3 * 3_600);
        let paid = pricing.quote(1_000, &plan).unwrap();
        let check =
            |h: UpdateHistory, now| check_update(&pricing, &plan, &paid, &h, 60, 1_000, now);
        assert_eq!(check(history(0, None), 100), Ok(Credits::ZERO));
        assert_eq!(
            check(history(1, Some(200)), 3_799),
            Err(UpdateRefusal::TooSoon {
                next_at_s: Some(3_800)
            })
        );
        assert_eq!(check(history(1, Some(200)), 3_800), Ok(Credits::ZERO));
        assert_eq!(
            check(history(3, Some(9_000)), 1 << 40),
            Err(UpdateRefusal::TooSoon { next_at_s: None })
        );
    }

    #[test]
    fn a_dearer_model_is_refused_under_a_per_instance_plan() {
        let pricing = PricingParams::default();
        let plan = instance(UpdateFrequency::Daily, 7 * 86_400);
        let small = pricing.quote(1_000, &plan).unwrap();
        let big_bytes = pricing.model_tiers[pricing.model_tiers.len() - 1].bytes_max;
        let big = pricing.quote(big_bytes, &plan).unwrap();
        assert!(big.upfront > small.upfront);
        assert_eq!(
            check_update(
                &pricing,
                &plan,
                &small,
                &history(0, None),
                60,
                big_bytes,
                100
            ),
            Err(UpdateRefusal::CostsMore {
                new: big.upfront,
                paid: small.upfront
            })
        );
        // A model no dearer is fine.
        assert_eq!(
            check_update(&pricing, &plan, &big, &history(0, None), 60, 1_000, 100),
            Ok(Credits::ZERO)
        );
    }

    #[test]
    fn per_request_updates_pay_from_the_allowance_at_most_one_per_interval() {
        let pricing = PricingParams::default();
        let plan = DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 4_096,
            credit_allowance: Credits::new(1_000_000),
        });
        let paid = pricing.quote(1_000, &plan).unwrap();
        let mib3 = 3 * 1024 * 1024 - 5;
        assert_eq!(
            check_update(&pricing, &plan, &paid, &history(0, None), 60, mib3, 100),
            Ok(Credits::new(3 * pricing.update_credits_per_mib))
        );
        assert_eq!(
            check_update(
                &pricing,
                &plan,
                &paid,
                &history(4, Some(500)),
                60,
                mib3,
                559
            ),
            Err(UpdateRefusal::TooSoon {
                next_at_s: Some(560)
            })
        );
    }
}
