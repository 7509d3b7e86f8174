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
//! // Same seed, same bytes.
//! let again = Simulation::new(&scenario, 42)?.run(|_| {})?;
//! assert_eq!(report, again);
//! # Ok::<(), crat_sim::SimError>(())
//! ```
//!
//! [`RoundDriver`]: crat_rewards::RoundDriver

mod error;
pub mod kernel;
pub mod report;
pub mod scenario;
mod sim;

pub use error::SimError;
pub use report::{NodeSummary, Report, RoundMetrics, write_nodes_csv};
pub use scenario::Scenario;
pub use sim::{DEREGISTER_MOVES_PER_ROUND_MAX, Simulation};
