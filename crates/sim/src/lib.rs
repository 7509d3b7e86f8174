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
//! # Performance (2-core VM; release builds; quiet machine, load average 0.5)
//!
//! - Event kernel hold with 10⁵ pending: 10.5 M events/s (criterion
//!   `cargo bench -p crat-benches --bench sim`, `sim_kernel/hold_100k_pending`; also
//!   `cargo run --release -p crat-sim --example kernel_hold`).
//! - 10,000 nodes × 1,000 one-day rounds (`scenarios/bench_10k.toml`: default churn, 500
//!   per-request and 100 per-instance clients, demand +0.1 % a round): 2.75–2.8 s wall,
//!   2.55 s user, 51 MB peak (goal 2 s not met). With the default +1 % a round, demand
//!   outgrows the network after about 600 rounds and the run takes about 5 s (placement at
//!   saturation). Criterion `sim_rounds/10k_nodes_x20_rounds`: 58.7 ms.
//! - 1,000,000 nodes × 100 rounds (`scenarios/bench_1m.toml`: 5,000 and 1,000 clients):
//!   55.5 s wall (57.2 s user, 2.8 s system), peak RSS 824,812 KiB, about 0.82 KB per node
//!   (goal 30 s not met; memory within 1 GB).
//! - Both: `cargo run --release -p crat-sim --example scenario_run -- scenarios/bench_1m.toml`
//!   (the allocator settings of `crat`), or `crat sim run scenarios/bench_1m.toml`.
//!
//! Where a round goes: most of it is closing the round through [`RoundDriver`] at
//! `compute`'s pace. Rule 6's places are random writes into a rank-ordered output of 128
//! bytes per node, and reading each node's outcome back is another random pass. Nodes are
//! kept in id order (the driver's), the rank sort is a radix sort, and buffers are reused
//! between rounds, so the rest of a round reads memory in order.
//!
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
