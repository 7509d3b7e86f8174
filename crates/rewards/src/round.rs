//! The inputs of one round (`docs/economics.md`, "Inputs of a round").

use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use serde::{Deserialize, Serialize};

use crate::{Interval, Params};

/// The round itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round {
    /// Round number.
    pub index: u64,
    /// First second of the round (absolute).
    pub start_s: u64,
    /// Length in seconds; must equal [`Params::round_s`] and be at least 1.
    pub length_s: u64,
    /// The round's B2B income from clients.
    pub income_usd_micro: MicroUsd,
    /// Bonus pool left unpaid by the previous round.
    pub carry_in_usd_micro: MicroUsd,
}

/// One node's inputs for one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInput {
    /// The node's key (hex in JSON).
    pub id: NodeId,
    /// Power rating 1..=5 (from [`crat_core::gpu_table`]).
    pub rating: PowerRating,
    /// When the node registered (absolute seconds); earlier ranks first on ties.
    pub registered_at_s: u64,
    /// Average daily mining income of the node's GPU.
    pub mining_income_usd_micro_per_day: MicroUsd,
    /// CRAT held at the start of the round.
    pub crat_start_micro: MicroCrat,
    /// Consecutive committed rounds before this one.
    pub streak_start: u64,
    /// Uptime accumulated in earlier rounds.
    pub uptime_total_s_before: u64,
    /// Online intervals `[start, end)` in absolute seconds, in any order, possibly overlapping
    /// or reaching outside the round.
    pub online: Vec<Interval>,
    /// Correct validations of other nodes' work.
    pub validations_ok: u64,
    /// Failed validations of this node's own work.
    pub validations_failed: u64,
    /// CRAT credited from outside this round's rules (airdrops, purchases).
    pub crat_external_micro: MicroCrat,
}

/// Everything a round needs: parameters, the round, and its nodes. This is the interchange
/// document `crat rewards compute` reads; [`RoundInputs::from_json`] parses it with errors
/// that name the field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundInputs {
    /// Parameters; in JSON any subset, defaults for the rest.
    #[serde(default)]
    pub params: Params,
    /// The round.
    pub round: Round,
    /// The nodes, in any order; ids must be unique.
    pub nodes: Vec<NodeInput>,
}
