//! What a run measured, and its output files: a long-format per-round CSV, a per-node
//! summary CSV and a JSON summary.
//!
//! Money columns are integers (µUSD, µCRAT) straight from the rewards outcome; ratios
//! (Gini, shares, SLA fulfilment, retention) are floats printed with six decimals, so the
//! same run always gives the same bytes.

use std::io::{self, Write};

use crat_core::id::NodeId;
use serde::Serialize;

/// The metrics of one round.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RoundMetrics {
    /// Round number (0-based).
    pub round: u32,
    /// Client income of the round, µUSD.
    pub income_usd_micro: u64,
    /// Guaranteed USD paid, µUSD.
    pub guaranteed_usd_micro: u64,
    /// Bonus USD paid, µUSD.
    pub bonus_usd_micro: u64,
    /// Bonus pool, µUSD.
    pub pool_usd_micro: u64,
    /// Pool carried to the next round, µUSD.
    pub carry_usd_micro: u64,
    /// Ranks paid a bonus.
    pub paid_ranks: u64,
    /// Per-request requests served.
    pub requests_served: u64,
    /// Per-request requests dropped for lack of capacity.
    pub requests_dropped: u64,
    /// Per-instance deployments asked for.
    pub instances_asked: u64,
    /// Per-instance deployments placed.
    pub instances_placed: u64,
    /// Deployment-hours whose guaranteed rate was delivered.
    pub sla_hours_ok: u64,
    /// Deployment-hours asked for (placed or not).
    pub sla_hours_total: u64,
    /// Validations run.
    pub validations: u64,
    /// Validations that caught a wrong result.
    pub validations_failed: u64,
    /// Nodes taking part (not departed).
    pub nodes_active: u64,
    /// Nodes committed for the whole round.
    pub nodes_committed: u64,
    /// Active nodes per rating 1..5.
    pub class_nodes: [u64; 5],
    /// Guaranteed USD per rating 1..5, µUSD.
    pub class_guaranteed_usd_micro: [u64; 5],
    /// Bonus USD per rating 1..5, µUSD.
    pub class_bonus_usd_micro: [u64; 5],
    /// Active cheating nodes.
    pub cheaters_active: u64,
    /// Bonus paid to cheaters, µUSD.
    pub cheater_bonus_usd_micro: u64,
    /// CRAT held by active cheaters, µCRAT.
    pub cheater_crat_micro: u64,
    /// CRAT held by active honest nodes, µCRAT.
    pub honest_crat_micro: u64,
    /// Providers that left this round.
    pub departures: u64,
    /// Initial providers still active.
    pub initial_retained: u64,
    /// Initial providers.
    pub initial_nodes: u64,
    /// Gini coefficient of active providers' earnings (guaranteed + bonus) this round.
    pub gini_earnings: f64,
    /// Share of all CRAT held by the top 10 % of holders.
    pub crat_top_decile_share: f64,
}

impl RoundMetrics {
    /// Income minus guaranteed and bonus USD paid (negative when the network pays more than
    /// clients bring in), µUSD.
    pub fn treasury_usd_micro(&self) -> i128 {
        i128::from(self.income_usd_micro)
            - i128::from(self.guaranteed_usd_micro)
            - i128::from(self.bonus_usd_micro)
    }

    /// Share of deployment-hours whose guarantee was met (1 when none were asked).
    pub fn sla_fulfilment(&self) -> f64 {
        ratio(self.sla_hours_ok, self.sla_hours_total, 1.0)
    }

    /// Share of initial providers still active.
    pub fn retention(&self) -> f64 {
        ratio(self.initial_retained, self.initial_nodes, 1.0)
    }

    /// Cheaters' share of the bonus paid (0 when none was paid).
    pub fn cheater_bonus_share(&self) -> f64 {
        ratio(self.cheater_bonus_usd_micro, self.bonus_usd_micro, 0.0)
    }

    /// Mean CRAT of an active cheater, µCRAT.
    pub fn cheater_crat_mean(&self) -> f64 {
        ratio(self.cheater_crat_micro, self.cheaters_active, 0.0)
    }

    /// Mean CRAT of an active honest node, µCRAT.
    pub fn honest_crat_mean(&self) -> f64 {
        let honest = self.nodes_active.saturating_sub(self.cheaters_active);
        ratio(self.honest_crat_micro, honest, 0.0)
    }
}

fn ratio(a: u64, b: u64, empty: f64) -> f64 {
    if b == 0 { empty } else { a as f64 / b as f64 }
}

/// One node over the whole run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    /// Node index (0-based, in order of arrival).
    pub index: u64,
    /// Its id.
    pub id: NodeId,
    /// GPU model.
    pub gpu: String,
    /// Power rating.
    pub rating: u8,
    /// Region.
    pub region: u32,
    /// Whether it cheats.
    pub cheater: bool,
    /// Round it joined.
    pub joined_round: u32,
    /// Round it left, if it did.
    pub departed_round: Option<u32>,
    /// Guaranteed USD earned, µUSD.
    pub guaranteed_usd_micro: u64,
    /// Bonus USD earned, µUSD.
    pub bonus_usd_micro: u64,
    /// CRAT held at the end, µCRAT.
    pub crat_end_micro: u64,
    /// Total uptime, seconds.
    pub uptime_total_s: u64,
    /// Failed validations of its work.
    pub validations_failed: u64,
    /// Tasks it served (its capacity's share of the requests served).
    pub tasks_served: u64,
    /// Tasks it had served when a wrong answer of its own was first caught (cheaters).
    pub caught_at_task: Option<u64>,
}

/// How cheaters fared in a run, from its node summaries.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheaterStats {
    /// Cheating nodes.
    pub cheaters: u64,
    /// Honest nodes.
    pub honest: u64,
    /// Cheaters that served at least `within_tasks` tasks.
    pub cheaters_with_tasks: u64,
    /// Of those, caught within their first `within_tasks` tasks.
    pub caught_within: u64,
    /// The task count the detection rate refers to.
    pub within_tasks: u64,
    /// Mean earnings (guaranteed + bonus) of a cheater, µUSD.
    pub cheater_mean_usd_micro: u64,
    /// Mean earnings (guaranteed + bonus) of an honest node, µUSD.
    pub honest_mean_usd_micro: u64,
    /// Mean bonus of a cheater, µUSD.
    pub cheater_mean_bonus_usd_micro: u64,
    /// Mean bonus of an honest node, µUSD.
    pub honest_mean_bonus_usd_micro: u64,
}

impl CheaterStats {
    /// Statistics over `nodes`, detection counted within `within_tasks` tasks.
    pub fn from_nodes(nodes: &[NodeSummary], within_tasks: u64) -> Self {
        let mut s = Self {
            within_tasks,
            ..Self::default()
        };
        let (mut cheat_sum, mut honest_sum, mut cheat_bonus, mut honest_bonus) =
            (0u128, 0u128, 0u128, 0u128);
        for n in nodes {
            let earned = u128::from(n.guaranteed_usd_micro) + u128::from(n.bonus_usd_micro);
            if n.cheater {
                s.cheaters += 1;
                cheat_sum += earned;
                cheat_bonus += u128::from(n.bonus_usd_micro);
                if n.tasks_served >= within_tasks {
                    s.cheaters_with_tasks += 1;
                    if n.caught_at_task.is_some_and(|t| t < within_tasks) {
                        s.caught_within += 1;
                    }
                }
            } else {
                s.honest += 1;
                honest_sum += earned;
                honest_bonus += u128::from(n.bonus_usd_micro);
            }
        }
        let mean = |sum: u128, n: u64| (sum / u128::from(n.max(1))) as u64;
        s.cheater_mean_usd_micro = mean(cheat_sum, s.cheaters);
        s.honest_mean_usd_micro = mean(honest_sum, s.honest);
        s.cheater_mean_bonus_usd_micro = mean(cheat_bonus, s.cheaters);
        s.honest_mean_bonus_usd_micro = mean(honest_bonus, s.honest);
        s
    }

    /// Share of cheaters (with enough tasks) caught within `within_tasks` tasks.
    pub fn detection_rate(&self) -> f64 {
        self.caught_within as f64 / self.cheaters_with_tasks.max(1) as f64
    }
}

/// A run's metrics, round by round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed of the run.
    pub seed: u64,
    /// One entry per round closed.
    pub rounds: Vec<RoundMetrics>,
}

/// Header of the per-round CSV.
pub const ROUNDS_CSV_HEADER: &str = "round,metric,class,value";

/// Header of the per-node CSV.
pub const NODES_CSV_HEADER: &str = "index,id,gpu,rating,region,cheater,joined_round,departed_round,guaranteed_usd_micro,bonus_usd_micro,crat_end_micro,uptime_total_s,validations_failed,tasks_served,caught_at_task";

impl Report {
    /// An empty report.
    pub fn new(scenario: String, seed: u64) -> Self {
        Self {
            scenario,
            seed,
            rounds: Vec::new(),
        }
    }

    /// The per-round CSV, long format: one row per round × metric (class `all`) or
    /// round × metric × rating class (`1`..`5`).
    pub fn write_rounds_csv(&self, mut w: impl Write) -> io::Result<()> {
        writeln!(w, "{ROUNDS_CSV_HEADER}")?;
        for m in &self.rounds {
            let r = m.round;
            let ints: [(&str, i128); 20] = [
                ("income_usd_micro", m.income_usd_micro.into()),
                ("guaranteed_usd_micro", m.guaranteed_usd_micro.into()),
                ("bonus_usd_micro", m.bonus_usd_micro.into()),
                ("treasury_usd_micro", m.treasury_usd_micro()),
                ("pool_usd_micro", m.pool_usd_micro.into()),
                ("carry_usd_micro", m.carry_usd_micro.into()),
                ("paid_ranks", m.paid_ranks.into()),
                ("requests_served", m.requests_served.into()),
                ("requests_dropped", m.requests_dropped.into()),
                ("instances_asked", m.instances_asked.into()),
                ("instances_placed", m.instances_placed.into()),
                ("validations", m.validations.into()),
                ("validations_failed", m.validations_failed.into()),
                ("nodes_active", m.nodes_active.into()),
                ("nodes_committed", m.nodes_committed.into()),
                ("departures", m.departures.into()),
                ("cheaters_active", m.cheaters_active.into()),
                ("cheater_bonus_usd_micro", m.cheater_bonus_usd_micro.into()),
                ("cheater_crat_micro", m.cheater_crat_micro.into()),
                ("honest_crat_micro", m.honest_crat_micro.into()),
            ];
            for (name, v) in ints {
                writeln!(w, "{r},{name},all,{v}")?;
            }
            let floats = [
                ("sla_fulfilment", m.sla_fulfilment()),
                ("retention", m.retention()),
                ("gini_earnings", m.gini_earnings),
                ("crat_top_decile_share", m.crat_top_decile_share),
                ("cheater_bonus_share", m.cheater_bonus_share()),
            ];
            for (name, v) in floats {
                writeln!(w, "{r},{name},all,{v:.6}")?;
            }
            for c in 0..5 {
                let class = c + 1;
                writeln!(w, "{r},nodes,{class},{}", m.class_nodes[c])?;
                writeln!(
                    w,
                    "{r},guaranteed_usd_micro,{class},{}",
                    m.class_guaranteed_usd_micro[c]
                )?;
                writeln!(
                    w,
                    "{r},bonus_usd_micro,{class},{}",
                    m.class_bonus_usd_micro[c]
                )?;
            }
        }
        Ok(())
    }

    /// The JSON summary: totals over the run and the last round's ratios.
    pub fn summary_json(&self) -> String {
        let sum = |f: fn(&RoundMetrics) -> u64| -> u64 { self.rounds.iter().map(f).sum() };
        let last = self.rounds.last();
        let mut class_g = [0u64; 5];
        let mut class_b = [0u64; 5];
        for m in &self.rounds {
            for c in 0..5 {
                class_g[c] += m.class_guaranteed_usd_micro[c];
                class_b[c] += m.class_bonus_usd_micro[c];
            }
        }
        let treasury: i128 = self
            .rounds
            .iter()
            .map(RoundMetrics::treasury_usd_micro)
            .sum();
        let sla_ok = sum(|m| m.sla_hours_ok);
        let sla_total = sum(|m| m.sla_hours_total);
        let f6 = |v: f64| format!("{v:.6}");
        let v = serde_json::json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "rounds": self.rounds.len(),
            "income_usd_micro": sum(|m| m.income_usd_micro),
            "guaranteed_usd_micro": sum(|m| m.guaranteed_usd_micro),
            "bonus_usd_micro": sum(|m| m.bonus_usd_micro),
            "treasury_usd_micro": treasury.to_string(),
            "guaranteed_usd_micro_by_rating": class_g,
            "bonus_usd_micro_by_rating": class_b,
            "requests_served": sum(|m| m.requests_served),
            "requests_dropped": sum(|m| m.requests_dropped),
            "sla_fulfilment": f6(ratio(sla_ok, sla_total, 1.0)),
            "validations": sum(|m| m.validations),
            "validations_failed": sum(|m| m.validations_failed),
            "departures": sum(|m| m.departures),
            "final_nodes_active": last.map_or(0, |m| m.nodes_active),
            "final_retention": f6(last.map_or(1.0, RoundMetrics::retention)),
            "final_gini_earnings": f6(last.map_or(0.0, |m| m.gini_earnings)),
            "final_crat_top_decile_share": f6(last.map_or(0.0, |m| m.crat_top_decile_share)),
            "final_paid_ranks": last.map_or(0, |m| m.paid_ranks),
            "final_carry_usd_micro": last.map_or(0, |m| m.carry_usd_micro),
            "final_cheater_bonus_share": f6(last.map_or(0.0, RoundMetrics::cheater_bonus_share)),
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Writes the per-node CSV.
pub fn write_nodes_csv(nodes: &[NodeSummary], mut w: impl Write) -> io::Result<()> {
    writeln!(w, "{NODES_CSV_HEADER}")?;
    for n in nodes {
        let departed = n.departed_round.map_or(String::new(), |r| r.to_string());
        let caught = n.caught_at_task.map_or(String::new(), |t| t.to_string());
        writeln!(
            w,
            "{},{},\"{}\",{},{},{},{},{},{},{},{},{},{},{},{}",
            n.index,
            n.id,
            n.gpu,
            n.rating,
            n.region,
            n.cheater,
            n.joined_round,
            departed,
            n.guaranteed_usd_micro,
            n.bonus_usd_micro,
            n.crat_end_micro,
            n.uptime_total_s,
            n.validations_failed,
            n.tasks_served,
            caught
        )?;
    }
    Ok(())
}
