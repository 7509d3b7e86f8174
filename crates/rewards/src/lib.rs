//! `crat-rewards`: round economics exactly as `docs/economics.md` specifies them.
//!
//! A round's inputs ([`RoundInputs`]: parameters, the round, and per node its rating, CRAT,
//! streak and online intervals) go in; a [`RoundOutcome`] comes out: per node uptime,
//! guaranteed USD, rank and bonus USD, CRAT issued, slashed and held; and the round's totals.
//! Everything is integers (µUSD, µCRAT, seconds) with 128-bit intermediates and flooring
//! divisions, so anyone can recompute a payout to the last micro-dollar. The dispatcher and
//! the simulator both call this crate; nothing else implements these rules.
//!
//! - [`compute`]: one round. [`explain`]: one node's payout in plain words.
//! - [`RoundInputs::from_json`] / [`RoundOutcome::to_json`]: the interchange documents of
//!   `crat rewards compute`, with errors that name the field.
//! - [`RoundDriver`] and [`carry_forward`]: rounds back to back (CRAT, streak, uptime and the
//!   unpaid pool carry over).
//! - [`Settlement`]: paying a closed round, idempotent by (round, node);
//!   [`file_export::FileSettlement`] is the default (the only module here that does IO).
//!
//! The crate is sans-IO apart from [`file_export`]: no clock, no sockets; time is in the
//! inputs.
//!
//! Inside, the code follows the spec: the `rules` module holds the thirteen rules, each a
//! function named and numbered as in `docs/economics.md`; `rank` holds rule 6's order, whose
//! plain comparison (`cmp_rank`) is its definition and against which its fast paths (radix
//! sorts of packed keys, selection of the paid ranks) are tested; `pass` holds the passes
//! over a round's nodes and the buffers they reuse; `driver` runs rounds back to back.
//!
//! ```
//! use crat_core::hardware::PowerRating;
//! use crat_core::id::NodeId;
//! use crat_core::money::{MicroCrat, MicroUsd};
//! use crat_rewards::{Interval, NodeInput, Params, Round, RoundInputs, compute};
//!
//! let node = |byte: u8, crat: u64, online: Vec<Interval>| NodeInput {
//!     id: NodeId::from_bytes([byte; 32]),
//!     rating: PowerRating::new(4).expect("4 is in 1..=5"),
//!     registered_at_s: 0,
//!     mining_income_usd_micro_per_day: MicroUsd::new(300_000),
//!     crat_start_micro: MicroCrat::new(crat),
//!     streak_start: 1,
//!     uptime_total_s_before: 0,
//!     online,
//!     validations_ok: 2,
//!     validations_failed: 0,
//!     crat_external_micro: MicroCrat::ZERO,
//! };
//! let day = 86_400;
//! let inputs = RoundInputs {
//!     params: Params::default(),
//!     round: Round {
//!         index: 1,
//!         start_s: day,
//!         length_s: day,
//!         income_usd_micro: MicroUsd::new(100_000),
//!         carry_in_usd_micro: MicroUsd::ZERO,
//!     },
//!     nodes: vec![
//!         node(1, 1_000_000, vec![Interval::new(day, 2 * day)]), // online all round
//!         node(2, 5_000_000, vec![Interval::new(day, day + 50_000)]), // 50,000 s
//!     ],
//! };
//! let out = compute(&inputs)?;
//! // Pool = 100,000 × 8000 / 10000 = 80,000 µUSD; k = 2 ranks (2 × 80,000 ≥ 10,000 × 2 × 3).
//! assert_eq!(out.aggregates.pool_usd_micro, MicroUsd::new(80_000));
//! assert_eq!(out.aggregates.paid_ranks, 2);
//! // Node 2 holds more CRAT, so it ranks first: 80,000 × 2 / 3 = 53,333 (+1 remainder).
//! assert_eq!(out.nodes[0].id, NodeId::from_bytes([2; 32]));
//! assert_eq!(out.nodes[0].bonus_usd_micro, MicroUsd::new(53_334));
//! assert_eq!(out.nodes[1].bonus_usd_micro, MicroUsd::new(26_666));
//! // Only node 1 was committed: it earns its GPU's mining income and extends its streak.
//! assert_eq!(out.nodes[1].guaranteed_usd_micro, MicroUsd::new(300_000));
//! assert_eq!(out.nodes[1].streak_end, 2);
//! // Its CRAT: 1 streak step (1 CRAT) + 6 peak hours × 0.5 + 2 validations × 0.1.
//! assert_eq!(out.nodes[1].crat_issued_micro, MicroCrat::new(4_200_000));
//! // The same inputs always give the same bytes.
//! assert_eq!(out.to_json(), compute(&inputs)?.to_json());
//! # Ok::<(), crat_rewards::RewardsError>(())
//! ```

mod driver;
mod error;
mod explain;
pub mod file_export;
mod json;
mod outcome;
mod params;
mod pass;
mod rank;
mod round;
mod rules;
mod settlement;

pub use driver::{
    CarriedState, CarryPart, ClosedRound, ListedActivity, NodeActivity, NodeProfile, RoundDetail,
    RoundDriver, carry_forward,
};
pub use error::RewardsError;
pub use explain::{Explanation, Neighbour, explain};
pub use json::INTERCHANGE_BYTES_MAX;
pub use outcome::{Aggregates, NodeOutcome, NodeResult, RoundOutcome};
pub use params::{Interval, PEAK_WINDOWS_MAX, Params};
pub use pass::{ActivitySlot, RoundPart, compute};
pub use rank::ROUND_NODES_MAX;
pub use round::{NodeInput, Round, RoundInputs};
pub use rules::{BonusSchedule, NodeBreakdown, ONLINE_INTERVALS_MAX, paid_ranks};
pub use settlement::{
    PAYOUT_CSV_HEADER, Payout, PayoutBatch, Settlement, SettlementError, SettlementReceipt,
};
