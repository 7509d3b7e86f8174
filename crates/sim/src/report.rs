//! What a run measured, and its output files: a long-format per-round CSV, a per-node
//! summary CSV and a JSON summary.
//!
//! Money columns are integers (µUSD, µCRAT) straight from the rewards outcome; ratios
//! (Gini, shares, SLA fulfilment, retention) are floats printed with six decimals, so the
//! same run always gives the same bytes.

use std::io::{self, Write};

use crat_core::id::NodeId;
use serde::Serialize;

use crate::scenario::{Scenario, Strategy};

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
    /// The `[strategies]` populations (all zero without them).
    pub strategies: StrategyMetrics,
}

/// One population's round (sums over its active nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PopulationMetrics {
    /// Its active nodes.
    pub active: u64,
    /// Guaranteed USD paid to them, µUSD.
    pub guaranteed_usd_micro: u64,
    /// Bonus USD paid to them, µUSD.
    pub bonus_usd_micro: u64,
    /// CRAT they hold at the round's end, µCRAT.
    pub crat_micro: u64,
    /// Failed validations of their work (each slashes `slash_bps` of their CRAT).
    pub validations_failed: u64,
    /// Node-rounds with a failed validation (no bonus that round).
    pub rounds_caught: u64,
    /// Node-rounds with more failed validations than the dispatcher's `caught_max`, after
    /// which it excludes the node from placement (the simulator does not remove it).
    pub rounds_excluded: u64,
}

impl PopulationMetrics {
    /// Counts one node's round.
    pub(crate) fn add_round(
        &mut self,
        guaranteed: u64,
        bonus: u64,
        crat: u64,
        failed: u64,
        caught_max: u64,
    ) {
        self.active += 1;
        self.guaranteed_usd_micro += guaranteed;
        self.bonus_usd_micro += bonus;
        self.crat_micro += crat;
        self.validations_failed += failed;
        self.rounds_caught += u64::from(failed > 0);
        self.rounds_excluded += u64::from(failed > caught_max);
    }

    fn add(&mut self, o: &Self) {
        self.active += o.active;
        self.guaranteed_usd_micro += o.guaranteed_usd_micro;
        self.bonus_usd_micro += o.bonus_usd_micro;
        self.crat_micro += o.crat_micro;
        self.validations_failed += o.validations_failed;
        self.rounds_caught += o.rounds_caught;
        self.rounds_excluded += o.rounds_excluded;
    }

    fn rows(&self) -> [(&'static str, u64); 7] {
        [
            ("active", self.active),
            ("guaranteed_usd_micro", self.guaranteed_usd_micro),
            ("bonus_usd_micro", self.bonus_usd_micro),
            ("crat_micro", self.crat_micro),
            ("validations_failed", self.validations_failed),
            ("rounds_caught", self.rounds_caught),
            ("rounds_excluded", self.rounds_excluded),
        ]
    }
}

/// The round of the `[strategies]` populations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StrategyMetrics {
    /// Hardware liars.
    pub liars: PopulationMetrics,
    /// Usage inventors.
    pub inventors: PopulationMetrics,
    /// Receipt withholders.
    pub withholders: PopulationMetrics,
    /// Credits of the tasks inventors invented and reported.
    pub invented_credits_attempted: u64,
    /// Credits charged beyond what the inventors' clients acknowledged (0 under the rule).
    pub invented_credits_charged: u64,
    /// Electricity the withholders saved by not signing, µUSD.
    pub withholder_saved_usd_micro: u64,
    /// Framed spot-check reports the dispatcher refused.
    pub framed_reports_refused: u64,
}

impl StrategyMetrics {
    /// Adds the per-node sums of `o` (its populations and savings).
    pub(crate) fn add_nodes(&mut self, o: &Self) {
        self.liars.add(&o.liars);
        self.inventors.add(&o.inventors);
        self.withholders.add(&o.withholders);
        self.withholder_saved_usd_micro += o.withholder_saved_usd_micro;
    }
}

/// Which `[strategies]` populations a run has: only theirs are written to its outputs, so a
/// run without any writes the bytes it always wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Populations {
    /// Hardware liars.
    pub liars: bool,
    /// Usage inventors.
    pub inventors: bool,
    /// Receipt withholders.
    pub withholders: bool,
    /// Input framers.
    pub framers: bool,
}

impl Populations {
    /// Those of `scenario`.
    pub fn of(scenario: &Scenario) -> Self {
        let st = &scenario.strategies;
        Self {
            liars: st.liar_share_bps > 0,
            inventors: st.inventor_share_bps > 0,
            withholders: st.withholder_share_bps > 0,
            framers: st.framer_task_bps > 0,
        }
    }

    /// None of them.
    pub fn none(&self) -> bool {
        *self == Self::default()
    }
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
    /// Its strategy (a cheater's is [`Strategy::Cheater`]).
    pub strategy: Strategy,
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

/// How one population fared against honest nodes with the same GPUs, from a run's node
/// summaries: its expected value against honesty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PopulationStats {
    /// Its nodes.
    pub nodes: u64,
    /// Of those, caught at least once (a failed validation).
    pub caught: u64,
    /// Mean earnings (guaranteed + bonus) of one of its nodes, µUSD.
    pub mean_usd_micro: u64,
    /// Mean bonus, µUSD.
    pub mean_bonus_usd_micro: u64,
    /// Mean CRAT at the end, µCRAT.
    pub mean_crat_micro: u64,
    /// Mean earnings of an honest node with the same GPU, averaged over its nodes, µUSD.
    pub honest_usd_micro: u64,
    /// The same for the bonus, µUSD.
    pub honest_bonus_usd_micro: u64,
    /// The same for CRAT, µCRAT.
    pub honest_crat_micro: u64,
}

impl PopulationStats {
    /// The nodes of `strategy` among `nodes`, each compared with the honest nodes of its GPU
    /// (a node whose GPU no honest node has is left out of both sides).
    pub fn from_nodes(nodes: &[NodeSummary], strategy: Strategy) -> Self {
        use std::collections::BTreeMap;
        // Per GPU: honest nodes, and their earnings, bonus and CRAT.
        let mut honest: BTreeMap<&str, [u128; 4]> = BTreeMap::new();
        for n in nodes.iter().filter(|n| n.strategy == Strategy::Honest) {
            let e = honest.entry(n.gpu.as_str()).or_default();
            e[0] += 1;
            e[1] += u128::from(n.guaranteed_usd_micro) + u128::from(n.bonus_usd_micro);
            e[2] += u128::from(n.bonus_usd_micro);
            e[3] += u128::from(n.crat_end_micro);
        }
        let mut own = [0u128; 3];
        let mut base = [0u128; 3];
        let mut s = Self::default();
        for n in nodes.iter().filter(|n| n.strategy == strategy) {
            let Some(h) = honest.get(n.gpu.as_str()) else {
                continue;
            };
            s.nodes += 1;
            s.caught += u64::from(n.validations_failed > 0);
            own[0] += u128::from(n.guaranteed_usd_micro) + u128::from(n.bonus_usd_micro);
            own[1] += u128::from(n.bonus_usd_micro);
            own[2] += u128::from(n.crat_end_micro);
            for i in 0..3 {
                base[i] += h[i + 1] / h[0];
            }
        }
        let mean = |sum: u128| (sum / u128::from(s.nodes.max(1))) as u64;
        s.mean_usd_micro = mean(own[0]);
        s.mean_bonus_usd_micro = mean(own[1]);
        s.mean_crat_micro = mean(own[2]);
        s.honest_usd_micro = mean(base[0]);
        s.honest_bonus_usd_micro = mean(base[1]);
        s.honest_crat_micro = mean(base[2]);
        s
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
    /// The `[strategies]` populations written to the outputs.
    #[serde(skip_serializing_if = "Populations::none")]
    pub populations: Populations,
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
            populations: Populations::default(),
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
            self.write_strategy_rows(&mut w, m)?;
        }
        Ok(())
    }

    /// The rows of the run's `[strategies]` populations for round `m` (none without them).
    fn write_strategy_rows(&self, w: &mut impl Write, m: &RoundMetrics) -> io::Result<()> {
        let (p, st, r) = (&self.populations, &m.strategies, m.round);
        for (on, prefix, pop) in [
            (p.liars, "liars", &st.liars),
            (p.inventors, "inventors", &st.inventors),
            (p.withholders, "withholders", &st.withholders),
        ] {
            if on {
                for (name, v) in pop.rows() {
                    writeln!(w, "{r},{prefix}_{name},all,{v}")?;
                }
            }
        }
        if p.inventors {
            writeln!(
                w,
                "{r},invented_credits_attempted,all,{}",
                st.invented_credits_attempted
            )?;
            writeln!(
                w,
                "{r},invented_credits_charged,all,{}",
                st.invented_credits_charged
            )?;
        }
        if p.withholders {
            writeln!(
                w,
                "{r},withholder_saved_usd_micro,all,{}",
                st.withholder_saved_usd_micro
            )?;
        }
        if p.framers {
            writeln!(
                w,
                "{r},framed_reports_refused,all,{}",
                st.framed_reports_refused
            )?;
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
        let mut v = v;
        if let serde_json::Value::Object(map) = &mut v {
            let p = &self.populations;
            let total = |f: fn(&StrategyMetrics) -> &PopulationMetrics| {
                let mut t = PopulationMetrics::default();
                for m in &self.rounds {
                    t.add(f(&m.strategies));
                }
                t
            };
            for (on, key, pop) in [
                (p.liars, "liars", total(|s| &s.liars)),
                (p.inventors, "inventors", total(|s| &s.inventors)),
                (p.withholders, "withholders", total(|s| &s.withholders)),
            ] {
                if on {
                    map.insert(key.into(), serde_json::json!(pop));
                }
            }
            if p.inventors {
                map.insert(
                    "invented_credits_attempted".into(),
                    sum(|m| m.strategies.invented_credits_attempted).into(),
                );
                map.insert(
                    "invented_credits_charged".into(),
                    sum(|m| m.strategies.invented_credits_charged).into(),
                );
            }
            if p.withholders {
                map.insert(
                    "withholder_saved_usd_micro".into(),
                    sum(|m| m.strategies.withholder_saved_usd_micro).into(),
                );
            }
            if p.framers {
                map.insert(
                    "framed_reports_refused".into(),
                    sum(|m| m.strategies.framed_reports_refused).into(),
                );
            }
        }
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Writes the per-node CSV.
///
/// A `strategy` column is added when a node has a `[strategies]` population's strategy (so a
/// run without any writes the bytes it always wrote).
pub fn write_nodes_csv(nodes: &[NodeSummary], mut w: impl Write) -> io::Result<()> {
    let with_strategy = nodes
        .iter()
        .any(|n| !matches!(n.strategy, Strategy::Honest | Strategy::Cheater));
    if with_strategy {
        writeln!(w, "{NODES_CSV_HEADER},strategy")?;
    } else {
        writeln!(w, "{NODES_CSV_HEADER}")?;
    }
    for n in nodes {
        let departed = n.departed_round.map_or(String::new(), |r| r.to_string());
        let caught = n.caught_at_task.map_or(String::new(), |t| t.to_string());
        write!(
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
        if with_strategy {
            write!(w, ",{}", n.strategy.name())?;
        }
        writeln!(w)?;
    }
    Ok(())
}
