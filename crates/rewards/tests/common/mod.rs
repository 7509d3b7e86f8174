//! Builders shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use crat_rewards::{Interval, NodeInput, Params, Round, RoundInputs};

pub(crate) const DAY: u64 = 86_400;

/// An id whose bytes are all `b`.
pub(crate) fn id(b: u8) -> NodeId {
    NodeId::from_bytes([b; 32])
}

/// A node with rating `rating`, `crat` µCRAT, online `online`, everything else zero or
/// 500,000 µUSD/day of mining income.
pub(crate) fn node(b: u8, rating: u8, crat: u64, online: &[(u64, u64)]) -> NodeInput {
    NodeInput {
        id: id(b),
        rating: PowerRating::new(rating).unwrap(),
        registered_at_s: 0,
        mining_income_usd_micro_per_day: MicroUsd::new(500_000),
        crat_start_micro: MicroCrat::new(crat),
        streak_start: 0,
        uptime_total_s_before: 0,
        online: online.iter().map(|&(s, e)| Interval::new(s, e)).collect(),
        validations_ok: 0,
        validations_failed: 0,
        crat_external_micro: MicroCrat::ZERO,
    }
}

/// A default-parameter round starting at `start_s` with the given income and carry.
pub(crate) fn round(start_s: u64, income: u64, carry: u64, nodes: Vec<NodeInput>) -> RoundInputs {
    RoundInputs {
        params: Params::default(),
        round: Round {
            index: 7,
            start_s,
            length_s: DAY,
            income_usd_micro: MicroUsd::new(income),
            carry_in_usd_micro: MicroUsd::new(carry),
        },
        nodes,
    }
}
