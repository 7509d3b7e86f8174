//! The outputs of one round (`docs/economics.md`, "Outputs of a round").

use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use serde::{Deserialize, Serialize};

/// One node's results. Field order is the interchange order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// 128 bytes aligned to 64: each outcome fills exactly two cache lines, which matters when a
// round of a million nodes writes them to their rank positions.
#[repr(align(64))]
pub struct NodeOutcome {
    /// The node.
    pub id: NodeId,
    /// Seconds online inside the round (overlaps counted once).
    pub uptime_s: u64,
    /// Seconds online inside the peak windows.
    pub peak_uptime_s: u64,
    /// Online for the whole round, give or take `commit_downtime_s_max`.
    pub committed: bool,
    /// Eligible for a bonus (enough uptime, no failed validation).
    pub eligible: bool,
    /// Rank among eligible nodes, 1 first; `None` (JSON `null`) when not eligible.
    pub rank: Option<u64>,
    /// Guaranteed USD: the GPU's mining income for the round when committed, else 0.
    pub guaranteed_usd_micro: MicroUsd,
    /// Bonus USD by rank.
    pub bonus_usd_micro: MicroUsd,
    /// CRAT issued this round: streak + peak + validation.
    pub crat_issued_micro: MicroCrat,
    /// CRAT removed by slashing.
    pub crat_slashed_micro: MicroCrat,
    /// CRAT held at the end of the round.
    pub crat_end_micro: MicroCrat,
    /// Consecutive committed rounds including this one (0 when not committed).
    pub streak_end: u64,
    /// Uptime over all rounds so far.
    pub uptime_total_s: u64,
}

/// The part of a node's [`NodeOutcome`] that is paid or carried into the next round, in the
/// compact form read in input order: by [`crate::RoundDriver`] when it carries a round forward,
/// and by callers that keep per-node state in input order (the simulator) through
/// [`crate::ClosedRound::result_of`] and [`crate::ClosedRound::results`]. 48 bytes against the
/// outcome's 128, read sequentially instead of at rank positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeResult {
    /// Guaranteed USD (rule 3).
    pub guaranteed_usd_micro: MicroUsd,
    /// Bonus USD by rank (rule 8).
    pub bonus_usd_micro: MicroUsd,
    /// CRAT held at the end of the round (rule 13).
    pub crat_end_micro: MicroCrat,
    /// Uptime over all rounds so far (rule 1).
    pub uptime_total_s: u64,
    /// Consecutive committed rounds including this one (rule 9).
    pub streak_end: u64,
    /// Online for the whole round (rule 2).
    pub committed: bool,
    /// Eligible for a bonus (rule 5).
    pub eligible: bool,
}

impl From<&NodeOutcome> for NodeResult {
    fn from(o: &NodeOutcome) -> Self {
        Self {
            guaranteed_usd_micro: o.guaranteed_usd_micro,
            bonus_usd_micro: o.bonus_usd_micro,
            crat_end_micro: o.crat_end_micro,
            uptime_total_s: o.uptime_total_s,
            streak_end: o.streak_end,
            committed: o.committed,
            eligible: o.eligible,
        }
    }
}

/// Round totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregates {
    /// The bonus pool: the income share plus the carry in.
    pub pool_usd_micro: MicroUsd,
    /// `k`, the number of ranks paid.
    pub paid_ranks: u64,
    /// Bonus paid over all ranks (the pool when `k ≥ 1`, else 0).
    pub bonus_paid_usd_micro: MicroUsd,
    /// Guaranteed USD paid over all nodes.
    pub guaranteed_paid_usd_micro: MicroUsd,
    /// Pool carried to the next round (the pool when `k = 0`, else 0).
    pub carry_out_usd_micro: MicroUsd,
}

/// A computed round: nodes in rank order (eligible nodes, rank 1 first), then the others in
/// id order; and the totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundOutcome {
    /// Per-node results in rank order, then id order.
    pub nodes: Vec<NodeOutcome>,
    /// Round totals.
    pub aggregates: Aggregates,
}

impl RoundOutcome {
    /// The result for one node (a linear search).
    pub fn node(&self, id: &NodeId) -> Option<&NodeOutcome> {
        self.nodes.iter().find(|n| n.id == *id)
    }

    /// The interchange JSON: `{"nodes":[…],"aggregates":{…}}`, one node per line, field
    /// names and order as in `docs/economics.md`. The same outcome always gives the same bytes.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(64 + self.nodes.len() * 330);
        out.extend_from_slice(b"{\"nodes\":[");
        for (i, node) in self.nodes.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            // Writing plain structs of integers, bools and hex strings into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, node);
        }
        out.extend_from_slice(b"\n],\n\"aggregates\":");
        let _ = serde_json::to_writer(&mut out, &self.aggregates);
        out.extend_from_slice(b"}\n");
        // serde_json writes valid UTF-8.
        String::from_utf8(out).unwrap_or_default()
    }
}
