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

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crat_core::gpu_table::GpuTable;
use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{Credits, MicroCrat};
use crat_core::placement::{Candidate, Placer, Request};
use crat_core::pricing::{DeployPlan, PerInstancePlan};
use crat_rewards::{ClosedRound, Interval, NodeActivity, NodeProfile, RoundDriver};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::SimError;
use crate::kernel::{EventQueue, SHARED_STREAM_BASE, stream_rng};
use crate::report::{NodeSummary, Report, RoundMetrics};
use crate::scenario::{HOURS_PER_ROUND_MAX, SESSIONS_PER_ROUND_MAX, Scenario, SessionModel};

/// Element moves spent on deregistering departed nodes per round at most (the driver removes
/// one node in O(n)); departed nodes beyond it stay registered, idle, until a later round.
pub const DEREGISTER_MOVES_PER_ROUND_MAX: u64 = 1 << 26;

/// Absolute time of the first round's start: 2023-11-14 00:00 UTC, a midnight, so that
/// times of day (diurnal patterns, peak windows) read naturally in exported rounds, and
/// initial registrations can lie before it.
pub const SIM_START_S: u64 = 1_699_920_000;

/// Nodes per parallel work item of the churn pass.
const CHURN_CHUNK: usize = 4096;

const DAY_S: u64 = 86_400;
const HOUR_S: u64 = 3_600;

/// A node's state in the simulator (what it is and what it does; its money and CRAT live in
/// the [`RoundDriver`]).
#[derive(Clone, Debug)]
struct Node {
    id: NodeId,
    rating: PowerRating,
    gpu: u16,
    region: u32,
    cheater: bool,
    online: bool,
    next_toggle_s: u64,
    joined_round: u32,
    departed_round: Option<u32>,
    registered: bool,
    low_rounds: u32,
    guaranteed_total: u64,
    bonus_total: u64,
    crat_end: u64,
    uptime_total: u64,
    validations_failed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Hour(u32),
    Close,
}

/// Node ids are uniformly random keys: their first eight bytes are already a good hash,
/// much cheaper than SipHash over 32 bytes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// The first eight bytes of an id: the key of [`Simulation`]'s index (12 bytes an entry
/// instead of 36; a collision of two random ids on it is checked and resolved).
fn id_key(id: &NodeId) -> u64 {
    let b = id.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

type IdHash = BuildHasherDefault<IdHasher>;

/// One chunk of the churn pass: per node its online intervals, the chunk's capacity-seconds
/// per hour, per node its capacity-seconds in the round.
type ChurnChunk = (Vec<Vec<Interval>>, Vec<u64>, Vec<u64>);

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
    nodes: Vec<Node>,
    /// Registered nodes sorted by id (the driver's order): (id, node index).
    by_id: Vec<(NodeId, u32)>,
    /// Every node's index by id.
    index: HashMap<u64, u32, IdHash>,
    round: u32,
    start_s: u64,
    initial_nodes: u64,
    report: Report,
    capacity_rps: [u32; 6],
    gpu_names: Vec<String>,
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
            by_id: Vec::new(),
            index: HashMap::default(),
            round: 0,
            start_s,
            initial_nodes: scenario.population.nodes,
            report: Report::new(scenario.name.clone(), seed),
            capacity_rps,
            gpu_names,
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
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeSummary {
                index: i as u64,
                id: n.id,
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
            })
            .collect()
    }

    /// Runs every remaining round, handing each closed round to `observer` (for trace
    /// export), and returns the report.
    pub fn run(mut self, mut observer: impl FnMut(&ClosedRound)) -> Result<Report, SimError> {
        while !self.finished() {
            let closed = self.step()?;
            observer(&closed);
        }
        Ok(self.report)
    }

    fn add_nodes(&mut self, count: u64, initial: bool) -> Result<(), SimError> {
        let pop = &self.scenario.population;
        let table = GpuTable::builtin();
        let weights: Vec<u64> = pop.gpu_mix.iter().map(|g| u64::from(g.weight)).collect();
        let weight_sum: u64 = weights.iter().sum();
        let churn = &self.scenario.churn;
        let stationary_on = churn.mean_on_s as f64 / (churn.mean_on_s + churn.mean_off_s) as f64;
        let first = self.nodes.len() as u64;
        let mut fresh: Vec<(NodeProfile, crat_rewards::CarriedState)> =
            Vec::with_capacity(count as usize);
        for index in first..first + count {
            let mut rng = stream_rng(self.seed, index, u64::MAX);
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
            let entry = table
                .lookup(&pop.gpu_mix[gpu].gpu)
                .ok_or_else(|| SimError::Scenario {
                    field: format!("population.gpu_mix[{gpu}].gpu"),
                    reason: "not in the GPU table".into(),
                })?;
            let registered_at_s = if initial {
                self.start_s
                    .saturating_sub(rng.gen_range(0..=pop.registration_spread_s))
            } else {
                self.start_s
            };
            let cheater = rng.gen_range(0..10_000) < self.scenario.validation.cheater_share_bps;
            let online = churn.model == SessionModel::None || rng.r#gen::<f64>() < stationary_on;
            let profile = NodeProfile {
                id,
                rating: entry.rating,
                registered_at_s,
                mining_income_usd_micro_per_day: entry.mining_income_usd_micro_per_day,
            };
            let state = crat_rewards::CarriedState {
                crat_micro: MicroCrat::new(pop.crat_initial_micro),
                streak: 0,
                uptime_total_s: 0,
            };
            fresh.push((profile, state));
            let node = Node {
                id,
                rating: entry.rating,
                gpu: gpu as u16,
                region: (index % u64::from(pop.regions)) as u32,
                cheater,
                online,
                next_toggle_s: self.start_s,
                joined_round: self.round,
                departed_round: None,
                registered: true,
                low_rounds: 0,
                guaranteed_total: 0,
                bonus_total: 0,
                crat_end: pop.crat_initial_micro,
                uptime_total: 0,
                validations_failed: 0,
            };
            self.by_id.push((id, index as u32));
            // On a (vanishingly rare) clash of first bytes the first node keeps the slot and
            // lookups of the second fall back to `by_id`.
            self.index.entry(id_key(&id)).or_insert(index as u32);
            self.nodes.push(node);
        }
        // Registering in id order appends to the driver's sorted list (O(1) each), where
        // random order would shift it on every insert.
        fresh.sort_unstable_by_key(|a| a.0.id);
        for (profile, state) in fresh {
            self.driver.register_with_state(profile, state);
        }
        self.by_id.sort_unstable();
        Ok(())
    }

    /// The index of a registered node.
    fn lookup(&self, id: &NodeId) -> Option<u32> {
        match self.index.get(&id_key(id)) {
            Some(&i) if self.nodes[i as usize].id == *id => Some(i),
            _ => self
                .by_id
                .binary_search_by(|(x, _)| x.cmp(id))
                .ok()
                .map(|p| self.by_id[p].1),
        }
    }

    /// Runs one round and returns it as closed by the rewards driver.
    pub fn step(&mut self) -> Result<ClosedRound, SimError> {
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
        let chunks: Vec<ChurnChunk> = self
            .nodes
            .par_chunks_mut(CHURN_CHUNK)
            .enumerate()
            .map(|(c, chunk)| {
                let mut online_all = Vec::with_capacity(chunk.len());
                let mut caps = Vec::with_capacity(chunk.len());
                let mut per_hour = vec![0u64; hours];
                for (k, n) in chunk.iter_mut().enumerate() {
                    let index = (c * CHURN_CHUNK + k) as u64;
                    if n.departed_round.is_some() {
                        online_all.push(Vec::new());
                        caps.push(0);
                        continue;
                    }
                    let mut rng = stream_rng(seed, index, u64::from(round));
                    let mut online = advance_churn(n, &churn, start_s, end_s, &mut rng);
                    for (region, w) in &outages {
                        if *region == n.region {
                            online = cut(online, *w);
                        }
                    }
                    let cap = u64::from(capacity_rps[usize::from(n.rating.get())]);
                    let mut total = 0;
                    for iv in &online {
                        total += cap * iv.len_s();
                        add_hours(&mut per_hour, start_s, *iv, cap);
                    }
                    online_all.push(online);
                    caps.push(total);
                }
                (online_all, per_hour, caps)
            })
            .collect();
        let mut capacity_req_hour = vec![0u64; hours];
        let mut online: Vec<Vec<Interval>> = Vec::with_capacity(self.nodes.len());
        let mut node_capacity: Vec<u64> = Vec::with_capacity(self.nodes.len());
        for (o, ph, caps) in chunks {
            for (h, v) in ph.iter().enumerate() {
                capacity_req_hour[h] += v;
            }
            online.extend(o);
            node_capacity.extend(caps);
        }

        // 2. Per-instance deployments placed at the round's start.
        let d = &sc.demand;
        let demand_factor = demand_factor(sc, round);
        let instances = ((d.per_instance_clients as f64) * demand_factor).round() as u64;
        let mut instance_income = Credits::ZERO;
        let mut sla_hours_ok: u64 = 0;
        let mut sla_hours_total: u64 = 0;
        let mut reserved_per_hour = vec![0u64; hours];
        let mut instances_placed = 0u64;
        if instances > 0 {
            let candidates: Vec<Candidate> = self
                .nodes
                .iter()
                .zip(&online)
                .map(|(n, online)| Candidate {
                    id: n.id,
                    rating: n.rating,
                    free_rps: capacity_rps[usize::from(n.rating.get())],
                    operator: 0,
                    online: online.first().is_some_and(|iv| iv.start_s <= start_s),
                })
                .enumerate()
                .map(|(i, mut c)| {
                    c.operator = i as u64 / sc.population.nodes_per_operator;
                    c
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
            for _ in 0..instances {
                sla_hours_total += hours as u64;
                let req = Request {
                    per_operator_max: d.per_operator_max,
                    ..Request::rate(d.guaranteed_rps, rating_min)
                };
                let Ok(assigned) = placer.place(&req) else {
                    continue;
                };
                instances_placed += 1;
                instance_income = instance_income.saturating_add(quote.upfront);
                for (h, reserved) in reserved_per_hour.iter_mut().enumerate() {
                    let h_start = start_s + h as u64 * HOUR_S;
                    let h_end = (h_start + HOUR_S).min(end_s);
                    let mut delivered: u128 = 0;
                    for a in &assigned {
                        if let Some(i) = self.lookup(&a.id) {
                            let secs = overlap(&online[i as usize], Interval::new(h_start, h_end));
                            delivered += u128::from(a.rps) * u128::from(secs);
                        }
                    }
                    let need = u128::from(d.guaranteed_rps) * u128::from(h_end - h_start);
                    if delivered >= need {
                        sla_hours_ok += 1;
                    }
                    *reserved += u64::from(d.guaranteed_rps) * (h_end - h_start);
                }
            }
        }

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
                    let h_len = (h_start + HOUR_S).min(end_s) - h_start;
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
                    let want = (want + rng.r#gen::<f64>()).floor() as u64;
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
        // capacity it had online, so each node's count of validated tasks and of validations
        // it ran are Poisson draws from its own stream (thread-count independent, O(n)).
        // A cheater's validated task is wrong with probability `cheat_bps`; the disagreement
        // goes to a third, honest node, so the worker's failure is recorded and the
        // validator's check counts as correct.
        let total_cap: u64 = node_capacity.iter().sum();
        let sampled = (u128::from(served) * u128::from(sc.validation.sample_bps) / 10_000) as u64;
        let sampled = sampled.min(sc.validation.per_round_max);
        let cheat_p = f64::from(sc.validation.cheat_bps) / 10_000.0;
        let draws: Vec<(u64, u64)> = if total_cap == 0 || sampled == 0 {
            vec![(0, 0); self.nodes.len()]
        } else {
            let per_cap = sampled as f64 / total_cap as f64;
            let nodes = &self.nodes;
            node_capacity
                .par_iter()
                .enumerate()
                .map(|(i, &cap)| {
                    if cap == 0 {
                        return (0, 0);
                    }
                    let mut rng = stream_rng(seed, i as u64, u64::from(round) | VALIDATION_STREAM);
                    let lambda = cap as f64 * per_cap;
                    let own = poisson(&mut rng, lambda);
                    let ran = poisson(&mut rng, lambda);
                    let failed = if nodes[i].cheater {
                        binomial(&mut rng, own, cheat_p)
                    } else {
                        0
                    };
                    (ran, failed)
                })
                .collect()
        };
        let validations: u64 = draws.iter().map(|d| d.0).sum();
        let validations_caught: u64 = draws.iter().map(|d| d.1).sum();
        let per_request_credits = Credits::new(served.saturating_mul(cost.get()));
        let income_credits = per_request_credits.saturating_add(instance_income);
        let income = sc.pricing.credits_to_usd(income_credits)?;

        // 4. Round close through the rewards driver.
        let by_id = &self.by_id;
        let nodes = &self.nodes;
        let draws_ref = &draws;
        let activity = by_id.iter().filter_map(|(id, i)| {
            let i = *i as usize;
            if nodes[i].departed_round.is_some() {
                return None;
            }
            Some((
                *id,
                NodeActivity {
                    online: std::mem::take(&mut online[i]),
                    validations_ok: draws_ref[i].0,
                    validations_failed: draws_ref[i].1,
                    crat_external_micro: MicroCrat::ZERO,
                },
            ))
        });
        let closed = self.driver.close_round(income, activity)?;

        // Metrics and provider behaviour, from the outcome only.
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
        let a = &closed.outcome.aggregates;
        m.pool_usd_micro = a.pool_usd_micro.get();
        m.paid_ranks = a.paid_ranks;
        m.bonus_usd_micro = a.bonus_paid_usd_micro.get();
        m.guaranteed_usd_micro = a.guaranteed_paid_usd_micro.get();
        m.carry_usd_micro = a.carry_out_usd_micro.get();
        let day_share = |v: u64| (u128::from(v) * u128::from(length_s) / u128::from(DAY_S)) as u64;
        let mut earnings: Vec<u64> = Vec::with_capacity(closed.outcome.nodes.len());
        let mut crats: Vec<u64> = Vec::with_capacity(closed.outcome.nodes.len());
        let departure_rounds = sc.behaviour.departure_rounds;
        let electricity = sc.behaviour.electricity_usd_micro_per_day;
        let mut departures = Vec::new();
        for o in &closed.outcome.nodes {
            let Some(i) = self.lookup(&o.id) else {
                continue;
            };
            let i = i as usize;
            let n = &mut self.nodes[i];
            let class = usize::from(n.rating.get()) - 1;
            let g = o.guaranteed_usd_micro.get();
            let b = o.bonus_usd_micro.get();
            n.guaranteed_total += g;
            n.bonus_total += b;
            n.crat_end = o.crat_end_micro.get();
            n.uptime_total = o.uptime_total_s;
            n.validations_failed += draws[i].1;
            crats.push(n.crat_end);
            if n.departed_round.is_some() {
                continue;
            }
            m.nodes_active += 1;
            m.class_nodes[class] += 1;
            m.class_guaranteed_usd_micro[class] += g;
            m.class_bonus_usd_micro[class] += b;
            if o.committed {
                m.nodes_committed += 1;
            }
            earnings.push(g + b);
            if n.cheater {
                m.cheaters_active += 1;
                m.cheater_bonus_usd_micro += b;
                m.cheater_crat_micro += n.crat_end;
            } else {
                m.honest_crat_micro += n.crat_end;
            }
            if departure_rounds > 0 {
                if g + b < day_share(electricity[class]) {
                    n.low_rounds += 1;
                } else {
                    n.low_rounds = 0;
                }
                if n.low_rounds >= departure_rounds {
                    n.departed_round = Some(round);
                    departures.push(i);
                }
            }
        }
        m.departures = departures.len() as u64;
        m.gini_earnings = gini(&mut earnings);
        m.crat_top_decile_share = top_decile_share(&mut crats);
        m.initial_retained = self.nodes[..self.initial_nodes as usize]
            .iter()
            .filter(|n| n.departed_round.is_none())
            .count() as u64;
        m.initial_nodes = self.initial_nodes;

        // Deregister departed nodes within the move budget (see DEREGISTER_MOVES_PER_ROUND_MAX).
        let budget = (DEREGISTER_MOVES_PER_ROUND_MAX / (self.by_id.len() as u64).max(1)).max(1);
        let mut removed = 0;
        for i in 0..self.nodes.len() {
            if removed >= budget {
                break;
            }
            let n = &mut self.nodes[i];
            if n.departed_round.is_some() && n.registered {
                self.driver.deregister(&n.id);
                n.registered = false;
                if let Ok(pos) = self.by_id.binary_search_by(|(id, _)| id.cmp(&n.id)) {
                    self.by_id.remove(pos);
                }
                removed += 1;
            }
        }
        self.report.rounds.push(m);
        self.round += 1;
        self.start_s = end_s;
        Ok(closed)
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

/// Advances a node's on/off sessions through `[start_s, end_s)`, returning its online
/// intervals (at most [`SESSIONS_PER_ROUND_MAX`]).
fn advance_churn(
    n: &mut Node,
    churn: &crate::scenario::Churn,
    start_s: u64,
    end_s: u64,
    rng: &mut ChaCha8Rng,
) -> Vec<Interval> {
    if churn.model == SessionModel::None {
        n.online = true;
        return vec![Interval::new(start_s, end_s)];
    }
    let mut out = Vec::new();
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
        let u: f64 = rng.r#gen::<f64>();
        let len = match churn.model {
            SessionModel::LogNormal => {
                let s = churn.sigma;
                let v: f64 = rng.r#gen::<f64>();
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
    out
}

/// A Poisson draw with mean `lambda`: inversion with one uniform below 30, normal
/// approximation above.
fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        let u = rng.r#gen::<f64>();
        let mut p = (-lambda).exp();
        let mut f = p;
        let mut k = 0;
        while u > f && k < 1_000 {
            k += 1;
            p *= lambda / k as f64;
            f += p;
        }
        return k;
    }
    (lambda + lambda.sqrt() * normal(rng)).round().max(0.0) as u64
}

/// A binomial draw (exact below 64 trials, normal approximation above).
fn binomial(rng: &mut ChaCha8Rng, n: u64, p: f64) -> u64 {
    if n < 64 {
        return (0..n).filter(|_| rng.r#gen::<f64>() < p).count() as u64;
    }
    let mean = n as f64 * p;
    let sd = (mean * (1.0 - p)).sqrt();
    (mean + sd * normal(rng)).round().clamp(0.0, n as f64) as u64
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u: f64 = rng.r#gen::<f64>();
    let v: f64 = rng.r#gen::<f64>();
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
    v.sort_unstable();
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
