//! Running rounds one after another: the outputs of round r (CRAT balance, streak, total
//! uptime, unpaid pool) become the inputs of round r + 1. The dispatcher's round closer and
//! the simulator both drive rounds through this.

use crat_core::gpu_table::GpuAssessment;
use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use serde::{Deserialize, Serialize};

use crate::{
    Interval, NodeInput, NodeOutcome, Params, RewardsError, Round, RoundInputs, RoundOutcome,
    compute::{Scratch, compute_with},
};

/// The next round's inputs after `inputs` closed with `outcome`: same parameters and nodes
/// (in the same order), `index + 1`, `start_s + length_s`, `carry_in = carry_out`, and per
/// node `crat_start = crat_end`, `streak_start = streak_end`,
/// `uptime_total_s_before = uptime_total_s`. The round's activity is cleared: income 0, no
/// online intervals, no validations, no external CRAT; the caller fills them in.
pub fn carry_forward(
    inputs: &RoundInputs,
    outcome: &RoundOutcome,
) -> Result<RoundInputs, RewardsError> {
    // Each input's outcome: by id (the outcome is in rank order).
    let mut by_id: Vec<(&NodeId, u32)> = outcome
        .nodes
        .iter()
        .enumerate()
        // Node counts are bounded by ROUND_NODES_MAX, far below u32::MAX.
        .map(|(k, o)| (&o.id, k as u32))
        .collect();
    by_id.sort_unstable();
    let positions = inputs
        .nodes
        .iter()
        .map(|n| {
            by_id
                .binary_search_by(|(id, _)| (*id).cmp(&n.id))
                .map(|pos| by_id[pos].1)
                .map_err(|_| RewardsError::UnknownNode { id: n.id })
        })
        .collect::<Result<Vec<u32>, RewardsError>>()?;
    carry_forward_indexed(inputs, outcome, &positions)
}

/// [`carry_forward`] given each input node's index in `outcome.nodes`, as
/// [`crate::compute_indexed`] returns it (no search).
pub fn carry_forward_indexed(
    inputs: &RoundInputs,
    outcome: &RoundOutcome,
    positions: &[u32],
) -> Result<RoundInputs, RewardsError> {
    let round = next_round(inputs, outcome, positions)?;
    let mut next = inputs.clone();
    carry(&mut next, outcome, positions, round);
    Ok(next)
}

/// The round after `inputs` closed with `outcome`, once `positions` is checked to give
/// each input node its own outcome. Nothing is changed on error.
fn next_round(
    inputs: &RoundInputs,
    outcome: &RoundOutcome,
    positions: &[u32],
) -> Result<Round, RewardsError> {
    let r = &inputs.round;
    let start_s = r
        .start_s
        .checked_add(r.length_s)
        .ok_or_else(|| RewardsError::overflow("round.start_s", "next round's start_s"))?;
    let index = r
        .index
        .checked_add(1)
        .ok_or_else(|| RewardsError::overflow("round.index", "next round's index"))?;
    if positions.len() != inputs.nodes.len() || outcome.nodes.len() != inputs.nodes.len() {
        return Err(RewardsError::out_of_range(
            "outcome.nodes",
            format!(
                "{} outcomes and {} positions for {} nodes",
                outcome.nodes.len(),
                positions.len(),
                inputs.nodes.len()
            ),
        ));
    }
    for (n, &k) in inputs.nodes.iter().zip(positions) {
        if outcome.nodes.get(k as usize).is_none_or(|o| o.id != n.id) {
            return Err(RewardsError::UnknownNode { id: n.id });
        }
    }
    Ok(Round {
        index,
        start_s,
        length_s: r.length_s,
        income_usd_micro: MicroUsd::ZERO,
        carry_in_usd_micro: outcome.aggregates.carry_out_usd_micro,
    })
}

/// Turns a closed round's inputs into the next round's in place: the one place the carried
/// state (CRAT, streak, total uptime) moves from an outcome to the next inputs. `positions`
/// and `round` come from [`next_round`].
fn carry(inputs: &mut RoundInputs, outcome: &RoundOutcome, positions: &[u32], round: Round) {
    for (n, &k) in inputs.nodes.iter_mut().zip(positions) {
        let o = &outcome.nodes[k as usize];
        n.crat_start_micro = o.crat_end_micro;
        n.streak_start = o.streak_end;
        n.uptime_total_s_before = o.uptime_total_s;
    }
    clear_activity(inputs);
    inputs.round = round;
}

/// Empties a round's activity (online intervals, validations, external CRAT, income): what
/// the driver's next round holds before it closes.
fn clear_activity(inputs: &mut RoundInputs) {
    inputs.round.income_usd_micro = MicroUsd::ZERO;
    for n in &mut inputs.nodes {
        n.online = Vec::new();
        n.validations_ok = 0;
        n.validations_failed = 0;
        n.crat_external_micro = MicroCrat::ZERO;
    }
}

/// What a node is, as opposed to what it did in a round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeProfile {
    /// The node.
    pub id: NodeId,
    /// Its power rating.
    pub rating: PowerRating,
    /// When it registered.
    pub registered_at_s: u64,
    /// Its GPU's average daily mining income.
    pub mining_income_usd_micro_per_day: MicroUsd,
}

impl NodeProfile {
    /// A profile rated by the GPU table ([`crat_core::gpu_table::GpuTable::assess`]).
    pub fn from_assessment(id: NodeId, registered_at_s: u64, gpu: &GpuAssessment) -> Self {
        Self {
            id,
            rating: gpu.rating,
            registered_at_s,
            mining_income_usd_micro_per_day: gpu.mining_income_usd_micro_per_day,
        }
    }
}

/// What a node did in one round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeActivity {
    /// Online intervals, absolute seconds.
    pub online: Vec<Interval>,
    /// Correct validations of other nodes' work.
    pub validations_ok: u64,
    /// Failed validations of its own work.
    pub validations_failed: u64,
    /// CRAT credited from outside the rules (airdrops, purchases).
    pub crat_external_micro: MicroCrat,
}

/// State a node carries from round to round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriedState {
    /// CRAT balance.
    pub crat_micro: MicroCrat,
    /// Consecutive committed rounds.
    pub streak: u64,
    /// Total uptime so far.
    pub uptime_total_s: u64,
}

/// A closed round: its inputs (so anyone can recompute it) and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedRound {
    /// What went in.
    pub inputs: RoundInputs,
    /// What came out.
    pub outcome: RoundOutcome,
    /// `positions[i]`: index in `outcome.nodes` of `inputs.nodes[i]` (not serialized).
    #[serde(skip)]
    positions: Vec<u32>,
}

impl ClosedRound {
    /// The outcome of `inputs.nodes[index]`, without a search when the round came from
    /// [`RoundDriver::close_round`] (a deserialized one is searched by id).
    pub fn outcome_of(&self, index: usize) -> Option<&NodeOutcome> {
        let id = &self.inputs.nodes.get(index)?.id;
        match self.positions.get(index) {
            Some(&k) => self.outcome.nodes.get(k as usize).filter(|o| o.id == *id),
            None => self.outcome.node(id),
        }
    }
}

/// Runs rounds back to back. Holds the next round's inputs with the activity still empty:
/// registered nodes with their carried state, the round's index and start, and the pool
/// carried in. Serializable, so a dispatcher can persist it between rounds.
///
/// Every registered node takes part in every round; a node that did nothing in a round is
/// simply not committed (its streak resets). Deregister nodes that left for good.
///
/// ```
/// use crat_core::hardware::PowerRating;
/// use crat_core::id::NodeId;
/// use crat_core::money::MicroUsd;
/// use crat_rewards::{Interval, NodeActivity, NodeProfile, Params, RoundDriver};
///
/// let mut driver = RoundDriver::new(Params::default(), 0, 0);
/// let id = NodeId::from_bytes([1; 32]);
/// driver.register(NodeProfile {
///     id,
///     rating: PowerRating::MAX,
///     registered_at_s: 0,
///     mining_income_usd_micro_per_day: MicroUsd::new(500_000),
/// });
/// for round in 0..3u64 {
///     let day = Interval::new(round * 86_400, (round + 1) * 86_400);
///     let activity = NodeActivity { online: vec![day], ..Default::default() };
///     let closed = driver.close_round(MicroUsd::new(1_000_000), [(id, activity)])?;
///     assert_eq!(closed.outcome.nodes[0].streak_end, round + 1);
/// }
/// assert_eq!(driver.state(&id).map(|s| s.streak), Some(3));
/// # Ok::<(), crat_rewards::RewardsError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundDriver {
    /// The next round's inputs; nodes sorted by id, activity empty.
    next: RoundInputs,
    /// Buffers reused from round to round (no state).
    #[serde(skip)]
    scratch: Scratch,
}

impl RoundDriver {
    /// A driver whose first round has number `first_index` and starts at `first_start_s`,
    /// with no nodes and nothing carried in.
    pub fn new(params: Params, first_index: u64, first_start_s: u64) -> Self {
        let length_s = params.round_s;
        Self {
            next: RoundInputs {
                params,
                round: Round {
                    index: first_index,
                    start_s: first_start_s,
                    length_s,
                    income_usd_micro: MicroUsd::ZERO,
                    carry_in_usd_micro: MicroUsd::ZERO,
                },
                nodes: Vec::new(),
            },
            scratch: Scratch::default(),
        }
    }

    /// The next round (its income is filled in by [`RoundDriver::close_round`]).
    pub fn next_round(&self) -> &Round {
        &self.next.round
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.next.params
    }

    /// Registers a node with zero CRAT, no streak and no uptime, or updates the profile of a
    /// registered node (its carried state is kept).
    pub fn register(&mut self, profile: NodeProfile) {
        match self.position(&profile.id) {
            Ok(i) => {
                let n = &mut self.next.nodes[i];
                n.rating = profile.rating;
                n.registered_at_s = profile.registered_at_s;
                n.mining_income_usd_micro_per_day = profile.mining_income_usd_micro_per_day;
            }
            Err(i) => self
                .next
                .nodes
                .insert(i, node_input(profile, CarriedState::default())),
        }
    }

    /// Registers a node with a given carried state (migrating from another ledger), or
    /// replaces both profile and state of a registered one.
    pub fn register_with_state(&mut self, profile: NodeProfile, state: CarriedState) {
        let node = node_input(profile, state);
        match self.position(&node.id) {
            Ok(i) => self.next.nodes[i] = node,
            Err(i) => self.next.nodes.insert(i, node),
        }
    }

    /// Registers many nodes with their carried states in one merge, O(n + k log k) for k
    /// newcomers among n registered nodes (one [`RoundDriver::register_with_state`] each
    /// would shift the list k times). A node already registered, or listed twice, takes the
    /// last profile and state given for it.
    pub fn register_all(&mut self, nodes: Vec<(NodeProfile, CarriedState)>) {
        let mut fresh: Vec<NodeInput> = nodes.into_iter().map(|(p, s)| node_input(p, s)).collect();
        // Stable: of two entries for one id the later stays last, and wins below.
        fresh.sort_by_key(|a| a.id);
        let old = std::mem::take(&mut self.next.nodes);
        let mut merged: Vec<NodeInput> = Vec::with_capacity(old.len() + fresh.len());
        let mut old = old.into_iter().peekable();
        let mut fresh = fresh.into_iter().peekable();
        loop {
            let next = match (old.peek(), fresh.peek()) {
                (Some(a), Some(b)) if a.id < b.id => old.next(),
                (Some(a), Some(b)) if a.id == b.id => {
                    old.next();
                    fresh.next()
                }
                (_, Some(_)) => fresh.next(),
                (Some(_), None) => old.next(),
                (None, None) => break,
            };
            match (next, merged.last_mut()) {
                (Some(n), Some(last)) if last.id == n.id => *last = n,
                (Some(n), _) => merged.push(n),
                (None, _) => break,
            }
        }
        self.next.nodes = merged;
    }

    /// Removes every listed node in one pass, O((n + k) log k); returns how many were
    /// registered.
    pub fn deregister_all(&mut self, ids: &[NodeId]) -> usize {
        let mut gone: Vec<&NodeId> = ids.iter().collect();
        gone.sort_unstable();
        let before = self.next.nodes.len();
        self.next
            .nodes
            .retain(|n| gone.binary_search(&&n.id).is_err());
        before - self.next.nodes.len()
    }

    /// Removes a node; `false` if it was not registered.
    pub fn deregister(&mut self, id: &NodeId) -> bool {
        match self.position(id) {
            Ok(i) => {
                self.next.nodes.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// A registered node's carried state.
    pub fn state(&self, id: &NodeId) -> Option<CarriedState> {
        let n = &self.next.nodes[self.position(id).ok()?];
        Some(CarriedState {
            crat_micro: n.crat_start_micro,
            streak: n.streak_start,
            uptime_total_s: n.uptime_total_s_before,
        })
    }

    /// Number of registered nodes.
    pub fn node_count(&self) -> usize {
        self.next.nodes.len()
    }

    /// Closes the next round with the round's client income and each node's activity (nodes
    /// not listed did nothing), then carries its outcome into the round after.
    ///
    /// On error (activity for an unregistered node or twice for one node, invalid inputs)
    /// the driver is unchanged.
    pub fn close_round(
        &mut self,
        income: MicroUsd,
        activity: impl IntoIterator<Item = (NodeId, NodeActivity)>,
    ) -> Result<ClosedRound, RewardsError> {
        self.close_round_with(income, activity, ClosedRound::clone)
    }

    /// [`RoundDriver::close_round`] for callers that only look at the closed round: `f`
    /// sees it, then the round's inputs become the next round's in place (carried state
    /// written over, activity cleared) instead of being copied, and `f`'s result is
    /// returned. Same rules, same outcome; at a million nodes this saves copying and
    /// allocating the whole node list every round.
    ///
    /// On error the driver is unchanged and `f` is not called.
    pub fn close_round_with<R>(
        &mut self,
        income: MicroUsd,
        activity: impl IntoIterator<Item = (NodeId, NodeActivity)>,
        f: impl FnOnce(&ClosedRound) -> R,
    ) -> Result<R, RewardsError> {
        let shell = self.next_shell();
        let mut inputs = std::mem::replace(&mut self.next, shell);
        let filled = Self::fill_and_compute(&mut inputs, income, activity, &mut self.scratch)
            .and_then(|(outcome, positions)| {
                let round = next_round(&inputs, &outcome, &positions)?;
                Ok((outcome, positions, round))
            });
        let (outcome, positions, round) = match filled {
            Ok(done) => done,
            Err(e) => {
                self.restore(inputs);
                return Err(e);
            }
        };
        let closed = ClosedRound {
            inputs,
            outcome,
            positions,
        };
        let result = f(&closed);
        let ClosedRound {
            mut inputs,
            outcome,
            positions,
        } = closed;
        carry(&mut inputs, &outcome, &positions, round);
        self.next = inputs;
        // The outcome's and the positions' buffers serve the next round.
        self.scratch.out = outcome.nodes;
        self.scratch.place = positions;
        Ok(result)
    }

    fn fill_and_compute(
        inputs: &mut RoundInputs,
        income: MicroUsd,
        activity: impl IntoIterator<Item = (NodeId, NodeActivity)>,
        scratch: &mut Scratch,
    ) -> Result<(RoundOutcome, Vec<u32>), RewardsError> {
        inputs.round.income_usd_micro = income;
        let mut seen = vec![false; inputs.nodes.len()];
        let mut hint = 0usize;
        for (id, a) in activity {
            // Activity usually comes in id order (a ledger query, the simulator): try the
            // position after the previous one before searching.
            let i = match inputs.nodes.get(hint) {
                Some(n) if n.id == id => hint,
                _ => inputs
                    .nodes
                    .binary_search_by(|n| n.id.cmp(&id))
                    .map_err(|_| RewardsError::UnknownNode { id })?,
            };
            hint = i + 1;
            if std::mem::replace(&mut seen[i], true) {
                return Err(RewardsError::DuplicateActivity { id });
            }
            let n = &mut inputs.nodes[i];
            n.online = a.online;
            n.validations_ok = a.validations_ok;
            n.validations_failed = a.validations_failed;
            n.crat_external_micro = a.crat_external_micro;
        }
        compute_with(inputs, scratch)
    }

    /// The next round's inputs without nodes (a placeholder while they are out).
    fn next_shell(&self) -> RoundInputs {
        RoundInputs {
            params: self.next.params.clone(),
            round: self.next.round.clone(),
            nodes: Vec::new(),
        }
    }

    /// Puts back inputs taken by a failed close, without the activity written into them.
    fn restore(&mut self, mut inputs: RoundInputs) {
        clear_activity(&mut inputs);
        self.next = inputs;
    }

    fn position(&self, id: &NodeId) -> Result<usize, usize> {
        self.next.nodes.binary_search_by(|n| n.id.cmp(id))
    }
}

fn node_input(p: NodeProfile, s: CarriedState) -> NodeInput {
    NodeInput {
        id: p.id,
        rating: p.rating,
        registered_at_s: p.registered_at_s,
        mining_income_usd_micro_per_day: p.mining_income_usd_micro_per_day,
        crat_start_micro: s.crat_micro,
        streak_start: s.streak,
        uptime_total_s_before: s.uptime_total_s,
        online: Vec::new(),
        validations_ok: 0,
        validations_failed: 0,
        crat_external_micro: MicroCrat::ZERO,
    }
}
