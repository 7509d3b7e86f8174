//! A [`Deployment`]: its lease, and tasks sent straight to its replicas with failover.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crat_core::bps::Bps;
use crat_core::id::{DeploymentId, ModelId, NodeId, TaskId};
use crat_core::money::Credits;
use crat_core::pricing::DeployPlan;
use crat_core::sign::{ProvenReceipt, ReceiptError, Signed, Ticket};
use crat_core::tensor::NamedTensor;
use crat_core::verify::{Tolerance, agree};
use crat_core::wire::{
    self, ACKS_MAX, ClientCall, ClientToNode, DeploymentInfo, DeploymentState, DispatcherResponse,
    InferRequest, Lease, NodeToClient, Replica, ValidationReport,
};
use crat_transport::{ConnectionExt, Conversation, Transport};
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;

use crate::acks::{AckLedger, Due};
use crate::client::Client;
use crate::error::{Error, unexpected};
use crate::pool::breaks_connection;
use crate::shapes::ShapeTally;
use crate::stats::{Counters, Stats, bump};

/// A lease as the SDK holds it.
struct LeaseState {
    /// Increases with every lease fetched for this deployment (from 1).
    generation: u64,
    lease: Lease,
    /// When (client clock, Unix seconds) the lease is due for renewal.
    renew_at_s: u64,
    /// When it arrived (limits early renewals after replica failures).
    fetched: std::time::Instant,
}

/// A fresh task id, for [`Deployment::infer_task`] (keep it to retry the task: a retry with
/// the same id and inputs is charged once): time-ordered with 80 random bits
/// ([`TaskId::time_ordered`]), which keeps the dispatcher's usage table inserting near its
/// end.
pub fn new_task_id() -> TaskId {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    TaskId::time_ordered(unix_ms, rand::random())
}

/// A lease whose replica could not be reached is renewed at the next task (the dispatcher
/// may have re-placed it), but at most once per this interval, so a dispatcher that has not
/// noticed the failure yet is not asked again for every task.
const STALE_RENEW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Validation reports of one deployment handle being sent at once; more are dropped (and
/// counted in [`Stats::reports_dropped`](crate::Stats::reports_dropped)).
const REPORTS_PENDING_MAX: usize = 16;

/// Answers whose receipt signature is verified (an ed25519 verification costs about as much
/// as a small model's run): every one of a node's first [`RECEIPTS_VERIFIED_FIRST`] and every
/// one after a node's receipt failed, before the answer is used; then one in
/// [`RECEIPTS_VERIFIED_ONE_IN`] at random, beside the caller (the answer is returned while
/// its signature is checked; a failure marks the node as above, counts in
/// [`Stats::receipts_invalid`](crate::Stats::receipts_invalid) and is reported to the
/// dispatcher). The receipt's digests are checked on every answer; the dispatcher's canaries
/// verify every receipt they get, so a node forging signatures is caught either way.
#[derive(Default)]
struct ReceiptSampler {
    /// Receipts verified per node, and whether one failed.
    nodes: HashMap<NodeId, (u32, bool)>,
}

/// Every receipt of a node's first this many answers is verified.
const RECEIPTS_VERIFIED_FIRST: u32 = 16;
/// Then one answer in this many, at random.
const RECEIPTS_VERIFIED_ONE_IN: u32 = 16;
/// Nodes remembered (the map is emptied beyond: verification starts over).
const RECEIPT_NODES_MAX: usize = 4_096;

/// Sampled signature checks running beside their callers at once, per deployment handle;
/// past it a sampled answer is checked before it is returned.
const RECEIPTS_CHECKED_BESIDE_MAX: usize = 64;

/// When an answer's receipt signature is verified ([`ReceiptSampler::verify`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verify {
    /// Before the answer is used.
    Now,
    /// Beside the caller, once the answer is returned.
    Beside,
    /// Not this one (its digests are checked).
    No,
}

impl ReceiptSampler {
    fn verify(&mut self, node: &NodeId) -> Verify {
        if self.nodes.len() >= RECEIPT_NODES_MAX && !self.nodes.contains_key(node) {
            self.nodes.clear();
        }
        let (seen, failed) = self.nodes.entry(*node).or_insert((0, false));
        let verify = if *failed || *seen < RECEIPTS_VERIFIED_FIRST {
            Verify::Now
        } else if rand::random::<u32>().is_multiple_of(RECEIPTS_VERIFIED_ONE_IN) {
            Verify::Beside
        } else {
            Verify::No
        };
        if verify != Verify::No {
            *seen = seen.saturating_add(1);
        }
        verify
    }

    fn failed(&mut self, node: NodeId) {
        self.nodes.entry(node).or_insert((0, true)).1 = true;
    }
}

/// The task an answer is for, and what it costs under the lease's ticket.
struct Paid<'a> {
    ticket: &'a Signed<Ticket>,
    task: TaskId,
    inputs_digest: [u8; 32],
    cost: Credits,
}

/// One node's answer to a task, with its receipt (checked: the node's signature over this
/// task, these inputs and these outputs).
struct Answer {
    outputs: Vec<NamedTensor>,
    receipt: Box<ProvenReceipt>,
}

struct Shared {
    lease: Mutex<Option<Arc<LeaseState>>>,
    /// Held while a lease is fetched, so concurrent callers share one renewal.
    renewing: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// A lease generation to renew at the next task: one of its replicas was unreachable.
    stale: AtomicU64,
    /// Where the next task starts its walk over the replicas (round robin).
    next_replica: AtomicUsize,
    stats: Counters,
    /// Permits for validation reports in flight.
    reports: Arc<tokio::sync::Semaphore>,
    /// What each node answered under each ticket, for acknowledgements.
    acks: Mutex<AckLedger>,
    /// A flush of acknowledgements to the dispatcher is scheduled.
    flush_scheduled: std::sync::atomic::AtomicBool,
    /// Which answers' receipt signatures are verified.
    receipts: Mutex<ReceiptSampler>,
    /// Sampled signature checks running beside their callers.
    receipt_checks: Arc<tokio::sync::Semaphore>,
    /// The shapes of the inputs sent, told to the dispatcher for its canaries.
    shapes: Mutex<ShapeTally>,
}

/// One deployment of a model: describe it, stop it, and run tasks on its replicas.
///
/// Cheap to clone; clones share the cached lease and the counters. Tasks go straight to the
/// nodes named by the lease, over connections pooled by the [`Client`].
pub struct Deployment<T: Transport> {
    client: Client<T>,
    id: DeploymentId,
    shared: Arc<Shared>,
}

impl<T: Transport> Clone for Deployment<T> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            id: self.id,
            shared: self.shared.clone(),
        }
    }
}

impl<T: Transport> std::fmt::Debug for Deployment<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

// The client's ways to a deployment live beside the type they return, so that the client
// module does not depend on this one.
impl<T: Transport> Client<T> {
    /// Deploys a stored model. Returns once the dispatcher accepted the deployment (and took
    /// the up-front credits); use [`Deployment::wait_ready`] to wait for warm replicas.
    pub async fn deploy(&self, model: ModelId, plan: DeployPlan) -> Result<Deployment<T>, Error> {
        match self.call(ClientCall::Deploy { model, plan }).await? {
            DispatcherResponse::Deployment(info) if info.model == model => {
                Ok(Deployment::new(self.clone(), info.id))
            }
            other => Err(unexpected("Deploy", &other)),
        }
    }

    /// A handle on an existing deployment (no call is made; [`Deployment::info`] checks it).
    pub fn deployment(&self, id: DeploymentId) -> Deployment<T> {
        Deployment::new(self.clone(), id)
    }
}

impl<T: Transport> Deployment<T> {
    pub(crate) fn new(client: Client<T>, id: DeploymentId) -> Self {
        Self {
            client,
            id,
            shared: Arc::new(Shared {
                lease: Mutex::new(None),
                renewing: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                stale: AtomicU64::new(0),
                next_replica: AtomicUsize::new(rand::random::<u16>().into()),
                stats: Counters::default(),
                reports: Arc::new(tokio::sync::Semaphore::new(REPORTS_PENDING_MAX)),
                acks: Mutex::new(AckLedger::new()),
                flush_scheduled: std::sync::atomic::AtomicBool::new(false),
                receipts: Mutex::new(ReceiptSampler::default()),
                receipt_checks: Arc::new(tokio::sync::Semaphore::new(RECEIPTS_CHECKED_BESIDE_MAX)),
                shapes: Mutex::new(ShapeTally::default()),
            }),
        }
    }

    /// The deployment's id.
    pub fn id(&self) -> DeploymentId {
        self.id
    }

    /// The client this deployment is used through.
    pub fn client(&self) -> &Client<T> {
        &self.client
    }

    /// Counters of the tasks run through this handle (and its clones).
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// The deployment as the dispatcher describes it now.
    pub async fn info(&self) -> Result<DeploymentInfo, Error> {
        match self
            .client
            .call(ClientCall::Deployment {
                deployment: self.id,
            })
            .await?
        {
            DispatcherResponse::Deployment(info) if info.id == self.id => Ok(info),
            other => Err(unexpected("Deployment", &other)),
        }
    }

    /// Replaces the deployment's model by `model`, a stored model whose inputs and outputs
    /// can replace the deployed one's (same inputs, each accepting what it accepted; the same
    /// outputs): same deployment, endpoint and leases. Each replica loads the new model and
    /// switches once it is warm, serving the old one until then, so tasks keep running
    /// through the switch; [`Deployment::wait_updated`] waits until every replica has
    /// switched. The plan bounds how often ([`Error::UpdateTooFrequent`]); a per-request
    /// deployment pays each update from its allowance. A model that cannot replace the
    /// deployed one is [`Error::ModelRejected`]. Updating to the model the deployment has
    /// changes nothing (a retry is safe). Returns the deployment as described after the
    /// update.
    pub async fn update_model(&self, model: ModelId) -> Result<DeploymentInfo, Error> {
        match self
            .client
            .call(ClientCall::UpdateModel {
                deployment: self.id,
                model,
            })
            .await?
        {
            DispatcherResponse::Deployment(info) if info.id == self.id && info.model == model => {
                Ok(info)
            }
            other => Err(unexpected("UpdateModel", &other)),
        }
    }

    /// Polls [`Deployment::info`] until the deployment is `Ready` with every warm replica
    /// serving its current model (after [`Deployment::update_model`]); otherwise as
    /// [`Deployment::wait_ready`].
    pub async fn wait_updated(&self, timeout: Duration) -> Result<DeploymentInfo, Error> {
        self.wait_until(timeout, DeploymentInfo::is_switched).await
    }

    /// Polls [`Deployment::info`] until the deployment is `Ready` — or `Degraded` for want of
    /// capacity ([`DeploymentInfo::shortfall`] set) with a replica warm: on a network too
    /// small for every wanted replica that is as ready as it gets until nodes join, and it
    /// serves — pausing
    /// [`ready_poll_ms_initial`](crate::ClientConfig::ready_poll_ms_initial) and doubling up to
    /// [`ready_poll_ms_max`](crate::ClientConfig::ready_poll_ms_max) between polls.
    /// [`Error::Timeout`] after `timeout`; [`Error::Stopped`] if the deployment stops;
    /// [`Error::ModelRejected`] if no node could load its model (the nodes' reasons).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<DeploymentInfo, Error> {
        self.wait_until(timeout, |_| true).await
    }

    /// Polls until the deployment is `Ready` (or degraded for want of capacity, serving) and
    /// `done` holds of its description.
    async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&DeploymentInfo) -> bool,
    ) -> Result<DeploymentInfo, Error> {
        let config = &self.client.inner.config;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause_ms = config.ready_poll_ms_initial.max(1);
        loop {
            let info = self.info().await?;
            if info.is_serving() && done(&info) {
                return Ok(info);
            }
            match info.state {
                DeploymentState::Stopped => {
                    return Err(Error::Stopped(format!("{} is stopped", self.id)));
                }
                DeploymentState::Failed => {
                    return Err(Error::ModelRejected(format!(
                        "{}: nodes could not load the model: {}",
                        self.id,
                        info.failure.unwrap_or_default()
                    )));
                }
                DeploymentState::Ready | DeploymentState::Pending | DeploymentState::Degraded => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(format!(
                    "{} not ready after {} ms ({:?}, {}/{} replicas, {} on model {})",
                    self.id,
                    timeout.as_millis(),
                    info.state,
                    info.replicas_ready,
                    info.replicas_wanted,
                    info.replicas_on_model,
                    info.model
                )));
            }
            let pause = Duration::from_millis(pause_ms).min(deadline - now);
            tokio::time::sleep(pause).await;
            pause_ms = pause_ms
                .saturating_mul(2)
                .min(config.ready_poll_ms_max.max(1));
        }
    }

    /// Stops the deployment: no new leases, its replicas are released. What is left of a
    /// per-request allowance goes back to the account once the usage window of the last
    /// leases has ended (their lifetime plus the dispatcher's usage grace), so that work
    /// already served, reported late or charged from this client's acknowledgements, is paid
    /// from it first.
    pub async fn undeploy(&self) -> Result<(), Error> {
        match self
            .client
            .call(ClientCall::Undeploy {
                deployment: self.id,
            })
            .await?
        {
            DispatcherResponse::Ok | DispatcherResponse::Deployment(_) => {
                *self.shared.lease.lock() = None;
                Ok(())
            }
            other => Err(unexpected("Undeploy", &other)),
        }
    }

    /// The current lease (replicas and ticket), fetched or renewed if due.
    pub async fn lease(&self) -> Result<Lease, Error> {
        Ok(self.current_lease().await?.lease.clone())
    }

    fn counters(&self) -> [&Counters; 2] {
        [&self.shared.stats, &self.client.inner.stats]
    }

    fn cached(&self) -> Option<Arc<LeaseState>> {
        self.shared.lease.lock().clone()
    }

    fn due(&self, lease: &LeaseState) -> bool {
        self.client.inner.config.clock.now_s() >= lease.renew_at_s
            || self.shared.stale.load(Ordering::Relaxed) == lease.generation
    }

    async fn current_lease(&self) -> Result<Arc<LeaseState>, Error> {
        match self.cached() {
            Some(l) if !self.due(&l) => Ok(l),
            Some(l) => self.renew(l.generation).await,
            None => self.renew(0).await,
        }
    }

    /// Fetches a new lease to replace generation `seen` (0: none). If another caller already
    /// replaced it meanwhile, that lease is returned instead: one renewal serves them all.
    async fn renew(&self, seen: u64) -> Result<Arc<LeaseState>, Error> {
        let _renewing = self.shared.renewing.lock().await;
        let previous = self.cached();
        if let Some(current) = &previous
            && current.generation != seen
        {
            return Ok(current.clone());
        }
        let config = &self.client.inner.config;
        let now_s = config.clock.now_s();
        let lease = match self
            .client
            .call(ClientCall::Lease {
                deployment: self.id,
            })
            .await?
        {
            DispatcherResponse::Lease(l) => l,
            other => return Err(unexpected("Lease", &other)),
        };
        let ticket = &lease.ticket.body;
        if ticket.deployment != self.id {
            return Err(Error::Protocol(format!(
                "lease for {} carries a ticket for {}",
                self.id, ticket.deployment
            )));
        }
        // Measured from when it arrived on the client's clock, so clock skew between client
        // and dispatcher does not shorten or stretch it.
        let lifetime_s = ticket.expires_at_s.saturating_sub(ticket.issued_at_s);
        let renew_at_s = now_s
            .saturating_add(lifetime_s)
            .saturating_sub(config.renew_margin_s(lifetime_s));
        let state = Arc::new(LeaseState {
            generation: self.shared.generation.fetch_add(1, Ordering::Relaxed) + 1,
            lease,
            renew_at_s,
            fetched: std::time::Instant::now(),
        });
        if previous.is_some() {
            bump(&self.counters(), |c| &c.lease_renewals);
            // The previous ticket's work is acknowledged to the dispatcher now.
            self.spawn_flush_acks();
        }
        *self.shared.lease.lock() = Some(state.clone());
        Ok(state)
    }

    /// Runs one task with a fresh id ([`new_task_id`]); see [`Deployment::infer_task`].
    pub async fn infer(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, Error> {
        self.infer_task(new_task_id(), inputs).await
    }

    /// Runs task `task` on one of the deployment's replicas and returns its outputs.
    ///
    /// The task goes straight to a node named by the lease (fetched, and renewed shortly
    /// before its ticket expires). On a transport failure, a timeout, or a node answering
    /// `Busy`, `NotFound`, `NoCapacity`, `Timeout` or `Internal`, the *same* task id is sent
    /// to the next replica (the dispatcher charges a task id once); when every replica of
    /// the lease failed, the lease is renewed once (replicas may have been re-placed) and the
    /// walk starts again. A rejected ticket, or one whose budget cannot pay for the task
    /// (`BudgetExhausted`), renews the lease and retries; a replica at its share of a
    /// per-instance plan's rate (`RateLimited`) passes the task to the next. At most
    /// [`attempts_max`](crate::ClientConfig::attempts_max) node calls are made, then
    /// [`Error::NoReplica`] carries the last failure.
    ///
    /// Errors that are the caller's fault (`InvalidInput`, `TooLarge`, `BadRequest`) or the
    /// account's (`InsufficientCredits`, `KeyExpired`, `KeyRevoked`, `Unauthenticated`) are
    /// returned at once.
    pub async fn infer_task(
        &self,
        task: TaskId,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, Error> {
        bump(&self.counters(), |c| &c.tasks);
        let result = self.run_task(task, inputs).await;
        match &result {
            Ok(_) => bump(&self.counters(), |c| &c.completed),
            Err(_) => bump(&self.counters(), |c| &c.failed),
        }
        result
    }

    async fn run_task(
        &self,
        task: TaskId,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, Error> {
        let config = &self.client.inner.config;
        let mut lease = self.current_lease().await?;
        let input_bytes = crat_core::tensor::tensors_bytes(&inputs);
        if config.input_shapes_report_s > 0 {
            self.shared.shapes.lock().sent(&inputs);
        }
        let request = InferRequest::new(task, self.id, lease.lease.ticket.clone(), inputs);
        let inputs_digest = request.inputs_digest;
        let mut message = ClientToNode::Infer(Box::new(request));
        let frame_max = config
            .frame_limits
            .frame_bytes_max(Conversation::ClientNode);
        let len = wire::encoded_len(&message).map_err(|e| Error::Protocol(e.to_string()))?;
        if len > frame_max as usize {
            return Err(Error::TooLarge(format!(
                "a task of {len} bytes exceeds the {frame_max}-byte frame cap"
            )));
        }
        let set_ticket = |message: &mut ClientToNode, lease: &LeaseState| {
            if let ClientToNode::Infer(r) = message {
                r.ticket = lease.lease.ticket.clone();
            }
        };

        let attempts_max = config
            .attempts_max
            .unwrap_or_else(|| 2 * lease.lease.replicas.len() as u32 + 2)
            .max(1);
        let mut attempts = 0u32;
        let mut last: Option<Error> = None;
        let mut failing_over = false;
        let mut renewed_after_all_failed = false;
        let mut ticket_renewed = false;
        let mut start = self.shared.next_replica.fetch_add(1, Ordering::Relaxed);
        let mut tried = 0usize;
        // Whether this task is spot-checked is decided before any answer is seen.
        let bps = u32::from(lease.lease.validation_bps.get());
        let spot_checked = bps > 0 && rand::random::<u32>() % u32::from(Bps::FULL.get()) < bps;
        while attempts < attempts_max {
            if self.due(&lease) {
                lease = self.renew(lease.generation).await?;
                set_ticket(&mut message, &lease);
            }
            let n = lease.lease.replicas.len();
            if tried >= n {
                if renewed_after_all_failed {
                    break;
                }
                renewed_after_all_failed = true;
                lease = self.renew(lease.generation).await?;
                set_ticket(&mut message, &lease);
                tried = 0;
                start = self.shared.next_replica.fetch_add(1, Ordering::Relaxed);
                if lease.lease.replicas.is_empty() {
                    break;
                }
                continue;
            }
            let replica = &lease.lease.replicas[start.wrapping_add(tried) % n];
            attempts += 1;
            // The node's latest acknowledgement travels with the task, when one is due; it is
            // signed beside the tasks, and the next task to the node carries it.
            if let ClientToNode::Infer(r) = &mut message {
                let due = self.shared.acks.lock().due(
                    lease.lease.ticket.body.nonce,
                    replica.node,
                    config.ack_every_tasks,
                );
                r.ack = match due {
                    Due::No => None,
                    Due::Ready(ack) => Some(Box::new(ack)),
                    Due::Sign(body) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            let ack = Signed::sign(body, &me.client.inner.identity);
                            me.shared.acks.lock().signed(ack);
                        });
                        None
                    }
                };
            }
            if failing_over {
                bump(&self.counters(), |c| &c.failovers);
                failing_over = false;
            }
            match self
                .attempt(replica, task, &inputs_digest, &message, spot_checked)
                .await
            {
                Ok(answer) => {
                    let paid = Paid {
                        ticket: &lease.lease.ticket,
                        task,
                        inputs_digest,
                        cost: lease
                            .lease
                            .ticket
                            .body
                            .price
                            .cost(input_bytes)
                            .unwrap_or(Credits::ZERO),
                    };
                    if spot_checked {
                        return self
                            .spot_check(&paid, &message, replica, answer, &lease)
                            .await;
                    }
                    self.received(&paid, replica, true);
                    return Ok(answer.outputs);
                }
                Err(e @ (Error::TicketRejected(_) | Error::BudgetExhausted(_))) => {
                    bump(&self.counters(), |c| &c.ticket_rejections);
                    tracing::debug!(%task, node = %replica.node, error = %e, "ticket refused");
                    if ticket_renewed {
                        if matches!(e, Error::BudgetExhausted(_)) {
                            // A fresh ticket cannot pay either: the allowance is what it is.
                            return Err(e);
                        }
                        // A fresh ticket was refused too: this node is not for us any more.
                        tried += 1;
                        failing_over = true;
                    } else {
                        ticket_renewed = true;
                        lease = self.renew(lease.generation).await?;
                        set_ticket(&mut message, &lease);
                    }
                    last = Some(e);
                }
                Err(e) if e.is_failover() => {
                    tracing::debug!(%task, node = %replica.node, error = %e, "failing over");
                    if matches!(e, Error::Transport(_))
                        && lease.fetched.elapsed() >= STALE_RENEW_INTERVAL
                    {
                        self.shared.stale.store(lease.generation, Ordering::Relaxed);
                    }
                    tried += 1;
                    failing_over = true;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoReplica {
            attempts,
            last: last.map(Box::new),
        })
    }

    /// Runs a sampled task again on a validator: a replica that is neither the worker nor of
    /// the worker's operator (address block). Each node answers without seeing the other's
    /// answer, and signs a receipt for it. If the answers agree (within the tolerance of
    /// [`crat_core::verify`]) the worker's outputs are returned; if not, a third replica of a
    /// third operator decides and the majority's outputs are returned, or
    /// [`Error::Validation`] when there is no majority. The signed receipts and the majority
    /// go to the dispatcher in a [`ValidationReport`] (in the background, bounded), which
    /// credits the validators in the majority and records a failed validation for a node
    /// outside it. Without a validator (one operator only) or when the validator does not
    /// answer, the worker's outputs are returned unchecked.
    async fn spot_check(
        &self,
        paid: &Paid<'_>,
        message: &ClientToNode,
        worker: &Replica,
        first: Answer,
        lease: &LeaseState,
    ) -> Result<Vec<NamedTensor>, Error> {
        let (task, inputs_digest) = (paid.task, &paid.inputs_digest);
        let tol = Tolerance::default();
        let replicas = &lease.lease.replicas;
        let pick = |taken: &[&Replica]| -> Option<Replica> {
            let free: Vec<&Replica> = replicas
                .iter()
                .filter(|r| {
                    taken
                        .iter()
                        .all(|t| t.node != r.node && t.operator != r.operator)
                })
                .collect();
            if free.is_empty() {
                return None;
            }
            Some(free[rand::random::<u32>() as usize % free.len()].clone())
        };
        let Some(validator) = pick(&[worker]) else {
            self.received(paid, worker, true);
            return Ok(first.outputs);
        };
        bump(&self.counters(), |c| &c.validations);
        let second = match self
            .attempt(&validator, task, inputs_digest, message, true)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(%task, node = %validator.node, error = %e, "validator did not answer");
                self.received(paid, worker, true);
                return Ok(first.outputs);
            }
        };
        // Answered by different models (a model update is rolling out): the answers say
        // nothing about each other. The worker's is returned unchecked.
        if second.receipt.body.model != first.receipt.body.model {
            bump(&self.counters(), |c| &c.validations_inconclusive);
            self.received(paid, worker, true);
            self.received(paid, &validator, false);
            return Ok(first.outputs);
        }
        // The answer returned is paid for; the others are acknowledged at no cost.
        if agree(&second.outputs, &first.outputs, &tol).is_ok() {
            self.received(paid, worker, true);
            self.received(paid, &validator, false);
            self.report(
                [(worker, &first), (&validator, &second)],
                &[worker.node, validator.node],
            );
            return Ok(first.outputs);
        }
        bump(&self.counters(), |c| &c.disagreements);
        let Some(tie) = pick(&[worker, &validator]) else {
            self.received(paid, worker, false);
            self.received(paid, &validator, false);
            return Err(Error::Validation(format!(
                "nodes {} and {} disagree on {task} and no replica of a third operator can decide",
                worker.node, validator.node
            )));
        };
        self.received(paid, worker, false);
        self.received(paid, &validator, false);
        let third = self
            .attempt(&tie, task, inputs_digest, message, true)
            .await
            .map_err(|e| {
                Error::Validation(format!(
                    "nodes {} and {} disagree on {task}; the third replica {} failed: {e}",
                    worker.node, validator.node, tie.node
                ))
            })?;
        if third.receipt.body.model != first.receipt.body.model {
            bump(&self.counters(), |c| &c.validations_inconclusive);
            self.received(paid, &tie, false);
            return Err(Error::Validation(format!(
                "nodes {} and {} disagree on {task}; the third replica {} answered with another \
                 model (an update is rolling out)",
                worker.node, validator.node, tie.node
            )));
        }
        let triple = [(worker, &first), (&validator, &second), (&tie, &third)];
        if agree(&third.outputs, &first.outputs, &tol).is_ok() {
            self.report(triple, &[worker.node, tie.node]);
            self.received(paid, &tie, true);
            return Ok(first.outputs);
        }
        if agree(&third.outputs, &second.outputs, &tol).is_ok() {
            self.report(triple, &[validator.node, tie.node]);
            self.received(paid, &tie, true);
            return Ok(second.outputs);
        }
        self.received(paid, &tie, false);
        Err(Error::Validation(format!(
            "nodes {}, {} and {} gave three different answers to {task}",
            worker.node, validator.node, tie.node
        )))
    }

    /// Counts an answer `replica` gave to the task of `paid`, at its price when `pays` (the
    /// answer returned to the caller) and at no cost otherwise.
    fn received(&self, paid: &Paid<'_>, replica: &Replica, pays: bool) {
        let cost = if pays { paid.cost } else { Credits::ZERO };
        self.shared.acks.lock().received(
            paid.ticket,
            replica.node,
            &paid.task,
            &paid.inputs_digest,
            cost,
        );
        // The dispatcher hears of it within `ack_flush_ms`, tasks or no tasks after it.
        if !self.shared.flush_scheduled.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            let delay = Duration::from_millis(self.client.inner.config.ack_flush_ms);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                me.shared.flush_scheduled.store(false, Ordering::Release);
                if let Err(e) = me.flush_acks().await {
                    tracing::debug!(error = %e, "acknowledgements not delivered; sent again later");
                }
            });
        }
    }

    /// Acknowledges to the dispatcher every answer received and not yet acknowledged to it,
    /// so that it is charged even if the node that gave it never reports it. Runs on its own
    /// within [`ack_flush_ms`](crate::ClientConfig::ack_flush_ms) of each answer and at each
    /// lease renewal; call it to have the dispatcher know at once (before a process exits,
    /// say).
    pub async fn flush_acks(&self) -> Result<(), Error> {
        let now_s = self.client.inner.config.clock.now_s();
        let pending = self
            .shared
            .acks
            .lock()
            .pending(now_s, &self.client.inner.identity);
        for chunk in pending.chunks(ACKS_MAX) {
            let proofs = chunk.iter().map(|(_, _, p)| p.clone()).collect();
            match self.client.call(ClientCall::Acknowledge(proofs)).await? {
                DispatcherResponse::Ok => {
                    let done: Vec<_> = chunk.iter().map(|(pair, n, _)| (*pair, *n)).collect();
                    self.shared.acks.lock().mark_reported(&done);
                }
                other => return Err(unexpected("Acknowledge", &other)),
            }
        }
        self.report_shapes(now_s).await
    }

    /// Tells the dispatcher the shapes of the inputs sent, when due (see [`ShapeTally`]).
    async fn report_shapes(&self, now_s: u64) -> Result<(), Error> {
        let every_s = self.client.inner.config.input_shapes_report_s;
        let Some(shapes) = self.shared.shapes.lock().due(now_s, every_s) else {
            return Ok(());
        };
        let call = ClientCall::InputShapes {
            deployment: self.id,
            shapes: shapes.clone(),
        };
        match self.client.call(call).await {
            Ok(DispatcherResponse::Ok) => Ok(()),
            Ok(other) => Err(unexpected("InputShapes", &other)),
            // Not delivered: sent again at the next interval. Refused (the shapes, the key):
            // dropped, and the canaries keep their generic shapes.
            Err(e) => {
                if matches!(e, Error::Transport(_) | Error::Timeout(_) | Error::Busy(_)) {
                    self.shared.shapes.lock().undelivered(shapes);
                }
                Err(e)
            }
        }
    }

    fn spawn_flush_acks(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.flush_acks().await {
                tracing::debug!(error = %e, "acknowledgements not delivered; sent again later");
            }
        });
    }

    /// Sends a [`ValidationReport`] in the background (dropped when
    /// [`REPORTS_PENDING_MAX`] are pending).
    fn report<const N: usize>(&self, answers: [(&Replica, &Answer); N], majority: &[NodeId]) {
        let receipts: Vec<ProvenReceipt> =
            answers.iter().map(|(_, a)| (*a.receipt).clone()).collect();
        let Ok(permit) = self.shared.reports.clone().try_acquire_owned() else {
            bump(&self.counters(), |c| &c.reports_dropped);
            return;
        };
        let call = ClientCall::ReportValidation(Box::new(ValidationReport {
            receipts,
            majority: majority.to_vec(),
        }));
        let client = self.client.clone();
        tokio::spawn(async move {
            match client.call(call).await {
                Ok(DispatcherResponse::Ok) => {}
                Ok(other) => tracing::debug!(answer = ?other, "validation report refused"),
                Err(e) => tracing::debug!(error = %e, "validation report not delivered"),
            }
            drop(permit);
        });
    }

    /// Verifies the signature of `receipt` (whose digests were checked: it names the answer
    /// returned) beside the caller; a receipt of `node` that fails counts as one that failed
    /// before its answer was used, but for the answer, which the caller has.
    fn check_receipt_beside(
        &self,
        node: NodeId,
        receipt: Box<ProvenReceipt>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = receipt.verify(Some(&node)) {
                tracing::warn!(%node, error = %e, "a sampled receipt's signature does not verify");
                me.shared.receipts.lock().failed(node);
                bump(&me.counters(), |c| &c.receipts_invalid);
                me.report_no_receipt(node);
            }
            drop(permit);
        });
    }

    /// Tells the dispatcher in the background that `node` answered without a valid receipt
    /// (it sends the node a canary; dropped when [`REPORTS_PENDING_MAX`] reports are pending).
    fn report_no_receipt(&self, node: NodeId) {
        let Ok(permit) = self.shared.reports.clone().try_acquire_owned() else {
            bump(&self.counters(), |c| &c.reports_dropped);
            return;
        };
        let call = ClientCall::ReportNoReceipt {
            deployment: self.id,
            node,
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.call(call).await {
                tracing::debug!(error = %e, "missing receipt not reported");
            }
            drop(permit);
        });
    }

    /// One call of `message` (task `task`, inputs with digest `inputs_digest`) on `replica`;
    /// an answer without a valid receipt is an error ([`Error::InvalidReceipt`]). The receipt
    /// always has to name exactly this answer; its signature is verified when `evidence` (the
    /// answer of a spot check, whose receipts go to the dispatcher) and otherwise on a sample
    /// ([`ReceiptSampler`]).
    async fn attempt(
        &self,
        replica: &Replica,
        task: TaskId,
        inputs_digest: &[u8; 32],
        message: &ClientToNode,
        evidence: bool,
    ) -> Result<Answer, Error> {
        let inner = &self.client.inner;
        let (generation, conn) = inner
            .pool
            .get(&inner.transport, replica, &inner.config)
            .await?;
        let answer = tokio::time::timeout(
            inner.config.infer_timeout(),
            conn.call::<_, NodeToClient>(
                message,
                Conversation::ClientNode,
                inner.config.frame_limits,
            ),
        )
        .await;
        let answer = match answer {
            Err(_) => {
                inner.pool.drop_conn(&replica.node, generation).await;
                return Err(Error::Timeout(format!(
                    "node {} did not answer within {} ms",
                    replica.node, inner.config.infer_timeout_ms
                )));
            }
            Ok(Err(e)) => {
                if breaks_connection(&e) {
                    inner.pool.drop_conn(&replica.node, generation).await;
                }
                return Err(e.into());
            }
            Ok(Ok(answer)) => answer,
        };
        let invalid = |e: ReceiptError| {
            bump(&self.counters(), |c| &c.receipts_invalid);
            self.report_no_receipt(replica.node);
            Err(Error::InvalidReceipt(format!("{}: {e}", replica.node)))
        };
        match answer {
            // An answer the node does not sign for cannot be checked: not an answer.
            NodeToClient::Outputs { task: answered, .. } if answered == task => {
                invalid(ReceiptError::Missing)
            }
            NodeToClient::Receipted {
                task: answered,
                outputs,
                receipt,
                ..
            } if answered == task => {
                let verify = if evidence {
                    Verify::Now
                } else {
                    self.shared.receipts.lock().verify(&replica.node)
                };
                // A check beside the caller holds a permit; without one it is made now.
                let beside = (verify == Verify::Beside)
                    .then(|| self.shared.receipt_checks.clone().try_acquire_owned().ok())
                    .flatten();
                let checked = if verify == Verify::Now
                    || (verify == Verify::Beside && beside.is_none())
                {
                    receipt.check_answer(&replica.node, &task, &self.id, inputs_digest, &outputs)
                } else {
                    receipt.describes(&replica.node, &task, &self.id, inputs_digest, &outputs)
                };
                match checked {
                    Ok(()) => {
                        if let Some(permit) = beside {
                            self.check_receipt_beside(replica.node, receipt.clone(), permit);
                        }
                        Ok(Answer { outputs, receipt })
                    }
                    Err(e) => {
                        self.shared.receipts.lock().failed(replica.node);
                        invalid(e)
                    }
                }
            }
            NodeToClient::Receipted { task: answered, .. } => Err(Error::Protocol(format!(
                "node {} answered {answered} to {task}",
                replica.node
            ))),
            NodeToClient::Outputs { task: answered, .. } => Err(Error::Protocol(format!(
                "node {} answered {answered} to {task}",
                replica.node
            ))),
            NodeToClient::Error(e) => Err(Error::from_wire(e)),
            NodeToClient::Pong => Err(Error::Protocol(format!(
                "node {} answered a task with Pong",
                replica.node
            ))),
        }
    }

    /// Runs a stream of tasks, at most `concurrency` at once, and yields their results in
    /// input order (each task as [`Deployment::infer`]). Inputs are pulled from `inputs` only
    /// as fast as results are consumed, so a large stream is never held in memory.
    pub fn infer_many<S>(
        &self,
        inputs: S,
        concurrency: usize,
    ) -> impl Stream<Item = Result<Vec<NamedTensor>, Error>> + use<S, T>
    where
        S: Stream<Item = Vec<NamedTensor>>,
    {
        let deployment = self.clone();
        inputs
            .map(move |x| {
                let deployment = deployment.clone();
                async move { deployment.infer(x).await }
            })
            .buffered(concurrency.max(1))
    }
}
