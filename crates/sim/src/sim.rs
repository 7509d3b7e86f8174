//! One simulation run: the models of the scenario driving crat-core placement and pricing
//! and crat-rewards' [`RoundDriver`], round after round.
//!
//! Per round:
//! 1. arrivals register; every node's churn is advanced locally inside the round (its own
//!    random stream, in parallel), giving its online intervals; region outages cut them;
//! 2. per-instance deployments are placed on the nodes online at the round's start
//!    ([`crat_core::placement`]) and priced ([`PricingParams::quote`]);
//! 3. cross-node events go through the [`EventQueue`]: one demand tick per hour (per-request
//!    requests served up to the online capacity left, priced by
//!    [`PricingParams::request_cost`]) and the round close; sampled validations are then
//!    drawn per node from its own stream (who ran and who failed how many re-runs);
//! 4. the round closes through [`RoundDriver::close_round`], whose outcome is the only
//!    source of payouts and CRAT; metrics are taken from it; providers whose earnings stayed
//!    below their electricity cost for `behaviour.departure_rounds` rounds leave.

use crat_core::gpu_table::GpuTable;
use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{Credits, MicroCrat};
use crat_core::placement::{Assignment, Candidate, Placer, Request};
use crat_core::pricing::{DeployPlan, PerInstancePlan};
use crat_rewards::{
    ActivitySlot, Aggregates, ClosedRound, Interval, NodeProfile, NodeResult, RoundDriver,
};
use rand::Rng;
use rayon::prelude::*;

use crate::SimError;
use crate::kernel::{EventQueue, SHARED_STREAM_BASE, StreamRng, stream_rng};
use crate::report::{NodeSummary, Report, RoundMetrics};
use crate::scenario::{HOURS_PER_ROUND_MAX, SESSIONS_PER_ROUND_MAX, Scenario, SessionModel};

/// Absolute time of the first round's start: 2023-11-14 00:00 UTC, a midnight, so that
/// times of day (diurnal patterns, peak windows) read naturally in exported rounds, and
/// initial registrations can lie before it.
pub const SIM_START_S: u64 = 1_699_920_000;

/// Nodes per parallel work item of the churn pass.
const CHURN_CHUNK: usize = 1024;

const DAY_S: u64 = 86_400;
const HOUR_S: u64 = 3_600;

/// A node's state in the simulator (what it is and what it does; its money and CRAT live in
/// the [`RoundDriver`]).
#[derive(Clone, Debug)]
struct Node {
    /// Its number: order of arrival, the stream it draws from, its row in the outputs.
    index: u32,
    rating: PowerRating,
    gpu: u16,
    region: u32,
    cheater: bool,
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

/// One node's validation draws in a round.
#[derive(Clone, Copy, Debug, Default)]
struct Draw {
    /// Tasks it served.
    tasks: u64,
    /// Validations it ran.
    ran: u64,
    /// Of those, answered correctly.
    ok: u64,
    /// Its wrong answers caught (as worker or validator).
    failed: u64,
    /// Position among the round's tasks of its first own wrong answer caught.
    first_caught: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Hour(u32),
    Close,
}

/// Round-number bit that separates a node's validation stream from its churn stream.
const VALIDATION_STREAM: u64 = 1 << 63;

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
    buffers: Buffers,
}

/// Per-node buffers of a round, kept for the next one: at a million nodes a round would
/// otherwise map (and fault in) some 90 MB afresh. They carry nothing between rounds.
#[derive(Default)]
struct Buffers {
    /// Per churn chunk, its nodes' online intervals one after another.
    chunk_intervals: Vec<Vec<Interval>>,
    /// Per node, where its intervals start in its chunk's buffer, and how many.
    spans: Vec<(u32, u32)>,
    node_capacity: Vec<u64>,
    draws: Vec<Draw>,
    earnings: Vec<u64>,
    crats: Vec<u64>,
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
            report: Report::new(scenario.name.clone(), seed),
            capacity_rps,
            gpu_names,
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
                cheater: n.cheater,
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
        let cheater_share_bps = self.scenario.validation.cheater_share_bps;
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
                let cheater = rng.gen_range(0..10_000) < cheater_share_bps;
                let online = churn.model == SessionModel::None || rng.unit_f64() < stationary_on;
                let node = Node {
                    // Below NODES_MAX = 2^22 (checked by the scenario).
                    index: index as u32,
                    rating: entries[gpu].rating,
                    gpu: gpu as u16,
                    region: (index % u64::from(pop.regions)) as u32,
                    cheater,
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
                    mining_income_usd_micro_per_day: entries[usize::from(n.gpu)]
                        .mining_income_usd_micro_per_day,
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
    /// [`Simulation::step_with`]; the round is closed by
    /// [`RoundDriver::close_round_results_with`], so the rank-ordered outcome (128 bytes a
    /// node, written at rank positions) is never built.
    pub fn advance(&mut self) -> Result<(), SimError> {
        // The whole round runs on a worker of rayon's pool: its parallel passes then fork
        // and join inside the pool instead of each handing its work over from this thread
        // and waiting (a round of 10,000 nodes spent ~15 % of its time switching threads).
        rayon::scope(|_| self.round_with(None::<fn(&ClosedRound)>)).map(|_| ())
    }

    /// One round; the closed round goes to `f` when there is one (then the full outcome is
    /// built), and `f`'s result comes back.
    fn round_with<R>(
        &mut self,
        f: Option<impl FnOnce(&ClosedRound) -> R>,
    ) -> Result<Option<R>, SimError> {
        if self.finished() {
            return Err(SimError::Finished);
        }
        let sc = &self.scenario;
        let round = self.round;
        let length_s = sc.rewards.round_s;
        let start_s = self.start_s;
        let end_s = start_s + length_s;
        if round > 0 && sc.population.arrivals_per_round > 0 {
            let n = sc.population.arrivals_per_round;
            self.add_nodes(n, false)?;
        }
        let sc = &self.scenario;
        let hours = length_s.div_ceil(HOUR_S).min(HOURS_PER_ROUND_MAX) as usize;

        // 1. Churn, locally per node (PeerSim cycle style), in parallel; deterministic
        // because each node draws from its own stream.
        let seed = self.seed;
        let outages: Vec<(u32, Interval)> = sc
            .outages
            .iter()
            .filter_map(|o| {
                let first = SIM_START_S + u64::from(o.round) * length_s + o.start_s;
                let w = Interval::new(first, first + o.duration_s);
                (w.end_s > start_s && w.start_s < end_s).then_some((o.region, w))
            })
            .collect();
        let churn = sc.churn.clone();
        let capacity_rps = self.capacity_rps;
        let peak_windows: Vec<Interval> = sc
            .rewards
            .peak_windows
            .iter()
            .map(|w| Interval::new(start_s + w.start_s, start_s + w.end_s))
            .collect();
        // The buffers of the previous round, emptied (no memory mapped afresh per round):
        // each churn chunk keeps its own interval buffer, node k's intervals are
        // `chunk_intervals[k / CHURN_CHUNK][spans[k]]`.
        let mut buf = std::mem::take(&mut self.buffers);
        let n_nodes = self.nodes.len();
        let mut chunk_intervals = std::mem::take(&mut buf.chunk_intervals);
        chunk_intervals.resize_with(n_nodes.div_ceil(CHURN_CHUNK), Vec::new);
        let mut spans = std::mem::take(&mut buf.spans);
        spans.clear();
        spans.resize(n_nodes, (0, 0));
        let mut node_capacity = std::mem::take(&mut buf.node_capacity);
        node_capacity.clear();
        node_capacity.resize(n_nodes, 0);
        // Per chunk: capacity-seconds per hour of nodes online part of the round, the rps of
        // nodes online all of it, and the capacity-seconds of all nodes and of cheaters.
        let sums: Vec<(Vec<u64>, u64, u64, u64)> = self
            .nodes
            .par_chunks_mut(CHURN_CHUNK)
            .zip(chunk_intervals.par_iter_mut())
            .zip(spans.par_chunks_mut(CHURN_CHUNK))
            .zip(node_capacity.par_chunks_mut(CHURN_CHUNK))
            .map(|(((chunk, all), spans), caps)| {
                all.clear();
                let mut per_hour = vec![0u64; hours];
                let mut full_rps = 0u64;
                for (j, n) in chunk.iter_mut().enumerate() {
                    let mut rng = stream_rng(seed, u64::from(n.index), u64::from(round));
                    let base = all.len();
                    advance_churn(n, &churn, start_s, end_s, &mut rng, all);
                    for (region, w) in &outages {
                        if *region == n.region {
                            let mine: Vec<Interval> = all.drain(base..).collect();
                            all.extend(cut(mine, *w));
                        }
                    }
                    let online = &all[base..];
                    // A chunk holds at most CHURN_CHUNK × (SESSIONS_PER_ROUND_MAX + outage
                    // cuts) intervals, far below u32::MAX.
                    spans[j] = (base as u32, online.len() as u32);
                    let cap = u64::from(capacity_rps[usize::from(n.rating.get())]);
                    if let [iv] = online
                        && iv.start_s == start_s
                        && iv.end_s == end_s
                    {
                        // Online all round (most nodes): one sum, spread over the hours below.
                        full_rps += cap;
                        caps[j] = cap * length_s;
                    } else {
                        let mut total = 0;
                        for iv in online {
                            total += cap * iv.len_s();
                            add_hours(&mut per_hour, start_s, *iv, cap);
                        }
                        caps[j] = total;
                    }
                }
                let total: u64 = caps.iter().sum();
                let cheating: u64 = chunk
                    .iter()
                    .zip(caps.iter())
                    .filter(|(n, _)| n.cheater)
                    .map(|(_, c)| c)
                    .sum();
                (per_hour, full_rps, total, cheating)
            })
            .collect();
        let mut capacity_req_hour = vec![0u64; hours];
        let mut full_rps = 0u64;
        let (mut total_cap, mut cheater_cap) = (0u64, 0u64);
        for (ph, full, total, cheating) in sums {
            total_cap += total;
            cheater_cap += cheating;
            for (h, v) in ph.iter().enumerate() {
                capacity_req_hour[h] += v;
            }
            full_rps += full;
        }
        let online = |k: usize| {
            let (at, len) = spans[k];
            &chunk_intervals[k / CHURN_CHUNK][at as usize..(at + len) as usize]
        };
        for (h, c) in capacity_req_hour.iter_mut().enumerate() {
            *c += full_rps * hour_len(start_s, end_s, h);
        }

        // 2. Per-instance deployments placed at the round's start.
        let d = &sc.demand;
        let demand_factor = demand_factor(sc, round);
        let instances = ((d.per_instance_clients as f64) * demand_factor).round() as u64;
        let mut instance_income = Credits::ZERO;
        let mut sla_hours_ok: u64 = 0;
        let mut sla_hours_total: u64 = 0;
        let mut instances_placed = 0u64;
        if instances > 0 {
            // Candidates in id order, so the placer need not sort them.
            let per_operator = sc.population.nodes_per_operator;
            let candidates: Vec<Candidate> = self
                .nodes
                .par_iter()
                .zip(&self.ids)
                .enumerate()
                .map(|(k, (n, id))| Candidate {
                    id: *id,
                    rating: n.rating,
                    free_rps: capacity_rps[usize::from(n.rating.get())],
                    operator: u64::from(n.index) / per_operator,
                    online: online(k).first().is_some_and(|iv| iv.start_s <= start_s),
                })
                .collect();
            let mut placer = Placer::new(candidates);
            let rating_min = PowerRating::new(d.rating_min).unwrap_or(PowerRating::MIN);
            let plan = DeployPlan::PerInstance(PerInstancePlan {
                guaranteed_rps: d.guaranteed_rps,
                max_input_bytes: d.input_bytes,
                update_frequency: d.update_frequency,
                key_lifetime_s: length_s.max(sc.pricing.key_lifetime_s_min),
            });
            let quote = sc.pricing.quote(d.model_bytes, &plan)?;
            let req = Request {
                per_operator_max: d.per_operator_max,
                ..Request::rate(d.guaranteed_rps, rating_min)
            };
            let mut sla = SlaBook::new(start_s, end_s, hours);
            for _ in 0..instances {
                let Ok(assigned) = placer.place(&req) else {
                    // Every deployment asks the same and a refusal takes nothing, so the rest
                    // would be refused too.
                    break;
                };
                instances_placed += 1;
                instance_income = instance_income.saturating_add(quote.upfront);
                sla_hours_ok += sla.hours_met(&assigned, d.guaranteed_rps, |c| online(c as usize));
            }
            sla_hours_total = instances * hours as u64;
        }
        let reserved_per_hour: Vec<u64> = (0..hours)
            .map(|h| instances_placed * u64::from(d.guaranteed_rps) * hour_len(start_s, end_s, h))
            .collect();

        // 3. Cross-node events through the queue: one demand tick per hour, the round close.
        let mut queue: EventQueue<Event> = EventQueue::with_limit(hours + 1);
        for h in 0..hours {
            queue.schedule(start_s + h as u64 * HOUR_S, Event::Hour(h as u32))?;
        }
        queue.schedule(end_s, Event::Close)?;
        let mut rng = stream_rng(seed, SHARED_STREAM_BASE, u64::from(round));
        let cost = sc.pricing.request_cost(d.model_bytes, d.input_bytes)?;
        let daily_requests =
            d.per_request_clients as f64 * d.requests_per_client_per_day as f64 * demand_factor;
        let mut served: u64 = 0;
        let mut dropped: u64 = 0;
        while let Some((_, ev)) = queue.pop() {
            match ev {
                Event::Hour(h) => {
                    let h = h as usize;
                    let h_start = start_s + h as u64 * HOUR_S;
                    let h_len = hour_len(start_s, end_s, h);
                    let mid = h_start + h_len / 2;
                    let tod = (mid % DAY_S) as f64;
                    let phase = 2.0 * std::f64::consts::PI * (tod - sc.churn.peak_centre_s as f64)
                        / DAY_S as f64;
                    let mut w = 1.0 + d.diurnal_amplitude * phase.cos();
                    if peak_windows
                        .iter()
                        .any(|p| p.start_s <= mid && mid < p.end_s)
                    {
                        w *= d.peak_multiplier;
                    }
                    let want = daily_requests * w * h_len as f64 / DAY_S as f64;
                    // Fractional requests round up with their probability (shared stream).
                    let want = (want + rng.unit_f64()).floor() as u64;
                    let free = capacity_req_hour[h].saturating_sub(reserved_per_hour[h]);
                    let s = want.min(free);
                    served += s;
                    dropped += want - s;
                }
                Event::Close => break,
            }
        }

        // Validations: `sample_bps` of the served tasks are re-run by another node. A task's
        // worker, and independently its validator, is a node chosen in proportion to the
        // capacity it had online, so each node's tasks, its validated tasks and the
        // validations it ran follow its capacity, the last two as Poisson draws from its own
        // stream (thread-count independent, O(n)).
        //
        // A cheater answers a task (its own or one it validates) wrongly with probability
        // c = `cheat_bps`. Wrong answers never agree with each other, so a disagreement goes
        // to a third node and a majority decides; there is none only when the third node is
        // wrong too (probability f·c, f = the cheaters' share of capacity). So a wrong answer
        // is caught with probability q = 1 − f·c, as the worker's failure or, when a cheater
        // validated wrongly, as the validator's; a validation with the right answer is a
        // correct validation (`validations_ok`). Honest nodes are never failed.
        let sampled = (u128::from(served) * u128::from(sc.validation.sample_bps) / 10_000) as u64;
        let sampled = sampled.min(sc.validation.per_round_max);
        let cheat_p = f64::from(sc.validation.cheat_bps) / 10_000.0;
        let caught_p = 1.0 - cheat_p * cheater_cap as f64 / total_cap.max(1) as f64;
        let tasks_per_cap = served as f64 / total_cap.max(1) as f64;
        let mut draws = std::mem::take(&mut buf.draws);
        draws.clear();
        if total_cap == 0 || sampled == 0 {
            draws.extend(node_capacity.iter().map(|&cap| Draw {
                tasks: (cap as f64 * tasks_per_cap) as u64,
                ..Draw::default()
            }));
        } else {
            let per_cap = sampled as f64 / total_cap as f64;
            let nodes = &self.nodes;
            // Most nodes are online all round, so their mean is one of five: those draws
            // search a table instead of recomputing the distribution (same results).
            let tables: Vec<PoissonTable> = capacity_rps
                .iter()
                .map(|&c| PoissonTable::new((u64::from(c) * length_s) as f64 * per_cap))
                .collect();
            draws.par_extend(node_capacity.par_iter().enumerate().map(|(i, &cap)| {
                if cap == 0 {
                    return Draw::default();
                }
                let tasks = (cap as f64 * tasks_per_cap) as u64;
                let stream = u64::from(nodes[i].index);
                let mut rng = stream_rng(seed, stream, u64::from(round) | VALIDATION_STREAM);
                let lambda = cap as f64 * per_cap;
                let table = &tables[usize::from(nodes[i].rating.get())];
                let (own, ran) = if table.lambda == lambda {
                    (table.draw(&mut rng), table.draw(&mut rng))
                } else {
                    (poisson(&mut rng, lambda), poisson(&mut rng, lambda))
                };
                if !nodes[i].cheater {
                    return Draw {
                        tasks,
                        ok: ran,
                        ..Draw::default()
                    };
                }
                let wrong_own = binomial(&mut rng, own, cheat_p);
                let caught_own = binomial(&mut rng, wrong_own, caught_p);
                let wrong_ran = binomial(&mut rng, ran, cheat_p);
                let caught_ran = binomial(&mut rng, wrong_ran, caught_p);
                // The first of `caught_own` failures spread uniformly over the round's
                // tasks lies at tasks × (1 − U^(1/k)).
                let first_caught = (caught_own > 0).then(|| {
                    let u = rng.unit_f64().powf(1.0 / caught_own as f64);
                    ((tasks as f64) * (1.0 - u)) as u64
                });
                Draw {
                    tasks,
                    ran,
                    ok: ran - wrong_ran,
                    failed: caught_own + caught_ran,
                    first_caught,
                }
            }));
        }
        let (validations, validations_caught) =
            draws.iter().fold((0u64, 0u64), |(ran, failed), d| {
                (ran + d.ran, failed + d.failed)
            });
        let per_request_credits = Credits::new(served.saturating_mul(cost.get()));
        let income_credits = per_request_credits.saturating_add(instance_income);
        let income = sc.pricing.credits_to_usd(income_credits)?;

        // 4. Round close through the rewards driver (the registered nodes are exactly
        // `nodes`, in its order; departed ones were deregistered in the round they left).
        // Each node's activity is written in place, by position.
        let ids = &self.ids;
        let draws_ref = &draws;
        // The driver's k-th node is `ids[k]`, checked here where its input is written anyway.
        let mismatch = std::cell::Cell::new(None);
        let fill = |k: usize, mut slot: ActivitySlot<'_>| {
            if ids.get(k) != Some(slot.id()) && mismatch.get().is_none() {
                mismatch.set(Some(*slot.id()));
            }
            slot.online().extend_from_slice(online(k));
            slot.set_validations(draws_ref[k].ok, draws_ref[k].failed);
        };
        let mut m = RoundMetrics {
            round,
            income_usd_micro: income.get(),
            requests_served: served,
            requests_dropped: dropped,
            instances_asked: instances,
            instances_placed,
            sla_hours_ok,
            sla_hours_total,
            validations,
            validations_failed: validations_caught,
            ..RoundMetrics::default()
        };
        let nodes = &mut self.nodes;
        let mut metrics = |results: &[NodeResult], a: &Aggregates| {
            if let Some(id) = mismatch.get() {
                return Err(SimError::from(crat_rewards::RewardsError::UnknownNode {
                    id,
                }));
            }
            let sums = (&mut buf.earnings, &mut buf.crats);
            outcome_metrics(results, a, sc, ids, nodes, draws_ref, sums, &mut m)
        };
        let (departures, result) = match f {
            Some(f) => self.driver.close_round_filled_with(income, fill, |closed| {
                let results = (0..closed.inputs.nodes.len())
                    .map(|k| {
                        closed
                            .result_of(k)
                            .ok_or(crat_rewards::RewardsError::UnknownNode {
                                id: closed.inputs.nodes[k].id,
                            })
                    })
                    .collect::<Result<Vec<NodeResult>, _>>()?;
                let departures = metrics(&results, &closed.outcome.aggregates)?;
                Ok::<_, SimError>((departures, Some(f(closed))))
            }),
            None => self
                .driver
                .close_round_results_with(income, fill, |closed| {
                    let departures = metrics(&closed.results, &closed.aggregates)?;
                    Ok::<_, SimError>((departures, None))
                }),
        }??;

        m.departures = departures.len() as u64;
        m.initial_nodes = self.initial_nodes;

        // Departed providers leave the driver and `nodes` at once (one pass each).
        if !departures.is_empty() {
            self.driver.deregister_all(&departures);
            // Compacted in place (each kept node moved once): no fresh copy of the list.
            for (n, id) in self.nodes.iter().zip(&self.ids) {
                if n.departed_round.is_some() {
                    self.departed.push((n.clone(), *id));
                }
            }
            let mut stays = self.nodes.iter().map(|n| n.departed_round.is_none());
            self.ids.retain(|_| stays.next().unwrap_or(true));
            self.nodes.retain(|n| n.departed_round.is_none());
        }
        self.buffers = Buffers {
            chunk_intervals,
            spans,
            node_capacity,
            draws,
            ..buf
        };
        self.report.rounds.push(m);
        self.round += 1;
        self.start_s = end_s;
        Ok(result)
    }
}

/// The round's metrics taken from its results (the only source of payouts and CRAT), each
/// node's totals updated, and the providers that leave this round (marked departed).
/// `nodes[k]` is the round's k-th input (its id checked when its activity was written) and
/// `results[k]` its result.
#[allow(clippy::too_many_arguments)]
fn outcome_metrics(
    results: &[NodeResult],
    a: &Aggregates,
    sc: &Scenario,
    ids: &[NodeId],
    nodes: &mut [Node],
    draws: &[Draw],
    (earnings, crats): (&mut Vec<u64>, &mut Vec<u64>),
    m: &mut RoundMetrics,
) -> Result<Vec<NodeId>, SimError> {
    let round = m.round;
    let length_s = sc.rewards.round_s;
    m.pool_usd_micro = a.pool_usd_micro.get();
    m.paid_ranks = a.paid_ranks;
    m.bonus_usd_micro = a.bonus_paid_usd_micro.get();
    m.guaranteed_usd_micro = a.guaranteed_paid_usd_micro.get();
    m.carry_usd_micro = a.carry_out_usd_micro.get();
    if results.len() != nodes.len() {
        return Err(SimError::Rewards(crat_rewards::RewardsError::OutOfRange {
            field: "nodes".into(),
            reason: format!("{} results for {} nodes", results.len(), nodes.len()),
        }));
    }
    let day_share = |v: u64| (u128::from(v) * u128::from(length_s) / u128::from(DAY_S)) as u64;
    earnings.clear();
    earnings.resize(nodes.len(), 0);
    crats.clear();
    crats.resize(nodes.len(), 0);
    let departure_rounds = sc.behaviour.departure_rounds;
    let electricity = sc.behaviour.electricity_usd_micro_per_day;
    let initial = sc.population.nodes;
    // In parallel chunks: integer sums and in-order lists, so the same bytes on any number
    // of threads.
    let c = METRICS_CHUNK;
    let parts: Vec<(RoundMetrics, Vec<NodeId>)> = nodes
        .par_chunks_mut(c)
        .zip(results.par_chunks(c))
        .zip(draws.par_chunks(c))
        .zip(ids.par_chunks(c))
        .zip(earnings.par_chunks_mut(c))
        .zip(crats.par_chunks_mut(c))
        .map(|(((((nodes, results), draws), ids), earnings), crats)| {
            let mut p = RoundMetrics::default();
            let mut departures = Vec::new();
            for (k, n) in nodes.iter_mut().enumerate() {
                let o = &results[k];
                let class = usize::from(n.rating.get()) - 1;
                let g = o.guaranteed_usd_micro.get();
                let b = o.bonus_usd_micro.get();
                n.guaranteed_total += g;
                n.bonus_total += b;
                n.crat_end = o.crat_end_micro.get();
                n.uptime_total = o.uptime_total_s;
                let d = &draws[k];
                n.validations_failed += d.failed;
                if n.caught_at_task.is_none()
                    && let Some(at) = d.first_caught
                {
                    n.caught_at_task = Some(n.tasks_served + at);
                }
                n.tasks_served += d.tasks;
                crats[k] = n.crat_end;
                earnings[k] = g + b;
                p.nodes_active += 1;
                p.class_nodes[class] += 1;
                p.class_guaranteed_usd_micro[class] += g;
                p.class_bonus_usd_micro[class] += b;
                if o.committed {
                    p.nodes_committed += 1;
                }
                if n.cheater {
                    p.cheaters_active += 1;
                    p.cheater_bonus_usd_micro += b;
                    p.cheater_crat_micro += n.crat_end;
                } else {
                    p.honest_crat_micro += n.crat_end;
                }
                if departure_rounds > 0 {
                    if g + b < day_share(electricity[class]) {
                        n.low_rounds += 1;
                    } else {
                        n.low_rounds = 0;
                    }
                    if n.low_rounds >= departure_rounds {
                        n.departed_round = Some(round);
                        departures.push(ids[k]);
                    }
                }
                if u64::from(n.index) < initial && n.departed_round.is_none() {
                    p.initial_retained += 1;
                }
            }
            (p, departures)
        })
        .collect();
    let mut departures: Vec<NodeId> = Vec::new();
    for (p, d) in parts {
        m.nodes_active += p.nodes_active;
        for class in 0..5 {
            m.class_nodes[class] += p.class_nodes[class];
            m.class_guaranteed_usd_micro[class] += p.class_guaranteed_usd_micro[class];
            m.class_bonus_usd_micro[class] += p.class_bonus_usd_micro[class];
        }
        m.nodes_committed += p.nodes_committed;
        m.cheaters_active += p.cheaters_active;
        m.cheater_bonus_usd_micro += p.cheater_bonus_usd_micro;
        m.cheater_crat_micro += p.cheater_crat_micro;
        m.honest_crat_micro += p.honest_crat_micro;
        m.initial_retained += p.initial_retained;
        departures.extend(d);
    }
    m.gini_earnings = gini(earnings);
    m.crat_top_decile_share = top_decile_share(crats);
    Ok(departures)
}

/// Amounts below which [`gini`] sorts on one thread (splitting costs more than it saves).
const PAR_SORT_MIN: usize = 1 << 17;

/// Nodes per parallel work item of the metrics pass.
const METRICS_CHUNK: usize = 16_384;

/// Length of hour bucket `h` of the round `[start_s, end_s)` (the last may be short).
fn hour_len(start_s: u64, end_s: u64, h: usize) -> u64 {
    let h_start = start_s + h as u64 * HOUR_S;
    (h_start + HOUR_S).min(end_s).saturating_sub(h_start)
}

/// Per-instance SLA bookkeeping of one round: the deployment-hours in which the replicas'
/// online time delivered the guaranteed rate. Each replica node's online seconds per hour
/// are computed once and reused by every deployment placed on it.
struct SlaBook {
    start_s: u64,
    end_s: u64,
    hours: usize,
    /// Per candidate: where its hours start in `secs` (`usize::MAX`: not computed yet).
    at: Vec<usize>,
    /// Online seconds per hour, `hours` entries per computed candidate, then its count of
    /// hours fully online.
    secs: Vec<u64>,
}

impl SlaBook {
    fn new(start_s: u64, end_s: u64, hours: usize) -> Self {
        Self {
            start_s,
            end_s,
            hours,
            at: Vec::new(),
            secs: Vec::new(),
        }
    }

    /// The seconds per hour of candidate `c`, then its count of full hours.
    fn of<'a>(&mut self, c: u32, online: impl Fn(u32) -> &'a [Interval]) -> &[u64] {
        let c = c as usize;
        if self.at.len() <= c {
            self.at.resize(c + 1, usize::MAX);
        }
        if self.at[c] == usize::MAX {
            let base = self.secs.len();
            self.at[c] = base;
            self.secs.resize(base + self.hours + 1, 0);
            let per_hour = &mut self.secs[base..base + self.hours];
            for iv in online(c as u32) {
                add_hours(per_hour, self.start_s, *iv, 1);
            }
            let full = (0..self.hours)
                .filter(|&h| per_hour[h] == hour_len(self.start_s, self.end_s, h))
                .count();
            self.secs[base + self.hours] = full as u64;
        }
        let base = self.at[c];
        &self.secs[base..base + self.hours + 1]
    }

    /// Hours of the round in which `assigned` delivered `rps`.
    fn hours_met<'a>(
        &mut self,
        assigned: &[Assignment],
        rps: u32,
        online: impl Fn(u32) -> &'a [Interval] + Copy,
    ) -> u64 {
        if let [a] = assigned {
            // One replica carrying the whole rate: it delivers exactly in its full hours.
            if a.rps >= rps {
                return self.of(a.candidate, online).last().copied().unwrap_or(0);
            }
        }
        let mut delivered = vec![0u128; self.hours];
        for a in assigned {
            let secs = self.of(a.candidate, online).to_vec();
            for (d, s) in delivered.iter_mut().zip(&secs) {
                *d += u128::from(a.rps) * u128::from(*s);
            }
        }
        (0..self.hours)
            .filter(|&h| {
                let need = u128::from(rps) * u128::from(hour_len(self.start_s, self.end_s, h));
                delivered[h] >= need
            })
            .count() as u64
    }
}

/// Demand multiplier of a round: compounded growth times the last shock that applies.
fn demand_factor(sc: &Scenario, round: u32) -> f64 {
    let d = &sc.demand;
    let growth = (1.0 + d.growth_bps_per_round as f64 / 10_000.0).powi(round as i32);
    let shock = d
        .shocks
        .iter()
        .filter(|s| s.from_round <= round)
        .max_by_key(|s| s.from_round)
        .map_or(1.0, |s| f64::from(s.factor_bps) / 10_000.0);
    growth * shock
}

/// Advances a node's on/off sessions through `[start_s, end_s)`, appending its online
/// intervals (at most [`SESSIONS_PER_ROUND_MAX`]) to `all`.
fn advance_churn(
    n: &mut Node,
    churn: &crate::scenario::Churn,
    start_s: u64,
    end_s: u64,
    rng: &mut StreamRng,
    all: &mut Vec<Interval>,
) {
    if churn.model == SessionModel::None {
        n.online = true;
        all.push(Interval::new(start_s, end_s));
        return;
    }
    let base = all.len();
    let mut out = Intervals { all, base };
    let mut t = start_s;
    // A node's sessions carry over between rounds.
    let mut toggle = n.next_toggle_s.max(start_s);
    loop {
        let seg_end = toggle.min(end_s);
        if n.online && seg_end > t {
            match out.last_mut() {
                Some(Interval { end_s: e, .. }) if *e == t => *e = seg_end,
                _ => out.push(Interval::new(t, seg_end)),
            }
        }
        t = seg_end;
        if toggle >= end_s || out.len() >= SESSIONS_PER_ROUND_MAX {
            break;
        }
        // Toggle at `toggle`, draw the next session.
        n.online = !n.online;
        let tod = (toggle % DAY_S) as f64;
        let phase = 2.0 * std::f64::consts::PI * (tod - churn.peak_centre_s as f64) / DAY_S as f64;
        let diurnal = churn.diurnal_amplitude * phase.cos();
        let (mean, scale) = if n.online {
            (churn.mean_on_s as f64, 1.0 + diurnal)
        } else {
            (churn.mean_off_s as f64, 1.0 - diurnal)
        };
        let mean = mean * scale;
        let u = rng.unit_f64();
        let len = match churn.model {
            SessionModel::LogNormal => {
                let s = churn.sigma;
                let v = rng.unit_f64();
                let z = (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                (mean.ln() - s * s / 2.0 + s * z).exp()
            }
            _ => -mean * (1.0 - u).ln(),
        };
        toggle += if len.is_finite() {
            len.clamp(1.0, 1e12)
        } else {
            1e12
        } as u64;
    }
    if out.len() >= SESSIONS_PER_ROUND_MAX {
        // Stay in the current state until the round ends.
        if n.online {
            match out.last_mut() {
                Some(iv) => iv.end_s = end_s,
                None => out.push(Interval::new(t, end_s)),
            }
        }
        toggle = end_s;
    }
    n.next_toggle_s = toggle;
}

/// One node's intervals at the end of a shared buffer.
struct Intervals<'a> {
    all: &'a mut Vec<Interval>,
    base: usize,
}

impl Intervals<'_> {
    fn len(&self) -> usize {
        self.all.len() - self.base
    }

    fn last_mut(&mut self) -> Option<&mut Interval> {
        if self.len() == 0 {
            None
        } else {
            self.all.last_mut()
        }
    }

    fn push(&mut self, iv: Interval) {
        self.all.push(iv);
    }
}

/// A Poisson draw with mean `lambda`: inversion with one uniform below 30, normal
/// approximation above.
fn poisson(rng: &mut StreamRng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < POISSON_INVERSION_MAX {
        let u = rng.unit_f64();
        let mut p = (-lambda).exp();
        let mut f = p;
        let mut k = 0;
        while u > f && k < POISSON_TERMS_MAX {
            k += 1;
            p *= lambda / k as f64;
            f += p;
        }
        return k as u64;
    }
    (lambda + lambda.sqrt() * normal(rng)).round().max(0.0) as u64
}

/// The distribution function of a Poisson law, for the means most nodes share in a round.
/// Below [`POISSON_INVERSION_MAX`] it is the one [`poisson`] walks term by term, so a draw
/// from the table equals a draw by [`poisson`] with the same uniform; above, up to
/// [`POISSON_TABLE_MEAN_MAX`], it is the exact law (terms summed in log space), where
/// [`poisson`] would use its normal approximation: one uniform and a binary search instead
/// of a logarithm and a cosine a draw.
struct PoissonTable {
    lambda: f64,
    /// `cdf[k]` = P(X ≤ k), empty for means drawn by [`poisson`].
    cdf: Vec<f64>,
    /// Whether `cdf` is walked from 0 like [`poisson`] (small means) or searched.
    walk: bool,
    /// `guide[j]`: the first k with `cdf[k] ≥ j / GUIDE_SLOTS` (`cdf.len()` if none). A
    /// uniform u in `[j, j + 1) / GUIDE_SLOTS` has its answer at or after `guide[j]`, so a draw
    /// walks a step or two from there instead of from 0 (same answer as the full walk).
    guide: Vec<u32>,
}

/// Slots of a [`PoissonTable`]'s guide (a power of two, so `j / GUIDE_SLOTS` is exact).
const GUIDE_SLOTS: usize = 1 << 10;

impl PoissonTable {
    fn new(lambda: f64) -> Self {
        let mut cdf = Vec::new();
        let walk = lambda < POISSON_INVERSION_MAX;
        if lambda > 0.0 && walk {
            let mut p = (-lambda).exp();
            let mut f = p;
            cdf.push(f);
            for k in 1..=POISSON_TERMS_MAX {
                p *= lambda / k as f64;
                f += p;
                cdf.push(f);
            }
        } else if lambda > 0.0 && lambda <= POISSON_TABLE_MEAN_MAX {
            // Up to 12 standard deviations above the mean: the rest has no f64 mass.
            let last = (lambda + 12.0 * lambda.sqrt() + 30.0) as usize;
            let (ln_lambda, mut ln_p, mut f) = (lambda.ln(), -lambda, 0.0);
            for k in 0..=last {
                if k > 0 {
                    ln_p += ln_lambda - (k as f64).ln();
                }
                f += ln_p.exp();
                cdf.push(f);
            }
        }
        let mut guide = Vec::with_capacity(if cdf.is_empty() { 0 } else { GUIDE_SLOTS });
        if !cdf.is_empty() {
            let mut k = 0;
            for j in 0..GUIDE_SLOTS {
                let at = j as f64 / GUIDE_SLOTS as f64;
                while k < cdf.len() && cdf[k] < at {
                    k += 1;
                }
                // cdf.len() ≤ POISSON_TERMS_MAX + 1 or about 11,300: fits a u32.
                guide.push(k as u32);
            }
        }
        Self {
            lambda,
            cdf,
            walk,
            guide,
        }
    }

    fn draw(&self, rng: &mut StreamRng) -> u64 {
        if self.cdf.is_empty() {
            return poisson(rng, self.lambda);
        }
        let u = rng.unit_f64();
        // The first k with u ≤ F(k), as poisson's loop and a binary search find it, from the
        // guide's start. u < 1, so the slot is below GUIDE_SLOTS.
        let from = self.guide[((u * GUIDE_SLOTS as f64) as usize).min(GUIDE_SLOTS - 1)] as usize;
        let found = self.cdf[from.min(self.cdf.len())..]
            .iter()
            .position(|&f| u <= f)
            .map(|k| from + k);
        match found {
            Some(k) => k as u64,
            // Past the table: poisson's loop stops at its last term, the search at the end.
            None if self.walk => POISSON_TERMS_MAX as u64,
            None => (self.cdf.len() - 1) as u64,
        }
    }
}

/// Largest mean drawn from a [`PoissonTable`] (its table has about λ + 12√λ entries).
const POISSON_TABLE_MEAN_MAX: f64 = 10_000.0;

/// Below this mean a Poisson draw inverts the distribution function.
const POISSON_INVERSION_MAX: f64 = 30.0;
/// Terms of the distribution function an inversion walks at most.
const POISSON_TERMS_MAX: usize = 1_000;

/// A binomial draw (exact below 64 trials, normal approximation above).
fn binomial(rng: &mut StreamRng, n: u64, p: f64) -> u64 {
    if n < 64 {
        return (0..n).filter(|_| rng.unit_f64() < p).count() as u64;
    }
    let mean = n as f64 * p;
    let sd = (mean * (1.0 - p)).sqrt();
    (mean + sd * normal(rng)).round().clamp(0.0, n as f64) as u64
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StreamRng) -> f64 {
    let u = rng.unit_f64();
    let v = rng.unit_f64();
    (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// `online` minus the window `w` (the node is dark inside it).
fn cut(online: Vec<Interval>, w: Interval) -> Vec<Interval> {
    let mut out = Vec::with_capacity(online.len() + 1);
    for iv in online {
        if iv.end_s <= w.start_s || iv.start_s >= w.end_s {
            out.push(iv);
            continue;
        }
        if iv.start_s < w.start_s {
            out.push(Interval::new(iv.start_s, w.start_s));
        }
        if iv.end_s > w.end_s {
            out.push(Interval::new(w.end_s, iv.end_s));
        }
    }
    out
}

/// Adds `cap × seconds online` to each hour bucket the interval touches.
fn add_hours(per_hour: &mut [u64], start_s: u64, iv: Interval, cap: u64) {
    let hours = per_hour.len();
    let mut t = iv.start_s;
    while t < iv.end_s {
        let h = ((t - start_s) / HOUR_S) as usize;
        if h >= hours {
            break;
        }
        let h_end = start_s + (h as u64 + 1) * HOUR_S;
        let e = h_end.min(iv.end_s);
        per_hour[h] += cap * (e - t);
        t = e;
    }
}

/// Gini coefficient of non-negative amounts (0 = equal, → 1 = one holds all). A reported
/// statistic, not money.
pub(crate) fn gini(v: &mut [u64]) -> f64 {
    let n = v.len();
    let total: u128 = v.iter().map(|&x| u128::from(x)).sum();
    if n == 0 || total == 0 {
        return 0.0;
    }
    if n >= PAR_SORT_MIN {
        v.par_sort_unstable();
    } else {
        v.sort_unstable();
    }
    // G = (2 Σ i·x_i) / (n Σ x) − (n + 1)/n, i from 1.
    let weighted: u128 = v
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u128 + 1) * u128::from(x))
        .sum();
    2.0 * weighted as f64 / (n as f64 * total as f64) - (n as f64 + 1.0) / n as f64
}

/// Share of the total held by the top 10 % of holders.
pub(crate) fn top_decile_share(v: &mut [u64]) -> f64 {
    let n = v.len();
    let total: u128 = v.iter().map(|&x| u128::from(x)).sum();
    if n == 0 || total == 0 {
        return 0.0;
    }
    let k = n.div_ceil(10);
    let (_, _, top) = v.select_nth_unstable(n - k);
    let top_sum: u128 = top.iter().map(|&x| u128::from(x)).sum::<u128>() + u128::from(v[n - k]);
    top_sum as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds of `online` inside `w`.
    fn overlap(online: &[Interval], w: Interval) -> u64 {
        online
            .iter()
            .map(|iv| {
                iv.end_s
                    .min(w.end_s)
                    .saturating_sub(iv.start_s.max(w.start_s))
            })
            .sum()
    }

    #[test]
    fn poisson_table_draws_equal_poisson() {
        for lambda in [0.0, 1e-6, 0.3, 4.2, 29.9] {
            let table = PoissonTable::new(lambda);
            let (mut a, mut b) = (stream_rng(1, 2, 3), stream_rng(1, 2, 3));
            let mut sum = 0;
            for _ in 0..2_000 {
                let x = table.draw(&mut a);
                assert_eq!(x, poisson(&mut b, lambda), "lambda {lambda}");
                sum += x;
            }
            let mean = sum as f64 / 2_000.0;
            assert!(
                (mean - lambda).abs() < 0.1 * lambda.max(1.0),
                "{lambda}: {mean}"
            );
        }
        // Larger means: the exact law from the table, the normal approximation from
        // `poisson`; both have mean and variance λ.
        for lambda in [30.0, 57.5, 250.0, 9_000.0, 20_000.0] {
            let table = PoissonTable::new(lambda);
            // The guided walk finds what a binary search of the whole table finds.
            let (mut a, mut b) = (stream_rng(7, 8, 9), stream_rng(7, 8, 9));
            for _ in 0..if table.cdf.is_empty() { 0 } else { 5_000 } {
                let u = b.unit_f64();
                let k = table.cdf.partition_point(|&f| f < u);
                assert_eq!(table.draw(&mut a), k.min(table.cdf.len() - 1) as u64);
            }
            let mut rng = stream_rng(4, 5, 6);
            let n = 20_000;
            let draws: Vec<f64> = (0..n).map(|_| table.draw(&mut rng) as f64).collect();
            let mean = draws.iter().sum::<f64>() / n as f64;
            let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let se = (lambda / n as f64).sqrt();
            assert!((mean - lambda).abs() < 5.0 * se, "{lambda}: mean {mean}");
            assert!(
                (var / lambda - 1.0).abs() < 0.06,
                "{lambda}: variance {var}"
            );
        }
    }

    #[test]
    fn gini_and_decile() {
        assert_eq!(gini(&mut [5, 5, 5, 5]), 0.0);
        let g = gini(&mut [0, 0, 0, 10]);
        assert!((g - 0.75).abs() < 1e-12);
        assert!((top_decile_share(&mut [1; 10]) - 0.1).abs() < 1e-12);
        assert_eq!(top_decile_share(&mut [0, 0, 0, 0, 0, 0, 0, 0, 0, 7]), 1.0);
    }

    #[test]
    fn cut_and_hours() {
        let on = vec![Interval::new(0, 100), Interval::new(200, 300)];
        assert_eq!(
            cut(on.clone(), Interval::new(50, 250)),
            vec![Interval::new(0, 50), Interval::new(250, 300)]
        );
        assert_eq!(overlap(&on, Interval::new(50, 250)), 100);
        let mut ph = vec![0; 2];
        add_hours(&mut ph, 0, Interval::new(3_000, 4_000), 2);
        assert_eq!(ph, vec![1_200, 800]);
    }
}
