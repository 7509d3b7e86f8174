//! `crat-sim`: a round-by-round simulator of the network's economics, for researchers.
//!
//! It runs the real rules against thousands to millions of virtual nodes: placement and
//! pricing from `crat-core`, payouts and CRAT from `crat-rewards`'
//! [`RoundDriver`](crat_rewards::RoundDriver) (never a re-implementation), so a simulated
//! round can be recomputed by anyone from its exported inputs (`crat rewards compute`).
//!
//! - [`scenario`]: the TOML scenario (population and GPU mix, churn, outages, demand,
//!   validation and cheaters, strategies, provider behaviour, rewards and pricing
//!   parameters, sweeps), with documented defaults and errors naming the field.
//! - [`streams`]: the per-(seed, node, round) random streams: results do not depend on
//!   thread count.
//! - [`Simulation`]: one run, round by round; [`Report`]: its metrics and output files.
//!
//! Money stays integer (it comes out of crat-rewards); floats appear only in random draws and
//! reported ratios.
//!
//! ```
//! use crat_sim::{Scenario, Simulation};
//!
//! let scenario = Scenario::from_toml(r#"
//!     name = "tiny"
//!     rounds = 4
//!     [population]
//!     nodes = 40
//!     [churn]
//!     model = "none"
//! "#)?;
//! let mut exported = Vec::new();
//! let report = Simulation::new(&scenario, 42)?.run(|closed| {
//!     exported.push(closed.inputs.to_json()); // the interchange JSON of each round
//! })?;
//! assert_eq!(report.rounds.len(), 4);
//! // Without churn every node is committed and earns its GPU's mining income.
//! assert_eq!(report.rounds[0].nodes_committed, 40);
//! // Same seed, same bytes; `run_to_end` skips handing out (and building) each outcome.
//! let again = Simulation::new(&scenario, 42)?.run_to_end()?;
//! assert_eq!(report, again);
//! # Ok::<(), crat_sim::SimError>(())
//! ```
//!
//! # Models and their simplifications
//!
//! - **Churn** is advanced per node inside each round (PeerSim cycle style) from the node's
//!   own stream; sessions carry across rounds. Region outages cut the intervals.
//! - **Per-instance deployments** are placed by [`crat_core::placement`] once per round, on
//!   the nodes online at its start, and paid up front for a one-round key
//!   ([`crat_core::pricing::PricingParams::quote`]). Their SLA is checked per hour against
//!   the replicas' online time; re-placement inside a round is not modelled yet.
//! - **Per-request demand** is computed hour by hour: requests (diurnal, peak-window
//!   multiplier, growth, shocks) are served up to the online capacity left after the
//!   reservations, pooled over nodes, and charged by `request_cost`; the rest are dropped.
//! - **Validation**: the sampled re-runs are drawn per node (Poisson in proportion to its
//!   online capacity, binomial for a cheater's wrong answers), which is exact in
//!   distribution for workers and validators chosen in proportion to capacity and keeps
//!   a round O(n) and thread-count independent. A disagreement goes to a third node and the
//!   majority decides (none when the third is wrong too). Failed validations go to
//!   crat-rewards as `validations_failed` (slashing and bonus eligibility are its rules, not
//!   ours); `docs/verification.md` has the cheater study (`--example cheaters`).
//! - **Strategies** (`[strategies]`, off by default): hardware liars rated and paid by what
//!   their card proves (`crat_core::policy::hardware`), usage inventors charged only within
//!   acknowledgements (`crat_core::policy::acks::chargeable`), receipt withholders failing
//!   every checked task, and input framers whose reports
//!   `crat_core::policy::reports::same_inputs` refuses; `docs/verification.md` has their study (`--example strategies`).
//! - **Departure**: a node leaves after `behaviour.departure_rounds` consecutive rounds of
//!   earning less than its electricity cost.
//!
//! # Performance
//!
//! 10,000 nodes × 1,000 one-day rounds took 0.87–0.92 s and 1,000,000 nodes × 100 rounds
//! 9.8–9.9 s in 0.75 GB, release builds on a quiet 2-core VM (2026-12-06, the round close in
//! parts on both cores). The same code on another 2-core VM the next day took 1.8–1.9 s and
//! 13.1 s: the close gains little from a second core there. On a third, an Intel KVM guest
//! (2026-12-08), 1.04–1.19 s and 14.5–14.8 s once rayon's workers poll for work during a
//! round instead of sleeping between its passes (1.19–1.40 s and 14.3–14.6 s before); there
//! a million-node run took 22.5–23.0 s until simulator runs turned transparent huge pages
//! off (`crat_alloc`). `docs/simulator.md` has every measurement, where a round's time goes,
//! and how to rerun them.

mod error;
pub mod report;
pub mod scenario;
mod sim;
pub mod streams;

pub use error::SimError;
pub use report::{
    CheaterStats, NodeSummary, PopulationMetrics, PopulationStats, Populations, Report,
    RoundMetrics, StrategyMetrics, write_nodes_csv,
};
pub use scenario::{Scenario, Strategies, Strategy};
pub use sim::{SIM_START_S, Simulation};
