//! Phase 2 of a round, placement: per-instance deployments placed by
//! [`crat_core::placement`] on the nodes online at the round's start, paid up front for a
//! one-round key, and their SLA checked per hour against the replicas' online time.

use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::Credits;
use crat_core::placement::{Assignment, Candidate, Placer, Request};
use crat_core::pricing::{DeployPlan, PerInstancePlan};
use crat_rewards::Interval;
use rayon::prelude::*;

use super::churn::{Churned, add_hours};
use super::{Node, RoundClock, hour_len};
use crate::SimError;
use crate::scenario::Scenario;

/// What the round's per-instance deployments brought and reserved.
#[derive(Debug)]
pub(super) struct Placed {
    /// Deployments asked for.
    pub(super) asked: u64,
    /// Deployments placed.
    pub(super) placed: u64,
    /// Their up-front payments.
    pub(super) income: Credits,
    /// Deployment-hours in which the replicas delivered the guaranteed rate.
    pub(super) sla_hours_ok: u64,
    /// Deployment-hours asked for.
    pub(super) sla_hours_total: u64,
    /// Per hour, the capacity-seconds the placed deployments reserve.
    pub(super) reserved_per_hour: Vec<u64>,
    /// The candidates buffer, for the next round's placement.
    pub(super) candidates: Vec<Candidate>,
}

/// Phase 2: places the round's per-instance deployments (`demand_factor` times the
/// scenario's clients) on the nodes online at the round's start, candidates in id order,
/// written into `candidates` (an earlier round's buffer, handed back in [`Placed`]).
pub(super) fn place(
    sc: &Scenario,
    clock: &RoundClock,
    (nodes, ids): (&[Node], &[NodeId]),
    (churned, mut candidates): (&Churned, Vec<Candidate>),
    capacity_rps: &[u32; 6],
    demand_factor: f64,
) -> Result<Placed, SimError> {
    let RoundClock {
        start_s,
        end_s,
        length_s,
        hours,
        ..
    } = *clock;
    let d = &sc.demand;
    let instances = ((d.per_instance_clients as f64) * demand_factor).round() as u64;
    let mut placed = Placed {
        asked: instances,
        placed: 0,
        income: Credits::ZERO,
        sla_hours_ok: 0,
        sla_hours_total: 0,
        reserved_per_hour: Vec::new(),
        candidates: Vec::new(),
    };
    if instances > 0 {
        // Candidates in id order, so the placer need not sort them; written over the last
        // round's (memory already mapped and cached: writing 56 bytes a node afresh cost
        // more than making them).
        let per_operator = sc.population.nodes_per_operator;
        candidates.clear();
        candidates.par_extend(nodes.par_iter().zip(ids).enumerate().map(|(k, (n, id))| {
            Candidate {
                id: *id,
                rating: n.rating,
                free_rps: capacity_rps[usize::from(n.rating.get())],
                operator: u64::from(n.index) / per_operator,
                online: churned
                    .online(k)
                    .first()
                    .is_some_and(|iv| iv.start_s <= start_s),
            }
        }));
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
            placed.placed += 1;
            placed.income = placed.income.saturating_add(quote.upfront);
            placed.sla_hours_ok +=
                sla.hours_met(&assigned, d.guaranteed_rps, |c| churned.online(c as usize));
        }
        placed.sla_hours_total = instances * hours as u64;
        candidates = placer.into_candidates();
    }
    placed.candidates = candidates;
    placed.reserved_per_hour = (0..hours)
        .map(|h| placed.placed * u64::from(d.guaranteed_rps) * hour_len(start_s, end_s, h))
        .collect();
    Ok(placed)
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
