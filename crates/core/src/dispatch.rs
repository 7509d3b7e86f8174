//! The dispatch state machine: which nodes are online, which deployments they serve, and
//! what must be said to whom when something changes. Sans-IO: it reads no clock (every
//! event carries `now_s`) and sends nothing; each event returns [`Effect`]s for its driver to
//! carry out (push a message to a node, persist an uptime interval, publish a deployment's
//! state). The dispatcher service drives it over a real transport and a database; the
//! simulator can drive the very same machine.
//!
//! Rules:
//! - A node is **online** from its registration until it misses
//!   [`DispatchConfig::heartbeats_missed_max`] heartbeat intervals. Each online stretch is a
//!   *session*; [`Effect::Online`] reports it growing so the driver can persist uptime.
//! - A deployment asks for a number of **replicas** ([`DispatchConfig::replicas`]), placed
//!   with [`crate::placement`] on online nodes with free capacity and a suitable rating. A
//!   node's capacity is [`DispatchConfig::rps_per_rating`] × its rating.
//! - A replica is warm once its node reports it ready (a `ReplicaState` or a heartbeat's
//!   `ready` list). The deployment is [`DeploymentState::Ready`] when all wanted replicas are
//!   warm, [`DeploymentState::Degraded`] when some but not all are, and
//!   [`DeploymentState::Pending`] before its first replica is warm.
//! - **Small networks.** A per-request deployment that cannot get every wanted replica (a
//!   one-node network, say: a node holds at most one replica of a deployment) is created
//!   with the replicas that fit and served by them; [`Dispatch::shortfall`] says what is
//!   missing and why, and placement tops it up as capacity joins. Where nothing fits at all
//!   a deploy is refused ([`DispatchError::NoCapacity`]), and so is a per-instance
//!   deployment that cannot get all its replicas: its guaranteed rate is bought up front
//!   (see [`Dispatch::deploy`]).
//! - **Model updates** ([`Dispatch::update_model`]): every replica is assigned the new model
//!   and keeps serving the model before it (it stays warm) until its node reports the new
//!   one warm; a replica still on the old model [`DispatchConfig::update_grace_s`] after the
//!   update is placed again. Leases name every warm replica, of either model; a replica's
//!   reported model is [`Dispatch::serving_model`], so that answers are compared only with
//!   answers of the same model.
//! - When a node goes offline or a replica fails to load, the replica is placed again on
//!   another node (never on a node where it failed) at once; a deployment still short is
//!   retried on ticks with a doubling wait (1 s up to
//!   [`DispatchConfig::placement_backoff_max_s`]), and at once when a node joins or comes
//!   back.
//! - **Operators.** Nodes are grouped by the address block their packets come from
//!   ([`operator_of`]: IPv4 /24, IPv6 /48; the driver passes the observed address, never the
//!   one a node claims). At most [`DispatchConfig::per_operator_max`] replicas of one deployment go to one
//!   operator, relaxed to `⌈replicas wanted / operators available⌉` when the network has too
//!   few operators to spread them (a network of one /24, e.g. loopback, still serves).
//! - **Exclusion.** A node whose work failed validation ([`Dispatch::validation_failed`]) more
//!   than [`DispatchConfig::caught_max`] times within [`DispatchConfig::caught_window_s`] is
//!   excluded from placement for [`DispatchConfig::excluded_rounds`] rounds: its replicas are
//!   placed elsewhere and it gets none until the exclusion ends. Slashing and the loss of the
//!   round's bonus are not decided here: they follow from `validations_failed` in the round's
//!   inputs, by `crat-rewards`.
//!
//! # Limits of address-block sybil resistance
//! An address block is a cheap proxy for "one operator". It stops the casual case (several
//! nodes behind one home connection or one cloud subnet validating each other), but an
//! operator who rents addresses in many blocks (several clouds, VPNs, residential proxies)
//! looks like many operators, and honest operators behind one carrier-grade NAT look like
//! one. Stronger grouping needs identity that costs money (stake) or attestation; the
//! economic defence is that validators are drawn at random by the dispatcher and that one
//! failed validation costs half of a node's CRAT.
//!
//! ```
//! use crat_core::dispatch::{Dispatch, DispatchConfig, Effect};
//! use crat_core::hardware::{CpuInfo, HardwareInfo, PowerRating};
//! use crat_core::id::{DeploymentId, ModelId, NodeId};
//! use crat_core::pricing::{DeployPlan, PerRequestPlan};
//! use crat_core::money::Credits;
//! use crat_core::id::PeerAddr;
//! use crat_core::wire::DeploymentState;
//!
//! let mut d = Dispatch::new(DispatchConfig { replicas: 1, ..DispatchConfig::default() });
//! let node = NodeId::from_bytes([7; 32]);
//! let hw = HardwareInfo { gpus: vec![], cpu: CpuInfo { model: "cpu".into(), cores: 8, memory_bytes: 1 << 34 } };
//! let addr: PeerAddr = "127.0.0.1:4000".parse()?;
//! d.node_joined(100, node, PowerRating::MIN, vec![addr.clone()], &addr, hw, 1 << 30)?;
//! let dep = DeploymentId::from_bytes([1; 16]);
//! let plan = DeployPlan::PerRequest(PerRequestPlan { max_input_bytes: 1 << 20, credit_allowance: Credits::new(100) });
//! let effects = d.deploy(100, dep, ModelId::of_bytes(b"model"), 5, plan)?;
//! assert!(effects.iter().any(|e| matches!(e, Effect::Push { node: n, .. } if *n == node)));
//! assert_eq!(d.deployment_state(&dep).map(|s| s.0), Some(DeploymentState::Pending));
//! d.replica_ready(101, &node, &dep, ModelId::of_bytes(b"model"));
//! assert_eq!(d.deployment_state(&dep).map(|s| s.0), Some(DeploymentState::Ready));
//! assert_eq!(d.lease_replicas(&dep)?.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::bps::Bps;
use crate::hardware::{HardwareInfo, PowerRating};
use crate::id::{DeploymentId, ModelId, NodeId, PeerAddr};
use crate::placement::{Candidate, PlacementError, Placer, Request};
use crate::pricing::DeployPlan;
use crate::wire::{
    Assignment, Demand, DeploymentState, DispatcherPush, Heartbeat, Replica, ReplicaState,
};

/// Most nodes the machine tracks.
pub const NODES_MAX: usize = 1 << 20;

/// Longest reason of a load failure kept.
const LOAD_FAILURE_BYTES_MAX: usize = 256;
/// Most deployments the machine tracks.
pub const DEPLOYMENTS_MAX: usize = 1 << 20;

/// Knobs of the dispatch rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchConfig {
    /// Expected heartbeat interval. Default 5 s.
    pub heartbeat_interval_s: u64,
    /// Heartbeat intervals a node may miss before it is offline. Default 3.
    pub heartbeats_missed_max: u64,
    /// Replicas per deployment (at least; a per-instance plan gets more when its guaranteed
    /// rate needs them). Default 2.
    pub replicas: u32,
    /// Rate one replica of a per-instance plan serves at most. Default 100 rps.
    pub replica_rps_max: u32,
    /// Rate reserved per replica of a per-request plan. Default 10 rps.
    pub per_request_replica_rps: u32,
    /// Capacity per rating point of a node. Default 100 rps (a rating-5 node: 500 rps).
    pub rps_per_rating: u32,
    /// Lowest rating a replica's node may have. Default 1.
    pub rating_min: PowerRating,
    /// Most replicas of one deployment on one operator (address block); 0 = no limit.
    /// Default 1; relaxed when there are fewer operators than replicas (see the module
    /// docs).
    pub per_operator_max: u32,
    /// Failed validations a node may have within [`Self::caught_window_s`] before it is
    /// excluded (excluded at `caught_max + 1`). Default 1.
    pub caught_max: u32,
    /// The window failed validations are counted in. Default 86,400 s.
    pub caught_window_s: u64,
    /// How many rounds an excluded node gets no replicas. Default 3.
    pub excluded_rounds: u32,
    /// Length of a round (the dispatcher sets it from its rewards parameters). Default
    /// 86,400 s.
    pub round_s: u64,
    /// Most nodes in the registry (a new one past it is refused
    /// [`DispatchError::RegistryFull`]). Default (and at most) [`NODES_MAX`].
    pub nodes_max: usize,
    /// A deployment whose model failed to load on this many distinct nodes is failed: no
    /// longer placed, listed by [`Dispatch::failed_deployments`] with the nodes' reasons for
    /// the driver to stop it. Default 3.
    pub load_failures_max: usize,
    /// A node offline this long is forgotten (the registry keeps only nodes that may come
    /// back; one that does registers again). Default 7 days.
    pub node_forget_after_s: u64,
    /// Longest wait between two placement attempts of a deployment short of replicas: each
    /// attempt that leaves it short doubles its wait (1 s, 2 s, 4 s, …) up to this, so a
    /// deployment nothing can host costs a tick nothing most of the time. A node joining or
    /// coming back tries every short deployment at once; a deployment that loses a replica
    /// is tried at once. Default 60 s.
    pub placement_backoff_max_s: u64,
    /// How long after a model update a replica may still serve the model before it: past
    /// this, it is placed again (a node that never loads the new model, or keeps claiming
    /// the old one, does not keep the deployment half-updated). Default 600 s.
    pub update_grace_s: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_s: 5,
            heartbeats_missed_max: 3,
            replicas: 2,
            replica_rps_max: 100,
            per_request_replica_rps: 10,
            rps_per_rating: 100,
            rating_min: PowerRating::MIN,
            per_operator_max: 1,
            caught_max: 1,
            caught_window_s: 86_400,
            excluded_rounds: 3,
            round_s: 86_400,
            nodes_max: NODES_MAX,
            load_failures_max: 3,
            node_forget_after_s: 7 * 86_400,
            placement_backoff_max_s: 60,
            update_grace_s: 600,
        }
    }
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `push` to `node` (best effort: heartbeat answers carry the full assignment set,
    /// so a lost push is repaired within one heartbeat).
    Push {
        /// The node.
        node: NodeId,
        /// What to tell it.
        push: DispatcherPush,
    },
    /// `node` was online during `[session_start_s, until_s)`; persist it.
    Online {
        /// The node.
        node: NodeId,
        /// When the session began.
        session_start_s: u64,
        /// Online at least until here.
        until_s: u64,
    },
    /// `node` went offline; its session ended at `last_seen_s`.
    Offline {
        /// The node.
        node: NodeId,
        /// When the session began.
        session_start_s: u64,
        /// Its last heartbeat.
        last_seen_s: u64,
    },
    /// A deployment's state changed.
    DeploymentState {
        /// The deployment.
        deployment: DeploymentId,
        /// Its new state.
        state: DeploymentState,
    },
}

/// Why a dispatch request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The node is not registered.
    #[error("node {0} is not registered")]
    UnknownNode(NodeId),
    /// The deployment is not known.
    #[error("deployment {0} not found")]
    UnknownDeployment(DeploymentId),
    /// Not enough capacity for the deployment's replicas.
    #[error("{0}")]
    NoCapacity(PlacementError),
    /// The deployment has no warm replica yet.
    #[error("deployment {0} has no ready replica yet")]
    NotReady(DeploymentId),
    /// The registry is full ([`DispatchConfig::nodes_max`]): a new node is refused, a known
    /// one is not.
    #[error("the node registry is full")]
    RegistryFull,
    /// A table is full.
    #[error("too many {0}")]
    Full(&'static str),
    /// The deployment exists already.
    #[error("deployment {0} exists already")]
    Exists(DeploymentId),
}

/// Why a deployment has fewer replicas placed than it wants ([`Dispatch::shortfall`]). It
/// is served by the replicas it has; more are placed as capacity joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// Replicas placed.
    pub placed: u32,
    /// Replicas its plan wants.
    pub wanted: u32,
    /// Online nodes that could hold one of its replicas (room for the model, not excluded,
    /// no load failure of it) when placement last ran short; a node holds at most one
    /// replica of a deployment.
    pub hosts: u32,
    /// Rate each replica reserves on its node.
    pub replica_rps: u32,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            placed,
            wanted,
            hosts,
            replica_rps,
        } = *self;
        write!(f, "{placed} of {wanted} replicas placed: ")?;
        if hosts < wanted {
            let s = if hosts == 1 { "" } else { "s" };
            write!(
                f,
                "the network has {hosts} node{s} that can host this model, and a node holds \
                 one replica of a deployment"
            )?;
        } else {
            write!(
                f,
                "the other nodes that can host this model have no {replica_rps} rps free \
                 for a replica"
            )?;
        }
        write!(f, "; more are placed as capacity joins")
    }
}

struct NodeEntry {
    rating: PowerRating,
    addrs: Vec<PeerAddr>,
    model_bytes_max: u64,
    operator: u64,
    online: bool,
    session_start_s: u64,
    last_seen_s: u64,
    /// Rate reserved by replicas placed here.
    used_rps: u32,
    /// Utilisation reported by the last heartbeat.
    utilisation_bps: Bps,
    /// When its recent failed validations happened (at most `caught_max + 1`).
    caught_at_s: std::collections::VecDeque<u64>,
    /// Excluded from placement before this time.
    excluded_until_s: u64,
    /// When it last passed a compute challenge (proof of hardware).
    proven_s: Option<u64>,
    /// A challenge failed and none passed since: heartbeats keep it known but open no
    /// session.
    suspended: bool,
    /// Whether the dispatcher reached it directly from outside since it registered
    /// ([`Dispatch::set_direct`]); `None` until checked.
    direct: Option<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct ReplicaEntry {
    rps: u32,
    /// The model its node reported warm (`None` until it reports one): the deployment's, or
    /// the one before it while an update rolls out.
    serving: Option<ModelId>,
}

struct DeploymentEntry {
    model: ModelId,
    /// The model before the last update, which replicas serve until they switch.
    previous_model: Option<ModelId>,
    /// When the last update was made, while some replica may still serve the model before.
    updated_at_s: Option<u64>,
    model_bytes: u64,
    max_input_bytes: u64,
    replicas_wanted: u32,
    replica_rps: u32,
    /// Whether each replica is held to `replica_rps` (per-instance plans).
    rate_limited: bool,
    replicas: BTreeMap<NodeId, ReplicaEntry>,
    /// Nodes where the model failed to load: never placed there again.
    failed_on: BTreeSet<NodeId>,
    /// Their reasons, the first [`DispatchConfig::load_failures_max`].
    load_failures: Vec<String>,
    state: DeploymentState,
    /// When a tick tries to place it next while it is short of replicas, and the wait that
    /// set it (doubling, see [`DispatchConfig::placement_backoff_max_s`]).
    retry_at_s: u64,
    retry_wait_s: u64,
    /// Online nodes that could hold a replica of it (model fits, not excluded, no load
    /// failure), counted when placement last ran short: the reason of its [`Shortfall`].
    hosts_seen: u32,
}

impl DeploymentEntry {
    fn ready_count(&self) -> u32 {
        self.replicas
            .values()
            .filter(|r| r.serving.is_some())
            .count() as u32
    }

    fn on_model_count(&self) -> u32 {
        self.replicas
            .values()
            .filter(|r| r.serving == Some(self.model))
            .count() as u32
    }

    fn assignment(&self, id: DeploymentId) -> Assignment {
        Assignment {
            deployment: id,
            model: self.model,
            model_bytes: self.model_bytes,
            max_input_bytes: self.max_input_bytes,
            rate_per_s: self.rate_limited.then_some(self.replica_rps),
        }
    }
}

/// The dispatch state machine. See the [module docs](self).
pub struct Dispatch {
    config: DispatchConfig,
    nodes: BTreeMap<NodeId, NodeEntry>,
    deployments: BTreeMap<DeploymentId, DeploymentEntry>,
    /// The latest time an event carried.
    now_s: u64,
    /// Placement attempts made (one per deployment tried), for monitoring and tests.
    placements_tried: u64,
    /// [`Dispatch::demand_at`]'s last answer and the second it was computed in.
    demand_cache: Option<(u64, Demand)>,
}

/// The operator of a node: its IPv4 /24 or IPv6 /48 address block (hashed), or the node
/// itself when no address parses. Nodes of one operator share placement limits.
pub fn operator_of(node: &NodeId, addrs: &[PeerAddr]) -> u64 {
    let block = addrs.iter().find_map(|a| {
        let ip = a.as_str().parse::<std::net::SocketAddr>().ok()?.ip();
        Some(match ip {
            std::net::IpAddr::V4(v4) => {
                let o = v4.octets();
                vec![4, o[0], o[1], o[2]]
            }
            std::net::IpAddr::V6(v6) => {
                let mut v = vec![6];
                v.extend_from_slice(&v6.octets()[..6]);
                v
            }
        })
    });
    let hash = match block {
        Some(b) => blake3::hash(&b),
        None => blake3::hash(node.as_bytes()),
    };
    let mut word = [0u8; 8];
    word.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(word)
}

impl Dispatch {
    /// An empty machine.
    pub fn new(config: DispatchConfig) -> Self {
        Self {
            config,
            nodes: BTreeMap::new(),
            deployments: BTreeMap::new(),
            now_s: 0,
            placements_tried: 0,
            demand_cache: None,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    /// A node registered (its signature and freshness already checked by the driver), from
    /// `observed`, the address its packets come from: its operator (placement limits, spot
    /// checks' validators) is that address's block, never what the node claims (`addrs`,
    /// where clients reach it). Re-registering an online node keeps its session. Returns the
    /// effects, among them pushes that place waiting replicas on the new capacity;
    /// [`DispatchError::RegistryFull`] for a new node past [`NODES_MAX`].
    #[allow(clippy::too_many_arguments)]
    pub fn node_joined(
        &mut self,
        now_s: u64,
        node: NodeId,
        rating: PowerRating,
        addrs: Vec<PeerAddr>,
        observed: &PeerAddr,
        _hardware: HardwareInfo,
        model_bytes_max: u64,
    ) -> Result<Vec<Effect>, DispatchError> {
        let mut effects = Vec::new();
        self.now_s = self.now_s.max(now_s);
        let operator = operator_of(&node, std::slice::from_ref(observed));
        match self.nodes.get_mut(&node) {
            Some(e) => {
                e.rating = rating;
                e.suspended = false;
                e.addrs = addrs;
                e.model_bytes_max = model_bytes_max;
                e.operator = operator;
                // Its address may have changed: reachable directly is checked again.
                e.direct = None;
                if !e.online {
                    e.online = true;
                    e.session_start_s = now_s;
                }
                e.last_seen_s = now_s;
            }
            None => {
                if self.nodes.len() >= self.config.nodes_max.min(NODES_MAX) {
                    return Err(DispatchError::RegistryFull);
                }
                self.nodes.insert(
                    node,
                    NodeEntry {
                        rating,
                        addrs,
                        model_bytes_max,
                        operator,
                        online: true,
                        session_start_s: now_s,
                        last_seen_s: now_s,
                        used_rps: 0,
                        utilisation_bps: Bps::ZERO,
                        caught_at_s: std::collections::VecDeque::new(),
                        excluded_until_s: 0,
                        proven_s: None,
                        suspended: false,
                        direct: None,
                    },
                );
            }
        }
        if let Some(e) = self.nodes.get(&node) {
            effects.push(Effect::Online {
                node,
                session_start_s: e.session_start_s,
                until_s: now_s,
            });
        }
        self.fill_all(&mut effects, true);
        Ok(effects)
    }

    /// A heartbeat from `node`: it is alive until `now_s`, and these deployments are warm.
    pub fn heartbeat(
        &mut self,
        now_s: u64,
        node: &NodeId,
        heartbeat: &Heartbeat,
    ) -> Result<Vec<Effect>, DispatchError> {
        let mut effects = Vec::new();
        let entry = self
            .nodes
            .get_mut(node)
            .ok_or(DispatchError::UnknownNode(*node))?;
        entry.utilisation_bps = heartbeat.load.utilisation_bps.min(Bps::FULL);
        if entry.suspended {
            // Its last compute challenge failed: alive, but not online until one passes.
            return Ok(effects);
        }
        if !entry.online {
            // Came back without re-registering (a short network gap): a new session.
            entry.online = true;
            entry.session_start_s = now_s;
        }
        entry.last_seen_s = entry.last_seen_s.max(now_s);
        effects.push(Effect::Online {
            node: *node,
            session_start_s: entry.session_start_s,
            until_s: entry.last_seen_s,
        });
        for r in &heartbeat.ready {
            self.mark_ready(node, &r.deployment, r.model, &mut effects);
        }
        Ok(effects)
    }

    /// A replica on `node` is warm with `model`.
    pub fn replica_ready(
        &mut self,
        _now_s: u64,
        node: &NodeId,
        deployment: &DeploymentId,
        model: ModelId,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.mark_ready(node, deployment, model, &mut effects);
        effects
    }

    /// Deployments whose model failed to load on [`DispatchConfig::load_failures_max`]
    /// distinct nodes, with the nodes' reasons: no longer placed; the driver stops them
    /// ([`Dispatch::undeploy`]).
    pub fn failed_deployments(&self) -> Vec<(DeploymentId, Vec<String>)> {
        let max = self.config.load_failures_max.max(1);
        self.deployments
            .iter()
            .filter(|(_, d)| d.failed_on.len() >= max)
            .map(|(id, d)| (*id, d.load_failures.clone()))
            .collect()
    }

    /// A replica of `model` changed state on `node`. A failure to load a model the
    /// deployment no longer has (replaced by an update) changes nothing: the node is told the
    /// current one.
    pub fn replica_state(
        &mut self,
        now_s: u64,
        node: &NodeId,
        deployment: &DeploymentId,
        model: ModelId,
        state: &ReplicaState,
    ) -> Vec<Effect> {
        match state {
            ReplicaState::Ready => self.replica_ready(now_s, node, deployment, model),
            ReplicaState::Loading => Vec::new(),
            ReplicaState::Failed(_)
                if self
                    .deployments
                    .get(deployment)
                    .is_none_or(|d| d.model != model) =>
            {
                Vec::new()
            }
            ReplicaState::Failed(reason) => {
                let mut effects = Vec::new();
                let max = self.config.load_failures_max.max(1);
                if let Some(d) = self.deployments.get_mut(deployment)
                    && d.failed_on.insert(*node)
                    && d.load_failures.len() < max
                {
                    let mut reason = reason.clone();
                    crate::wire::truncate_at_char(&mut reason, LOAD_FAILURE_BYTES_MAX);
                    d.load_failures.push(format!("{node}: {reason}"));
                }
                self.remove_replica(node, deployment, &mut effects);
                self.fill(deployment, &mut effects);
                effects
            }
        }
    }

    /// Time passed: nodes silent for too long go offline and their replicas are placed
    /// again; deployments short of replicas are retried.
    pub fn tick(&mut self, now_s: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.now_s = self.now_s.max(now_s);
        let silence_max = self
            .config
            .heartbeat_interval_s
            .saturating_mul(self.config.heartbeats_missed_max);
        let gone: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.online && now_s.saturating_sub(e.last_seen_s) > silence_max)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.node_gone(&id, &mut effects);
        }
        // Offline for long: forgotten, so the registry holds the nodes that may come back.
        let forget = self.config.node_forget_after_s;
        self.nodes
            .retain(|_, e| e.online || now_s.saturating_sub(e.last_seen_s) <= forget);
        self.expire_updates(now_s, &mut effects);
        self.fill_all(&mut effects, false);
        effects
    }

    /// Replicas still serving the model before an update [`DispatchConfig::update_grace_s`]
    /// after it are removed (and placed again by the fill that follows).
    fn expire_updates(&mut self, now_s: u64, effects: &mut Vec<Effect>) {
        let grace = self.config.update_grace_s;
        let mut stale = Vec::new();
        for (id, d) in &mut self.deployments {
            let Some(at) = d.updated_at_s else {
                continue;
            };
            let behind: Vec<NodeId> = d
                .replicas
                .iter()
                .filter(|(_, r)| r.serving.is_some_and(|m| m != d.model))
                .map(|(n, _)| *n)
                .collect();
            if behind.is_empty() {
                d.updated_at_s = None;
                d.previous_model = None;
            } else if now_s.saturating_sub(at) > grace {
                stale.extend(behind.into_iter().map(|n| (*id, n)));
            }
        }
        for (id, node) in stale {
            self.remove_replica(&node, &id, effects);
        }
    }

    /// `node`'s proven rating changed (its compute challenges proved another class): placement
    /// and capacity use it from now on. Replicas already placed stay.
    pub fn node_rated(&mut self, node: &NodeId, rating: PowerRating) {
        if let Some(e) = self.nodes.get_mut(node) {
            e.rating = rating;
        }
    }

    /// `node` passed a compute challenge at `now_s`: its session is proven up to here; a node
    /// suspended by a failed challenge is online again from now (a new session).
    pub fn challenge_passed(&mut self, now_s: u64, node: &NodeId) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.now_s = self.now_s.max(now_s);
        let Some(e) = self.nodes.get_mut(node) else {
            return effects;
        };
        let came_back = e.suspended;
        if e.suspended {
            e.suspended = false;
            e.online = true;
            e.session_start_s = now_s;
        }
        e.proven_s = Some(now_s);
        if e.online {
            e.last_seen_s = e.last_seen_s.max(now_s);
            effects.push(Effect::Online {
                node: *node,
                session_start_s: e.session_start_s,
                until_s: e.last_seen_s,
            });
            self.fill_all(&mut effects, came_back);
        }
        effects
    }

    /// `node` missed or failed a compute challenge: its online session ends at the last
    /// challenge it passed in it ([`crate::policy::hardware::session_end_after_failure`]),
    /// reported by an [`Effect::Offline`] whose `last_seen_s` may be *earlier* than uptime
    /// already reported (the driver must shorten the stored session, not extend it); its
    /// replicas are placed elsewhere, and heartbeats open no session until a challenge passes.
    pub fn challenge_failed(&mut self, now_s: u64, node: &NodeId) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.now_s = self.now_s.max(now_s);
        let Some(e) = self.nodes.get_mut(node) else {
            return effects;
        };
        e.suspended = true;
        if e.online {
            e.last_seen_s =
                crate::policy::hardware::session_end_after_failure(e.session_start_s, e.proven_s);
            self.node_gone(node, &mut effects);
            self.fill_all(&mut effects, false);
        }
        effects
    }

    /// `node`'s work failed a validation (a canary, or a spot check it lost) at `now_s`.
    /// Past [`DispatchConfig::caught_max`] failures within the window, the node is excluded
    /// from placement for [`DispatchConfig::excluded_rounds`] rounds and its replicas are
    /// placed elsewhere. Returns the effects.
    pub fn validation_failed(&mut self, now_s: u64, node: &NodeId) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.now_s = self.now_s.max(now_s);
        let window = self.config.caught_window_s;
        let max = self.config.caught_max as usize;
        let exclude_s = self
            .config
            .round_s
            .saturating_mul(u64::from(self.config.excluded_rounds));
        let Some(e) = self.nodes.get_mut(node) else {
            return effects;
        };
        e.caught_at_s.push_back(now_s);
        while e
            .caught_at_s
            .front()
            .is_some_and(|t| now_s.saturating_sub(*t) >= window)
            || e.caught_at_s.len() > max + 1
        {
            e.caught_at_s.pop_front();
        }
        if e.caught_at_s.len() <= max || exclude_s == 0 {
            return effects;
        }
        e.caught_at_s.clear();
        e.excluded_until_s = now_s.saturating_add(exclude_s);
        let deps: Vec<DeploymentId> = self
            .deployments
            .iter()
            .filter(|(_, d)| d.replicas.contains_key(node))
            .map(|(k, _)| *k)
            .collect();
        for dep in deps {
            self.remove_replica(node, &dep, &mut effects);
        }
        self.fill_all(&mut effects, false);
        effects
    }

    /// Whether a replica of `deployment` had a failed validation within the window
    /// ([`DispatchConfig::caught_window_s`]) and is still serving it: the dispatcher samples
    /// such a deployment's tasks more often, so a cheater caught once is caught again (and
    /// excluded) sooner.
    pub fn suspect(&self, deployment: &DeploymentId) -> bool {
        let window = self.config.caught_window_s;
        self.deployments.get(deployment).is_some_and(|d| {
            d.replicas.keys().any(|node| {
                self.nodes.get(node).is_some_and(|e| {
                    e.caught_at_s
                        .iter()
                        .any(|t| self.now_s.saturating_sub(*t) < window)
                })
            })
        })
    }

    /// Until when `node` is excluded from placement, if it is now.
    pub fn excluded_until(&self, node: &NodeId) -> Option<u64> {
        self.nodes
            .get(node)
            .map(|e| e.excluded_until_s)
            .filter(|t| *t > self.now_s)
    }

    /// The operator (address block) of a registered node.
    pub fn operator(&self, node: &NodeId) -> Option<u64> {
        self.nodes.get(node).map(|e| e.operator)
    }

    /// Warm replicas of a deployment on online nodes, with each node's operator.
    pub fn ready_replicas(&self, id: &DeploymentId) -> Vec<(NodeId, u64)> {
        self.deployments
            .get(id)
            .map(|d| {
                d.replicas
                    .iter()
                    .filter(|(_, r)| r.serving.is_some())
                    .filter_map(|(node, _)| {
                        let n = self.nodes.get(node)?;
                        n.online.then_some((*node, n.operator))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The driver lost the node's connection and knows it is gone (sooner than the
    /// heartbeat timeout).
    pub fn node_left(&mut self, node: &NodeId) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.nodes.get(node).is_some_and(|e| e.online) {
            self.node_gone(node, &mut effects);
            self.fill_all(&mut effects, false);
        }
        effects
    }

    fn node_gone(&mut self, id: &NodeId, effects: &mut Vec<Effect>) {
        let Some(e) = self.nodes.get_mut(id) else {
            return;
        };
        e.online = false;
        effects.push(Effect::Offline {
            node: *id,
            session_start_s: e.session_start_s,
            last_seen_s: e.last_seen_s,
        });
        let deps: Vec<DeploymentId> = self
            .deployments
            .iter()
            .filter(|(_, d)| d.replicas.contains_key(id))
            .map(|(k, _)| *k)
            .collect();
        for dep in deps {
            self.remove_replica(id, &dep, effects);
        }
    }

    /// A new deployment: places its replicas (pushing assignments to their nodes).
    ///
    /// **Short of capacity.** A per-request deployment that cannot get every wanted replica
    /// is created with those that fit and served by them: [`Dispatch::shortfall`] says how
    /// many are missing and why, and placement tops it up as capacity joins (at once when a
    /// node joins, else on ticks with the usual backoff). Where not even one replica fits,
    /// it fails with [`DispatchError::NoCapacity`] and changes nothing.
    ///
    /// A **per-instance** deployment is refused with [`DispatchError::NoCapacity`] unless
    /// every replica fits: its plan buys a guaranteed rate, paid up front, and a deployment
    /// created short would take that money for capacity that is not there. (One that loses
    /// replicas later, when nodes leave, is [`DeploymentState::Degraded`] and re-placed as
    /// any other.)
    pub fn deploy(
        &mut self,
        now_s: u64,
        id: DeploymentId,
        model: ModelId,
        model_bytes: u64,
        plan: DeployPlan,
    ) -> Result<Vec<Effect>, DispatchError> {
        self.now_s = self.now_s.max(now_s);
        if self.deployments.contains_key(&id) {
            return Err(DispatchError::Exists(id));
        }
        if self.deployments.len() >= DEPLOYMENTS_MAX {
            return Err(DispatchError::Full("deployments"));
        }
        let (replicas_wanted, replica_rps) = self.shape(&plan);
        let entry = DeploymentEntry {
            model,
            previous_model: None,
            updated_at_s: None,
            model_bytes,
            max_input_bytes: plan.max_input_bytes(),
            replicas_wanted,
            replica_rps,
            rate_limited: matches!(plan, DeployPlan::PerInstance(_)),
            replicas: BTreeMap::new(),
            failed_on: BTreeSet::new(),
            load_failures: Vec::new(),
            state: DeploymentState::Pending,
            retry_at_s: 0,
            retry_wait_s: 0,
            hosts_seen: 0,
        };
        let mut effects = Vec::new();
        match self.place(&entry, replicas_wanted) {
            Ok(placed) => {
                self.deployments.insert(id, entry);
                self.add_replicas(&id, placed, &mut effects);
            }
            Err(e) if entry.rate_limited => return Err(e),
            Err(e) => {
                // Short: as many replicas as fit, one at a time (`fill`); none at all is
                // refused as before, and nothing was changed.
                self.deployments.insert(id, entry);
                self.fill(&id, &mut effects);
                if self
                    .deployments
                    .get(&id)
                    .is_none_or(|d| d.replicas.is_empty())
                {
                    self.deployments.remove(&id);
                    return Err(e);
                }
            }
        }
        Ok(effects)
    }

    /// Why `id` has fewer replicas placed than it wants, or `None` when it has them all (or
    /// is not known). Such a deployment is served by the replicas it has and topped up as
    /// capacity joins.
    pub fn shortfall(&self, id: &DeploymentId) -> Option<Shortfall> {
        let d = self.deployments.get(id)?;
        let placed = d.replicas.len() as u32;
        (placed < d.replicas_wanted).then_some(Shortfall {
            placed,
            wanted: d.replicas_wanted,
            hosts: d.hosts_seen,
            replica_rps: d.replica_rps,
        })
    }

    /// Restores a deployment known from storage (after a restart) without requiring
    /// capacity now: its replicas are placed as nodes join.
    pub fn restore(
        &mut self,
        id: DeploymentId,
        model: ModelId,
        model_bytes: u64,
        plan: DeployPlan,
    ) -> Result<(), DispatchError> {
        if self.deployments.len() >= DEPLOYMENTS_MAX {
            return Err(DispatchError::Full("deployments"));
        }
        let (replicas_wanted, replica_rps) = self.shape(&plan);
        self.deployments.entry(id).or_insert(DeploymentEntry {
            model,
            previous_model: None,
            updated_at_s: None,
            model_bytes,
            max_input_bytes: plan.max_input_bytes(),
            replicas_wanted,
            replica_rps,
            rate_limited: matches!(plan, DeployPlan::PerInstance(_)),
            replicas: BTreeMap::new(),
            failed_on: BTreeSet::new(),
            load_failures: Vec::new(),
            state: DeploymentState::Pending,
            retry_at_s: 0,
            retry_wait_s: 0,
            hosts_seen: 0,
        });
        Ok(())
    }

    /// Replaces a deployment's model ([`crate::wire::ClientCall::UpdateModel`]; the driver
    /// checked the plan and the signature): every replica is assigned `model`, keeps serving
    /// the model before until its node reports the new one warm, and is placed again if it
    /// does not within [`DispatchConfig::update_grace_s`]. Loading failures of the model
    /// before are forgotten (the new model gets its own
    /// [`DispatchConfig::load_failures_max`]). The same model again changes nothing.
    pub fn update_model(
        &mut self,
        now_s: u64,
        id: &DeploymentId,
        model: ModelId,
        model_bytes: u64,
    ) -> Result<Vec<Effect>, DispatchError> {
        self.now_s = self.now_s.max(now_s);
        let d = self
            .deployments
            .get_mut(id)
            .ok_or(DispatchError::UnknownDeployment(*id))?;
        let mut effects = Vec::new();
        if d.model == model {
            return Ok(effects);
        }
        d.previous_model = Some(d.model);
        d.model = model;
        d.model_bytes = model_bytes;
        d.updated_at_s = Some(now_s);
        d.failed_on.clear();
        d.load_failures.clear();
        for node in d.replicas.keys() {
            effects.push(Effect::Push {
                node: *node,
                push: DispatcherPush::Assign(d.assignment(*id)),
            });
        }
        Ok(effects)
    }

    /// The model `node` reported warm for `deployment` (`None`: not a warm replica).
    pub fn serving_model(&self, deployment: &DeploymentId, node: &NodeId) -> Option<ModelId> {
        self.deployments
            .get(deployment)?
            .replicas
            .get(node)?
            .serving
    }

    /// Warm replicas of `deployment` serving its current model (the rest still serve the
    /// model before an update).
    pub fn replicas_on_model(&self, deployment: &DeploymentId) -> u32 {
        self.deployments
            .get(deployment)
            .map_or(0, DeploymentEntry::on_model_count)
    }

    /// Stops a deployment: its nodes are told to drop it.
    pub fn undeploy(&mut self, id: &DeploymentId) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(d) = self.deployments.remove(id) {
            for (node, r) in d.replicas {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.used_rps = n.used_rps.saturating_sub(r.rps);
                }
                effects.push(Effect::Push {
                    node,
                    push: DispatcherPush::Unassign { deployment: *id },
                });
            }
            effects.push(Effect::DeploymentState {
                deployment: *id,
                state: DeploymentState::Stopped,
            });
        }
        effects
    }

    /// Warm replicas of a deployment on online nodes, for a lease.
    pub fn lease_replicas(&self, id: &DeploymentId) -> Result<Vec<Replica>, DispatchError> {
        let d = self
            .deployments
            .get(id)
            .ok_or(DispatchError::UnknownDeployment(*id))?;
        let replicas: Vec<Replica> = d
            .replicas
            .iter()
            .filter(|(_, r)| r.serving.is_some())
            .filter_map(|(node, _)| {
                let n = self.nodes.get(node)?;
                n.online.then(|| Replica {
                    node: *node,
                    addrs: n.addrs.clone(),
                    operator: n.operator,
                    direct: n.direct,
                })
            })
            .collect();
        if replicas.is_empty() {
            return Err(DispatchError::NotReady(*id));
        }
        Ok(replicas)
    }

    /// A deployment's state, warm replicas and wanted replicas.
    pub fn deployment_state(&self, id: &DeploymentId) -> Option<(DeploymentState, u32, u32)> {
        self.deployments
            .get(id)
            .map(|d| (d.state, d.ready_count(), d.replicas_wanted))
    }

    /// Everything `node` should serve now.
    pub fn assignments_for(&self, node: &NodeId) -> Vec<Assignment> {
        self.deployments
            .iter()
            .filter(|(_, d)| d.replicas.contains_key(node))
            .map(|(id, d)| d.assignment(*id))
            .collect()
    }

    /// Whether `node` holds a replica of `deployment` now.
    pub fn serves(&self, node: &NodeId, deployment: &DeploymentId) -> bool {
        self.deployments
            .get(deployment)
            .is_some_and(|d| d.replicas.contains_key(node))
    }

    /// Whether `node` is online now (registered, heartbeats on time, not suspended by a
    /// failed challenge).
    pub fn is_online(&self, node: &NodeId) -> bool {
        self.nodes.get(node).is_some_and(|e| e.online)
    }

    /// Nodes online now.
    pub fn online_count(&self) -> usize {
        self.nodes.values().filter(|e| e.online).count()
    }

    /// Network demand: mean reported utilisation of online nodes, or the share of capacity
    /// reserved by replicas if that is higher.
    pub fn demand(&self) -> Demand {
        let (mut n, mut util, mut used, mut cap) = (0u64, 0u64, 0u64, 0u64);
        for e in self.nodes.values().filter(|e| e.online) {
            n += 1;
            util += u64::from(e.utilisation_bps.get());
            used += u64::from(e.used_rps);
            cap += u64::from(self.capacity(e.rating));
        }
        // Each utilisation is at most 100 %, and so is their mean.
        let mean = u16::try_from(util.checked_div(n).unwrap_or(0)).map_or(Bps::FULL, Bps);
        Demand {
            level_bps: mean.max(Bps::ratio(used, cap)),
        }
    }

    /// [`Dispatch::demand`] as of `now_s`, computed at most once per second: it visits every
    /// online node, and a heartbeat's answer carries it, so computing it per heartbeat would
    /// cost the registry's size per heartbeat (quadratic in the nodes per interval). Within a
    /// second the answer may lag a change by up to that second; demand is a hint for idle
    /// workloads.
    pub fn demand_at(&mut self, now_s: u64) -> Demand {
        match self.demand_cache {
            Some((at, demand)) if at == now_s => demand,
            _ => {
                let demand = self.demand();
                self.demand_cache = Some((now_s, demand));
                demand
            }
        }
    }

    fn capacity(&self, rating: PowerRating) -> u32 {
        self.config
            .rps_per_rating
            .saturating_mul(u32::from(u8::from(rating)))
    }

    /// (replicas wanted, rate per replica) for a plan.
    fn shape(&self, plan: &DeployPlan) -> (u32, u32) {
        let min = self.config.replicas.max(1);
        match plan {
            DeployPlan::PerInstance(p) => {
                let per_max = self.config.replica_rps_max.max(1);
                let n = min.max(p.guaranteed_rps.div_ceil(per_max));
                (n, p.guaranteed_rps.div_ceil(n).max(1))
            }
            DeployPlan::PerRequest(_) => (min, self.config.per_request_replica_rps.max(1)),
        }
    }

    /// Whether node `e` (`id`) may hold a replica of `d` at all now: online, not excluded,
    /// room for the model, no load failure of it.
    fn may_host(&self, d: &DeploymentEntry, id: &NodeId, e: &NodeEntry) -> bool {
        e.online
            && e.excluded_until_s <= self.now_s
            && e.model_bytes_max >= d.model_bytes
            && !d.failed_on.contains(id)
    }

    /// Nodes that may hold a replica of `d` now ([`Self::may_host`]), whatever their free
    /// capacity.
    fn hosts(&self, d: &DeploymentEntry) -> u32 {
        let n = self
            .nodes
            .iter()
            .filter(|(id, e)| self.may_host(d, id, e))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Places `count` more replicas of `d` (excluding nodes that hold one or failed it).
    fn place(
        &self,
        d: &DeploymentEntry,
        count: u32,
    ) -> Result<Vec<crate::placement::Assignment>, DispatchError> {
        let eligible = |(id, e): &(&NodeId, &NodeEntry)| self.may_host(d, id, e);
        // The per-operator cap, relaxed when there are too few operators to spread over.
        let mut held: BTreeMap<u64, u32> = BTreeMap::new();
        for node in d.replicas.keys() {
            if let Some(n) = self.nodes.get(node) {
                *held.entry(n.operator).or_default() += 1;
            }
        }
        let per_operator_max = if self.config.per_operator_max == 0 {
            0
        } else {
            let operators: BTreeSet<u64> = self
                .nodes
                .iter()
                .filter(eligible)
                .map(|(_, e)| e.operator)
                .chain(held.keys().copied())
                .collect();
            let spread = d
                .replicas_wanted
                .div_ceil(u32::try_from(operators.len()).unwrap_or(u32::MAX).max(1));
            self.config.per_operator_max.max(spread)
        };
        let candidates: Vec<(Candidate, bool)> = self
            .nodes
            .iter()
            .filter(eligible)
            .filter(|(id, e)| {
                !d.replicas.contains_key(*id)
                    && (per_operator_max == 0
                        || held.get(&e.operator).copied().unwrap_or(0) < per_operator_max)
            })
            .map(|(id, e)| {
                let candidate = Candidate {
                    id: *id,
                    rating: e.rating,
                    free_rps: self.capacity(e.rating).saturating_sub(e.used_rps),
                    operator: e.operator,
                    online: true,
                };
                (candidate, e.direct != Some(false))
            })
            .collect();
        let request = Request {
            rps: d.replica_rps.saturating_mul(count),
            replicas: Some(count),
            rating_min: self.config.rating_min,
            // Operators already at the cap were left out above; this bounds the new ones.
            per_operator_max,
        };
        // Nodes clients reach directly first, when they have the capacity; nodes the
        // dispatcher could not reach from outside (behind NATs: relayed until hole punching
        // succeeds) only when they do not.
        let relayed = candidates.iter().any(|(_, direct)| !direct);
        if relayed {
            let direct: Vec<Candidate> = candidates
                .iter()
                .filter(|(_, direct)| *direct)
                .map(|(c, _)| *c)
                .collect();
            if let Ok(placed) = Placer::new(direct).place(&request) {
                return Ok(placed);
            }
        }
        Placer::new(candidates.into_iter().map(|(c, _)| c).collect())
            .place(&request)
            .map_err(DispatchError::NoCapacity)
    }

    /// Records whether the dispatcher reached `node` directly from outside (its replicas'
    /// [`Replica::direct`]; placement prefers nodes reached directly). Unknown nodes are
    /// ignored.
    pub fn set_direct(&mut self, node: &NodeId, direct: bool) {
        if let Some(e) = self.nodes.get_mut(node) {
            e.direct = Some(direct);
        }
    }

    /// Whether the dispatcher reached `node` directly since it registered (`None`: unknown
    /// node, or not checked yet).
    pub fn direct(&self, node: &NodeId) -> Option<bool> {
        self.nodes.get(node).and_then(|e| e.direct)
    }

    fn add_replicas(
        &mut self,
        id: &DeploymentId,
        placed: Vec<crate::placement::Assignment>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(d) = self.deployments.get_mut(id) else {
            return;
        };
        for a in placed {
            if let Some(n) = self.nodes.get_mut(&a.id) {
                n.used_rps = n.used_rps.saturating_add(a.rps);
            }
            d.replicas.insert(
                a.id,
                ReplicaEntry {
                    rps: a.rps,
                    serving: None,
                },
            );
            effects.push(Effect::Push {
                node: a.id,
                push: DispatcherPush::Assign(d.assignment(*id)),
            });
        }
    }

    /// Marks `node`'s replica warm with `model`: the deployment's model, or the one before
    /// it while an update rolls out (any other is not one the node was assigned: ignored).
    fn mark_ready(
        &mut self,
        node: &NodeId,
        dep: &DeploymentId,
        model: ModelId,
        effects: &mut Vec<Effect>,
    ) {
        let Some(d) = self.deployments.get_mut(dep) else {
            return;
        };
        if model != d.model && Some(model) != d.previous_model {
            return;
        }
        if let Some(r) = d.replicas.get_mut(node) {
            r.serving = Some(model);
        }
        Self::update_state(dep, d, effects);
    }

    fn remove_replica(&mut self, node: &NodeId, dep: &DeploymentId, effects: &mut Vec<Effect>) {
        let Some(d) = self.deployments.get_mut(dep) else {
            return;
        };
        if let Some(r) = d.replicas.remove(node) {
            // A replica lost is placed again at once, whatever the wait was.
            d.retry_at_s = 0;
            d.retry_wait_s = 0;
            if let Some(n) = self.nodes.get_mut(node) {
                n.used_rps = n.used_rps.saturating_sub(r.rps);
            }
            effects.push(Effect::Push {
                node: *node,
                push: DispatcherPush::Unassign { deployment: *dep },
            });
        }
        Self::update_state(dep, d, effects);
    }

    fn update_state(id: &DeploymentId, d: &mut DeploymentEntry, effects: &mut Vec<Effect>) {
        let ready = d.ready_count();
        let state = if ready >= d.replicas_wanted {
            DeploymentState::Ready
        } else if ready > 0 || d.state != DeploymentState::Pending {
            DeploymentState::Degraded
        } else {
            DeploymentState::Pending
        };
        if state != d.state {
            d.state = state;
            effects.push(Effect::DeploymentState {
                deployment: *id,
                state,
            });
        }
    }

    /// Tops up one deployment's replicas, as many as fit (one at a time, so a partial fit
    /// still helps).
    /// Places replicas of `id` until it has what it wants or nothing more fits; left short,
    /// it waits twice as long as last time (at most
    /// [`DispatchConfig::placement_backoff_max_s`]) before a tick tries it again.
    fn fill(&mut self, id: &DeploymentId, effects: &mut Vec<Effect>) {
        let max = self.config.load_failures_max.max(1);
        let Some(d) = self.deployments.get(id) else {
            return;
        };
        // A model that failed to load on `load_failures_max` nodes is not placed again.
        if d.replicas.len() as u32 >= d.replicas_wanted || d.failed_on.len() >= max {
            return;
        }
        self.placements_tried += 1;
        loop {
            let Some(d) = self.deployments.get(id) else {
                return;
            };
            if d.replicas.len() as u32 >= d.replicas_wanted {
                if let Some(d) = self.deployments.get_mut(id) {
                    d.retry_wait_s = 0;
                    d.retry_at_s = 0;
                }
                return;
            }
            match self.place(d, 1) {
                Ok(placed) => self.add_replicas(id, placed, effects),
                Err(_) => break,
            }
        }
        let (now, wait_max) = (self.now_s, self.config.placement_backoff_max_s.max(1));
        let hosts = self.deployments.get(id).map_or(0, |d| self.hosts(d));
        if let Some(d) = self.deployments.get_mut(id) {
            d.retry_wait_s = d.retry_wait_s.saturating_mul(2).clamp(1, wait_max);
            d.retry_at_s = now.saturating_add(d.retry_wait_s);
            d.hosts_seen = hosts;
        }
    }

    /// Tries the deployments short of replicas: those whose wait is over, or every one when
    /// `capacity_grew` (a node joined or came back: what did not fit may fit now).
    fn fill_all(&mut self, effects: &mut Vec<Effect>, capacity_grew: bool) {
        let now = self.now_s;
        let short: Vec<DeploymentId> = self
            .deployments
            .iter()
            .filter(|(_, d)| {
                (d.replicas.len() as u32) < d.replicas_wanted
                    && (capacity_grew || d.retry_at_s <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in short {
            self.fill(&id, effects);
        }
    }

    /// Placement attempts made so far (one per short deployment tried): with backoff, a
    /// deployment nothing can host is tried a few times a minute, not on every tick.
    pub fn placements_tried(&self) -> u64 {
        self.placements_tried
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hardware::CpuInfo;
    use crate::money::Credits;
    use crate::pricing::{PerInstancePlan, PerRequestPlan, UpdateFrequency};
    use crate::wire::NodeLoad;

    fn hw() -> HardwareInfo {
        HardwareInfo {
            gpus: vec![],
            cpu: CpuInfo {
                model: "cpu".into(),
                cores: 4,
                memory_bytes: 1 << 33,
            },
        }
    }

    fn join(d: &mut Dispatch, now: u64, b: u8, rating: u8) -> (NodeId, Vec<Effect>) {
        let id = NodeId::from_bytes([b; 32]);
        let addr: PeerAddr = format!("10.0.{b}.1:4000").parse().unwrap();
        let e = d
            .node_joined(
                now,
                id,
                PowerRating::new(rating).unwrap(),
                vec![addr.clone()],
                &addr,
                hw(),
                1 << 30,
            )
            .unwrap();
        (id, e)
    }

    fn per_request() -> DeployPlan {
        DeployPlan::PerRequest(PerRequestPlan {
            max_input_bytes: 1 << 16,
            credit_allowance: Credits::new(1000),
        })
    }

    fn pushes_to(effects: &[Effect]) -> Vec<(NodeId, bool)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Push { node, push } => {
                    Some((*node, matches!(push, DispatcherPush::Assign(_))))
                }
                _ => None,
            })
            .collect()
    }

    fn m() -> ModelId {
        ModelId::of_bytes(b"m")
    }

    fn hb(ready: Vec<DeploymentId>) -> Heartbeat {
        Heartbeat {
            seq: 1,
            load: NodeLoad::default(),
            loaded_models: vec![],
            ready: ready
                .into_iter()
                .map(|deployment| crate::wire::ReadyReplica {
                    deployment,
                    model: m(),
                })
                .collect(),
        }
    }

    #[test]
    fn deploy_waits_for_warm_replicas_then_leases() {
        let mut d = Dispatch::new(DispatchConfig::default());
        let (a, _) = join(&mut d, 0, 1, 3);
        let (b, _) = join(&mut d, 0, 2, 3);
        let dep = DeploymentId::from_bytes([9; 16]);
        let fx = d
            .deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        let mut to = pushes_to(&fx);
        to.sort();
        assert_eq!(to, vec![(a, true), (b, true)]);
        assert_eq!(d.lease_replicas(&dep), Err(DispatchError::NotReady(dep)));
        d.replica_ready(1, &a, &dep, m());
        assert_eq!(
            d.deployment_state(&dep).unwrap(),
            (DeploymentState::Degraded, 1, 2)
        );
        assert_eq!(d.lease_replicas(&dep).unwrap().len(), 1);
        d.heartbeat(2, &b, &hb(vec![dep])).unwrap();
        assert_eq!(
            d.deployment_state(&dep).unwrap(),
            (DeploymentState::Ready, 2, 2)
        );
        assert_eq!(d.assignments_for(&a).len(), 1);
    }

    #[test]
    fn an_update_keeps_replicas_warm_on_the_old_model_until_they_switch() {
        let mut d = Dispatch::new(DispatchConfig::default());
        let (a, _) = join(&mut d, 0, 1, 3);
        let (b, _) = join(&mut d, 0, 2, 3);
        let dep = DeploymentId::from_bytes([9; 16]);
        d.deploy(0, dep, m(), 10, per_request()).unwrap();
        d.heartbeat(1, &a, &hb(vec![dep])).unwrap();
        d.heartbeat(1, &b, &hb(vec![dep])).unwrap();
        let new = ModelId::of_bytes(b"m2");
        let fx = d.update_model(2, &dep, new, 20).unwrap();
        // Both replicas are told the new model, and both stay warm (on the old one).
        let mut to = pushes_to(&fx);
        to.sort();
        assert_eq!(to, vec![(a, true), (b, true)]);
        assert!(fx.iter().all(|e| matches!(e,
            Effect::Push { push: DispatcherPush::Assign(x), .. } if x.model == new && x.model_bytes == 20)));
        assert_eq!(d.lease_replicas(&dep).unwrap().len(), 2);
        assert_eq!(d.replicas_on_model(&dep), 0);
        assert_eq!(d.serving_model(&dep, &a), Some(m()));
        // The same update again changes nothing.
        assert!(d.update_model(3, &dep, new, 20).unwrap().is_empty());
        // A failure of the old model is not held against the new one.
        assert!(
            d.replica_state(3, &a, &dep, m(), &ReplicaState::Failed("x".into()))
                .is_empty()
        );
        // `a` switches; a model it was never assigned is ignored.
        d.replica_ready(4, &a, &dep, new);
        d.replica_ready(4, &b, &dep, ModelId::of_bytes(b"other"));
        assert_eq!(d.serving_model(&dep, &a), Some(new));
        assert_eq!(d.serving_model(&dep, &b), Some(m()));
        assert_eq!(d.replicas_on_model(&dep), 1);
        assert_eq!(
            d.deployment_state(&dep).unwrap(),
            (DeploymentState::Ready, 2, 2)
        );
        // `b` never switches: past the grace it is dropped and placed again (on the only
        // other node there is, `a` is taken, so it waits for capacity).
        let grace = d.config().update_grace_s;
        d.heartbeat(grace, &a, &hb(vec![])).unwrap();
        d.heartbeat(grace, &b, &hb(vec![])).unwrap();
        assert!(
            d.tick(grace)
                .iter()
                .all(|e| !matches!(e, Effect::Push { .. }))
        );
        let fx = d.tick(grace + 3);
        assert!(fx.iter().any(|e| matches!(e,
            Effect::Push { node, push: DispatcherPush::Unassign { .. } } if *node == b)));
        assert_eq!(d.serving_model(&dep, &b), None);
        assert_eq!(d.replicas_on_model(&dep), 1);
    }

    fn per_instance(rps: u32) -> DeployPlan {
        DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: rps,
            max_input_bytes: 1 << 16,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 3600,
        })
    }

    #[test]
    fn no_capacity_changes_nothing() {
        let mut d = Dispatch::new(DispatchConfig::default());
        let dep = DeploymentId::from_bytes([9; 16]);
        // No node at all: refused.
        let err = d
            .deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap_err();
        assert!(matches!(err, DispatchError::NoCapacity(_)));
        assert!(d.deployment_state(&dep).is_none());
        // One node: a per-instance plan (two replicas of 50 rps) is refused, not created short.
        join(&mut d, 0, 1, 1);
        let err = d
            .deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_instance(100))
            .unwrap_err();
        assert!(matches!(err, DispatchError::NoCapacity(_)));
        assert!(d.deployment_state(&dep).is_none());
        assert!(d.shortfall(&dep).is_none());
        assert_eq!(d.demand().level_bps, Bps::ZERO);
    }

    #[test]
    fn a_per_request_deploy_short_of_nodes_is_created_degraded_and_topped_up() {
        let mut d = Dispatch::new(DispatchConfig::default());
        let (a, _) = join(&mut d, 0, 1, 1);
        let dep = DeploymentId::from_bytes([9; 16]);
        // Two replicas wanted, one node: one placed, the reason told.
        let fx = d
            .deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        assert_eq!(pushes_to(&fx), vec![(a, true)]);
        let short = d.shortfall(&dep).unwrap();
        assert_eq!(
            short,
            Shortfall {
                placed: 1,
                wanted: 2,
                hosts: 1,
                replica_rps: 10
            }
        );
        assert_eq!(
            short.to_string(),
            "1 of 2 replicas placed: the network has 1 node that can host this model, and a \
             node holds one replica of a deployment; more are placed as capacity joins"
        );
        assert_eq!(
            d.deployment_state(&dep).unwrap(),
            (DeploymentState::Pending, 0, 2)
        );
        // Its one replica warm: degraded, and served.
        d.replica_ready(1, &a, &dep, m());
        assert_eq!(
            d.deployment_state(&dep).unwrap(),
            (DeploymentState::Degraded, 1, 2)
        );
        assert_eq!(d.lease_replicas(&dep).unwrap().len(), 1);
        // A second node joins: placed at once; warm, the deployment is ready, nothing short.
        let (b, fx) = join(&mut d, 2, 2, 1);
        assert_eq!(pushes_to(&fx), vec![(b, true)]);
        assert!(d.shortfall(&dep).is_none());
        d.replica_ready(3, &b, &dep, m());
        assert_eq!(
            d.deployment_state(&dep).unwrap(),
            (DeploymentState::Ready, 2, 2)
        );
        // It loses a node: degraded again, short again.
        d.node_left(&b);
        assert_eq!(d.shortfall(&dep).map(|s| (s.placed, s.hosts)), Some((1, 1)));
        assert_eq!(
            d.deployment_state(&dep).unwrap().0,
            DeploymentState::Degraded
        );
    }

    #[test]
    fn a_shortfall_of_capacity_names_the_rate() {
        let mut d = Dispatch::new(DispatchConfig {
            rps_per_rating: 10,
            ..DispatchConfig::default()
        });
        join(&mut d, 0, 1, 1);
        join(&mut d, 0, 2, 1);
        let first = DeploymentId::from_bytes([1; 16]);
        let second = DeploymentId::from_bytes([2; 16]);
        d.deploy(0, first, m(), 10, per_request()).unwrap();
        // Node 1 and 2 are full (10 rps each, one replica of 10 rps each).
        let err = d.deploy(0, second, m(), 10, per_request()).unwrap_err();
        assert!(matches!(err, DispatchError::NoCapacity(_)));
        // Node 2 rated 2 (20 rps): two nodes host it, but capacity is what is short.
        let mut d = Dispatch::new(DispatchConfig {
            rps_per_rating: 10,
            ..DispatchConfig::default()
        });
        join(&mut d, 0, 1, 1);
        join(&mut d, 0, 2, 2);
        d.deploy(0, first, m(), 10, per_request()).unwrap();
        d.deploy(0, second, m(), 10, per_request()).unwrap();
        let short = d.shortfall(&second).unwrap();
        assert_eq!((short.placed, short.wanted, short.hosts), (1, 2, 2));
        assert!(short.to_string().contains("no 10 rps free"), "{short}");
    }

    #[test]
    fn a_failed_challenge_ends_the_session_at_the_last_passed_one() {
        let mut d = Dispatch::new(DispatchConfig::default());
        let (a, _) = join(&mut d, 100, 1, 5);
        d.challenge_passed(110, &a);
        d.heartbeat(200, &a, &hb(vec![])).unwrap();
        // Failed at 250: the session [100, 200) reported so far ends at 110.
        let fx = d.challenge_failed(250, &a);
        assert!(fx.contains(&Effect::Offline {
            node: a,
            session_start_s: 100,
            last_seen_s: 110
        }));
        assert_eq!(d.online_count(), 0);
        // Heartbeats while suspended open no session; a passed challenge does.
        assert!(d.heartbeat(260, &a, &hb(vec![])).unwrap().is_empty());
        assert_eq!(d.online_count(), 0);
        let fx = d.challenge_passed(300, &a);
        assert!(fx.contains(&Effect::Online {
            node: a,
            session_start_s: 300,
            until_s: 300
        }));
        // A failure with no pass in the session ends it at its start.
        let (b, _) = join(&mut d, 400, 2, 1);
        d.heartbeat(450, &b, &hb(vec![])).unwrap();
        assert!(d.challenge_failed(460, &b).contains(&Effect::Offline {
            node: b,
            session_start_s: 400,
            last_seen_s: 400
        }));
    }

    #[test]
    fn silent_node_goes_offline_and_its_replica_moves() {
        let mut d = Dispatch::new(DispatchConfig::default());
        let (a, _) = join(&mut d, 0, 1, 5);
        let (b, _) = join(&mut d, 0, 2, 4);
        let (c, _) = join(&mut d, 0, 3, 1);
        let dep = DeploymentId::from_bytes([9; 16]);
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        // Most free capacity first: a (500) and b (400).
        assert_eq!(d.assignments_for(&c).len(), 0);
        for n in [a, b] {
            d.replica_ready(1, &n, &dep, m());
        }
        // b and c keep heartbeating, a goes silent.
        for t in [5, 10, 15] {
            d.heartbeat(t, &b, &hb(vec![dep])).unwrap();
            d.heartbeat(t, &c, &hb(vec![])).unwrap();
        }
        assert!(
            d.tick(15)
                .iter()
                .all(|e| !matches!(e, Effect::Offline { .. }))
        );
        let fx = d.tick(16);
        assert!(fx.contains(&Effect::Offline {
            node: a,
            session_start_s: 0,
            last_seen_s: 0
        }));
        assert!(pushes_to(&fx).contains(&(c, true)));
        assert_eq!(
            d.deployment_state(&dep).unwrap(),
            (DeploymentState::Degraded, 1, 2)
        );
        d.replica_ready(17, &c, &dep, m());
        assert_eq!(d.deployment_state(&dep).unwrap().0, DeploymentState::Ready);
        let leased: Vec<NodeId> = d
            .lease_replicas(&dep)
            .unwrap()
            .iter()
            .map(|r| r.node)
            .collect();
        assert_eq!(leased, vec![b, c]);
        // a comes back: a new session.
        let (_, fx) = join(&mut d, 40, 1, 5);
        assert!(fx.contains(&Effect::Online {
            node: a,
            session_start_s: 40,
            until_s: 40
        }));
    }

    #[test]
    fn failed_replica_is_placed_elsewhere_never_back() {
        let cfg = DispatchConfig {
            replicas: 1,
            ..DispatchConfig::default()
        };
        let mut d = Dispatch::new(cfg);
        let (a, _) = join(&mut d, 0, 1, 5);
        let (b, _) = join(&mut d, 0, 2, 1);
        let dep = DeploymentId::from_bytes([9; 16]);
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        assert_eq!(d.assignments_for(&a).len(), 1);
        let fx = d.replica_state(1, &a, &dep, m(), &ReplicaState::Failed("bad op".into()));
        assert!(pushes_to(&fx).contains(&(b, true)));
        assert!(pushes_to(&fx).contains(&(a, false)));
        let fx = d.replica_state(2, &b, &dep, m(), &ReplicaState::Failed("bad op".into()));
        assert!(!pushes_to(&fx).iter().any(|(_, assign)| *assign));
        assert_eq!(
            d.deployment_state(&dep).unwrap(),
            (DeploymentState::Pending, 0, 1)
        );
    }

    #[test]
    fn nodes_offline_for_long_are_forgotten_and_may_register_again() {
        let mut d = Dispatch::new(DispatchConfig {
            heartbeat_interval_s: 10,
            node_forget_after_s: 1_000,
            nodes_max: 1,
            ..DispatchConfig::default()
        });
        let (a, _) = join(&mut d, 0, 1, 5);
        d.tick(100);
        assert!(!d.nodes[&a].online);
        d.tick(1_000);
        assert!(d.nodes.contains_key(&a), "offline, not yet forgotten");
        // Full: another node is refused until the silent one is forgotten.
        let b: PeerAddr = "10.0.9.1:1".parse().unwrap();
        let other = |d: &mut Dispatch| {
            d.node_joined(
                1_101,
                NodeId::from_bytes([9; 32]),
                PowerRating::new(3).unwrap(),
                vec![b.clone()],
                &b,
                hw(),
                1 << 30,
            )
        };
        assert!(matches!(other(&mut d), Err(DispatchError::RegistryFull)));
        d.tick(1_101);
        assert!(!d.nodes.contains_key(&a));
        other(&mut d).unwrap();
    }

    #[test]
    fn nodes_reached_directly_are_placed_before_relayed_ones_while_they_have_capacity() {
        let mut d = Dispatch::new(DispatchConfig {
            replicas: 1,
            heartbeat_interval_s: 1_000,
            ..DispatchConfig::default()
        });
        // The relayed node has the higher rating: capacity alone would choose it.
        let (relayed, _) = join(&mut d, 0, 1, 5);
        let (direct, _) = join(&mut d, 0, 2, 2);
        d.set_direct(&relayed, false);
        d.set_direct(&direct, true);
        assert_eq!(d.direct(&relayed), Some(false));
        let first = DeploymentId::from_bytes([1; 16]);
        d.restore(first, ModelId::of_bytes(b"m"), 5, per_request())
            .unwrap();
        d.tick(0);
        assert!(d.serves(&direct, &first) && !d.serves(&relayed, &first));
        // More than the direct node can hold: the relayed one takes what it cannot.
        let mut placed_relayed = false;
        for k in 2..=40u8 {
            let dep = DeploymentId::from_bytes([k; 16]);
            d.restore(dep, ModelId::of_bytes(&[k]), 5, per_request())
                .unwrap();
            d.tick(u64::from(k));
            placed_relayed |= d.serves(&relayed, &dep);
        }
        assert!(placed_relayed, "capacity short: relayed nodes serve too");
        // Re-registering forgets it until checked again.
        join(&mut d, 50, 2, 2);
        assert_eq!(d.direct(&direct), None);
    }

    #[test]
    fn placement_of_a_deployment_short_of_replicas_backs_off() {
        let mut d = Dispatch::new(DispatchConfig {
            replicas: 2,
            heartbeat_interval_s: 1_000,
            ..DispatchConfig::default()
        });
        let (a, _) = join(&mut d, 0, 1, 5);
        let dep = DeploymentId::from_bytes([1; 16]);
        d.restore(dep, ModelId::of_bytes(b"m"), 5, per_request())
            .unwrap();
        // One node, two replicas wanted: one placed, the deployment stays short.
        d.tick(0);
        assert!(d.serves(&a, &dep));
        let tried = d.placements_tried();
        // A tick a second for two minutes: tried after 1, 2, 4, 8, 16, 32 s, then every 60 s,
        // not 120 times.
        for t in 1..=120 {
            d.tick(t);
        }
        let retries = d.placements_tried() - tried;
        assert_eq!(
            retries, 6,
            "tries at 1, 3, 7, 15, 31 and 63 s, not on every tick"
        );
        // A node joining is tried at once, whatever the wait.
        let (b, _) = join(&mut d, 121, 2, 5);
        assert!(d.serves(&a, &dep) && d.serves(&b, &dep));
        // Full again: ticks try nothing.
        let tried = d.placements_tried();
        for t in 122..200 {
            d.tick(t);
        }
        assert_eq!(d.placements_tried(), tried);
        // A replica lost is placed again at once (here: nowhere to go, so it backs off anew).
        d.node_left(&b);
        assert_eq!(d.placements_tried(), tried + 1);
    }

    #[test]
    fn a_model_failing_on_enough_nodes_fails_the_deployment() {
        let cfg = DispatchConfig {
            replicas: 1,
            load_failures_max: 2,
            ..DispatchConfig::default()
        };
        let mut d = Dispatch::new(cfg);
        let (a, _) = join(&mut d, 0, 1, 5);
        let (b, _) = join(&mut d, 0, 2, 5);
        let (c, _) = join(&mut d, 0, 3, 5);
        let dep = DeploymentId::from_bytes([9; 16]);
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        let first = if d.assignments_for(&a).is_empty() {
            b
        } else {
            a
        };
        d.replica_state(1, &first, &dep, m(), &ReplicaState::Failed("bad op".into()));
        // The same node failing again is one node.
        d.replica_state(1, &first, &dep, m(), &ReplicaState::Failed("bad op".into()));
        assert!(d.failed_deployments().is_empty());
        let second = [a, b, c]
            .into_iter()
            .find(|n| !d.assignments_for(n).is_empty())
            .unwrap();
        let fx = d.replica_state(
            2,
            &second,
            &dep,
            m(),
            &ReplicaState::Failed("x".repeat(1_000)),
        );
        // Failed: listed with both reasons (bounded), and not placed on the third node.
        assert!(!pushes_to(&fx).iter().any(|(_, assign)| *assign));
        let failed = d.failed_deployments();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, dep);
        assert_eq!(failed[0].1.len(), 2);
        assert!(failed[0].1[0].ends_with("bad op"));
        assert!(failed[0].1[1].len() < 400);
        d.tick(100);
        assert!([a, b, c].iter().all(|n| d.assignments_for(n).is_empty()));
        d.undeploy(&dep);
        assert!(d.failed_deployments().is_empty());
    }

    #[test]
    fn per_instance_rate_sets_replicas_and_undeploy_frees_capacity() {
        let mut d = Dispatch::new(DispatchConfig::default());
        for b in 1..=4 {
            join(&mut d, 0, b, 5);
        }
        let plan = DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 250,
            max_input_bytes: 1 << 16,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 86_400,
        });
        let dep = DeploymentId::from_bytes([9; 16]);
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, plan).unwrap();
        assert_eq!(d.deployment_state(&dep).unwrap().2, 3);
        assert!(d.demand().level_bps > Bps::ZERO);
        let fx = d.undeploy(&dep);
        assert_eq!(pushes_to(&fx).len(), 3);
        assert_eq!(d.demand().level_bps, Bps::ZERO);
    }

    /// `demand_at` answers `demand` as of its second: recomputed when the second changes, the
    /// same answer within it (a heartbeat answer does not pass over the registry).
    #[test]
    fn demand_at_is_computed_once_a_second() {
        let mut d = Dispatch::new(DispatchConfig::default());
        for b in 1..=4 {
            join(&mut d, 0, b, 5);
        }
        assert_eq!(d.demand_at(0).level_bps, Bps::ZERO);
        let plan = DeployPlan::PerInstance(PerInstancePlan {
            guaranteed_rps: 250,
            max_input_bytes: 1 << 16,
            update_frequency: UpdateFrequency::Never,
            key_lifetime_s: 86_400,
        });
        let dep = DeploymentId::from_bytes([9; 16]);
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, plan).unwrap();
        assert!(d.demand().level_bps > Bps::ZERO);
        assert_eq!(
            d.demand_at(0).level_bps,
            Bps::ZERO,
            "the same second's answer"
        );
        assert_eq!(d.demand_at(1), d.demand(), "recomputed in the next second");
    }

    #[test]
    fn operators_group_by_address_block() {
        let n = NodeId::from_bytes([1; 32]);
        let a = |s: &str| vec![PeerAddr::new(s).unwrap()];
        assert_eq!(
            operator_of(&n, &a("10.1.2.3:1")),
            operator_of(&n, &a("10.1.2.99:7"))
        );
        assert_ne!(
            operator_of(&n, &a("10.1.2.3:1")),
            operator_of(&n, &a("10.1.3.3:1"))
        );
        assert_ne!(
            operator_of(&n, &a("mem:x")),
            operator_of(&NodeId::from_bytes([2; 32]), &a("mem:x"))
        );
    }

    fn join_at(d: &mut Dispatch, b: u8, addr: &str) -> NodeId {
        let id = NodeId::from_bytes([b; 32]);
        let addr: PeerAddr = addr.parse().unwrap();
        d.node_joined(
            0,
            id,
            PowerRating::new(5).unwrap(),
            vec![addr.clone()],
            &addr,
            hw(),
            1 << 30,
        )
        .unwrap();
        id
    }

    #[test]
    fn one_replica_per_operator_unless_too_few_operators() {
        // Two nodes in 10.0.0.0/24, one in 10.0.1.0/24: the two replicas go to different
        // blocks even though both nodes of the first block have more room.
        let mut d = Dispatch::new(DispatchConfig::default());
        let a1 = join_at(&mut d, 1, "10.0.0.1:1");
        let a2 = join_at(&mut d, 2, "10.0.0.2:1");
        let b = join_at(&mut d, 3, "10.0.1.1:1");
        let dep = DeploymentId::from_bytes([9; 16]);
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        assert_eq!(d.assignments_for(&b).len(), 1);
        assert_eq!(
            d.assignments_for(&a1).len() + d.assignments_for(&a2).len(),
            1
        );
        // One block only (loopback): the cap relaxes to replicas / operators.
        let mut d = Dispatch::new(DispatchConfig::default());
        let a1 = join_at(&mut d, 1, "127.0.0.1:1");
        let a2 = join_at(&mut d, 2, "127.0.0.1:2");
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        assert_eq!(d.assignments_for(&a1).len(), 1);
        assert_eq!(d.assignments_for(&a2).len(), 1);
    }

    #[test]
    fn caught_node_is_excluded_for_rounds_and_its_replicas_move() {
        let config = DispatchConfig {
            replicas: 1,
            caught_max: 1,
            caught_window_s: 100,
            excluded_rounds: 2,
            round_s: 1_000,
            per_operator_max: 0,
            heartbeat_interval_s: 10_000,
            ..DispatchConfig::default()
        };
        let mut d = Dispatch::new(config);
        let (a, _) = join(&mut d, 0, 1, 5);
        let (b, _) = join(&mut d, 0, 2, 1);
        let dep = DeploymentId::from_bytes([9; 16]);
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        assert_eq!(d.assignments_for(&a).len(), 1);
        // One failure is tolerated; two failures far apart are too.
        assert!(d.validation_failed(10, &a).is_empty());
        assert!(d.validation_failed(200, &a).is_empty());
        assert_eq!(d.excluded_until(&a), None);
        // A second within the window: excluded for two rounds, replica moved to b.
        let fx = d.validation_failed(250, &a);
        assert_eq!(d.excluded_until(&a), Some(2_250));
        assert!(pushes_to(&fx).contains(&(a, false)));
        assert!(pushes_to(&fx).contains(&(b, true)));
        assert_eq!(d.assignments_for(&a).len(), 0);
        // Still excluded later on: a new deployment does not go there.
        let dep2 = DeploymentId::from_bytes([8; 16]);
        d.tick(2_000);
        d.deploy(2_000, dep2, ModelId::of_bytes(b"m2"), 10, per_request())
            .unwrap();
        assert_eq!(d.assignments_for(&a).len(), 0);
        // After the exclusion it is a candidate again.
        d.tick(2_250);
        assert_eq!(d.excluded_until(&a), None);
        let dep3 = DeploymentId::from_bytes([7; 16]);
        d.deploy(2_250, dep3, ModelId::of_bytes(b"m3"), 10, per_request())
            .unwrap();
        assert_eq!(d.assignments_for(&a).len(), 1);
        // Unknown nodes change nothing.
        assert!(
            d.validation_failed(2_300, &NodeId::from_bytes([77; 32]))
                .is_empty()
        );
    }

    #[test]
    fn a_deployment_with_a_caught_replica_is_suspect_for_the_window() {
        let config = DispatchConfig {
            replicas: 2,
            caught_max: 1,
            caught_window_s: 100,
            excluded_rounds: 2,
            round_s: 1_000,
            per_operator_max: 0,
            heartbeat_interval_s: 10_000,
            ..DispatchConfig::default()
        };
        let mut d = Dispatch::new(config);
        let (a, _) = join(&mut d, 0, 1, 5);
        let (_b, _) = join(&mut d, 0, 2, 5);
        let dep = DeploymentId::from_bytes([7; 16]);
        let other = DeploymentId::from_bytes([8; 16]);
        d.deploy(0, dep, ModelId::of_bytes(b"m"), 10, per_request())
            .unwrap();
        assert!(!d.suspect(&dep));
        // One failure: tolerated (caught_max 1), but the deployment is now suspect.
        d.validation_failed(10, &a);
        assert!(d.excluded_until(&a).is_none());
        assert!(d.suspect(&dep));
        assert!(!d.suspect(&other));
        // The window passes without another failure.
        d.tick(200);
        assert!(!d.suspect(&dep));
    }

    #[test]
    fn a_full_registry_refuses_new_nodes_and_operators_are_the_observed_blocks() {
        let mut d = Dispatch::new(DispatchConfig {
            nodes_max: 2,
            ..DispatchConfig::default()
        });
        let join = |d: &mut Dispatch, n: u8, claimed: &str, observed: &str| {
            let (claimed, observed): (PeerAddr, PeerAddr) =
                (claimed.parse().unwrap(), observed.parse().unwrap());
            d.node_joined(
                0,
                NodeId::from_bytes([n; 32]),
                PowerRating::new(5).unwrap(),
                vec![claimed],
                &observed,
                hw(),
                1 << 30,
            )
        };
        // Two nodes claiming different blocks but sending from one: one operator.
        join(&mut d, 1, "10.0.1.1:1", "192.168.7.1:5").unwrap();
        join(&mut d, 2, "10.0.2.1:1", "192.168.7.2:5").unwrap();
        let op = |n: u8| d.nodes[&NodeId::from_bytes([n; 32])].operator;
        assert_eq!(op(1), op(2));
        assert_eq!(
            op(1),
            operator_of(
                &NodeId::from_bytes([1; 32]),
                &["192.168.7.9:1".parse().unwrap()]
            )
        );
        // Full: a third is refused, the known ones re-register.
        assert!(matches!(
            join(&mut d, 3, "10.0.3.1:1", "10.0.3.1:1"),
            Err(DispatchError::RegistryFull)
        ));
        join(&mut d, 1, "10.0.1.1:1", "192.168.7.1:5").unwrap();
    }
}
