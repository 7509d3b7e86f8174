//! Running rounds one after another: the outputs of round r (CRAT balance, streak, total
//! uptime, unpaid pool) become the inputs of round r + 1. The dispatcher's round closer and
//! the simulator both drive rounds through this.

use crat_core::gpu_table::GpuAssessment;
use crat_core::hardware::PowerRating;
use crat_core::id::NodeId;
use crat_core::money::{MicroCrat, MicroUsd};
use serde::{Deserialize, Serialize};

use crate::pass::{ActivitySlot, Computed, Detail, RoundPart, Scratch, compute_filled};
use crate::{
    Aggregates, Interval, NodeInput, NodeOutcome, NodeResult, Params, RewardsError, Round,
    RoundInputs, RoundOutcome,
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
    if outcome.nodes.len() != inputs.nodes.len() {
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
    let results: Vec<NodeResult> = positions
        .iter()
        .map(|&k| NodeResult::from(&outcome.nodes[k as usize]))
        .collect();
    let round = round_after(inputs, &outcome.aggregates)?;
    let mut next = inputs.clone();
    carry(&mut next, &results, round);
    Ok(next)
}

/// The round after `inputs` closed with totals `aggregates`: the next index and start, the
/// pool carried in, no income yet. Fails only on overflow.
fn round_after(inputs: &RoundInputs, aggregates: &Aggregates) -> Result<Round, RewardsError> {
    let r = &inputs.round;
    let start_s = r
        .start_s
        .checked_add(r.length_s)
        .ok_or_else(|| RewardsError::overflow("round.start_s", "next round's start_s"))?;
    let index = r
        .index
        .checked_add(1)
        .ok_or_else(|| RewardsError::overflow("round.index", "next round's index"))?;
    Ok(Round {
        index,
        start_s,
        length_s: r.length_s,
        income_usd_micro: MicroUsd::ZERO,
        carry_in_usd_micro: aggregates.carry_out_usd_micro,
    })
}

/// Turns a closed round's inputs into the next round's in place (`results[i]` is node `i`'s).
fn carry(inputs: &mut RoundInputs, results: &[NodeResult], round: Round) {
    carry_nodes(&mut inputs.nodes, results);
    inputs.round = round;
}

/// The one place the carried state (CRAT, streak, total uptime) moves from a round's results
/// to the next round's inputs, node by node (`results[i]` is `nodes[i]`'s), each node's
/// activity cleared in the same pass.
fn carry_nodes(nodes: &mut [NodeInput], results: &[NodeResult]) {
    for (n, r) in nodes.iter_mut().zip(results) {
        n.crat_start_micro = r.crat_end_micro;
        n.streak_start = r.streak_end;
        n.uptime_total_s_before = r.uptime_total_s;
        clear_node_activity(n);
    }
}

/// One part of a closed round being carried forward
/// ([`RoundDriver::close_round_in_parts`]): consecutive nodes whose carried state moves from
/// their results to the next round's inputs, on whichever thread runs the part.
#[derive(Debug)]
pub struct CarryPart<'a> {
    nodes: &'a mut [NodeInput],
    results: &'a [NodeResult],
    done: bool,
}

impl CarryPart<'_> {
    /// Carries its nodes forward. A part runs once: a second call does nothing.
    pub fn run(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            carry_nodes(self.nodes, self.results);
        }
    }

    /// Its number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Empties a round's activity (online intervals, validations, external CRAT, income): what
/// the driver's next round holds before it closes.
fn clear_activity(inputs: &mut RoundInputs) {
    inputs.round.income_usd_micro = MicroUsd::ZERO;
    for n in &mut inputs.nodes {
        clear_node_activity(n);
    }
}

fn clear_node_activity(n: &mut NodeInput) {
    // Emptied, its buffer kept: a round closed in place fills it again.
    n.online.clear();
    n.validations_ok = 0;
    n.validations_failed = 0;
    n.crat_external_micro = MicroCrat::ZERO;
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

/// A closed round: its inputs (so anyone can recompute it), its outcome, and each node's
/// result in input order.
///
/// A round closed with [`RoundDetail::ResultsOnly`] carries no rank-ordered outcome:
/// `outcome.nodes` is empty and `outcome.aggregates` holds the round's totals
/// ([`crate::compute`] of `inputs` gives the full outcome).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedRound {
    /// What went in.
    pub inputs: RoundInputs,
    /// What came out.
    pub outcome: RoundOutcome,
    /// `positions[i]`: index in `outcome.nodes` of `inputs.nodes[i]` (not serialized).
    #[serde(skip)]
    positions: Vec<u32>,
    /// `results[i]`: the result of `inputs.nodes[i]` (not serialized).
    #[serde(skip)]
    results: Vec<NodeResult>,
}

impl ClosedRound {
    /// The outcome of `inputs.nodes[index]`, without a search when the round came from
    /// [`RoundDriver::close_round`] (a deserialized one is searched by id); `None` when the
    /// round was closed with [`RoundDetail::ResultsOnly`].
    pub fn outcome_of(&self, index: usize) -> Option<&NodeOutcome> {
        let id = &self.inputs.nodes.get(index)?.id;
        match self.positions.get(index) {
            Some(&k) => self.outcome.nodes.get(k as usize).filter(|o| o.id == *id),
            None => self.outcome.node(id),
        }
    }

    /// The result of `inputs.nodes[index]`: read in input order when the round came from a
    /// [`RoundDriver`] (sequential memory, where [`ClosedRound::outcome_of`] reads rank
    /// positions), else taken from its outcome.
    pub fn result_of(&self, index: usize) -> Option<NodeResult> {
        match self.results.get(index) {
            Some(r) => Some(*r),
            None => self.outcome_of(index).map(NodeResult::from),
        }
    }

    /// Every node's result in input order (`results()[i]` is `inputs.nodes[i]`'s) when the
    /// round came from a [`RoundDriver`]; empty for a deserialized round (see
    /// [`ClosedRound::result_of`]).
    pub fn results(&self) -> &[NodeResult] {
        &self.results
    }

    fn from_computed(inputs: RoundInputs, c: Computed) -> Self {
        Self {
            inputs,
            outcome: c.outcome,
            positions: c.positions,
            results: c.results,
        }
    }

    fn into_computed(self) -> (RoundInputs, Computed) {
        let computed = Computed {
            outcome: self.outcome,
            positions: self.positions,
            results: self.results,
        };
        (self.inputs, computed)
    }
}

/// What [`RoundDriver::close_round`] builds besides each node's result in input order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoundDetail {
    /// The rank-ordered outcome too ([`ClosedRound::outcome`], the interchange output).
    Outcome,
    /// The results and the totals only: no 128-byte outcome per node written at its rank
    /// position, and only the paid ranks put in order (a few thousand of a million). For
    /// callers that keep per-node state in input order, such as a simulator.
    ResultsOnly,
}

impl RoundDetail {
    fn pass_detail(self) -> Detail {
        match self {
            Self::Outcome => Detail::OutcomesAndResults,
            Self::ResultsOnly => Detail::Results,
        }
    }
}

/// Activity listed by node id, checked against a driver's registered nodes and laid out in
/// their order: what [`RoundDriver::close_round`] writes through [`ListedActivity::fill`].
/// Made by [`RoundDriver::activity_by_id`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListedActivity {
    /// `by_position[i]`: the activity of the driver's `i`-th node (default when not listed).
    by_position: Vec<NodeActivity>,
}

impl ListedActivity {
    /// Writes the `i`-th node's listed activity into its slot (moved out: each is written
    /// once).
    pub fn fill(&mut self, i: usize, mut slot: ActivitySlot<'_>) {
        if let Some(a) = self.by_position.get_mut(i) {
            slot.set(std::mem::take(a));
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
/// use crat_rewards::{ClosedRound, Interval, NodeActivity, NodeProfile, Params};
/// use crat_rewards::{RoundDetail, RoundDriver};
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
///     let mut listed = driver.activity_by_id([(id, activity)])?;
///     let closed = driver.close_round(
///         MicroUsd::new(1_000_000),
///         |i, slot| listed.fill(i, slot),
///         RoundDetail::Outcome,
///         ClosedRound::clone,
///     )?;
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

    /// Removes every listed node in one pass, O(n + k log k); returns how many were
    /// registered.
    pub fn deregister_all(&mut self, ids: &[NodeId]) -> usize {
        let mut gone: Vec<&NodeId> = ids.iter().collect();
        gone.sort_unstable();
        let before = self.next.nodes.len();
        // Both lists in id order: one walk through them, a comparison or two per node.
        let mut next_gone = gone.into_iter().peekable();
        self.next.nodes.retain(|n| {
            while next_gone.next_if(|g| **g < n.id).is_some() {}
            next_gone.next_if(|g| **g == n.id).is_none()
        });
        before - self.next.nodes.len()
    }

    /// Removes the nodes at `positions` of the driver's order (by id: the order of
    /// [`RoundDriver::close_round`]'s inputs and results), strictly increasing; returns how
    /// many. For a caller that keeps its own per-node arrays in that order (the simulator):
    /// no ids to sort or compare. Positions that are not increasing or not below
    /// [`RoundDriver::node_count`] are refused ([`RewardsError::OutOfRange`], field
    /// `positions[j]`), and the driver is not changed.
    pub fn deregister_at(&mut self, positions: &[usize]) -> Result<usize, RewardsError> {
        let n = self.next.nodes.len();
        for (j, &p) in positions.iter().enumerate() {
            if p >= n || (j > 0 && p <= positions[j - 1]) {
                return Err(RewardsError::out_of_range(
                    format!("positions[{j}]"),
                    format!("{p}: positions must increase and stay below {n} nodes"),
                ));
            }
        }
        let mut at = 0usize;
        let mut gone = positions.iter().copied().peekable();
        self.next.nodes.retain(|_| {
            let removed = gone.next_if_eq(&at).is_some();
            at += 1;
            !removed
        });
        Ok(positions.len())
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

    /// Each registered node's activity from a list by id (nodes not listed did nothing),
    /// for [`RoundDriver::close_round`]. Fails on an id that is not registered or listed
    /// twice; the driver is not changed.
    pub fn activity_by_id(
        &self,
        activity: impl IntoIterator<Item = (NodeId, NodeActivity)>,
    ) -> Result<ListedActivity, RewardsError> {
        let nodes = &self.next.nodes;
        let mut by_position = vec![NodeActivity::default(); nodes.len()];
        let mut seen = vec![false; nodes.len()];
        let mut hint = 0usize;
        for (id, a) in activity {
            // Activity usually comes in id order (a ledger query): try the position after the
            // previous one before searching.
            let i = match nodes.get(hint) {
                Some(n) if n.id == id => hint,
                _ => nodes
                    .binary_search_by(|n| n.id.cmp(&id))
                    .map_err(|_| RewardsError::UnknownNode { id })?,
            };
            hint = i + 1;
            if std::mem::replace(&mut seen[i], true) {
                return Err(RewardsError::DuplicateActivity { id });
            }
            by_position[i] = a;
        }
        Ok(ListedActivity { by_position })
    }

    /// Closes the next round with the round's client income and each node's activity, hands
    /// the closed round to `f`, then carries it into the round after, and returns what `f`
    /// returned.
    ///
    /// `fill(i, slot)` is called for each registered node in id order (`i` is its index in
    /// the round's inputs) and writes what it did into `slot` (it starts empty: a node left
    /// alone did nothing), with no lookup by id and no allocation per node; activity listed
    /// by id goes through [`RoundDriver::activity_by_id`]. `detail` says whether the
    /// rank-ordered outcome is built. Nothing is copied: once `f` returns, the round's inputs
    /// become the next round's in place (carried state written over, activity cleared).
    ///
    /// On error (invalid inputs) the driver is unchanged and `f` is not called.
    ///
    /// ```
    /// use crat_core::hardware::PowerRating;
    /// use crat_core::id::NodeId;
    /// use crat_core::money::MicroUsd;
    /// use crat_rewards::{Interval, NodeProfile, Params, RoundDetail, RoundDriver};
    ///
    /// let mut driver = RoundDriver::new(Params::default(), 0, 0);
    /// for b in 1..=3u8 {
    ///     driver.register(NodeProfile {
    ///         id: NodeId::from_bytes([b; 32]),
    ///         rating: PowerRating::MAX,
    ///         registered_at_s: 0,
    ///         mining_income_usd_micro_per_day: MicroUsd::new(500_000),
    ///     });
    /// }
    /// // Nodes 0 and 2 online all day, node 1 for an hour.
    /// let hours = [24u64, 1, 24];
    /// let paid = driver.close_round(
    ///     MicroUsd::new(1_000_000),
    ///     |i, mut slot| slot.online().push(Interval::new(0, hours[i] * 3_600)),
    ///     RoundDetail::ResultsOnly,
    ///     |closed| closed.result_of(1).map(|r| r.guaranteed_usd_micro),
    /// )?;
    /// assert_eq!(paid, Some(MicroUsd::ZERO));
    /// # Ok::<(), crat_rewards::RewardsError>(())
    /// ```
    pub fn close_round<R>(
        &mut self,
        income: MicroUsd,
        mut fill: impl FnMut(usize, ActivitySlot<'_>),
        detail: RoundDetail,
        f: impl FnOnce(&ClosedRound) -> R,
    ) -> Result<R, RewardsError> {
        // One part holding every node, filled in order.
        self.close_round_in_parts(
            income,
            usize::MAX,
            |parts| {
                for part in parts {
                    part.fill(&mut fill);
                }
            },
            |_| {},
            detail,
            f,
        )
    }

    /// [`RoundDriver::close_round`] with the nodes in parts of `part_nodes` consecutive
    /// nodes (the last may be shorter, `part_nodes` of 0 counts as 1), which `run` runs in
    /// any order and on any threads, each with [`RoundPart::fill`]: it writes each of the
    /// part's nodes' activity and runs that node's rules (all but the bonus) right after, so
    /// the round's pass over its nodes is spread over the threads that run the parts. A part
    /// that `run` leaves alone runs with nothing written (its nodes did nothing). The outcome
    /// is the same however the parts are run, and the same as [`RoundDriver::close_round`]'s
    /// for the same activity.
    ///
    /// Once `f` has seen the closed round, the round is carried forward in parts of the same
    /// nodes, which `carry` runs in any order and on any threads, each with
    /// [`CarryPart::run`]; the parts it leaves alone are carried after it, on the calling
    /// thread (`|_| {}` carries the whole round there).
    ///
    /// On error (invalid inputs: the first in input order is reported) the driver is
    /// unchanged and neither `f` nor `carry` is called; `fill` may then have run for nodes
    /// after the one at fault, in other parts.
    ///
    /// ```
    /// use crat_core::hardware::PowerRating;
    /// use crat_core::id::NodeId;
    /// use crat_core::money::MicroUsd;
    /// use crat_rewards::{Interval, NodeProfile, Params, RoundDetail, RoundDriver};
    ///
    /// let mut driver = RoundDriver::new(Params::default(), 0, 0);
    /// for b in 1..=5u8 {
    ///     driver.register(NodeProfile {
    ///         id: NodeId::from_bytes([b; 32]),
    ///         rating: PowerRating::MAX,
    ///         registered_at_s: 0,
    ///         mining_income_usd_micro_per_day: MicroUsd::new(500_000),
    ///     });
    /// }
    /// // Parts of two nodes, each run on a thread of its own; every node online all day.
    /// let day = Interval::new(0, 86_400);
    /// let paid = driver.close_round_in_parts(
    ///     MicroUsd::new(1_000_000),
    ///     2,
    ///     |parts| {
    ///         std::thread::scope(|s| {
    ///             for part in parts {
    ///                 s.spawn(move || part.fill(|_, mut slot| slot.online().push(day)));
    ///             }
    ///         })
    ///     },
    ///     // Carried forward on this thread.
    ///     |_| {},
    ///     RoundDetail::ResultsOnly,
    ///     |closed| closed.results().iter().map(|r| r.guaranteed_usd_micro.get()).sum::<u64>(),
    /// )?;
    /// assert_eq!(paid, 5 * 500_000);
    /// # Ok::<(), crat_rewards::RewardsError>(())
    /// ```
    pub fn close_round_in_parts<R>(
        &mut self,
        income: MicroUsd,
        part_nodes: usize,
        run: impl FnOnce(&mut [RoundPart<'_>]),
        carry: impl FnOnce(&mut [CarryPart<'_>]),
        detail: RoundDetail,
        f: impl FnOnce(&ClosedRound) -> R,
    ) -> Result<R, RewardsError> {
        let shell = self.next_shell();
        let mut inputs = std::mem::replace(&mut self.next, shell);
        inputs.round.income_usd_micro = income;
        let computed = compute_filled(
            &mut inputs,
            &mut self.scratch,
            detail.pass_detail(),
            part_nodes,
            run,
        )
        .and_then(|c| round_after(&inputs, &c.outcome.aggregates).map(|r| (c, r)));
        let (computed, round) = match computed {
            Ok(done) => done,
            Err(e) => {
                self.restore(inputs);
                return Err(e);
            }
        };
        let closed = ClosedRound::from_computed(inputs, computed);
        let result = f(&closed);
        let (mut inputs, computed) = closed.into_computed();
        {
            let part_nodes = part_nodes.max(1);
            let mut parts: Vec<CarryPart<'_>> = inputs
                .nodes
                .chunks_mut(part_nodes)
                .zip(computed.results.chunks(part_nodes))
                .map(|(nodes, results)| CarryPart {
                    nodes,
                    results,
                    done: false,
                })
                .collect();
            carry(&mut parts);
            for part in &mut parts {
                part.run();
            }
        }
        inputs.round = round;
        self.next = inputs;
        self.scratch.recycle(computed);
        Ok(result)
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
