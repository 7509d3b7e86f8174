//! Canary tasks: tasks whose answer the dispatcher knows, sent to replicas as if a client
//! sent them, so a node that returns junk when it thinks nobody checks is caught.
//!
//! Every [`CanaryConfig::interval_ms`] the dispatcher picks the warm replicas of its
//! deployments (at most [`CanaryConfig::tasks_per_sweep_max`], rotating through them) and,
//! for each, generates a pseudo-random input of the model's declared input types, shaped as
//! the deployment's clients shape theirs ([`super::shapes`]: the SDK tells the shapes, never
//! the values, and a canary draws one in proportion to how often clients send it; symbolic
//! dimensions = 1 when no client told; floats uniform in [0, 1), integers in 0..4, booleans
//! 0/1), runs the model itself on its reference backend (tract on the CPU) and sends the same
//! input to the replica as an ordinary `Infer` task: from one of several client endpoints
//! with throwaway identities ([`CanaryParts::transports`], picked at random per canary, never
//! the dispatcher's), under a lease that identity holds for the deployment as a client would
//! (a ticket for the deployment's own SDK key, the lease's audience, naming that identity,
//! reused for its canaries until a quarter of its lifetime is left). The answer is compared
//! with [`crat_core::verify::agree`] (floats within `atol + rtol·|reference|`, integers
//! exact).
//!
//! - Disagreement: the node's work failed a validation. It is recorded in the ledger as a
//!   `validations_failed` of the node (so `crat-rewards` slashes it and makes it ineligible
//!   for the round's bonus) and reported to the dispatch state machine, which excludes a
//!   node caught repeatedly from placement.
//! - Agreement: nothing is recorded. `validations_ok` pays CRAT for correct validations of
//!   *other* nodes' work (`docs/economics.md`, rule 11); answering a canary correctly is doing one's
//!   own work, which is paid by the round's income, not by validation CRAT.
//! - An answer without a receipt, or with one that is not the node's signature over exactly
//!   this task, these inputs and these outputs, counts as a disagreement: clients treat it as
//!   a failed attempt, so a node that withholds receipts is caught like a cheater. A client
//!   that got such an answer tells the dispatcher (`ClientCall::ReportNoReceipt`, which proves
//!   nothing by itself) and the node gets a canary at once (at most one per 10 s per node on
//!   reports), so a node that withholds receipts from clients only is caught soon.
//! - An error or timeout is inconclusive and not recorded (a busy node answers `Busy` to
//!   clients too, and uptime already prices unavailability).
//!
//! Canary tasks are not charged: their task ids are remembered (bounded) and their usage
//! records dropped.
//!
//! # Limits
//! A node can tell a canary only by what it sees, and still can by:
//! - the input values: uniform noise rather than what clients send (images, token ids); the
//!   shapes are the clients' (unless no client of the deployment told them, or the client
//!   turned it off), but a node that tests the values' statistics can tell noise from data.
//!   Replaying inputs clients donate would close this; the dispatcher never sees inputs;
//! - the source address: every canary identity is an endpoint on the dispatcher's host;
//! - the traffic of one identity: a handful of tasks per lease, spread over all of a
//!   deployment's replicas, with no acknowledgement ever handed to the node (a light client
//!   looks the same until its 16th answer from one node);
//! - the ticket's key: the deployment owner's, as for the owner's own tasks, so not a tell.
//!
//! The spot checks between nodes have none of these weaknesses. Models larger than
//! [`CanaryConfig::model_bytes_max`] are not canaried, nor deployments the determinism gate
//! found unverifiable ([`super::gate`]): their honest answers can disagree with the reference.
//!
//! # Bounds of a reference
//! The reference model is loaded once per model at a time, within [`CanaryConfig::timeout_ms`]
//! and one of a few reference slots; each run gets the same time. Before loading, its memory is
//! estimated from the graph (`crat_backend::onnx_check::MemoryEstimate`): a model above
//! [`CanaryConfig::reference_memory_bytes_max`] is never loaded here. The determinism gate
//! makes such a model unverifiable at deploy, so it never reaches a canary; one deployed
//! before the bound was lowered is exempted when its first canary finds it over (logged,
//! counted in `DispatcherStats::canary_models_exempt`, skipped by every later sweep). Nothing
//! bounds what tract allocates while it loads or runs beyond the estimate: tract has no
//! memory limit (the estimate's blind spots are listed in `crat_backend::onnx_check::memory`).
//! A model the gate found verifiable was loaded and run by the gate on the same first
//! reference backend: that model is kept for the canaries (within
//! [`CanaryConfig::models_cached_max`]), so a new deployment's first canary loads nothing.
//! Loads made here are counted in `DispatcherStats::canary_reference_loads`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crat_backend::onnx_check::{Bytes, MemoryEstimate, check_model};
use crat_backend::{BackendError, Dim, InferenceBackend, LoadedModel, ModelInfo};
use crat_core::expiring::{ExpiringMap, WhenFull};
use crat_core::id::{DeploymentId, ModelId, NodeId, TaskId};
use crat_core::policy::budget::{ticket_budget, ticket_price};
use crat_core::sign::{ReceiptError, Signed, TICKET_AUDIENCE_MAX, Ticket};
use crat_core::tensor::{DType, NamedTensor, Tensor};
use crat_core::verify::{Tolerance, agree};
use crat_core::wire::{ClientToNode, InferRequest, NodeToClient, Replica};
use crat_transport::{ConnectionExt, Conversation, Transport};
use parking_lot::Mutex;

use super::shapes::{Shape, ShapeBook};
use super::{Counters, Dispatcher, new_id};
use crate::ledger::DeploymentRecord;

/// Canary settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryConfig {
    /// How often every warm replica is sent a canary; 0 turns canaries off. Default
    /// 60,000 ms (a replica serving 100 tasks/s sees one canary per 6,000 tasks).
    pub interval_ms: u64,
    /// Most canaries per sweep (the replicas beyond wait for the next sweep, in rotation).
    /// Default 64.
    pub tasks_per_sweep_max: usize,
    /// Reference models kept loaded. Default 8.
    pub models_cached_max: usize,
    /// Largest model canaried (the dispatcher loads it to compute the answer). Default
    /// 256 MiB.
    pub model_bytes_max: u64,
    /// Most memory a model may need, by its estimate from the graph, for the dispatcher to
    /// load it on its reference backends (canaries and the determinism gate). A model above it
    /// is never loaded by the dispatcher: the determinism gate deploys it unverifiable (too
    /// large), so no canary is sent for it; a deployment gated before this bound was lowered
    /// is exempted at its first canary (`DispatcherStats::canary_models_exempt`). Default
    /// 1 GiB.
    pub reference_memory_bytes_max: u64,
    /// Largest generated input, all inputs together. Default 1 MiB.
    pub input_bytes_max: u64,
    /// How long a node may take to answer, and the dispatcher to load the reference model
    /// and to run it (a run over its time makes the canary inconclusive; it keeps one of the
    /// few reference slots until it ends, so a slow model cannot stall the sweep nor pile up
    /// threads). Default 10,000 ms.
    pub timeout_ms: u64,
    /// Task ids of recent canaries remembered so that their usage is not charged. Default
    /// 65,536.
    pub tasks_remembered_max: usize,
    /// Node connections kept open. Default 1,024.
    pub connections_max: usize,
    /// How far an answer may be from the reference.
    pub tolerance: Tolerance,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            interval_ms: 60_000,
            tasks_per_sweep_max: 64,
            models_cached_max: 8,
            model_bytes_max: 256 << 20,
            reference_memory_bytes_max: 1 << 30,
            input_bytes_max: 1 << 20,
            timeout_ms: 10_000,
            tasks_remembered_max: 65_536,
            connections_max: 1_024,
            tolerance: Tolerance::default(),
        }
    }
}

/// Reference loads and runs at once (each on a blocking thread).
const REFERENCE_SLOTS: usize = 4;

/// Models remembered as exempt from canaries (over the reference memory); the set is emptied
/// when full (a model forgotten is estimated again at its next canary, and exempted again).
const EXEMPT_MODELS_MAX: usize = 4_096;

/// Nodes a client reported recently, each canaried at most once per
/// [`SUSPECT_CANARY_EVERY_S`] on reports (beyond: reports wait for the regular sweep).
const SUSPECTS_MAX: usize = 4_096;
/// How often a reported node gets a canary on reports, at most.
const SUSPECT_CANARY_EVERY_S: u64 = 10;

/// Leases the canary identities hold at once (forgotten all together beyond: new ones are
/// issued).
const CANARY_TICKETS_MAX: usize = 4_096;

/// What the dispatcher needs to send canaries and to run the determinism gate.
pub struct CanaryParts<T: Transport> {
    /// Client endpoints, each with its own identity (nodes must not see the dispatcher's key,
    /// nor one client sending every canary): each canary goes out from one of them at random.
    /// At least one.
    pub transports: Vec<T>,
    /// The reference backends: the first computes canaries' expected answers; the
    /// determinism gate runs every model on each of them (e.g. tract, and ONNX Runtime on the
    /// CPU where the dispatcher has it). Empty: no canary has an answer, and the gate decides
    /// from the model check alone.
    pub references: Vec<Arc<dyn InferenceBackend>>,
}

/// Why inputs could not be generated for a model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputsError {
    /// The inputs together are above the limit.
    #[error("inputs over {bytes_max} bytes")]
    TooLarge {
        /// The limit.
        bytes_max: u64,
    },
    /// An input has a type no value is generated for.
    #[error("input type {0} is not generated")]
    Unsupported(DType),
    /// A declared shape is not one a tensor can have.
    #[error("input shape: {0}")]
    Shape(#[from] crat_core::tensor::TensorError),
}

/// Why a reference model was not loaded.
enum ReferenceLoadError {
    /// Its estimate is over [`CanaryConfig::reference_memory_bytes_max`].
    OverMemory(MemoryEstimate),
    /// The backend refused or failed.
    Backend(BackendError),
}

/// What one canary found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanaryOutcome {
    /// The answer agreed with the reference.
    Passed,
    /// The answer disagreed: recorded as a failed validation.
    Failed,
    /// No answer (error, timeout, unreachable): nothing recorded.
    Inconclusive,
}

impl<T: Transport> CanaryState<T> {
    /// Whether `id` is one of the canary endpoints' identities.
    pub(super) fn is_identity(&self, id: &NodeId) -> bool {
        self.transports.iter().any(|t| t.local_id() == *id)
    }
}

pub(super) struct CanaryState<T: Transport> {
    transports: Vec<T>,
    reference: Option<Arc<dyn InferenceBackend>>,
    /// Reference models kept loaded, at most `models_cached_max` (emptied when full).
    models: Mutex<HashMap<ModelId, Arc<dyn LoadedModel>>>,
    models_cached_max: usize,
    /// Connections by (identity, node).
    conns: Mutex<HashMap<(usize, NodeId), T::Connection>>,
    /// The lease each identity holds per deployment, reused by its canaries until it nears
    /// expiry (as a client reuses its lease for many tasks).
    tickets: Mutex<HashMap<(DeploymentId, usize), Signed<Ticket>>>,
    /// Canary tasks sent, so that their usage is charged to nobody; the oldest forgotten.
    tasks: Mutex<ExpiringMap<TaskId, ()>>,
    /// The input shapes clients send to each deployment.
    pub(super) shapes: Mutex<ShapeBook>,
    /// Nodes canaried on a client's report, until when they are not again.
    suspects: Mutex<ExpiringMap<NodeId, ()>>,
    /// Reference models being loaded (one load per model at a time).
    loading: Mutex<std::collections::HashSet<ModelId>>,
    /// Models estimated above [`CanaryConfig::reference_memory_bytes_max`]: never loaded,
    /// their deployments skipped by the sweeps.
    exempt: Mutex<std::collections::HashSet<ModelId>>,
    /// Reference loads and runs on blocking threads at once: one over its time keeps its slot
    /// until it ends, so stuck runs cannot pile up.
    slots: Arc<tokio::sync::Semaphore>,
    cursor: std::sync::atomic::AtomicUsize,
}

impl<T: Transport> CanaryState<T> {
    pub(super) fn new(parts: CanaryParts<T>, config: &CanaryConfig) -> Self {
        Self {
            transports: parts.transports,
            reference: parts.references.first().cloned(),
            models: Mutex::new(HashMap::new()),
            models_cached_max: config.models_cached_max.max(1),
            conns: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            tasks: Mutex::new(ExpiringMap::new(config.tasks_remembered_max.max(1))),
            shapes: Mutex::new(ShapeBook::default()),
            suspects: Mutex::new(ExpiringMap::new(SUSPECTS_MAX)),
            loading: Mutex::new(std::collections::HashSet::new()),
            exempt: Mutex::new(std::collections::HashSet::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(REFERENCE_SLOTS)),
            cursor: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A slot for a reference load or run, waiting at most `wait` (every slot held by runs
    /// over their time: the canary is inconclusive rather than piling up threads).
    async fn reference_slot(
        &self,
        wait: Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, String> {
        tokio::time::timeout(wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| "every reference slot is busy".to_string())?
            .map_err(|_| "reference slots closed".to_string())
    }

    /// Runs `model` on `tensors` on a blocking thread within a reference slot, waiting at most
    /// `limit` for the slot and as long again for the run. A run over its time goes on in the
    /// background holding its slot, and the canary is inconclusive.
    async fn reference_run(
        &self,
        model: Arc<dyn LoadedModel>,
        tensors: Vec<Tensor>,
        limit: Duration,
    ) -> Result<Vec<NamedTensor>, String> {
        let permit = self.reference_slot(limit).await?;
        let run = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            run_named(&*model, &tensors)
        });
        tokio::time::timeout(limit, run)
            .await
            .map_err(|_| "the reference run is over its time".to_string())?
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reference run: {e}"))
    }

    /// Whether `model` was found over the reference memory (no canary is sent for it).
    fn is_exempt(&self, model: &ModelId) -> bool {
        self.exempt.lock().contains(model)
    }

    /// Keeps `loaded` as the reference model of `model` (the cache emptied when full): a
    /// canary's load, or the determinism gate's, which ran it on the same first reference
    /// backend, so that the first canary of a new deployment does not load the model a second
    /// time. Nothing is kept where canaries have no reference backend.
    pub(super) fn keep_reference(&self, model: ModelId, loaded: Arc<dyn LoadedModel>) {
        if self.reference.is_none() {
            return;
        }
        let mut models = self.models.lock();
        if models.len() >= self.models_cached_max {
            models.clear();
        }
        models.insert(model, loaded);
    }

    /// Whether `task` is a canary (its usage is not charged).
    pub(super) fn is_canary(&self, task: &TaskId) -> bool {
        self.tasks.lock().contains(task)
    }

    pub(super) fn close(&self) {
        for t in &self.transports {
            t.close();
        }
    }
}

/// A deterministic input for a model: `seed` picks the values (splitmix64), symbolic
/// dimensions are 1. The determinism gate uses it, and canaries of a deployment whose clients
/// told no shapes.
pub fn canary_inputs(
    info: &ModelInfo,
    seed: u64,
    bytes_max: u64,
) -> Result<Vec<NamedTensor>, InputsError> {
    canary_inputs_shaped(info, None, seed, bytes_max)
}

/// The dimensions of `spec` in `shape` (by name), if they fit it: same rank, the fixed
/// dimensions equal, the symbolic ones between 1 and [`DIM_MAX`](crat_core::tensor::DIM_MAX).
fn told_dims<'a>(spec: &crat_backend::TensorSpec, shape: &'a Shape) -> Option<&'a [u64]> {
    let (_, dims) = shape.iter().find(|(name, _)| *name == spec.name)?;
    let fits = dims.len() == spec.shape.len()
        && dims.iter().zip(&spec.shape).all(|(d, s)| match s {
            Dim::Fixed(n) => d == n,
            Dim::Symbolic(_) => (1..=crat_core::tensor::DIM_MAX).contains(d),
        });
    fits.then_some(dims.as_slice())
}

/// As [`canary_inputs`], with each input's dimensions taken from `shape` (what clients send)
/// where they fit the model (symbolic dimensions 1 for the inputs where they do not).
pub(super) fn canary_inputs_shaped(
    info: &ModelInfo,
    shape: Option<&Shape>,
    seed: u64,
    bytes_max: u64,
) -> Result<Vec<NamedTensor>, InputsError> {
    let mut rng = crat_core::splitmix::SplitMix64::new(seed);
    let mut next = move || rng.next_u64();
    let mut total = 0u64;
    let mut inputs = Vec::with_capacity(info.inputs.len());
    for spec in &info.inputs {
        let shape: Vec<u64> = match shape.and_then(|s| told_dims(spec, s)) {
            Some(dims) => dims.to_vec(),
            None => spec
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Symbolic(_) => 1,
                })
                .collect(),
        };
        let bytes = crat_core::tensor::byte_len(spec.dtype, &shape)?;
        total = total.saturating_add(bytes);
        let too_large = InputsError::TooLarge { bytes_max };
        if total > bytes_max {
            return Err(too_large);
        }
        let count =
            usize::try_from(bytes / spec.dtype.size() as u64).map_err(|_| too_large.clone())?;
        let mut data = Vec::with_capacity(usize::try_from(bytes).map_err(|_| too_large)?);
        for _ in 0..count {
            let r = next();
            // 24 random bits as a fraction in [0, 1).
            let unit = (r >> 40) as f32 / (1u64 << 24) as f32;
            match spec.dtype {
                DType::F32 => data.extend_from_slice(&unit.to_le_bytes()),
                DType::F64 => data.extend_from_slice(&f64::from(unit).to_le_bytes()),
                // 0, 0.25, 0.5 or 0.75 in half precision.
                DType::F16 => data.extend_from_slice(
                    &[0x0000u16, 0x3400, 0x3800, 0x3a00][(r & 3) as usize].to_le_bytes(),
                ),
                DType::I64 => data.extend_from_slice(&((r & 3) as i64).to_le_bytes()),
                DType::I32 => data.extend_from_slice(&((r & 3) as i32).to_le_bytes()),
                DType::I8 | DType::U8 => data.push((r & 3) as u8),
                DType::Bool => data.push((r & 1) as u8),
                other => return Err(InputsError::Unsupported(other)),
            }
        }
        let tensor = Tensor::new(spec.dtype, shape, data)?;
        inputs.push(NamedTensor::new(spec.name.clone(), tensor));
    }
    Ok(inputs)
}

/// Runs `model` on `inputs` and names its outputs as it declares them (blocking).
pub(super) fn run_named(
    model: &dyn LoadedModel,
    inputs: &[Tensor],
) -> Result<Vec<NamedTensor>, BackendError> {
    let outputs = model.run(inputs)?;
    Ok(model
        .info()
        .outputs
        .iter()
        .zip(outputs)
        .map(|(spec, t)| NamedTensor::new(spec.name.clone(), t))
        .collect())
}

impl<T: Transport> Dispatcher<T> {
    pub(super) async fn canary_loop(self) {
        let interval = self.inner.config.canary.interval_ms;
        if interval == 0 || self.inner.canary.is_none() {
            return;
        }
        let mut ticker = tokio::time::interval(Duration::from_millis(interval));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.canary_sweep().await;
        }
    }

    /// Sends one canary to each of the next warm replicas (at most
    /// [`CanaryConfig::tasks_per_sweep_max`]) and records what they answered. Returns the
    /// outcomes. Does nothing when the dispatcher has no canary parts.
    pub async fn canary_sweep(&self) -> Vec<(DeploymentId, NodeId, CanaryOutcome)> {
        let Some(state) = &self.inner.canary else {
            return Vec::new();
        };
        let config = &self.inner.config.canary;
        let deployments: Vec<DeploymentRecord> = self
            .inner
            .deployments
            .read()
            .values()
            // An unverifiable deployment's answers cannot be checked (the determinism gate).
            .filter(|d| {
                d.stopped_at_s.is_none()
                    && d.model_bytes <= config.model_bytes_max
                    && d.verifiability.is_verifiable()
                    && !state.is_exempt(&d.model)
            })
            .cloned()
            .collect();
        let mut targets = Vec::new();
        {
            let d = self.inner.dispatch.lock();
            for dep in &deployments {
                if let Ok(replicas) = d.lease_replicas(&dep.id) {
                    // A replica still on the model before an update is checked once it
                    // switches (or is replaced, past the update's grace).
                    for r in replicas
                        .iter()
                        .filter(|r| d.serving_model(&dep.id, &r.node) == Some(dep.model))
                    {
                        targets.push((dep.clone(), r.clone(), replicas.clone()));
                    }
                }
            }
        }
        if targets.is_empty() {
            return Vec::new();
        }
        let start = state
            .cursor
            .fetch_add(config.tasks_per_sweep_max, Ordering::Relaxed);
        let n = targets.len().min(config.tasks_per_sweep_max);
        let picked: Vec<_> = (0..n)
            .map(|i| targets[(start + i) % targets.len()].clone())
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for (dep, replica, audience) in picked {
            let me = self.clone();
            set.spawn(async move {
                let outcome = me.canary(&dep, &replica, &audience).await;
                (dep.id, replica.node, outcome)
            });
        }
        let mut outcomes = Vec::with_capacity(n);
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                outcomes.push(r);
            }
        }
        outcomes
    }

    /// A client reported that `node`, a replica of `dep`, answered without a valid receipt:
    /// sends it a canary now (in the background), unless it had one on a report within
    /// [`SUSPECT_CANARY_EVERY_S`]. A node that is not a warm replica of `dep` is left to the
    /// regular sweeps.
    pub(super) fn canary_suspect(&self, dep: DeploymentRecord, node: NodeId) {
        let Some(state) = &self.inner.canary else {
            return;
        };
        if self.inner.config.canary.interval_ms == 0
            || dep.model_bytes > self.inner.config.canary.model_bytes_max
            || !dep.verifiability.is_verifiable()
            || state.is_exempt(&dep.model)
        {
            return;
        }
        let Ok(audience) = self.inner.dispatch.lock().lease_replicas(&dep.id) else {
            return;
        };
        let Some(replica) = audience.iter().find(|r| r.node == node).cloned() else {
            return;
        };
        let now = self.inner.clock.now_s();
        let fresh = {
            let mut suspects = state.suspects.lock();
            suspects.forget_expired(now);
            !suspects.contains(&node)
                && suspects
                    .insert(
                        node,
                        (),
                        now.saturating_add(SUSPECT_CANARY_EVERY_S),
                        now,
                        WhenFull::Refuse,
                    )
                    .is_ok()
        };
        if fresh {
            let me = self.clone();
            tokio::spawn(async move {
                me.canary(&dep, &replica, &audience).await;
            });
        }
    }

    async fn canary(
        &self,
        dep: &DeploymentRecord,
        replica: &Replica,
        audience: &[Replica],
    ) -> CanaryOutcome {
        let outcome = match self.canary_inner(dep, replica, audience).await {
            Ok(true) => CanaryOutcome::Passed,
            Ok(false) => CanaryOutcome::Failed,
            Err(e) => {
                tracing::debug!(deployment = %dep.id, node = %replica.node, error = %e, "canary inconclusive");
                CanaryOutcome::Inconclusive
            }
        };
        let counter = match outcome {
            CanaryOutcome::Passed => &self.inner.counters.canaries_passed,
            CanaryOutcome::Failed => &self.inner.counters.canaries_failed,
            CanaryOutcome::Inconclusive => &self.inner.counters.canaries_inconclusive,
        };
        Counters::add(counter, 1);
        let label = match outcome {
            CanaryOutcome::Passed => "passed",
            CanaryOutcome::Failed => "failed",
            CanaryOutcome::Inconclusive => "inconclusive",
        };
        metrics::counter!(crate::metrics::CANARIES_TOTAL, "outcome" => label).increment(1);
        if outcome == CanaryOutcome::Failed {
            self.validation_failed(replica.node).await;
        }
        outcome
    }

    /// Records a failed validation of `node`'s work: ledger first, then the state machine
    /// (which may exclude the node).
    pub(super) async fn validation_failed(&self, node: NodeId) {
        let now = self.inner.clock.now_s();
        if let Err(e) = self
            .db(move |l| l.record_validation(&node, false, now))
            .await
        {
            tracing::error!(%node, error = ?e, "failed validation not recorded");
        }
        let effects = self.inner.dispatch.lock().validation_failed(now, &node);
        if let Some(until) = self.inner.dispatch.lock().excluded_until(&node) {
            tracing::warn!(%node, until_s = until, "node excluded from placement");
        }
        self.apply(effects).await;
    }

    /// Ok(agreed) or why there is no verdict.
    async fn canary_inner(
        &self,
        dep: &DeploymentRecord,
        replica: &Replica,
        audience: &[Replica],
    ) -> Result<bool, String> {
        let Some(state) = &self.inner.canary else {
            return Err("canaries are off".into());
        };
        let config = &self.inner.config.canary;
        let model = self.reference_model(state, dep).await?;
        let limit = config.input_bytes_max.min(dep.plan.max_input_bytes());
        // Shaped as clients' inputs, when they told; generic when that does not fit.
        let told = state.shapes.lock().pick(&dep.id, rand::random());
        let seed = rand::random();
        let inputs = match canary_inputs_shaped(model.info(), told.as_ref(), seed, limit) {
            Ok(inputs) => inputs,
            Err(_) if told.is_some() => {
                canary_inputs(model.info(), seed, limit).map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let tensors: Vec<Tensor> = inputs.iter().map(|t| t.tensor.clone()).collect();
        let expected = state
            .reference_run(
                model.clone(),
                tensors,
                Duration::from_millis(config.timeout_ms),
            )
            .await?;
        let identity = rand::random::<u32>() as usize % state.transports.len().max(1);
        let ticket = self.canary_ticket(state, dep, identity, replica, audience)?;
        // Made as the SDK makes clients' ids (`crat_sdk::new_task_id`): a node cannot tell a
        // canary by its id.
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let task = TaskId::time_ordered(unix_ms, new_id());
        // Never refuses: the oldest canary is forgotten instead.
        let _ = state
            .tasks
            .lock()
            .insert(task, (), u64::MAX, 0, WhenFull::ForgetSoonest);
        let request = InferRequest::new(task, dep.id, ticket, inputs);
        let inputs_digest = request.inputs_digest;
        let request = ClientToNode::Infer(Box::new(request));
        let conn = self.canary_conn(state, identity, replica).await?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let answer = tokio::time::timeout(
            timeout,
            conn.call::<_, NodeToClient>(
                &request,
                Conversation::ClientNode,
                self.inner.config.frame_limits,
            ),
        )
        .await;
        let answer = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                state.conns.lock().remove(&(identity, replica.node));
                return Err(e.to_string());
            }
            Err(_) => return Err(format!("no answer within {timeout:?}")),
        };
        let (outputs, receipt) = match answer {
            NodeToClient::Receipted {
                task: t,
                outputs,
                receipt,
                ..
            } if t == task => (outputs, Some(receipt)),
            // An answer without a receipt cannot be checked by a client: as a client's
            // would, the canary counts it as a failed answer (a node that withholds receipts
            // is caught like one that returns junk).
            NodeToClient::Outputs {
                task: t, outputs, ..
            } if t == task => (outputs, None),
            // Outputs for another task are a wrong answer to this one.
            NodeToClient::Outputs { .. } | NodeToClient::Receipted { .. } | NodeToClient::Pong => {
                return Ok(false);
            }
            NodeToClient::Error(e) => return Err(e.to_string()),
        };
        let signed_model = receipt.as_ref().map(|r| r.body.model);
        let evidence = receipt
            .ok_or(ReceiptError::Missing)
            .and_then(|r| r.check_answer(&replica.node, &task, &dep.id, &inputs_digest, &outputs));
        if let Err(e) = evidence {
            tracing::warn!(deployment = %dep.id, node = %replica.node, error = %e, "canary answered without a valid receipt");
            return Ok(false);
        }
        if let Some(receipt) = signed_model
            && receipt != dep.model
        {
            // Answered by another model than the reference's: an update raced the canary if
            // that is the model the node reports serving; otherwise the node signed for a
            // model it does not serve (to dodge the comparison), a wrong answer.
            let serving = self
                .inner
                .dispatch
                .lock()
                .serving_model(&dep.id, &replica.node);
            if serving == Some(receipt) {
                return Err(format!(
                    "answered by model {receipt}, the reference is {} (an update is rolling out)",
                    dep.model
                ));
            }
            tracing::warn!(deployment = %dep.id, node = %replica.node, %receipt, "canary answered by a model the node does not serve");
            return Ok(false);
        }
        match agree(&outputs, &expected, &config.tolerance) {
            Ok(()) => Ok(true),
            Err(d) => {
                tracing::warn!(deployment = %dep.id, node = %replica.node, disagreement = %d, "canary failed");
                Ok(false)
            }
        }
    }

    /// The lease `identity` holds for `dep`: the one it used before while it has a quarter of
    /// its lifetime left and names `replica`, else a new one for `audience`, as the
    /// dispatcher issues a client's (budget, price, audience, this identity as its client).
    fn canary_ticket(
        &self,
        state: &CanaryState<T>,
        dep: &DeploymentRecord,
        identity: usize,
        replica: &Replica,
        audience: &[Replica],
    ) -> Result<Signed<Ticket>, String> {
        let now = self.inner.clock.now_s();
        let lifetime = self.inner.config.ticket_lifetime_s;
        let mut tickets = state.tickets.lock();
        if let Some(t) = tickets.get(&(dep.id, identity))
            && t.body.expires_at_s > now.saturating_add(lifetime / 4)
            && t.body.audience.contains(&replica.node)
        {
            return Ok(t.clone());
        }
        let budget = ticket_budget(
            &dep.plan,
            dep.allowance_left,
            dep.price.upfront,
            dep.created_at_s,
            now,
        )
        .map_err(|e| e.to_string())?;
        let client = state
            .transports
            .get(identity)
            .ok_or("no canary endpoint")?
            .local_id();
        let ticket = Signed::sign(
            Ticket {
                deployment: dep.id,
                key: dep.key,
                credit_budget: budget,
                issued_at_s: now,
                expires_at_s: now.saturating_add(lifetime),
                nonce: new_id(),
                audience: audience
                    .iter()
                    .take(TICKET_AUDIENCE_MAX)
                    .map(|r| r.node)
                    .collect(),
                client,
                price: ticket_price(
                    &dep.plan,
                    &self.inner.config.pricing,
                    dep.model_bytes,
                    dep.price.per_request_max,
                ),
            },
            &self.inner.key,
        );
        if tickets.len() >= CANARY_TICKETS_MAX {
            tickets.clear();
        }
        tickets.insert((dep.id, identity), ticket.clone());
        Ok(ticket)
    }

    async fn canary_conn(
        &self,
        state: &CanaryState<T>,
        identity: usize,
        replica: &Replica,
    ) -> Result<T::Connection, String> {
        if let Some(c) = state.conns.lock().get(&(identity, replica.node)) {
            return Ok(c.clone());
        }
        let transport = state.transports.get(identity).ok_or("no canary endpoint")?;
        let mut last = String::from("no address");
        for addr in &replica.addrs {
            let dial = tokio::time::timeout(
                Duration::from_millis(self.inner.config.canary.timeout_ms),
                transport.connect(addr, &replica.node),
            )
            .await;
            match dial {
                Ok(Ok(c)) => {
                    let mut conns = state.conns.lock();
                    if conns.len() >= self.inner.config.canary.connections_max {
                        conns.clear();
                    }
                    conns.insert((identity, replica.node), c.clone());
                    return Ok(c);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("connecting to {addr} timed out"),
            }
        }
        Err(last)
    }

    async fn reference_model(
        &self,
        state: &CanaryState<T>,
        dep: &DeploymentRecord,
    ) -> Result<Arc<dyn LoadedModel>, String> {
        if let Some(m) = state.models.lock().get(&dep.model) {
            return Ok(m.clone());
        }
        let backend = state
            .reference
            .clone()
            .ok_or("the dispatcher has no reference backend")?;
        // One load per model at a time, within the reference slots and the time limit.
        let id = dep.model;
        if !state.loading.lock().insert(id) {
            return Err(format!("reference model {id} is being loaded"));
        }
        let memory_max = self.inner.config.canary.reference_memory_bytes_max;
        let loaded = async {
            let bytes = self
                .read_model(&id, self.inner.config.canary.model_bytes_max)
                .await?;
            let permit = state
                .reference_slot(Duration::from_millis(self.inner.config.canary.timeout_ms))
                .await?;
            let load = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                // The estimate first: a model over the reference memory is never loaded.
                // (Bytes the check refuses are the backend's to refuse, with the same error.)
                if let Ok(summary) = check_model(&bytes)
                    && summary.memory.bytes > memory_max
                {
                    return Err(ReferenceLoadError::OverMemory(summary.memory));
                }
                backend.load(&bytes).map_err(ReferenceLoadError::Backend)
            });
            tokio::time::timeout(
                Duration::from_millis(self.inner.config.canary.timeout_ms),
                load,
            )
            .await
            .map_err(|_| "loading the reference model is over its time".to_string())?
            .map_err(|e| e.to_string())
        }
        .await;
        state.loading.lock().remove(&id);
        let model = match loaded? {
            Ok(model) => model,
            Err(ReferenceLoadError::OverMemory(estimate)) => {
                tracing::warn!(
                    model = %id,
                    %estimate,
                    reference_memory_bytes_max = memory_max,
                    "model over the reference memory: exempt from canaries"
                );
                Counters::add(&self.inner.counters.canary_models_exempt, 1);
                let mut exempt = state.exempt.lock();
                if exempt.len() >= EXEMPT_MODELS_MAX {
                    exempt.clear();
                }
                exempt.insert(id);
                return Err(format!(
                    "model {id} needs an estimated {} of memory, more than the reference \
                     backends may hold ({}): exempt from canaries",
                    Bytes(estimate.bytes),
                    Bytes(memory_max)
                ));
            }
            Err(ReferenceLoadError::Backend(e)) => return Err(format!("reference load: {e}")),
        };
        Counters::add(&self.inner.counters.canary_reference_loads, 1);
        state.keep_reference(dep.model, model.clone());
        Ok(model)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crat_backend::TensorSpec;

    /// A model taking `x: f32[batch, 3]` and `ids: i64[ids]`.
    fn two_inputs(ids: Dim) -> ModelInfo {
        ModelInfo {
            inputs: vec![
                TensorSpec {
                    name: "x".into(),
                    dtype: DType::F32,
                    shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(3)],
                },
                TensorSpec {
                    name: "ids".into(),
                    dtype: DType::I64,
                    shape: vec![ids],
                },
            ],
            outputs: vec![],
        }
    }

    #[test]
    fn inputs_follow_the_declared_types_and_are_deterministic() {
        let info = two_inputs(Dim::Fixed(4));
        let a = canary_inputs(&info, 7, 1 << 20).unwrap();
        assert_eq!(a, canary_inputs(&info, 7, 1 << 20).unwrap());
        assert_ne!(a, canary_inputs(&info, 8, 1 << 20).unwrap());
        assert_eq!(a[0].tensor.shape(), &[1, 3]);
        assert!(
            a[0].tensor
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|v| (0.0..1.0).contains(v))
        );
        assert!(
            a[1].tensor
                .to_vec::<i64>()
                .unwrap()
                .iter()
                .all(|v| (0..4).contains(v))
        );
        assert_eq!(
            canary_inputs(&info, 7, 16),
            Err(InputsError::TooLarge { bytes_max: 16 })
        );
    }

    #[test]
    fn told_shapes_are_used_where_they_fit_the_model() {
        let info = two_inputs(Dim::Symbolic("len".into()));
        let told: Shape = vec![("x".into(), vec![5, 3]), ("ids".into(), vec![7])];
        let a = canary_inputs_shaped(&info, Some(&told), 1, 1 << 20).unwrap();
        assert_eq!(a[0].tensor.shape(), &[5, 3]);
        assert_eq!(a[1].tensor.shape(), &[7]);
        // A fixed dimension that differs, a wrong rank, a zero: that input keeps the generic
        // shape; an input not told too.
        for bad in [vec![5, 4], vec![5], vec![0, 3]] {
            let told: Shape = vec![("x".into(), bad)];
            let a = canary_inputs_shaped(&info, Some(&told), 1, 1 << 20).unwrap();
            assert_eq!(a[0].tensor.shape(), &[1, 3]);
            assert_eq!(a[1].tensor.shape(), &[1]);
        }
        // Shapes over the size limit are refused (the caller falls back to the generic ones).
        let huge: Shape = vec![("x".into(), vec![1 << 20, 3])];
        assert!(matches!(
            canary_inputs_shaped(&info, Some(&huge), 1, 1 << 20),
            Err(InputsError::TooLarge { .. })
        ));
    }

    /// A model whose every run takes `run_for`.
    struct Slow {
        info: ModelInfo,
        run_for: Duration,
    }

    impl LoadedModel for Slow {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn run(&self, _inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
            std::thread::sleep(self.run_for);
            Ok(vec![])
        }
        fn memory_bytes(&self) -> u64 {
            0
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reference_run_neither_stalls_canaries_nor_piles_up_threads() {
        let state = CanaryState::<crat_transport::memory::MemoryTransport>::new(
            CanaryParts {
                transports: vec![],
                references: vec![],
            },
            &CanaryConfig::default(),
        );
        let slow: Arc<dyn LoadedModel> = Arc::new(Slow {
            info: two_inputs(Dim::Fixed(1)),
            run_for: Duration::from_millis(1_500),
        });
        let limit = Duration::from_millis(100);
        let started = std::time::Instant::now();
        // Every slot taken by a run over its time: each canary gives up after its limit.
        for _ in 0..REFERENCE_SLOTS {
            let e = state
                .reference_run(slow.clone(), vec![], limit)
                .await
                .unwrap_err();
            assert!(e.contains("over its time"), "{e}");
        }
        let e = state
            .reference_run(slow.clone(), vec![], limit)
            .await
            .unwrap_err();
        assert!(e.contains("slot"), "{e}");
        assert!(
            started.elapsed() < Duration::from_millis(1_400),
            "{:?}",
            started.elapsed()
        );
        // When the slow runs end, their slots come back.
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        let fast: Arc<dyn LoadedModel> = Arc::new(Slow {
            info: two_inputs(Dim::Fixed(1)),
            run_for: Duration::ZERO,
        });
        state.reference_run(fast, vec![], limit).await.unwrap();
    }
}
