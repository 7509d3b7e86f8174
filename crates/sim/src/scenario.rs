//! Scenario files: every model parameter, in TOML, with documented defaults.
//!
//! Every table is optional; a missing field takes the default written on it. Unknown fields
//! are refused (a typo is an error, not a silent default), and out-of-range values are
//! refused with the field named (`churn.mean_on_s: must be at least 1`).
//!
//! ```
//! use crat_sim::scenario::Scenario;
//!
//! let s = Scenario::from_toml(r#"
//!     name = "small"
//!     rounds = 5
//!     [population]
//!     nodes = 100
//!     [demand]
//!     per_request_clients = 10
//! "#)?;
//! assert_eq!(s.population.nodes, 100);
//! assert_eq!(s.churn.mean_off_s, 14_400); // a default
//! assert!(Scenario::from_toml("[churn]\nmean_of_s = 3").is_err()); // typo refused
//! # Ok::<(), crat_sim::SimError>(())
//! ```

use std::collections::BTreeMap;

use crat_core::bps::Bps;
use crat_core::gpu_table::GpuTable;
use crat_core::pricing::{PricingParams, UpdateFrequency};
use crat_rewards::Params;
use serde::{Deserialize, Serialize};

use crate::SimError;

/// Most nodes a run may hold (initial plus arrivals).
pub const NODES_MAX: u64 = 4_000_000;
/// Most rounds a run may last.
pub const ROUNDS_MAX: u32 = 100_000;
/// Most runs one sweep may expand to.
pub const SWEEP_RUNS_MAX: usize = 10_000;
/// Most online intervals a node may have in one round; a node that would toggle more often
/// stays in its state until the next round.
pub const SESSIONS_PER_ROUND_MAX: usize = 64;
/// Most demand buckets (hours) in one round.
pub const HOURS_PER_ROUND_MAX: u64 = 24 * 31;

/// A whole scenario. See the field docs for defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name written into the results ("scenario").
    pub name: String,
    /// Seed of the first run (1). `crat sim run --seed` overrides it.
    pub seed: u64,
    /// Rounds to simulate (30).
    pub rounds: u32,
    /// Who provides GPUs.
    pub population: Population,
    /// When nodes are online.
    pub churn: Churn,
    /// Regions going dark (none).
    pub outages: Vec<Outage>,
    /// What clients ask for.
    pub demand: Demand,
    /// Sampled re-execution and cheaters.
    pub validation: Validation,
    /// When providers give up.
    pub behaviour: Behaviour,
    /// Hardware liars, usage inventors, receipt withholders and input framers (none). Left
    /// out of the serialized scenario while it is the default, so runs without them write
    /// the same bytes as before it existed.
    #[serde(skip_serializing_if = "Strategies::is_default")]
    pub strategies: Strategies,
    /// Round economics parameters, exactly `crat_rewards::Params` (docs/economics.md).
    pub rewards: Params,
    /// Pricing parameters, exactly `crat_core::pricing::PricingParams` (its defaults).
    pub pricing: PricingParams,
    /// Parameter sweep: dotted field path → list of values; the runs are the cartesian
    /// product (empty: one run). Example: `"demand.per_request_clients" = [10, 100]`.
    pub sweep: BTreeMap<String, Vec<toml::Value>>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "scenario".into(),
            seed: 1,
            rounds: 30,
            population: Population::default(),
            churn: Churn::default(),
            outages: Vec::new(),
            demand: Demand::default(),
            validation: Validation::default(),
            behaviour: Behaviour::default(),
            strategies: Strategies::default(),
            rewards: Params::default(),
            pricing: PricingParams::default(),
            sweep: BTreeMap::new(),
        }
    }
}

/// One GPU model's share of the population.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuShare {
    /// The model as the GPU table names it ("NVIDIA GeForce RTX 3080").
    pub gpu: String,
    /// Relative weight.
    pub weight: u32,
}

/// The node population.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Population {
    /// Nodes at the start (1,000).
    pub nodes: u64,
    /// GPU mix; rating and mining income come from the GPU table. Default: GTX 1650 15,
    /// GTX 1660 SUPER 25, RTX 2070 SUPER 25, RTX 3080 20, RTX 4080 SUPER 15.
    pub gpu_mix: Vec<GpuShare>,
    /// New providers joining at the start of each round after the first (0).
    pub arrivals_per_round: u64,
    /// Regions nodes are spread over, round-robin (4).
    pub regions: u32,
    /// Consecutive nodes sharing one operator (address block) for placement limits (1).
    pub nodes_per_operator: u64,
    /// Initial nodes registered uniformly over this many seconds before the start (2,592,000).
    pub registration_spread_s: u64,
    /// Requests per second a node serves per rating point (20).
    pub capacity_rps_per_rating: u32,
    /// CRAT every node starts with, µCRAT (0).
    pub crat_initial_micro: u64,
}

impl Default for Population {
    fn default() -> Self {
        let share = |gpu: &str, weight| GpuShare {
            gpu: gpu.into(),
            weight,
        };
        Self {
            nodes: 1_000,
            gpu_mix: vec![
                share("NVIDIA GeForce GTX 1650", 15),
                share("NVIDIA GeForce GTX 1660 SUPER", 25),
                share("NVIDIA GeForce RTX 2070 SUPER", 25),
                share("NVIDIA GeForce RTX 3080", 20),
                share("NVIDIA GeForce RTX 4080 SUPER", 15),
            ],
            arrivals_per_round: 0,
            regions: 4,
            nodes_per_operator: 1,
            registration_spread_s: 30 * 86_400,
            capacity_rps_per_rating: 20,
            crat_initial_micro: 0,
        }
    }
}

/// Session length distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionModel {
    /// Nodes never go offline (except in outages).
    None,
    /// Exponential on and off durations.
    Exponential,
    /// Log-normal on and off durations with shape `sigma`.
    LogNormal,
}

/// On/off sessions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Distribution of session lengths ("exponential"; or "log_normal", "none").
    pub model: SessionModel,
    /// Mean online session, seconds (604,800: a week).
    pub mean_on_s: u64,
    /// Mean offline session, seconds (14,400).
    pub mean_off_s: u64,
    /// Log-normal shape (1.0).
    pub sigma: f64,
    /// Diurnal factor 0..1 (0.3): a session starting at time of day t has its mean scaled by
    /// `1 ± a·cos(2π(t − peak_centre_s)/86400)`, on-sessions longer and off-sessions shorter
    /// near the peak.
    pub diurnal_amplitude: f64,
    /// Time of day of the diurnal maximum, seconds after midnight (68,400: 19:00).
    pub peak_centre_s: u64,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            model: SessionModel::Exponential,
            mean_on_s: 7 * 86_400,
            mean_off_s: 4 * 3_600,
            sigma: 1.0,
            diurnal_amplitude: 0.3,
            peak_centre_s: 19 * 3_600,
        }
    }
}

/// A region going dark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Region number (0-based).
    pub region: u32,
    /// Round (0-based) in which it starts; rounds start at [`crate::SIM_START_S`].
    pub round: u32,
    /// Offset of its start within that round, seconds.
    pub start_s: u64,
    /// How long the region is dark, seconds (may span rounds).
    pub duration_s: u64,
}

/// A change of demand from a round on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shock {
    /// First round (0-based) it applies to.
    pub from_round: u32,
    /// Demand multiplier in basis points (2,000 = demand falls to 20 %).
    pub factor_bps: u32,
}

/// Client demand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Demand {
    /// Clients on the per-request plan (50).
    pub per_request_clients: u64,
    /// Requests one such client sends per day on average (100,000).
    pub requests_per_client_per_day: u64,
    /// Model size of every deployment, bytes (2 MiB).
    pub model_bytes: u64,
    /// Input size of a request, bytes (100 KiB).
    pub input_bytes: u64,
    /// Clients on the per-instance plan (10); each deploys once per round, for a key
    /// lifetime of one round, placed at the round's start by `crat_core::placement`.
    pub per_instance_clients: u64,
    /// Guaranteed rate of one per-instance deployment, rps (20).
    pub guaranteed_rps: u32,
    /// Lowest node rating a per-instance deployment accepts (1).
    pub rating_min: u8,
    /// Replicas of one operator per deployment at most (0: no limit).
    pub per_operator_max: u32,
    /// Update frequency of per-instance deployments ("Weekly").
    pub update_frequency: UpdateFrequency,
    /// Diurnal amplitude 0..1 of the request rate (0.5), peaking at `churn.peak_centre_s`.
    pub diurnal_amplitude: f64,
    /// Extra multiplier inside the rewards peak windows (1.5).
    pub peak_multiplier: f64,
    /// Growth per round, basis points, compounded (100: 1 %).
    pub growth_bps_per_round: i64,
    /// Shocks (none); the last one whose `from_round` has passed applies.
    pub shocks: Vec<Shock>,
}

impl Default for Demand {
    fn default() -> Self {
        Self {
            per_request_clients: 50,
            requests_per_client_per_day: 100_000,
            model_bytes: 2 << 20,
            input_bytes: 100 << 10,
            per_instance_clients: 10,
            guaranteed_rps: 20,
            rating_min: 1,
            per_operator_max: 0,
            update_frequency: UpdateFrequency::Weekly,
            diurnal_amplitude: 0.5,
            peak_multiplier: 1.5,
            growth_bps_per_round: 100,
            shocks: Vec::new(),
        }
    }
}

/// Sampled re-execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Validation {
    /// Share of served tasks re-run by another node, basis points (100: 1 %, the
    /// dispatcher's default `validation_bps`).
    pub sample_bps: u32,
    /// Validations per round at most (1,000,000,000: no practical cap); beyond it the sample
    /// is capped, as a network short of validator capacity would.
    pub per_round_max: u64,
    /// Share of nodes that cheat, basis points (0).
    pub cheater_share_bps: u32,
    /// Probability a cheater returns a wrong result for a task, basis points (5,000).
    pub cheat_bps: u32,
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            sample_bps: 100,
            per_round_max: 1_000_000_000,
            cheater_share_bps: 0,
            cheat_bps: 5_000,
        }
    }
}

/// What a node does besides serving honestly: one population each, drawn per node with the
/// cheaters (`validation.cheater_share_bps`) from one draw of its own stream, so the shares
/// together may not pass 10,000 basis points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Serves honestly.
    #[default]
    Honest,
    /// Returns wrong results (`validation.cheat_bps`).
    Cheater,
    /// Claims a better GPU than it has; rated and paid by what the proof of hardware
    /// ([`crat_core::policy::hardware`]) says its card proves.
    HardwareLiar,
    /// Reports invented usage; charged only within its clients' acknowledgements
    /// ([`crat_core::policy::acks::chargeable`]).
    UsageInventor,
    /// Never signs receipts: every answer of it that is checked fails.
    ReceiptWithholder,
}

impl Strategy {
    /// Its name in output files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Honest => "honest",
            Self::Cheater => "cheater",
            Self::HardwareLiar => "hardware_liar",
            Self::UsageInventor => "usage_inventor",
            Self::ReceiptWithholder => "receipt_withholder",
        }
    }
}

/// Strategies beside the cheaters (`[strategies]`), all off by default. The rules they meet
/// are the dispatcher's, called from `crat_core::policy`; `docs/verification.md` has the study.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Strategies {
    /// Share of nodes that claim a better GPU than they have, basis points (0).
    pub liar_share_bps: u32,
    /// The card every liar claims, as the GPU table names it ("": each claims the slowest
    /// card of the table that is faster than its own and rated `liar_classes_up` above it,
    /// at most 5).
    pub liar_claim_gpu: String,
    /// Ratings above its own a liar claims when `liar_claim_gpu` is empty (1).
    pub liar_classes_up: u8,
    /// Throughput a liar's card reaches on a challenge, percent of its table FP32 figure
    /// (100: its full peak).
    pub liar_speed_pct: u32,
    /// Share of the deadline's fixed part (allowance and matrix generation) a liar's machine
    /// takes, percent (100: all of it, as the deadline assumes).
    pub liar_overhead_pct: u32,
    /// Share of nodes that report invented usage, basis points (0).
    pub inventor_share_bps: u32,
    /// Invented tasks an inventor reports on top of those it served, basis points of them
    /// (10,000: as many again).
    pub inventor_inflation_bps: u32,
    /// Share of nodes that never sign receipts, basis points (0).
    pub withholder_share_bps: u32,
    /// Share of its electricity cost a withholder saves by not signing, basis points (100).
    pub withholder_saving_bps: u32,
    /// Share of spot checks sent by input framers (different inputs to the worker and the
    /// validator under one task id), basis points (0).
    pub framer_task_bps: u32,
}

impl Default for Strategies {
    fn default() -> Self {
        Self {
            liar_share_bps: 0,
            liar_claim_gpu: String::new(),
            liar_classes_up: 1,
            liar_speed_pct: 100,
            liar_overhead_pct: 100,
            inventor_share_bps: 0,
            inventor_inflation_bps: 10_000,
            withholder_share_bps: 0,
            withholder_saving_bps: 100,
            framer_task_bps: 0,
        }
    }
}

impl Strategies {
    /// Whether every field has its default (then it is not serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Liars, inventors and withholders at all.
    pub fn any_nodes(&self) -> bool {
        self.liar_share_bps > 0 || self.inventor_share_bps > 0 || self.withholder_share_bps > 0
    }
}

/// Provider behaviour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Electricity cost per day by rating 1..5, µUSD ([30000, 50000, 90000, 150000, 220000]).
    pub electricity_usd_micro_per_day: [u64; 5],
    /// A node leaves after this many consecutive rounds of earning (guaranteed + bonus) less
    /// than its electricity cost (7; 0 = never leaves).
    pub departure_rounds: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            electricity_usd_micro_per_day: [30_000, 50_000, 90_000, 150_000, 220_000],
            departure_rounds: 7,
        }
    }
}

fn bad(field: &str, reason: impl Into<String>) -> SimError {
    SimError::Scenario {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Scenario {
    /// Parses and validates one scenario (its `[sweep]` table is kept, not expanded).
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        let s: Scenario = toml::from_str(text).map_err(|e| SimError::Toml(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Expands the `[sweep]` table into one scenario per combination, in a fixed order
    /// (keys sorted, last key varying fastest), each labelled `key=value,…` ("" without a
    /// sweep). Errors name the swept field.
    pub fn expand(text: &str) -> Result<Vec<(String, Scenario)>, SimError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| SimError::Toml(e.to_string()))?;
        let sweep: BTreeMap<String, Vec<toml::Value>> = match table.remove("sweep") {
            None => BTreeMap::new(),
            Some(v) => v
                .try_into()
                .map_err(|e: toml::de::Error| bad("sweep", e.to_string()))?,
        };
        let mut total: usize = 1;
        for (k, vs) in &sweep {
            if vs.is_empty() {
                return Err(bad(&format!("sweep.\"{k}\""), "empty list of values"));
            }
            total = total.saturating_mul(vs.len());
        }
        if total > SWEEP_RUNS_MAX {
            return Err(bad(
                "sweep",
                format!("{total} runs, more than {SWEEP_RUNS_MAX}"),
            ));
        }
        let keys: Vec<(&String, &Vec<toml::Value>)> = sweep.iter().collect();
        let mut out = Vec::with_capacity(total);
        for mut n in 0..total {
            let mut t = table.clone();
            let mut label = Vec::new();
            let mut picks = vec![0; keys.len()];
            for (i, (_, vs)) in keys.iter().enumerate().rev() {
                picks[i] = n % vs.len();
                n /= vs.len();
            }
            for (i, (k, vs)) in keys.iter().enumerate() {
                let v = &vs[picks[i]];
                set_path(&mut t, k, v.clone())?;
                label.push(format!("{k}={v}"));
            }
            let s: Scenario = toml::Value::Table(t)
                .try_into()
                .map_err(|e: toml::de::Error| SimError::Toml(format!("sweep {label:?}: {e}")))?;
            s.validate()?;
            out.push((label.join(","), s));
        }
        Ok(out)
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.rounds == 0 || self.rounds > ROUNDS_MAX {
            return Err(bad("rounds", format!("must be in 1..={ROUNDS_MAX}")));
        }
        let p = &self.population;
        let total = p
            .nodes
            .saturating_add(p.arrivals_per_round.saturating_mul(u64::from(self.rounds)));
        if total > NODES_MAX {
            return Err(bad(
                "population.nodes",
                format!("{total} nodes with arrivals, more than NODES_MAX = {NODES_MAX}"),
            ));
        }
        if p.gpu_mix.is_empty() || p.gpu_mix.iter().all(|g| g.weight == 0) {
            return Err(bad("population.gpu_mix", "needs a positive weight"));
        }
        for (i, g) in p.gpu_mix.iter().enumerate() {
            if GpuTable::builtin().lookup(&g.gpu).is_none() {
                return Err(bad(
                    &format!("population.gpu_mix[{i}].gpu"),
                    format!("{:?} is not in the GPU table", g.gpu),
                ));
            }
        }
        if p.regions == 0 {
            return Err(bad("population.regions", "must be at least 1"));
        }
        if p.nodes_per_operator == 0 {
            return Err(bad("population.nodes_per_operator", "must be at least 1"));
        }
        let c = &self.churn;
        if c.mean_on_s == 0 {
            return Err(bad("churn.mean_on_s", "must be at least 1"));
        }
        if c.mean_off_s == 0 {
            return Err(bad("churn.mean_off_s", "must be at least 1"));
        }
        if !(0.0..=5.0).contains(&c.sigma) {
            return Err(bad("churn.sigma", "must be in 0..=5"));
        }
        if !(0.0..1.0).contains(&c.diurnal_amplitude) {
            return Err(bad("churn.diurnal_amplitude", "must be in 0..1"));
        }
        for (i, o) in self.outages.iter().enumerate() {
            if o.region >= p.regions {
                return Err(bad(
                    &format!("outages[{i}].region"),
                    format!("only {} regions", p.regions),
                ));
            }
        }
        let d = &self.demand;
        if !(0.0..=1.0).contains(&d.diurnal_amplitude) {
            return Err(bad("demand.diurnal_amplitude", "must be in 0..=1"));
        }
        if !(0.0..=100.0).contains(&d.peak_multiplier) {
            return Err(bad("demand.peak_multiplier", "must be in 0..=100"));
        }
        let full = i64::from(Bps::FULL.get());
        if !(-full..=full).contains(&d.growth_bps_per_round) {
            return Err(bad(
                "demand.growth_bps_per_round",
                "must be in -10000..=10000",
            ));
        }
        if d.per_instance_clients > 0 && d.guaranteed_rps == 0 {
            return Err(bad("demand.guaranteed_rps", "must be at least 1"));
        }
        if !(1..=5).contains(&d.rating_min) {
            return Err(bad("demand.rating_min", "must be in 1..=5"));
        }
        let price = &self.pricing;
        price
            .validate()
            .map_err(|e| bad("pricing", e.to_string()))?;
        price
            .request_cost(d.model_bytes, d.input_bytes)
            .map_err(|e| bad("demand.model_bytes", e.to_string()))?;
        let v = &self.validation;
        for (name, bps) in [
            ("validation.sample_bps", v.sample_bps),
            ("validation.cheater_share_bps", v.cheater_share_bps),
            ("validation.cheat_bps", v.cheat_bps),
        ] {
            if bps > u32::from(Bps::FULL.get()) {
                return Err(bad(name, "more than 10000 basis points"));
            }
        }
        self.validate_strategies()?;
        self.rewards
            .validate()
            .map_err(|e| bad("rewards", e.to_string()))?;
        if self.rewards.round_s.div_ceil(3_600) > HOURS_PER_ROUND_MAX {
            return Err(bad(
                "rewards.round_s",
                format!("more than {HOURS_PER_ROUND_MAX} hours"),
            ));
        }
        Ok(())
    }
}

impl Scenario {
    fn validate_strategies(&self) -> Result<(), SimError> {
        let st = &self.strategies;
        let full = u32::from(Bps::FULL.get());
        for (name, bps) in [
            ("strategies.liar_share_bps", st.liar_share_bps),
            ("strategies.inventor_share_bps", st.inventor_share_bps),
            ("strategies.withholder_share_bps", st.withholder_share_bps),
            ("strategies.withholder_saving_bps", st.withholder_saving_bps),
            ("strategies.framer_task_bps", st.framer_task_bps),
        ] {
            if bps > full {
                return Err(bad(name, "more than 10000 basis points"));
            }
        }
        // Each node draws one number in 0..10000 for its population: the shares partition it.
        let shares = u64::from(self.validation.cheater_share_bps)
            + u64::from(st.liar_share_bps)
            + u64::from(st.inventor_share_bps)
            + u64::from(st.withholder_share_bps);
        if shares > u64::from(full) {
            return Err(bad(
                "strategies",
                format!(
                    "validation.cheater_share_bps + liar_share_bps + inventor_share_bps + \
                     withholder_share_bps = {shares}, more than 10000 basis points"
                ),
            ));
        }
        if !st.liar_claim_gpu.is_empty() && GpuTable::builtin().lookup(&st.liar_claim_gpu).is_none()
        {
            return Err(bad(
                "strategies.liar_claim_gpu",
                format!("{:?} is not in the GPU table", st.liar_claim_gpu),
            ));
        }
        if !(1..=4).contains(&st.liar_classes_up) {
            return Err(bad("strategies.liar_classes_up", "must be in 1..=4"));
        }
        if !(1..=1_000).contains(&st.liar_speed_pct) {
            return Err(bad("strategies.liar_speed_pct", "must be in 1..=1000"));
        }
        if st.liar_overhead_pct > 1_000 {
            return Err(bad("strategies.liar_overhead_pct", "must be in 0..=1000"));
        }
        if st.inventor_inflation_bps > INVENTOR_INFLATION_BPS_MAX {
            return Err(bad(
                "strategies.inventor_inflation_bps",
                format!("must be in 0..={INVENTOR_INFLATION_BPS_MAX}"),
            ));
        }
        Ok(())
    }
}

/// Most invented tasks an inventor reports, basis points of those it served (100 times as
/// many).
pub const INVENTOR_INFLATION_BPS_MAX: u32 = 1_000_000;

fn set_path(t: &mut toml::Table, path: &str, v: toml::Value) -> Result<(), SimError> {
    let mut parts = path.split('.').peekable();
    let mut cur = t;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_string(), v);
            return Ok(());
        }
        let next = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = next
            .as_table_mut()
            .ok_or_else(|| bad(&format!("sweep.\"{path}\""), format!("{p} is not a table")))?;
    }
    Err(bad("sweep", "empty path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_errors_name_fields() {
        Scenario::default().validate().unwrap();
        let e = Scenario::from_toml("[churn]\nmean_on_s = 0").unwrap_err();
        assert!(e.to_string().contains("churn.mean_on_s"), "{e}");
        let e = Scenario::from_toml("[population]\ngpu_mix = [{gpu = \"Potato\", weight = 1}]")
            .unwrap_err();
        assert!(e.to_string().contains("population.gpu_mix[0].gpu"), "{e}");
        let e = Scenario::from_toml("[demand]\nbogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn strategies_are_checked_and_their_shares_partition_the_nodes() {
        let s = Scenario::from_toml(
            "[validation]\ncheater_share_bps = 4000\n[strategies]\nliar_share_bps = 3000\n\
             inventor_share_bps = 2000\nwithholder_share_bps = 1000\nframer_task_bps = 10000\n",
        )
        .unwrap();
        assert_eq!(s.strategies.withholder_share_bps, 1_000);
        let e = Scenario::from_toml(
            "[validation]\ncheater_share_bps = 4000\n[strategies]\nliar_share_bps = 3000\n\
             inventor_share_bps = 2000\nwithholder_share_bps = 1001\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("strategies") && e.to_string().contains("10001"),
            "{e}"
        );
        for (bad_field, text) in [
            ("strategies.liar_claim_gpu", "liar_claim_gpu = \"Potato\""),
            ("strategies.liar_classes_up", "liar_classes_up = 0"),
            ("strategies.liar_speed_pct", "liar_speed_pct = 0"),
            ("strategies.framer_task_bps", "framer_task_bps = 10001"),
            (
                "strategies.inventor_inflation_bps",
                "inventor_inflation_bps = 1000001",
            ),
        ] {
            let e = Scenario::from_toml(&format!("[strategies]\n{text}")).unwrap_err();
            assert!(e.to_string().contains(bad_field), "{e}");
        }
        assert!(Scenario::from_toml("[strategies]\nliars = 1").is_err());
        // The default table is left out of the serialized scenario.
        let json = serde_json::to_string(&Scenario::default()).unwrap();
        assert!(!json.contains("strategies"), "{json}");
        assert!(
            serde_json::to_string(&s)
                .unwrap()
                .contains("framer_task_bps")
        );
    }

    #[test]
    fn sweep_is_cartesian_and_ordered() {
        let runs = Scenario::expand(
            "rounds = 2\n[sweep]\n\"demand.per_request_clients\" = [1, 2]\n\"rounds\" = [3, 4, 5]\n",
        )
        .unwrap();
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[0].0, "demand.per_request_clients=1,rounds=3");
        assert_eq!(runs[5].1.demand.per_request_clients, 2);
        assert_eq!(runs[5].1.rounds, 5);
        assert!(Scenario::expand("[sweep]\n\"demand.nope\" = [1]").is_err());
    }
}
