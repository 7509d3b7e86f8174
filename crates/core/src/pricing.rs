//! What things cost, in credits: one table-driven rule set for the dispatcher, the SDK's
//! quotes and the simulator.
//!
//! Two plans ([`DeployPlan`]):
//! - **per request**: each request costs [`PricingParams::request_cost`] credits, from the
//!   model's size and the request's input size; the client sets a fixed credit allowance the
//!   deployment may spend.
//! - **per instance**: capacity for a guaranteed request rate is reserved for the key's
//!   lifetime and paid up front ([`PricingParams::instance_price`]); requests inside it cost
//!   nothing more.
//!
//! A credit is worth [`PricingParams::credit_price_usd_micro`] µUSD, so a round's client income
//! in µUSD is the credits charged times that price. All arithmetic is integer (128-bit
//! intermediates, floor division); anything that overflows `u64` is an error, never a wrap.
//!
//! ```
//! use crat_core::pricing::{DeployPlan, PerInstancePlan, PricingParams, UpdateFrequency};
//! use crat_core::money::Credits;
//! let p = PricingParams::default();
//! // A 2 MiB model with a 100 KiB input: 1 base credit + 0 (model ≤ 4 MiB) + 2 input blocks.
//! assert_eq!(p.request_cost(2 << 20, 100 << 10)?, Credits::new(3));
//! let plan = PerInstancePlan {
//!     guaranteed_rps: 10,
//!     max_input_bytes: 64 << 10,
//!     update_frequency: UpdateFrequency::Weekly,
//!     key_lifetime_s: 30 * 86_400,
//! };
//! let quote = p.quote(2 << 20, &DeployPlan::PerInstance(plan))?;
//! assert!(quote.upfront > Credits::ZERO);
//! # Ok::<(), crat_core::pricing::PricingError>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::bps::Bps;
use crate::money::{Credits, MicroUsd};

const MIB: u64 = 1 << 20;

/// One row of a size table: sizes up to and including `bytes_max` cost `credits`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Tier {
    /// Largest size (inclusive) this row covers.
    pub bytes_max: u64,
    /// Credits added per request for a size in this row.
    pub credits: u64,
}

/// How often the client expects to push a new version of the model; each update is
/// redistributed to every replica and costs [`PricingParams::update_credits_per_mib`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum UpdateFrequency {
    /// The model never changes.
    Never,
    /// About once every 30 days.
    Monthly,
    /// About once a week.
    Weekly,
    /// About once a day.
    Daily,
    /// About once an hour.
    Hourly,
}

impl UpdateFrequency {
    /// The names [`UpdateFrequency::from_name`] reads, from the rarest.
    pub const NAMES: [&'static str; 5] = ["never", "monthly", "weekly", "daily", "hourly"];

    /// The frequency named `name` (one of [`UpdateFrequency::NAMES`]), as the command line
    /// and the Python package spell it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "never" => UpdateFrequency::Never,
            "monthly" => UpdateFrequency::Monthly,
            "weekly" => UpdateFrequency::Weekly,
            "daily" => UpdateFrequency::Daily,
            "hourly" => UpdateFrequency::Hourly,
            _ => return None,
        })
    }

    /// Seconds between updates, or `None` for [`UpdateFrequency::Never`].
    pub const fn period_s(self) -> Option<u64> {
        match self {
            UpdateFrequency::Never => None,
            UpdateFrequency::Monthly => Some(30 * 86_400),
            UpdateFrequency::Weekly => Some(7 * 86_400),
            UpdateFrequency::Daily => Some(86_400),
            UpdateFrequency::Hourly => Some(3_600),
        }
    }
}

/// Pay per instance: reserved capacity for the key's lifetime.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PerInstancePlan {
    /// Requests per second the network guarantees.
    pub guaranteed_rps: u32,
    /// Largest input of one request, in bytes.
    pub max_input_bytes: u64,
    /// How often the model will be updated.
    pub update_frequency: UpdateFrequency,
    /// How long the deployment's key (and so the reservation) lives, in seconds.
    pub key_lifetime_s: u64,
}

/// Pay per request, from a fixed credit allowance.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PerRequestPlan {
    /// Largest input of one request, in bytes.
    pub max_input_bytes: u64,
    /// Most credits this deployment may spend; set aside when it is deployed.
    pub credit_allowance: Credits,
}

/// How a deployment is paid for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DeployPlan {
    /// Reserved capacity, paid up front.
    PerInstance(PerInstancePlan),
    /// Each request paid from an allowance.
    PerRequest(PerRequestPlan),
}

impl DeployPlan {
    /// The plan's input size limit.
    pub const fn max_input_bytes(&self) -> u64 {
        match self {
            DeployPlan::PerInstance(p) => p.max_input_bytes,
            DeployPlan::PerRequest(p) => p.max_input_bytes,
        }
    }
}

/// What one task of a deployment costs, as a ticket carries it so that the node serving the
/// ticket can keep its tasks within the ticket's budget: `fixed + ⌈input_bytes /
/// block_bytes⌉ × per_block` ([`PricingParams::task_price`]; the same rule as
/// [`PricingParams::request_cost`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TaskPrice {
    /// Credits per task (base price and model surcharge).
    pub fixed: Credits,
    /// Credits per started block of input.
    pub per_block: Credits,
    /// Bytes per input block (0 is read as 1).
    pub block_bytes: u64,
}

impl TaskPrice {
    /// Tasks that cost nothing (per-instance plans: the reservation paid for them).
    pub const FREE: Self = Self {
        fixed: Credits::ZERO,
        per_block: Credits::ZERO,
        block_bytes: 1,
    };

    /// The cost of a task with `input_bytes` of input; `None` on overflow.
    pub fn cost(&self, input_bytes: u64) -> Option<Credits> {
        let blocks = input_bytes.div_ceil(self.block_bytes.max(1));
        self.fixed.checked_add(self.per_block.checked_mul(blocks)?)
    }
}

/// What a deployment will cost.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PriceQuote {
    /// Credits taken from the balance when deploying (the instance price, or the allowance).
    pub upfront: Credits,
    /// Cost of one request at the plan's largest input (0 for per-instance plans, whose
    /// requests are covered by the reservation).
    pub per_request_max: Credits,
    /// For per-instance plans: the reserved-capacity part of `upfront`.
    pub capacity: Credits,
    /// For per-instance plans: the model-update part of `upfront`.
    pub updates: Credits,
    /// µUSD per credit at the time of the quote.
    pub credit_price_usd_micro: MicroUsd,
}

/// Why a price cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PricingError {
    /// The model is larger than the last row of the model table.
    #[error("model of {bytes} bytes is larger than the largest priced size {max}")]
    ModelTooLarge {
        /// Model size.
        bytes: u64,
        /// Largest priced size.
        max: u64,
    },
    /// The input is larger than [`PricingParams::input_bytes_max`].
    #[error("input of {bytes} bytes is larger than the limit {max}")]
    InputTooLarge {
        /// Input size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A plan parameter is outside its allowed range.
    #[error("{field} = {value} is outside {min}..={max}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The price does not fit in 64 bits.
    #[error("price overflows")]
    Overflow,
    /// The parameter set itself is inconsistent.
    #[error("invalid pricing parameters: {0}")]
    Params(&'static str),
}

/// Every pricing parameter, with documented defaults ([`PricingParams::default`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingParams {
    /// µUSD one credit is worth. Default 100 (1 credit = $0.0001).
    pub credit_price_usd_micro: MicroUsd,
    /// Credits every request costs. Default 1.
    pub request_base_credits: u64,
    /// Per-request surcharge by model size, ascending by `bytes_max`. Default:
    /// ≤ 4 MiB: 0, ≤ 32 MiB: 1, ≤ 256 MiB: 4, ≤ 1 GiB: 16, ≤ 4 GiB: 64. Larger models are refused.
    pub model_tiers: Vec<Tier>,
    /// Input is charged per started block of this many bytes. Default 65,536.
    pub input_block_bytes: u64,
    /// Credits per started input block. Default 1.
    pub input_block_credits: u64,
    /// Largest input of one request. Default 64 MiB.
    pub input_bytes_max: u64,
    /// Price of reserved capacity, in basis points of what the guaranteed rate would cost per
    /// request over the key's lifetime. Default 200 (2 %): reserved capacity is paid whether
    /// used or not, so it is far cheaper per request than pay-as-you-go. A price factor, not a
    /// share: it may exceed 10,000, so it stays a `u64` (not a [`Bps`]) and the product is
    /// checked for overflow instead.
    pub reserved_price_bps: u64,
    /// Credits per started MiB of model for each expected update. Default 2.
    pub update_credits_per_mib: u64,
    /// Largest guaranteed rate a plan may ask for. Default 10,000 rps.
    pub guaranteed_rps_max: u32,
    /// Shortest key lifetime. Default 1 hour.
    pub key_lifetime_s_min: u64,
    /// Longest key lifetime. Default 365 days.
    pub key_lifetime_s_max: u64,
}

impl Default for PricingParams {
    fn default() -> Self {
        Self {
            credit_price_usd_micro: MicroUsd::new(100),
            request_base_credits: 1,
            model_tiers: vec![
                Tier {
                    bytes_max: 4 * MIB,
                    credits: 0,
                },
                Tier {
                    bytes_max: 32 * MIB,
                    credits: 1,
                },
                Tier {
                    bytes_max: 256 * MIB,
                    credits: 4,
                },
                Tier {
                    bytes_max: 1024 * MIB,
                    credits: 16,
                },
                Tier {
                    bytes_max: 4096 * MIB,
                    credits: 64,
                },
            ],
            input_block_bytes: 64 * 1024,
            input_block_credits: 1,
            input_bytes_max: 64 * MIB,
            reserved_price_bps: 200,
            update_credits_per_mib: 2,
            guaranteed_rps_max: 10_000,
            key_lifetime_s_min: 3_600,
            key_lifetime_s_max: 365 * 86_400,
        }
    }
}

fn to_credits(v: u128) -> Result<Credits, PricingError> {
    u64::try_from(v)
        .map(Credits::new)
        .map_err(|_| PricingError::Overflow)
}

fn in_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), PricingError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(PricingError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

impl PricingParams {
    /// Checks the parameters are consistent: a non-empty, strictly ascending model table and
    /// non-zero block size and lifetimes in order.
    pub fn validate(&self) -> Result<(), PricingError> {
        if self.model_tiers.is_empty() {
            return Err(PricingError::Params("model_tiers is empty"));
        }
        if self
            .model_tiers
            .windows(2)
            .any(|w| w[0].bytes_max >= w[1].bytes_max)
        {
            return Err(PricingError::Params("model_tiers must ascend by bytes_max"));
        }
        if self.input_block_bytes == 0 {
            return Err(PricingError::Params("input_block_bytes is 0"));
        }
        if self.key_lifetime_s_min == 0 || self.key_lifetime_s_min > self.key_lifetime_s_max {
            return Err(PricingError::Params(
                "key lifetimes must satisfy 0 < key_lifetime_s_min <= key_lifetime_s_max",
            ));
        }
        Ok(())
    }

    /// The per-request model surcharge for a model of `model_bytes`.
    fn model_credits(&self, model_bytes: u64) -> Result<u64, PricingError> {
        self.model_tiers
            .iter()
            .find(|t| model_bytes <= t.bytes_max)
            .map(|t| t.credits)
            .ok_or(PricingError::ModelTooLarge {
                bytes: model_bytes,
                max: self.model_tiers.last().map_or(0, |t| t.bytes_max),
            })
    }

    /// Credits one request costs: base + model surcharge + input blocks (rounded up), that
    /// is [`TaskPrice::cost`] of [`PricingParams::task_price`].
    pub fn request_cost(
        &self,
        model_bytes: u64,
        input_bytes: u64,
    ) -> Result<Credits, PricingError> {
        if input_bytes > self.input_bytes_max {
            return Err(PricingError::InputTooLarge {
                bytes: input_bytes,
                max: self.input_bytes_max,
            });
        }
        self.task_price(model_bytes)?
            .cost(input_bytes)
            .ok_or(PricingError::Overflow)
    }

    /// The price of one task of a model of `model_bytes`, in the form a ticket carries.
    pub fn task_price(&self, model_bytes: u64) -> Result<TaskPrice, PricingError> {
        let fixed =
            u128::from(self.request_base_credits) + u128::from(self.model_credits(model_bytes)?);
        Ok(TaskPrice {
            fixed: to_credits(fixed)?,
            per_block: Credits::new(self.input_block_credits),
            block_bytes: self.input_block_bytes.max(1),
        })
    }

    /// The up-front price of a per-instance plan, split into (capacity, updates).
    ///
    /// capacity = guaranteed_rps × key_lifetime_s × request_cost(model, max_input) ×
    /// reserved_price_bps / 10,000; updates = ⌊key_lifetime_s / period⌋ × ⌈model MiB⌉ ×
    /// update_credits_per_mib.
    pub fn instance_price(
        &self,
        model_bytes: u64,
        plan: &PerInstancePlan,
    ) -> Result<(Credits, Credits), PricingError> {
        in_range(
            "guaranteed_rps",
            u64::from(plan.guaranteed_rps),
            1,
            u64::from(self.guaranteed_rps_max),
        )?;
        in_range(
            "key_lifetime_s",
            plan.key_lifetime_s,
            self.key_lifetime_s_min,
            self.key_lifetime_s_max,
        )?;
        let per_request = self.request_cost(model_bytes, plan.max_input_bytes)?;
        let capacity = u128::from(plan.guaranteed_rps)
            * u128::from(plan.key_lifetime_s)
            * u128::from(per_request.get())
            * u128::from(self.reserved_price_bps)
            / u128::from(Bps::FULL.get());
        let updates = match plan.update_frequency.period_s() {
            None => 0,
            Some(period) => {
                u128::from(plan.key_lifetime_s / period) * u128::from(self.update_cost(model_bytes))
            }
        };
        Ok((to_credits(capacity)?, to_credits(updates)?))
    }

    /// What one model update of `model_bytes` costs: ⌈model MiB⌉ × update_credits_per_mib
    /// (a per-instance plan pays its updates up front, [`PricingParams::instance_price`]; a
    /// per-request deployment pays each from its allowance).
    pub fn update_cost(&self, model_bytes: u64) -> u64 {
        model_bytes
            .div_ceil(MIB)
            .saturating_mul(self.update_credits_per_mib)
    }

    /// The quote for deploying a model of `model_bytes` under `plan`.
    pub fn quote(&self, model_bytes: u64, plan: &DeployPlan) -> Result<PriceQuote, PricingError> {
        let credit_price_usd_micro = self.credit_price_usd_micro;
        match plan {
            DeployPlan::PerInstance(p) => {
                let (capacity, updates) = self.instance_price(model_bytes, p)?;
                Ok(PriceQuote {
                    upfront: capacity
                        .checked_add(updates)
                        .ok_or(PricingError::Overflow)?,
                    per_request_max: Credits::ZERO,
                    capacity,
                    updates,
                    credit_price_usd_micro,
                })
            }
            DeployPlan::PerRequest(p) => {
                let per_request_max = self.request_cost(model_bytes, p.max_input_bytes)?;
                if p.credit_allowance < per_request_max {
                    return Err(PricingError::OutOfRange {
                        field: "credit_allowance",
                        value: p.credit_allowance.get(),
                        min: per_request_max.get(),
                        max: u64::MAX,
                    });
                }
                Ok(PriceQuote {
                    upfront: p.credit_allowance,
                    per_request_max,
                    capacity: Credits::ZERO,
                    updates: Credits::ZERO,
                    credit_price_usd_micro,
                })
            }
        }
    }

    /// The µUSD value of `credits` (a round's income is the credits charged, valued here).
    pub fn credits_to_usd(&self, credits: Credits) -> Result<MicroUsd, PricingError> {
        credits
            .to_usd(self.credit_price_usd_micro)
            .ok_or(PricingError::Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        PricingParams::default().validate().unwrap();
    }

    #[test]
    fn request_cost_follows_the_tables() {
        let p = PricingParams::default();
        // Exactly on a tier edge stays in the tier; one byte more moves up.
        assert_eq!(p.request_cost(4 * MIB, 0).unwrap(), Credits::new(1));
        assert_eq!(p.request_cost(4 * MIB + 1, 0).unwrap(), Credits::new(2));
        assert_eq!(p.request_cost(300 * MIB, 0).unwrap(), Credits::new(17));
        // Input blocks round up.
        assert_eq!(p.request_cost(0, 1).unwrap(), Credits::new(2));
        assert_eq!(p.request_cost(0, 65_536).unwrap(), Credits::new(2));
        assert_eq!(p.request_cost(0, 65_537).unwrap(), Credits::new(3));
        assert!(matches!(
            p.request_cost(5000 * MIB, 0),
            Err(PricingError::ModelTooLarge { .. })
        ));
        assert!(matches!(
            p.request_cost(0, 64 * MIB + 1),
            Err(PricingError::InputTooLarge { .. })
        ));
        // A ticket's price gives a node the same figures.
        let price = p.task_price(300 * MIB).unwrap();
        for input in [0, 1, 65_536, 65_537, 1 << 20] {
            assert_eq!(
                price.cost(input),
                Some(p.request_cost(300 * MIB, input).unwrap())
            );
        }
        assert_eq!(TaskPrice::FREE.cost(u64::MAX), Some(Credits::ZERO));
        let steep = TaskPrice {
            fixed: Credits::new(1),
            per_block: Credits::new(u64::MAX),
            block_bytes: 1,
        };
        assert_eq!(steep.cost(2), None);
    }

    #[test]
    fn instance_price_by_hand() {
        let p = PricingParams::default();
        let plan = PerInstancePlan {
            guaranteed_rps: 10,
            max_input_bytes: 100_000, // 2 blocks → 3 credits per request for a small model
            update_frequency: UpdateFrequency::Daily,
            key_lifetime_s: 7 * 86_400,
        };
        // capacity = 10 × 604800 × 3 × 200 / 10000 = 362,880; updates = 7 × 3 MiB × 2 = 42.
        assert_eq!(
            p.instance_price(3 * MIB, &plan).unwrap(),
            (Credits::new(362_880), Credits::new(42))
        );
        let q = p.quote(3 * MIB, &DeployPlan::PerInstance(plan)).unwrap();
        assert_eq!(q.upfront, Credits::new(362_922));
        assert_eq!(
            p.credits_to_usd(q.upfront).unwrap(),
            MicroUsd::new(36_292_200)
        );
    }

    #[test]
    fn plan_ranges_are_enforced() {
        let p = PricingParams::default();
        let mut plan = PerInstancePlan {
            guaranteed_rps: 0,
            max_input_bytes: 1,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 3_600,
        };
        assert!(matches!(
            p.instance_price(1, &plan),
            Err(PricingError::OutOfRange {
                field: "guaranteed_rps",
                ..
            })
        ));
        plan.guaranteed_rps = 1;
        plan.key_lifetime_s = 10;
        assert!(matches!(
            p.instance_price(1, &plan),
            Err(PricingError::OutOfRange {
                field: "key_lifetime_s",
                ..
            })
        ));
        let per_request = DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 1,
            credit_allowance: Credits::new(1),
        });
        assert!(matches!(
            p.quote(1, &per_request),
            Err(PricingError::OutOfRange {
                field: "credit_allowance",
                ..
            })
        ));
    }

    #[test]
    fn overflow_is_an_error() {
        let p = PricingParams {
            request_base_credits: u64::MAX,
            ..PricingParams::default()
        };
        assert_eq!(p.request_cost(0, 1), Err(PricingError::Overflow));
        let p = PricingParams {
            reserved_price_bps: u64::MAX,
            ..PricingParams::default()
        };
        let plan = PerInstancePlan {
            guaranteed_rps: 10_000,
            max_input_bytes: 64 * MIB,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 365 * 86_400,
        };
        assert_eq!(p.instance_price(0, &plan), Err(PricingError::Overflow));
    }

    #[test]
    fn bad_params_are_rejected() {
        let mut p = PricingParams::default();
        p.model_tiers.swap(0, 1);
        assert!(p.validate().is_err());
        let p = PricingParams {
            input_block_bytes: 0,
            ..PricingParams::default()
        };
        assert!(p.validate().is_err());
    }
}
