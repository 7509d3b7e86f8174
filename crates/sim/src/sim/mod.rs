//! One simulation run: the models of the scenario driving crat-core placement and pricing
//! and crat-rewards' [`RoundDriver`], round after round.
//!
//! A round runs in five phases, each in its own module (and all but the fourth a method of
//! [`Simulation`] below), in this order (arrivals register first):
//! 1. [`churn`]: every node's sessions advanced locally inside the round (its own random
//!    stream, in parallel), giving its online intervals; region outages cut them;
//! 2. [`placement`]: per-instance deployments placed on the nodes online at the round's
//!    start ([`crat_core::placement`]) and priced ([`PricingParams::quote`]);
//! 3. [`demand`]: per-request requests hour by hour, served up to the online capacity left
//!    and priced by [`PricingParams::request_cost`];
//! 4. [`validation`]: sampled validations drawn per node from its own stream (who ran and who
//!    failed how many re-runs), chunk by chunk as the close reads them, so that phases 4 and 5
//!    run together;
//! 5. [`close`]: the round closed through [`RoundDriver::close_round_in_parts`] (parts of one
//!    draws chunk, spread over the threads: each makes its draws, writes its nodes' activity
//!    and runs their rules), whose results are the only source of payouts and CRAT; metrics
//!    are taken from them; providers whose earnings stayed below their electricity cost for
//!    `behaviour.departure_rounds` rounds leave.
//!
//! [`PricingParams::quote`]: crat_core::pricing::PricingParams::quote
//! [`PricingParams::request_cost`]: crat_core::pricing::PricingParams::request_cost

mod awake;
mod churn;
mod close;
mod demand;
mod placement;
mod strategies;
mod validation;

use std::sync::atomic::{AtomicUsize, Ordering};

use crat_core::bps::Bps;
use crat_core::gpu_table::GpuTable;
use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{Credits, MicroCrat, MicroUsd};
use crat_core::placement::Candidate;
use crat_rewards::{
    ActivitySlot, CarryPart, ClosedRound, Interval, NodeProfile, RoundDetail, RoundDriver,
};
use rand::Rng;
use rayon::prelude::*;

use self::churn::Churned;
use self::placement::Placed;
use self::validation::{DRAW_CHUNK, Draws};
use crate::SimError;
use crate::report::{NodeSummary, Populations, Report, RoundMetrics};
use crate::scenario::{HOURS_PER_ROUND_MAX, Scenario, SessionModel, Strategy};
use crate::streams::{stream_key, stream_rng};

/// Absolute time of the first round's start: 2023-11-14 00:00 UTC, a midnight, so that
/// times of day (diurnal patterns, peak windows) read naturally in exported rounds, and
/// initial registrations can lie before it.
pub const SIM_START_S: u64 = 1_699_920_000;

const DAY_S: u64 = 86_400;
const HOUR_S: u64 = 3_600;

/// A node's state in the simulator (what it is and what it does; its money and CRAT live in
/// the [`RoundDriver`]).
#[derive(Clone, Copy, Debug)]
struct Node {
    /// Its number: order of arrival, the stream it draws from, its row in the outputs.
    index: u32,
    /// Its streams' [`stream_key`] (of the run's seed and `index`), kept so that starting
    /// its stream of a round costs two mixes, not four.
    stream_key: u64,
    rating: PowerRating,
    gpu: u16,
    region: u32,
    /// What it does besides serving (honest, cheater, or a `[strategies]` population).
    strategy: Strategy,
    online: bool,
    next_toggle_s: u64,
    joined_round: u32,
    departed_round: Option<u32>,
    low_rounds: u32,
    guaranteed_total: u64,
    bonus_total: u64,
    crat_end: u64,
    uptime_total: u64,
    validations_failed: u64,
    /// Tasks served so far (its capacity's share of the requests served).
    tasks_served: u64,
    /// How many tasks it had served when a wrong answer of its own was first caught.
    caught_at_task: Option<u64>,
}

/// One run of a scenario with one seed.
///
/// ```
/// use crat_sim::{Scenario, Simulation};
///
/// let mut scenario = Scenario::default();
/// scenario.population.nodes = 50;
/// scenario.rounds = 3;
/// let mut sim = Simulation::new(&scenario, 7)?;
/// while !sim.finished() {
///     let closed = sim.step()?; // the round's rewards inputs and outcome
///     assert!(closed.outcome.nodes.len() <= 50);
/// }
/// let report = sim.report();
/// assert_eq!(report.rounds.len(), 3);
/// # Ok::<(), crat_sim::SimError>(())
/// ```
pub struct Simulation {
    scenario: Scenario,
    seed: u64,
    driver: RoundDriver,
    /// The registered nodes in id order, the driver's order: the k-th node of a closed
    /// round's inputs is `nodes[k]`, and every per-node pass of a round reads memory in
    /// order.
    nodes: Vec<Node>,
    /// Their ids, apart from `nodes` so the round's activity can read ids while its outcome
    /// updates `nodes`.
    ids: Vec<NodeId>,
    /// Nodes that left, with their ids.
    departed: Vec<(Node, NodeId)>,
    /// Nodes created so far (the next one's index).
    created: u64,
    round: u32,
    start_s: u64,
    initial_nodes: u64,
    report: Report,
    capacity_rps: [u32; 6],
    gpu_names: Vec<String>,
    /// What a hardware liar of each GPU of the mix proves (empty without liars).
    liar_proofs: Vec<strategies::LiarProof>,
    /// Whether the dispatcher refuses input framers' reports (its rule, asked once).
    framed_refused: bool,
    buffers: Buffers,
}

/// Per-node buffers of a round, kept for the next one: at a million nodes a round would
/// otherwise map (and fault in) some 90 MB afresh. They carry nothing between rounds.
#[derive(Default)]
struct Buffers {
    /// Online intervals and capacity (phase 1).
    churned: Churned,
    /// Placement candidates (phase 2).
    candidates: Vec<Candidate>,
    /// Earnings and CRAT balances, for the round's Gini and top-decile share (phase 5).
    earnings: Vec<u64>,
    crats: Vec<u64>,
}

/// The time frame of one round.
#[derive(Clone, Copy, Debug)]
struct RoundClock {
    /// Round number.
    round: u32,
    /// Absolute start.
    start_s: u64,
    /// Absolute end (exclusive).
    end_s: u64,
    /// `end_s − start_s`.
    length_s: u64,
    /// Hour buckets of the round (the last may be short).
    hours: usize,
}

impl RoundClock {
    fn new(round: u32, start_s: u64, length_s: u64) -> Self {
        Self {
            round,
            start_s,
            end_s: start_s + length_s,
            length_s,
            hours: length_s.div_ceil(HOUR_S).min(HOURS_PER_ROUND_MAX) as usize,
        }
    }
}

impl Simulation {
    /// A run of `scenario` (validated here) with `seed` (the scenario's own seed is ignored).
    pub fn new(scenario: &Scenario, seed: u64) -> Result<Self, SimError> {
        scenario.validate()?;
        let params = scenario.rewards.clone();
        let start_s = SIM_START_S;
        let driver = RoundDriver::new(params, 0, start_s);
        let mut capacity_rps = [0u32; 6];
        for (r, c) in capacity_rps.iter_mut().enumerate() {
            *c = scenario
                .population
                .capacity_rps_per_rating
                .saturating_mul(r as u32);
        }
        let gpu_names = scenario
            .population
            .gpu_mix
            .iter()
            .map(|g| g.gpu.clone())
            .collect();
        let liar_proofs = if scenario.strategies.liar_share_bps > 0 {
            let table = GpuTable::builtin();
            let entries = scenario
                .population
                .gpu_mix
                .iter()
                .enumerate()
                .map(|(g, mix)| {
                    table.lookup(&mix.gpu).ok_or_else(|| SimError::Scenario {
                        field: format!("population.gpu_mix[{g}].gpu"),
                        reason: "not in the GPU table".into(),
                    })
                })
                .collect::<Result<Vec<_>, SimError>>()?;
            strategies::liar_proofs(&entries, &scenario.strategies)
        } else {
            Vec::new()
        };
        let mut report = Report::new(scenario.name.clone(), seed);
        report.populations = Populations::of(scenario);
        let mut sim = Self {
            scenario: scenario.clone(),
            seed,
            driver,
            nodes: Vec::new(),
            ids: Vec::new(),
            departed: Vec::new(),
            created: 0,
            round: 0,
            start_s,
            initial_nodes: scenario.population.nodes,
            report,
            capacity_rps,
            gpu_names,
            liar_proofs,
            framed_refused: strategies::framed_reports_refused(),
            buffers: Buffers::default(),
        };
        sim.add_nodes(scenario.population.nodes, true)?;
        Ok(sim)
    }

    /// All rounds have run.
    pub fn finished(&self) -> bool {
        self.round >= self.scenario.rounds
    }

    /// The metrics so far (complete once [`Simulation::finished`]).
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Per-node summaries so far, in node order.
    pub fn node_summaries(&self) -> Vec<NodeSummary> {
        let mut all: Vec<(&Node, &NodeId)> = self
            .nodes
            .iter()
            .zip(&self.ids)
            .chain(self.departed.iter().map(|(n, id)| (n, id)))
            .collect();
        all.sort_unstable_by_key(|(n, _)| n.index);
        all.into_iter()
            .map(|(n, id)| NodeSummary {
                index: u64::from(n.index),
                id: *id,
                gpu: self.gpu_names[usize::from(n.gpu)].clone(),
                rating: n.rating.get(),
                region: n.region,
                cheater: n.strategy == Strategy::Cheater,
                strategy: n.strategy,
                joined_round: n.joined_round,
                departed_round: n.departed_round,
                guaranteed_usd_micro: n.guaranteed_total,
                bonus_usd_micro: n.bonus_total,
                crat_end_micro: n.crat_end,
                uptime_total_s: n.uptime_total,
                validations_failed: n.validations_failed,
                tasks_served: n.tasks_served,
                caught_at_task: n.caught_at_task,
            })
            .collect()
    }

    /// Runs every remaining round, handing each closed round to `observer` (for trace
    /// export), and returns the report.
    pub fn run(mut self, mut observer: impl FnMut(&ClosedRound)) -> Result<Report, SimError> {
        while !self.finished() {
            self.step_with(&mut observer)?;
        }
        Ok(self.report)
    }

    /// Runs every remaining round without handing them out, and returns the report: the
    /// fastest way through a scenario (see [`Simulation::advance`]).
    pub fn run_to_end(mut self) -> Result<Report, SimError> {
        // All rounds on one rayon worker (see `advance`), entered once.
        rayon::scope(|_| {
            while !self.finished() {
                self.advance()?;
            }
            Ok::<(), SimError>(())
        })?;
        Ok(self.report)
    }

    fn add_nodes(&mut self, count: u64, initial: bool) -> Result<(), SimError> {
        let pop = &self.scenario.population;
        let table = GpuTable::builtin();
        // Each GPU of the mix looked up once.
        let entries = pop
            .gpu_mix
            .iter()
            .enumerate()
            .map(|(g, mix)| {
                table.lookup(&mix.gpu).ok_or_else(|| SimError::Scenario {
                    field: format!("population.gpu_mix[{g}].gpu"),
                    reason: "not in the GPU table".into(),
                })
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let weights: Vec<u64> = pop.gpu_mix.iter().map(|g| u64::from(g.weight)).collect();
        let weight_sum: u64 = weights.iter().sum();
        let churn = &self.scenario.churn;
        let stationary_on = churn.mean_on_s as f64 / (churn.mean_on_s + churn.mean_off_s) as f64;
        let first = self.created;
        let (seed, start_s, round) = (self.seed, self.start_s, self.round);
        // One draw in 0..10,000 per node picks its population: cheaters first (the draw that
        // always decided them), then liars, inventors and withholders (shares checked to fit).
        let st = &self.scenario.strategies;
        let bounds = [
            (
                Strategy::Cheater,
                self.scenario.validation.cheater_share_bps,
            ),
            (Strategy::HardwareLiar, st.liar_share_bps),
            (Strategy::UsageInventor, st.inventor_share_bps),
            (Strategy::ReceiptWithholder, st.withholder_share_bps),
        ]
        .map({
            let mut upto = 0u32;
            move |(strategy, share)| {
                upto = upto.saturating_add(share);
                (strategy, upto)
            }
        });
        let liar_proofs = &self.liar_proofs;
        // Each node from its own stream, in parallel, then sorted by id once.
        let mut new: Vec<(NodeId, Node, u64)> = (first..first + count)
            .into_par_iter()
            .map(|index| {
                let mut rng = stream_rng(seed, index, u64::MAX);
                let mut bytes = [0u8; 32];
                rng.fill(&mut bytes);
                let id = NodeId::from_bytes(bytes);
                let mut pick = rng.gen_range(0..weight_sum);
                let mut gpu = 0;
                for (g, w) in weights.iter().enumerate() {
                    if pick < *w {
                        gpu = g;
                        break;
                    }
                    pick -= w;
                }
                let registered_at_s = if initial {
                    start_s.saturating_sub(rng.gen_range(0..=pop.registration_spread_s))
                } else {
                    start_s
                };
                let pick = rng.gen_range(0..u32::from(Bps::FULL.get()));
                let strategy = bounds
                    .iter()
                    .find(|(_, upto)| pick < *upto)
                    .map_or(Strategy::Honest, |(s, _)| *s);
                let online = churn.model == SessionModel::None || rng.unit_f64() < stationary_on;
                // A liar is rated by what its card proves for its claim.
                let rating = match (strategy, liar_proofs.get(gpu)) {
                    (Strategy::HardwareLiar, Some(p)) => p.rating,
                    _ => entries[gpu].rating,
                };
                let node = Node {
                    // Below NODES_MAX = 2^22 (checked by the scenario).
                    index: index as u32,
                    stream_key: stream_key(seed, index),
                    rating,
                    gpu: gpu as u16,
                    region: (index % u64::from(pop.regions)) as u32,
                    strategy,
                    online,
                    next_toggle_s: start_s,
                    joined_round: round,
                    departed_round: None,
                    low_rounds: 0,
                    guaranteed_total: 0,
                    bonus_total: 0,
                    crat_end: pop.crat_initial_micro,
                    uptime_total: 0,
                    validations_failed: 0,
                    tasks_served: 0,
                    caught_at_task: None,
                };
                (id, node, registered_at_s)
            })
            .collect();
        new.par_sort_unstable_by_key(|e| e.0);
        self.created += count;
        let fresh: Vec<(NodeProfile, crat_rewards::CarriedState)> = new
            .iter()
            .map(|(id, n, registered_at_s)| {
                let profile = NodeProfile {
                    id: *id,
                    rating: n.rating,
                    registered_at_s: *registered_at_s,
                    // A liar is paid what its card proves for its claim (policy::hardware).
                    mining_income_usd_micro_per_day: match (
                        n.strategy,
                        self.liar_proofs.get(usize::from(n.gpu)),
                    ) {
                        (Strategy::HardwareLiar, Some(p)) => p.income,
                        _ => entries[usize::from(n.gpu)].mining_income_usd_micro_per_day,
                    },
                };
                let state = crat_rewards::CarriedState {
                    crat_micro: MicroCrat::new(pop.crat_initial_micro),
                    streak: 0,
                    uptime_total_s: 0,
                };
                (profile, state)
            })
            .collect();
        // The newcomers join `nodes` (and the driver's list) in one merge by id,
        // O(n + k log k).
        let old_nodes = std::mem::take(&mut self.nodes);
        let old_ids = std::mem::take(&mut self.ids);
        self.nodes.reserve(old_nodes.len() + new.len());
        self.ids.reserve(old_ids.len() + new.len());
        let mut old = old_nodes.into_iter().zip(old_ids).peekable();
        let mut new = new.into_iter().map(|(id, n, _)| (n, id)).peekable();
        loop {
            let next = match (old.peek(), new.peek()) {
                (Some(a), Some(b)) if a.1 <= b.1 => old.next(),
                (_, Some(_)) => new.next(),
                (Some(_), None) => old.next(),
                (None, None) => break,
            };
            if let Some((node, id)) = next {
                self.nodes.push(node);
                self.ids.push(id);
            }
        }
        self.driver.register_all(fresh);
        Ok(())
    }

    /// Runs one round and returns it as closed by the rewards driver (a copy of its inputs and
    /// outcome; [`Simulation::step_with`] only lends them).
    pub fn step(&mut self) -> Result<ClosedRound, SimError> {
        self.step_with(ClosedRound::clone)
    }

    /// Runs one round and hands the closed round (its rewards inputs and outcome) to `f`,
    /// returning what `f` returns. Nothing is copied: the round's inputs become the next
    /// round's in place once `f` returns.
    pub fn step_with<R>(&mut self, f: impl FnOnce(&ClosedRound) -> R) -> Result<R, SimError> {
        self.round_with(Some(f))?.ok_or(SimError::Finished)
    }

    /// Runs one round without handing it out. The same rules and the same report as
    /// [`Simulation::step_with`]; the round is closed with [`RoundDetail::ResultsOnly`], so
    /// the rank-ordered outcome (128 bytes a node, written at rank positions) is never built.
    pub fn advance(&mut self) -> Result<(), SimError> {
        // The whole round runs on a worker of rayon's pool: its parallel passes then fork
        // and join inside the pool instead of each handing its work over from this thread
        // and waiting (a round of 10,000 nodes spent ~15 % of its time switching threads).
        // The pool's workers poll for work until it ends, rather than sleep between passes
        // (see `awake`).
        awake::with_workers_awake(|| self.round_with(None::<fn(&ClosedRound)>)).map(|_| ())
    }

    /// One round, phase by phase (see the module docs); the closed round goes to `f` when
    /// there is one (then the full outcome is built), and `f`'s result comes back.
    fn round_with<R>(
        &mut self,
        f: Option<impl FnOnce(&ClosedRound) -> R>,
    ) -> Result<Option<R>, SimError> {
        if self.finished() {
            return Err(SimError::Finished);
        }
        if self.round > 0 && self.scenario.population.arrivals_per_round > 0 {
            self.add_nodes(self.scenario.population.arrivals_per_round, false)?;
        }
        let clock = RoundClock::new(self.round, self.start_s, self.scenario.rewards.round_s);
        let mut buf = std::mem::take(&mut self.buffers);
        let churned = self.churn(&clock, std::mem::take(&mut buf.churned));
        let demand_factor = demand::demand_factor(&self.scenario, clock.round);
        let mut placed = self.place(
            &clock,
            (&churned, std::mem::take(&mut buf.candidates)),
            demand_factor,
        )?;
        buf.candidates = std::mem::take(&mut placed.candidates);
        let d = &self.scenario.demand;
        let cost = self
            .scenario
            .pricing
            .request_cost(d.model_bytes, d.input_bytes)?;
        let served = self.serve(&clock, &churned, &placed, demand_factor);
        // The draws are made as the close reads them (each part of the close its own chunk).
        let draws = Draws::new(
            (&self.scenario, self.framed_refused),
            (clock.round, clock.length_s),
            &churned,
            &self.capacity_rps,
            served.served,
        );
        // Usage inventors' records, charged within their clients' acknowledgements: what
        // that admits beyond the acknowledged work is income (none under the rule).
        let invented = if self.scenario.strategies.inventor_share_bps > 0 {
            draws.make_all();
            strategies::invented_usage(
                &self.nodes,
                &draws,
                self.scenario.strategies.inventor_inflation_bps,
                cost,
            )?
        } else {
            strategies::InventedUsage::default()
        };
        let per_request_credits = Credits::new(
            served
                .served
                .saturating_mul(cost.get())
                .saturating_add(invented.charged),
        );
        let income_credits = per_request_credits.saturating_add(placed.income);
        let income = self.scenario.pricing.credits_to_usd(income_credits)?;
        let mut m = RoundMetrics {
            round: clock.round,
            income_usd_micro: income.get(),
            requests_served: served.served,
            requests_dropped: served.dropped,
            instances_asked: placed.asked,
            instances_placed: placed.placed,
            sla_hours_ok: placed.sla_hours_ok,
            sla_hours_total: placed.sla_hours_total,
            ..RoundMetrics::default()
        };
        m.strategies.invented_credits_attempted = invented.attempted;
        m.strategies.invented_credits_charged = invented.charged;
        // The close sums the validation draws into `m` too.
        let (departures, result) = self.close(f, income, &churned, &draws, &mut buf, &mut m)?;
        m.departures = departures.len() as u64;
        m.initial_nodes = self.initial_nodes;
        self.leave(&departures)?;
        self.buffers = Buffers { churned, ..buf };
        self.report.rounds.push(m);
        self.round += 1;
        self.start_s = clock.end_s;
        Ok(result)
    }

    /// Phase 1, [`churn`]: every node's online intervals in the round and the capacity they
    /// give, written into `out`'s buffers.
    fn churn(&mut self, clock: &RoundClock, out: Churned) -> Churned {
        let sc = &self.scenario;
        let outages: Vec<(u32, Interval)> = sc
            .outages
            .iter()
            .filter_map(|o| {
                let first = SIM_START_S + u64::from(o.round) * clock.length_s + o.start_s;
                let w = Interval::new(first, first + o.duration_s);
                (w.end_s > clock.start_s && w.start_s < clock.end_s).then_some((o.region, w))
            })
            .collect();
        churn::churn(
            &mut self.nodes,
            clock,
            &sc.churn,
            &outages,
            &self.capacity_rps,
            out,
        )
    }

    /// Phase 2, [`placement`]: the round's per-instance deployments placed on the nodes
    /// online at its start (the candidates written into the buffer given with `churned`).
    fn place(
        &self,
        clock: &RoundClock,
        churned: (&Churned, Vec<Candidate>),
        demand_factor: f64,
    ) -> Result<Placed, SimError> {
        placement::place(
            &self.scenario,
            clock,
            (&self.nodes, &self.ids),
            churned,
            &self.capacity_rps,
            demand_factor,
        )
    }

    /// Phase 3, [`demand`]: the round's per-request requests served with the capacity the
    /// deployments left.
    fn serve(
        &self,
        clock: &RoundClock,
        churned: &Churned,
        placed: &Placed,
        demand_factor: f64,
    ) -> demand::Served {
        demand::serve(
            &self.scenario,
            clock,
            self.seed,
            demand_factor,
            &churned.capacity_per_hour,
            &placed.reserved_per_hour,
        )
    }

    /// Phase 5, [`close`]: the round closed through the rewards driver with `income` and each
    /// node's activity, written in place by position (the registered nodes are exactly
    /// `nodes`, in its order; departed ones were deregistered in the round they left); the
    /// closed round handed to `f` when there is one, its metrics written into `m`, each
    /// node's totals updated; the validation `draws` are made during the close (see below).
    /// Returns the positions in `nodes` (increasing) of the providers that leave, and what
    /// `f` returned.
    fn close<R>(
        &mut self,
        f: Option<impl FnOnce(&ClosedRound) -> R>,
        income: MicroUsd,
        churned: &Churned,
        draws: &Draws<'_>,
        buf: &mut Buffers,
        m: &mut RoundMetrics,
    ) -> Result<(Vec<usize>, Option<R>), SimError> {
        let sc = &self.scenario;
        let ids = &self.ids;
        // The driver's k-th node is `ids[k]`, checked here where its input is written anyway
        // (the first mismatch in node order is reported, whichever thread finds it).
        let mismatch = &AtomicUsize::new(usize::MAX);
        let fill = |k: usize, mut slot: ActivitySlot<'_>| {
            if ids.get(k) != Some(slot.id()) {
                mismatch.fetch_min(k, Ordering::Relaxed);
            }
            let online = slot.online();
            match churned.online(k) {
                // One interval (most nodes): a push, not a copy of a slice of unknown length.
                [iv] => online.push(*iv),
                ivs => online.extend_from_slice(ivs),
            }
            let d = draws.get(k);
            slot.set_validations(d.ok, d.failed);
        };
        let nodes = &mut self.nodes;
        let (earnings, crats) = (&mut buf.earnings, &mut buf.crats);
        // The rank-ordered outcome only for a caller that looks at it.
        let detail = if f.is_some() {
            RoundDetail::Outcome
        } else {
            RoundDetail::ResultsOnly
        };
        let driver = &mut self.driver;
        rayon::in_place_scope(|scope| {
            // Phases 4 and 5 together, in parts of one draws chunk each, spread over the
            // pool's threads: a part makes its nodes' validation draws (phase 4), writes their
            // activity and runs their rules.
            driver.close_round_in_parts(
                income,
                DRAW_CHUNK,
                |parts| parts.par_iter_mut().for_each(|part| part.fill(fill)),
                // Carried forward on the pool's threads too, beside the inequality figures.
                |parts| parts.par_iter_mut().for_each(CarryPart::run),
                detail,
                move |closed| {
                    let k = mismatch.load(Ordering::Relaxed);
                    if let Some(n) = closed.inputs.nodes.get(k) {
                        return Err(SimError::from(crat_rewards::RewardsError::UnknownNode {
                            id: n.id,
                        }));
                    }
                    let departures = close::outcome_metrics(
                        closed.results(),
                        &closed.outcome.aggregates,
                        sc,
                        nodes,
                        draws,
                        (&mut *earnings, &mut *crats),
                        m,
                    )?;
                    // The round's inequality figures, a sort and a selection of what the
                    // metrics gathered, on other threads while the driver carries the round
                    // forward (the scope waits for them).
                    let (gini, decile) = (&mut m.gini_earnings, &mut m.crat_top_decile_share);
                    scope.spawn(move |_| *gini = close::gini(earnings));
                    scope.spawn(move |_| *decile = close::top_decile_share(crats));
                    Ok((departures, f.map(|f| f(closed))))
                },
            )
        })?
    }

    /// Departed providers, at `positions` in `nodes` (increasing), leave the driver and
    /// `nodes` at once. A round loses a few nodes of many: in the simulator's arrays only
    /// they are visited, and the nodes after the first of them move down in a few block
    /// copies; the driver drops them by position in one pass over its list.
    fn leave(&mut self, positions: &[usize]) -> Result<(), SimError> {
        if positions.is_empty() {
            return Ok(());
        }
        self.departed
            .extend(positions.iter().map(|&k| (self.nodes[k], self.ids[k])));
        // Three arrays of every node close their gaps: the driver's on one thread, the
        // simulator's two on another (at a million nodes each is mostly a memory copy of the
        // nodes after the first gap, and the round waits for them).
        let (driver, nodes, ids) = (&mut self.driver, &mut self.nodes, &mut self.ids);
        let (removed, ()) = rayon::join(
            // The driver's nodes are in this simulation's order (the close checks it).
            || driver.deregister_at(positions),
            || {
                remove_positions(nodes, positions);
                remove_positions(ids, positions);
            },
        );
        removed?;
        Ok(())
    }
}

/// Removes the elements at `positions` (increasing, each below `v.len()`) from `v`, keeping
/// the order of the rest: each run between two removed elements moves down in one copy.
fn remove_positions<T: Copy>(v: &mut Vec<T>, positions: &[usize]) {
    let Some(&first) = positions.first() else {
        return;
    };
    let mut write = first;
    for (j, &p) in positions.iter().enumerate() {
        let end = positions.get(j + 1).copied().unwrap_or(v.len());
        v.copy_within(p + 1..end, write);
        write += end - (p + 1);
    }
    v.truncate(write);
}

/// Length of hour bucket `h` of the round `[start_s, end_s)` (the last may be short).
fn hour_len(start_s: u64, end_s: u64, h: usize) -> u64 {
    let h_start = start_s + h as u64 * HOUR_S;
    (h_start + HOUR_S).min(end_s).saturating_sub(h_start)
}

#[cfg(test)]
mod tests {
    use super::remove_positions;

    #[test]
    fn remove_positions_keeps_the_rest_in_order() {
        for positions in [
            vec![],
            vec![0],
            vec![9],
            vec![0, 1, 2],
            vec![2, 5, 6, 9],
            vec![3],
        ] {
            let mut v: Vec<u32> = (0..10).collect();
            remove_positions(&mut v, &positions);
            let want: Vec<u32> = (0..10)
                .filter(|i| !positions.contains(&(*i as usize)))
                .collect();
            assert_eq!(v, want, "{positions:?}");
        }
    }
}
