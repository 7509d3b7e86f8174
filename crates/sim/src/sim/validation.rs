//! Phase 4 of a round, validation: `sample_bps` of the served tasks are re-run by another
//! node. A task's worker, and independently its validator, is a node chosen in proportion to
//! the capacity it had online, so each node's tasks, its validated tasks and the validations
//! it ran follow its capacity, the last two as Poisson draws from its own stream
//! (thread-count independent, O(n)).
//!
//! A cheater answers a task (its own or one it validates) wrongly with probability
//! c = `cheat_bps`. Wrong answers never agree with each other, so a disagreement goes to a
//! third node and a majority decides; there is none only when the third node is wrong too
//! (probability f·c, f = the cheaters' share of capacity). So a wrong answer is caught with
//! probability q = 1 − f·c, as the worker's failure or, when a cheater validated wrongly, as
//! the validator's; a validation with the right answer is a correct validation
//! (`validations_ok`). Honest nodes are never failed.
//!
//! A receipt withholder's answers carry no receipt: every one of its tasks that is checked
//! fails, whatever the third node says (a missing receipt needs no majority), and the
//! validations it runs credit nothing. Hardware liars and usage inventors compute honestly.
//!
//! A share `framer_task_bps` of the spot checks comes from input framers, whose validator
//! got other inputs than the worker. Their reports are judged once by the dispatcher's rule
//! (`framed_refused`, from [`crat_core::policy::reports::same_inputs`]): refused, they fail
//! and credit nobody; accepted (without the rule) they would fail the worker.

use std::sync::OnceLock;

use crat_core::bps::Bps;
use rand::RngCore;
use rayon::prelude::*;

use super::churn::Churned;
use crate::scenario::{Scenario, Strategy};
#[cfg(test)]
use crate::streams::stream_rng;
use crate::streams::{StreamRng, keyed_stream_rng, round_key};

/// Round-number bit that separates a node's validation stream from its churn stream.
const VALIDATION_STREAM: u64 = 1 << 63;

/// One node's validation draws in a round.
#[derive(Clone, Copy, Debug)]
pub(super) struct Draw {
    /// Tasks it served.
    pub(super) tasks: u64,
    /// Validations it ran.
    pub(super) ran: u64,
    /// Of those, answered correctly.
    pub(super) ok: u64,
    /// Its wrong answers caught (as worker or validator).
    pub(super) failed: u64,
    /// Position among the round's tasks of its first own wrong answer caught
    /// ([`Draw::NOT_CAUGHT`] if none; a sentinel keeps a draw at 48 bytes).
    first_caught: u64,
    /// Framed spot checks of its tasks whose reports were refused.
    pub(super) framed_refused: u64,
}

impl Default for Draw {
    fn default() -> Self {
        Self {
            tasks: 0,
            ran: 0,
            ok: 0,
            failed: 0,
            first_caught: Self::NOT_CAUGHT,
            framed_refused: 0,
        }
    }
}

impl Draw {
    /// No own wrong answer caught this round.
    const NOT_CAUGHT: u64 = u64::MAX;

    /// Position among the round's tasks of its first own wrong answer caught.
    pub(super) fn first_caught(&self) -> Option<u64> {
        (self.first_caught != Self::NOT_CAUGHT).then_some(self.first_caught)
    }
}

/// Nodes per chunk of [`Draws`].
pub(super) const DRAW_CHUNK: usize = 1024;

/// What a node's validation draws read of the node, copied by the churn pass so that the
/// draws can be made while the close updates the nodes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DrawKey {
    /// Its streams' key ([`crate::streams::stream_key`] of the seed and its index).
    pub(super) stream_key: u64,
    /// Its power rating.
    pub(super) rating: u8,
    /// Its population.
    pub(super) strategy: Strategy,
}

/// Phase 4: each node's validation draws of a round, made chunk by chunk
/// ([`DRAW_CHUNK`] nodes) the first time one of the chunk's draws is asked for, by whichever
/// thread asks first (each part of the close reads its own chunk's, on whichever thread runs
/// it). A draw depends only on its node and the round, so the draws are the same whoever
/// makes them, in whatever order.
pub(super) struct Draws<'a> {
    keys: &'a [DrawKey],
    node_capacity: &'a [u64],
    /// Whether tasks are sampled at all (else no draw is made: tasks only).
    sampling: bool,
    tasks_per_cap: f64,
    per_cap: f64,
    cheat_p: f64,
    caught_p: f64,
    framed_p: f64,
    /// The dispatcher's verdict on input framers' reports.
    framed_refused: bool,
    /// Most nodes are online all round, so their mean is one of five: those draws search a
    /// table instead of recomputing the distribution (same results).
    tables: Vec<PoissonTable>,
    /// Node i's stream is `stream_rng(seed, index, round | VALIDATION_STREAM)`, started from
    /// its `stream_key` (of the run's seed) and this.
    round_key: u64,
    chunks: Vec<OnceLock<Vec<Draw>>>,
}

impl<'a> Draws<'a> {
    /// The draws of a round that served `served` tasks (none made yet); `framed_refused` is
    /// the dispatcher's verdict on input framers' reports.
    pub(super) fn new(
        (sc, framed_refused): (&Scenario, bool),
        (round, length_s): (u32, u64),
        churned: &'a Churned,
        capacity_rps: &[u32; 6],
        served: u64,
    ) -> Self {
        let (node_capacity, total_cap) = (&churned.node_capacity, churned.total_cap);
        let sampled = (u128::from(served) * u128::from(sc.validation.sample_bps)
            / u128::from(Bps::FULL.get())) as u64;
        let sampled = sampled.min(sc.validation.per_round_max);
        let cheat_p = f64::from(sc.validation.cheat_bps) / f64::from(Bps::FULL.get());
        let caught_p = 1.0 - cheat_p * churned.cheater_cap as f64 / total_cap.max(1) as f64;
        let tasks_per_cap = served as f64 / total_cap.max(1) as f64;
        let framed_p = f64::from(sc.strategies.framer_task_bps) / f64::from(Bps::FULL.get());
        let sampling = total_cap > 0 && sampled > 0;
        let per_cap = sampled as f64 / total_cap.max(1) as f64;
        let tables = if sampling {
            // Built on the pool's threads: the round waits for them (a thousand terms each).
            capacity_rps
                .par_iter()
                .map(|&c| PoissonTable::new((u64::from(c) * length_s) as f64 * per_cap))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            keys: &churned.draw_keys,
            node_capacity,
            sampling,
            tasks_per_cap,
            per_cap,
            cheat_p,
            caught_p,
            framed_p,
            framed_refused,
            tables,
            round_key: round_key(u64::from(round) | VALIDATION_STREAM),
            chunks: (0..node_capacity.len().div_ceil(DRAW_CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Node `k`'s draws (its chunk's made first if need be).
    pub(super) fn get(&self, k: usize) -> &Draw {
        &self.chunk(k / DRAW_CHUNK)[k % DRAW_CHUNK]
    }

    /// Every node's draws, in node order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Draw> {
        (0..self.chunks.len()).flat_map(|c| self.chunk(c).iter())
    }

    /// Makes every chunk not made yet, in parallel.
    pub(super) fn make_all(&self) {
        (0..self.chunks.len()).into_par_iter().for_each(|c| {
            self.chunk(c);
        });
    }

    fn chunk(&self, c: usize) -> &[Draw] {
        self.chunks[c].get_or_init(|| {
            let end = ((c + 1) * DRAW_CHUNK).min(self.node_capacity.len());
            (c * DRAW_CHUNK..end).map(|i| self.draw(i)).collect()
        })
    }

    /// Node `i`'s draws.
    fn draw(&self, i: usize) -> Draw {
        let cap = self.node_capacity[i];
        if !self.sampling {
            return Draw {
                tasks: (cap as f64 * self.tasks_per_cap) as u64,
                ..Draw::default()
            };
        }
        let key = &self.keys[i];
        if cap == 0 {
            return Draw::default();
        }
        let tasks = (cap as f64 * self.tasks_per_cap) as u64;
        let mut rng = keyed_stream_rng(key.stream_key, self.round_key);
        let lambda = cap as f64 * self.per_cap;
        let table = &self.tables[usize::from(key.rating)];
        let from_table = table.lambda == lambda;
        let draw = |rng: &mut StreamRng| {
            if from_table {
                table.draw(rng)
            } else {
                poisson(rng, lambda)
            }
        };
        let strategy = key.strategy;
        let honest = matches!(
            strategy,
            Strategy::Honest | Strategy::HardwareLiar | Strategy::UsageInventor
        );
        let own = if honest && self.framed_p == 0.0 {
            // Nothing reads its own checked tasks then (no framed ones, nothing caught): the
            // draw is passed over, the stream advanced past it, so `ran` is the draw it
            // always was.
            if from_table {
                table.skip(&mut rng);
            } else {
                skip_poisson(&mut rng, lambda);
            }
            0
        } else {
            draw(&mut rng)
        };
        let ran = draw(&mut rng);
        // Framed spot checks (drawn only when there are framers, so other runs draw what
        // they always drew): of its tasks, and of the validations it ran.
        let (checked, framed_own, credited) = if self.framed_p > 0.0 {
            let fo = binomial(&mut rng, own, self.framed_p);
            let fr = binomial(&mut rng, ran, self.framed_p);
            (own - fo, fo, ran - fr)
        } else {
            (own, 0, ran)
        };
        let (refused, framed_failed) = if self.framed_refused {
            (framed_own, 0)
        } else {
            (0, framed_own)
        };
        let (caught_own, wrong_ran, caught_ran) = match strategy {
            Strategy::Honest | Strategy::HardwareLiar | Strategy::UsageInventor => {
                return Draw {
                    tasks,
                    ok: credited,
                    failed: framed_failed,
                    framed_refused: refused,
                    ..Draw::default()
                };
            }
            Strategy::Cheater => {
                let wrong_own = binomial(&mut rng, checked, self.cheat_p);
                let caught_own = binomial(&mut rng, wrong_own, self.caught_p);
                let wrong_ran = binomial(&mut rng, credited, self.cheat_p);
                let caught_ran = binomial(&mut rng, wrong_ran, self.caught_p);
                (caught_own, wrong_ran, caught_ran)
            }
            // No receipt: each checked task fails, each validation it ran credits nothing.
            Strategy::ReceiptWithholder => (checked, credited, 0),
        };
        // The first of `caught_own` failures spread uniformly over the round's tasks lies at
        // tasks × (1 − U^(1/k)).
        let first_caught = if caught_own > 0 {
            let u = rng.unit_f64().powf(1.0 / caught_own as f64);
            ((tasks as f64) * (1.0 - u)) as u64
        } else {
            Draw::NOT_CAUGHT
        };
        Draw {
            tasks,
            ran,
            ok: credited - wrong_ran,
            failed: caught_own + caught_ran + framed_failed,
            first_caught,
            framed_refused: refused,
        }
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

/// Advances `rng` past one [`poisson`] draw with mean `lambda` without computing it: the
/// uniforms that draw takes (none, one below [`POISSON_INVERSION_MAX`], two above).
fn skip_poisson(rng: &mut StreamRng, lambda: f64) {
    let uniforms = if lambda <= 0.0 {
        0
    } else if lambda < POISSON_INVERSION_MAX {
        1
    } else {
        2
    };
    for _ in 0..uniforms {
        rng.next_u64();
    }
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

    /// Advances `rng` past one [`PoissonTable::draw`] without computing it.
    fn skip(&self, rng: &mut StreamRng) {
        if self.cdf.is_empty() {
            skip_poisson(rng, self.lambda);
        } else {
            rng.next_u64();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_a_draw_takes_the_uniforms_it_would() {
        // Table draws (walked and searched), drawn by `poisson` (no table: above the table's
        // largest mean), inversion and the normal approximation.
        for lambda in [0.0, 1e-6, 4.2, 29.9, 57.5, 9_000.0, 20_000.0] {
            let table = PoissonTable::new(lambda);
            let (mut a, mut b) = (stream_rng(1, 2, 3), stream_rng(1, 2, 3));
            for _ in 0..200 {
                table.skip(&mut a);
                table.draw(&mut b);
                assert_eq!(table.draw(&mut a), table.draw(&mut b), "table {lambda}");
                skip_poisson(&mut a, lambda);
                poisson(&mut b, lambda);
                assert_eq!(poisson(&mut a, lambda), poisson(&mut b, lambda), "{lambda}");
            }
        }
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
}
