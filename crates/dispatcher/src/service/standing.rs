//! A node's standing ([`NodeRequest::Standing`](crat_core::wire::NodeRequest::Standing)):
//! what it proved, the running round so far, and its earnings of closed rounds, as the
//! dispatcher holds them.
//!
//! Nothing is ruled here. Earnings are the rows the ledger stored with each closed round
//! (equal to the round's outcome); the running round's estimate is `crat_rewards::compute`
//! on the round's inputs so far ([`round_inputs`]), its length cut to the time elapsed: the
//! rank and bonus the node would get if the round ended now. That estimate reads every node
//! active in the round, so it is computed at most once per
//! [`DispatcherConfig::standing_estimate_ms`](super::DispatcherConfig::standing_estimate_ms)
//! and shared by every query; a node's queries count against its heartbeat rate limit
//! (`DispatcherConfig::heartbeat_rate`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use crat_core::policy::hardware::Claim;
use crat_core::wire::{
    ErrorCode, NodeStanding, ProvenGpu, ProvenHardware, RoundSoFar, STANDING_ROUNDS_MAX,
};
use crat_rewards::{RoundOutcome, compute};
use crat_transport::Transport;

use super::Dispatcher;
use super::reply::{Refusal, err};
use crate::rounds::round_inputs;

/// The running round's outcome so far, shared by standing queries.
pub(super) struct Estimate {
    /// When it was computed (monotonic).
    made: Instant,
    /// The round.
    index: u64,
    /// Seconds of the round it covers.
    elapsed_s: u64,
    /// `crat_rewards::compute` on the round so far.
    outcome: RoundOutcome,
}

impl<T: Transport> Dispatcher<T> {
    /// `node`'s standing, with its last `rounds` closed rounds (at most
    /// [`STANDING_ROUNDS_MAX`]; more is `BadRequest`).
    pub(super) async fn standing(
        &self,
        node: NodeId,
        rounds: u32,
    ) -> Result<NodeStanding, Refusal> {
        // A query costs ledger reads: each node's (key's) queries share its heartbeat rate.
        if let Some(rates) = &self.inner.heartbeat_rates {
            rates
                .lock()
                .allow(&node, self.monotonic_ms())
                .map_err(|e| err(ErrorCode::Busy, format!("standing queries: {e}")))?;
        }
        // The running round's estimate reads the sessions from the ledger.
        self.flush_sessions().await;
        if rounds > STANDING_ROUNDS_MAX {
            return Err(err(
                ErrorCode::BadRequest,
                format!("{rounds} rounds asked; at most {STANDING_ROUNDS_MAX}"),
            )
            .into());
        }
        let now = self.inner.clock.now_s();
        let clock = self.inner.config.round_clock();
        let index = clock.index_at(now);
        let start_s = clock.start(index);
        let (record, closed, tasks_served) = self
            .db(move |l| {
                Ok((
                    l.node(&node)?,
                    l.node_rounds(&node, rounds)?,
                    l.tasks_served(&node, start_s, now.saturating_add(1))?,
                ))
            })
            .await?;
        let estimate = self.estimate(index, now).await?;
        let mine = estimate.outcome.nodes.iter().find(|n| n.id == node);
        let round = RoundSoFar {
            index,
            start_s,
            length_s: clock.round_s,
            elapsed_s: estimate.elapsed_s,
            uptime_s: mine.map_or(0, |n| n.uptime_s),
            committed: mine.is_some_and(|n| n.committed),
            eligible: mine.is_some_and(|n| n.eligible),
            rank: mine.and_then(|n| n.rank),
            ranked: estimate
                .outcome
                .nodes
                .iter()
                .filter(|n| n.rank.is_some())
                .count() as u64,
            paid_ranks: estimate.outcome.aggregates.paid_ranks,
            guaranteed_usd_micro: mine.map_or(MicroUsd::ZERO, |n| n.guaranteed_usd_micro),
            bonus_usd_micro: mine.map_or(MicroUsd::ZERO, |n| n.bonus_usd_micro),
            tasks_served,
        };
        let (proven, challenges_passed, challenges_failed) = match self.proof_standing(&node) {
            Some(p) => (
                ProvenHardware {
                    rating: p.proven.rating,
                    mining_income_usd_micro_per_day: p.proven.income,
                    cpu: p.proven.cpu,
                    gpus: p
                        .proven
                        .gpus
                        .iter()
                        .filter_map(|c| match c {
                            Claim::Gpu {
                                device,
                                name,
                                rating,
                                ..
                            } => Some(ProvenGpu {
                                device: *device,
                                name: name.clone(),
                                rating: *rating,
                            }),
                            Claim::Cpu => None,
                        })
                        .take(crat_core::policy::hardware::GPUS_MAX)
                        .collect(),
                    challenged: p.challenged,
                },
                p.passed,
                p.failed,
            ),
            // Not connected: what the ledger holds from its last proof.
            None => (
                ProvenHardware {
                    rating: record
                        .as_ref()
                        .and_then(|r| PowerRating::new(r.rating))
                        .unwrap_or(PowerRating::MIN),
                    mining_income_usd_micro_per_day: record
                        .as_ref()
                        .map_or(MicroUsd::ZERO, |r| r.mining_income_usd_micro_per_day),
                    cpu: false,
                    gpus: Vec::new(),
                    challenged: false,
                },
                0,
                0,
            ),
        };
        // One lock: a guard made inside the struct literal below would live to its end.
        let (online, direct) = {
            let d = self.inner.dispatch.lock();
            (d.is_online(&node), d.direct(&node))
        };
        Ok(NodeStanding {
            node,
            online,
            proven,
            challenges_passed,
            challenges_failed,
            crat_micro: record.as_ref().map_or(MicroCrat::ZERO, |r| r.crat_micro),
            streak: record.as_ref().map_or(0, |r| r.streak),
            uptime_total_s: record.as_ref().map_or(0, |r| r.uptime_total_s),
            round,
            closed,
            direct,
        })
    }

    /// The running round's outcome so far: the shared one if it is of this round and younger
    /// than `standing_estimate_ms`, else computed now.
    async fn estimate(&self, index: u64, now: u64) -> Result<Arc<Estimate>, Refusal> {
        let fresh_for = Duration::from_millis(self.inner.config.standing_estimate_ms);
        if let Some(e) = self.inner.standing.lock().as_ref()
            && e.index == index
            && e.made.elapsed() < fresh_for
        {
            return Ok(e.clone());
        }
        let inner = self.inner.clone();
        let estimate = tokio::task::spawn_blocking(move || {
            let clock = inner.config.round_clock();
            let mut inputs = round_inputs(
                &*inner.ledger,
                &inner.config.rewards,
                &inner.config.pricing,
                clock,
                index,
            )
            .map_err(|e| Refusal::Internal(format!("round {index} so far: {e}")))?;
            // The round cut at now: the same rules over the part of it that has passed.
            let elapsed_s = now
                .saturating_sub(clock.start(index))
                .clamp(1, clock.round_s.max(1));
            inputs.params.round_s = elapsed_s;
            inputs.round.length_s = elapsed_s;
            let outcome = compute(&inputs)
                .map_err(|e| Refusal::Internal(format!("round {index} so far: {e}")))?;
            Ok::<_, Refusal>(Arc::new(Estimate {
                made: Instant::now(),
                index,
                elapsed_s,
                outcome,
            }))
        })
        .await
        .map_err(|e| Refusal::Internal(format!("estimate task failed: {e}")))??;
        *self.inner.standing.lock() = Some(estimate.clone());
        Ok(estimate)
    }
}
