//! `crat-sim`: a discrete-event simulator of the network's economics, for researchers.
//!
//! It runs the real rules against thousands to millions of virtual nodes: placement and
//! pricing from `crat-core`, payouts and CRAT from `crat-rewards`' [`RoundDriver`]
//! (never a re-implementation), so a simulated round can be recomputed by anyone from its
//! exported inputs (`crat rewards compute`).
//!
//! - [`scenario`]: the TOML scenario (population and GPU mix, churn, outages, demand,
//!   validation and cheaters, provider behaviour, rewards and pricing parameters, sweeps),
//!   with documented defaults and errors naming the field.
//! - [`kernel`]: the (time, sequence)-ordered [`EventQueue`](kernel::EventQueue) and the
//!   per-(seed, node, round) random streams: results do not depend on thread count.
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
//! - **Per-request demand** is one event per hour: requests (diurnal, peak-window
//!   multiplier, growth, shocks) are served up to the online capacity left after the
//!   reservations, pooled over nodes, and charged by `request_cost`; the rest are dropped.
//! - **Validation**: the sampled re-runs are drawn per node (Poisson in proportion to its
//!   online capacity, binomial for a cheater's wrong answers), which is exact in
//!   distribution for workers and validators chosen in proportion to capacity and keeps
//!   a round O(n) and thread-count independent. A disagreement goes to a third node and the
//!   majority decides (none when the third is wrong too). Failed validations go to
//!   crat-rewards as `validations_failed` (slashing and bonus eligibility are its rules, not
//!   ours); `docs/verification.md` has the cheater study (`--example cheaters`).
//! - **Departure**: a node leaves after `behaviour.departure_rounds` consecutive rounds of
//!   earning less than its electricity cost.
//!
//! # Performance (2-core VM shared with other tenants; release builds)
//!
//! - 10,000 nodes × 1,000 one-day rounds (`scenarios/bench_10k.toml`: default churn, 500
//!   per-request and 100 per-instance clients, demand +0.1 % a round): 1.74–1.92 s wall over
//!   ten runs at load averages of 1.2–1.7 (median about 1.8 s), 2.06 s user, 39 MB peak.
//!   Criterion `sim_rounds/10k_nodes_x20_rounds` (set-up included): 41.9 ms.
//! - 1,000,000 nodes × 100 rounds (`scenarios/bench_1m.toml`: 5,000 and 1,000 clients):
//!   23.65, 23.7 and 24.5 s wall in three runs at load averages of 0.9–1.4 from other
//!   tenants (28.2–29.0 s user, 1.3–2.7 s system), peak RSS about 735 MB, 0.74 KB per node.
//! - Event kernel hold with 10⁵ pending: 8.1 M events/s by criterion at load 1.7, 8.6–9.7 M
//!   by `--example kernel_hold` (10.5 M on a quieter day with the same code).
//! - Commands: `cargo run --release -p crat-sim --example scenario_run --
//!   scenarios/bench_10k.toml` (or `bench_1m.toml`; the allocator settings of `crat`), or
//!   `crat sim run scenarios/bench_1m.toml`; `cargo bench -p crat-benches --bench sim`.
//!
//! Where a round goes. [`Simulation::advance`] (and [`Simulation::run_to_end`]) close each
//! round through [`RoundDriver::close_round_results_with`]: every node's activity is
//! written in place by position, the rules run in one pass over the nodes, and each node's
//! result comes back in input order, so no 128-byte outcome is written at a random rank
//! position and every per-node pass reads memory in order. Results carry no rank, so only the
//! paid ranks (a few thousand of a million) are put in order, by selection.
//! A round runs on one rayon worker, its churn, draws, candidates and metrics in parallel
//! chunks, with its buffers kept between rounds. [`Simulation::step_with`] builds the full
//! rank-ordered outcome too, for callers that look at it (trace export).
//!
//! [`RoundDriver::close_round_results_with`]: crat_rewards::RoundDriver::close_round_results_with
//! [`RoundDriver`]: crat_rewards::RoundDriver

mod error;
pub mod kernel;
pub mod report;
pub mod scenario;
mod sim;

pub use error::SimError;
pub use report::{CheaterStats, NodeSummary, Report, RoundMetrics, write_nodes_csv};
pub use scenario::Scenario;
pub use sim::{SIM_START_S, Simulation};
