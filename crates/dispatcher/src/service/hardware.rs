//! Proof of hardware, the dispatcher's side: compute challenges at registration and at random
//! times during a round (`crat_core::policy::hardware` decides sizes, deadlines, verdicts and
//! the schedule; this is their glue to the node connections, the ledger and the state machine).
//!
//! A challenge round sends every challenge of a node at once (its CPU and each claimed or
//! proven GPU), times each commitment, asks for random rows of each product and checks them on
//! the blocking pool (recomputing an opened row is `k × m` multiply-adds). What passed sets the
//! node's rating and mining income in the ledger (never its claim) and its rating for
//! placement. A re-challenge that is missed or failed on any device ends the node's online
//! session at its last passed challenge ([`Dispatch::challenge_failed`] and
//! [`Ledger::cut_online`]); the node is online again once a challenge passes.
//!
//! [`Dispatch::challenge_failed`]: crat_core::dispatch::Dispatch::challenge_failed
//! [`Ledger::cut_online`]: crate::ledger::Ledger::cut_online

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crat_core::dispatch::Effect;
use crat_core::gpu_table::GpuTable;
use crat_core::id::NodeId;
use crat_core::policy::challenge::{ChallengeSpec, Opening, pick_rows, verify_opening};
use crat_core::policy::hardware::{
    Answer, Claim, DeviceChallenge, DeviceProof, Proven, next_challenge_s, plan, prove_device,
    prove_node, recheck_claims,
};
use crat_core::wire::{ChallengeRequest, DispatcherPush, NodeAck};
use crat_transport::{ConnectionExt, Conversation, Transport};
use parking_lot::Mutex;

use super::{Dispatcher, new_id};

/// Challenge rounds run at once; more wait for a turn (before anything is sent or timed).
/// Bounds the dispatcher's verification work after a restart, when every node registers at
/// once: a round of a 16-GPU node checks 17 × 16 opened rows.
const ROUNDS_CONCURRENT_MAX: usize = 256;

/// What the dispatcher knows of one node's proof.
struct NodeProof {
    /// What its last challenge round proved.
    proven: Proven,
    /// When it is challenged next (Unix seconds); `None` while a round runs.
    next_s: Option<u64>,
    /// Challenge rounds passed and failed since it registered on its connection.
    passed: u64,
    failed: u64,
}

/// What the dispatcher holds of one connected node's proof, for its standing.
pub(super) struct ProofStanding {
    /// What its last finished challenge round proved.
    pub(super) proven: Proven,
    /// Whether a challenge round has finished since it registered.
    pub(super) challenged: bool,
    /// Challenge rounds passed since it registered.
    pub(super) passed: u64,
    /// Challenge rounds failed since it registered.
    pub(super) failed: u64,
}

/// The dispatcher's proof-of-hardware state: a secret for the schedule, challenge ids, and
/// each connected node's proof (entries of nodes no longer connected are dropped by the loop).
pub(super) struct HardwareState {
    secret: [u8; 32],
    next_id: AtomicU64,
    nodes: Mutex<HashMap<NodeId, NodeProof>>,
    rounds: tokio::sync::Semaphore,
}

impl HardwareState {
    pub(super) fn new() -> Self {
        Self {
            secret: new_id(),
            next_id: AtomicU64::new(1),
            nodes: Mutex::new(HashMap::new()),
            rounds: tokio::sync::Semaphore::new(ROUNDS_CONCURRENT_MAX),
        }
    }
}

/// Which round: at registration (the claims) or a random re-check (what was proven).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Round {
    Registration,
    Recheck,
}

impl<T: Transport> Dispatcher<T> {
    /// What `node` proved with its last challenge round, if it has finished one since it
    /// connected: `(rating, daily mining income in µUSD, CPU passed, GPUs proven)`.
    pub fn proven_hardware(&self, node: &NodeId) -> Option<(u8, u64, bool, usize)> {
        let nodes = self.inner.hardware.nodes.lock();
        let p = nodes.get(node)?;
        p.next_s?;
        Some((
            p.proven.rating.get(),
            p.proven.income.get(),
            p.proven.cpu,
            p.proven.gpus.len(),
        ))
    }

    /// What `node`'s connection proved so far (`None`: not connected).
    pub(super) fn proof_standing(&self, node: &NodeId) -> Option<ProofStanding> {
        let nodes = self.inner.hardware.nodes.lock();
        let p = nodes.get(node)?;
        Some(ProofStanding {
            proven: p.proven.clone(),
            challenged: p.passed + p.failed > 0,
            passed: p.passed,
            failed: p.failed,
        })
    }

    /// Challenges a node that just registered with `claims` (runs in the background).
    pub(super) fn challenge_registration(&self, node: NodeId, claims: Vec<Claim>) {
        self.inner.hardware.nodes.lock().insert(
            node,
            NodeProof {
                proven: Proven::nothing(),
                next_s: None,
                passed: 0,
                failed: 0,
            },
        );
        let me = self.clone();
        tokio::spawn(async move { me.challenge_round(node, claims, Round::Registration).await });
    }

    /// Starts the re-challenges that are due, once a second, until the dispatcher stops.
    pub(super) async fn hardware_loop(self) {
        let mut ticker = tokio::time::interval(Duration::from_millis(
            self.inner.config.tick_ms.clamp(100, 1_000),
        ));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = self.inner.clock.now_s();
            let due: Vec<(NodeId, Vec<Claim>)> = {
                // A set: a lookup per node, not a pass over the connected nodes per node (at
                // 10,000 nodes that quadratic pass was a quarter of the dispatcher's CPU).
                let connected: std::collections::HashSet<NodeId> =
                    self.inner.node_conns.lock().keys().copied().collect();
                let mut nodes = self.inner.hardware.nodes.lock();
                nodes.retain(|id, _| connected.contains(id));
                nodes
                    .iter_mut()
                    .filter(|(_, p)| p.next_s.is_some_and(|t| t <= now))
                    .map(|(id, p)| {
                        p.next_s = None;
                        (*id, recheck_claims(&p.proven))
                    })
                    .collect()
            };
            for (node, claims) in due {
                let me = self.clone();
                tokio::spawn(async move { me.challenge_round(node, claims, Round::Recheck).await });
            }
        }
    }

    /// Sends `claims`' challenges to `node` at once, judges the answers, stores what they
    /// proved and schedules the next round.
    async fn challenge_round(&self, node: NodeId, claims: Vec<Claim>, round: Round) {
        let Ok(_turn) = self.inner.hardware.rounds.acquire().await else {
            return;
        };
        let config = &self.inner.config.hardware;
        let challenges = plan(config, &claims);
        let handles: Vec<_> = challenges
            .iter()
            .map(|c| {
                let me = self.clone();
                let c = c.clone();
                tokio::spawn(async move { me.run_challenge(node, &c).await })
            })
            .collect();
        let mut proofs = Vec::with_capacity(handles.len());
        for (challenge, handle) in challenges.iter().zip(handles) {
            let answer = handle.await.ok().flatten();
            proofs.push(prove_device(GpuTable::builtin(), config, challenge, answer));
        }
        let proven = prove_node(&proofs);
        // A registration passes with anything proven; a re-check only when every device
        // proved again exactly what it had proven.
        let passed = match round {
            Round::Registration => proven.passed_any(),
            Round::Recheck => challenges.iter().zip(&proofs).all(|(c, p)| match p {
                DeviceProof::Cpu => true,
                DeviceProof::Gpu(claim) => *claim == c.claim,
                DeviceProof::Nothing => false,
            }),
        };
        let now = self.inner.clock.now_s();
        if passed {
            tracing::debug!(
                %node, ?round, rating = %proven.rating, income = proven.income.get(),
                cpu = proven.cpu, gpus = proven.gpus.len(), "challenge round passed"
            );
        } else {
            tracing::info!(
                %node, ?round, rating = %proven.rating, income = proven.income.get(),
                cpu = proven.cpu, gpus = proven.gpus.len(), "challenge round failed"
            );
        }
        let (rating, income) = (proven.rating, proven.income);
        let stored = self
            .db(move |l| {
                if let Some(mut record) = l.node(&node)? {
                    record.rating = rating.get();
                    record.mining_income_usd_micro_per_day = income;
                    l.upsert_node(&record)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = stored {
            tracing::error!(%node, error = ?e, "proven hardware not stored");
        }
        let effects = {
            let mut d = self.inner.dispatch.lock();
            d.node_rated(&node, rating);
            if passed {
                d.challenge_passed(now, &node)
            } else {
                d.challenge_failed(now, &node)
            }
        };
        // A failed challenge ends the session earlier than uptime already stored: cut it.
        let cuts: Vec<(u64, u64)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Offline {
                    node: n,
                    session_start_s,
                    last_seen_s,
                } if *n == node && !passed => Some((*session_start_s, *last_seen_s)),
                _ => None,
            })
            .collect();
        if !cuts.is_empty() {
            let result = self
                .db(move |l| {
                    for (start, end) in cuts {
                        l.cut_online(&node, start, end)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = result {
                tracing::error!(%node, error = ?e, "session not cut");
            }
        }
        self.apply(effects).await;
        let next = if passed {
            next_challenge_s(
                &self.inner.hardware.secret,
                node.as_bytes(),
                now,
                config.interval_mean_s,
            )
        } else {
            now.saturating_add(config.retry_after_failure_s.max(1))
        };
        if let Some(p) = self.inner.hardware.nodes.lock().get_mut(&node) {
            // A re-check that failed keeps what the node proved at last for the next try: it
            // comes back by proving it again.
            if passed || round == Round::Registration {
                p.proven = proven;
            }
            if passed {
                p.passed = p.passed.saturating_add(1);
            } else {
                p.failed = p.failed.saturating_add(1);
            }
            p.next_s = Some(next);
        }
    }

    /// One challenge to `node`: the commitment within the wait, then the opened rows checked.
    /// `Some` with the commitment's time when the answer is correct.
    async fn run_challenge(&self, node: NodeId, challenge: &DeviceChallenge) -> Option<Answer> {
        let conn = self
            .inner
            .node_conns
            .lock()
            .get(&node)
            .map(|c| c.conn.clone())?;
        let config = &self.inner.config.hardware;
        let limits = self.inner.config.frame_limits;
        let id = self.inner.hardware.next_id.fetch_add(1, Ordering::Relaxed);
        let seed: [u8; 32] = new_id();
        let (n, k, m) = challenge.spec_sizes();
        let spec = ChallengeSpec::new(seed, n, k, m).ok()?;
        let push = DispatcherPush::Challenge(ChallengeRequest {
            id,
            seed,
            n,
            k,
            m,
            device: challenge.device,
            deadline_ms: challenge.deadline_ms,
        });
        let started = Instant::now();
        let committed = tokio::time::timeout(
            Duration::from_millis(u64::from(challenge.wait_ms)),
            conn.call::<_, NodeAck>(&push, Conversation::NodeDispatcher, limits),
        )
        .await;
        // Rounded up: an answer 0.4 ms late is late.
        let elapsed_ms =
            u32::try_from(started.elapsed().as_micros().div_ceil(1_000)).unwrap_or(u32::MAX);
        let root = match committed {
            Ok(Ok(NodeAck::Committed { id: got, root })) if got == id => root,
            other => {
                tracing::info!(%node, id, ?other, "challenge not committed in time");
                return None;
            }
        };
        // The rows are drawn after the commitment, from a secret the node never sees.
        let rows = pick_rows(&new_id(), &root, n, config.rows_opened);
        let push = DispatcherPush::OpenRows {
            id,
            rows: rows.clone(),
        };
        let opened = tokio::time::timeout(
            Duration::from_millis(u64::from(config.open_deadline_ms)),
            conn.call::<_, NodeAck>(&push, Conversation::NodeDispatcher, limits),
        )
        .await;
        let openings = match opened {
            Ok(Ok(NodeAck::Opened { id: got, rows: o })) if got == id && o.len() == rows.len() => o,
            other => {
                tracing::info!(%node, id, ?other, "challenge rows not opened");
                return None;
            }
        };
        let correct = tokio::task::spawn_blocking(move || {
            openings.iter().zip(&rows).all(|(o, &row)| {
                o.row == row
                    && o.values.len() == spec.m() as usize * 4
                    && Opening::from_wire(o)
                        .is_some_and(|opening| verify_opening(&spec, &root, &opening).is_ok())
            })
        })
        .await
        .unwrap_or(false);
        if !correct {
            tracing::warn!(%node, id, "challenge answered wrongly");
            return None;
        }
        Some(Answer { elapsed_ms })
    }
}
