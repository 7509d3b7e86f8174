//! The simulator's errors.

use crat_core::pricing::PricingError;
use crat_rewards::RewardsError;

/// Why a scenario or a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario file is not valid TOML or has an unknown field or a wrong type (the
    /// message names the field and line).
    #[error("scenario: {0}")]
    Toml(String),
    /// A scenario value is out of range.
    #[error("scenario field {field}: {reason}")]
    Scenario {
        /// Dotted path of the field, e.g. `churn.mean_on_s`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A named limit was reached.
    #[error("limit {name} = {value} reached")]
    Limit {
        /// The limit's name.
        name: &'static str,
        /// Its value.
        value: u64,
    },
    /// The rewards rules refused a round.
    #[error("rewards: {0}")]
    Rewards(#[from] RewardsError),
    /// Pricing refused a plan.
    #[error("pricing: {0}")]
    Pricing(#[from] PricingError),
    /// [`crate::Simulation::step`] was called after the last round.
    #[error("the simulation has finished")]
    Finished,
}
