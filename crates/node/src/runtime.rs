//! The node runtime: a node's life on the network, over any [`Transport`].
//!
//! [`Node::run`] registers with the dispatcher (a [`Registration`] signed by the node key),
//! then concurrently: heartbeats (load, loaded models, ready deployments) and applies the
//! assignments and demand each answer carries; answers the dispatcher's pushes; accepts
//! clients and serves their `Infer` requests; and reports usage. A lost dispatcher
//! connection is re-established with capped backoff; clients keep being served meanwhile.
//!
//! Serving one task: the ticket is verified offline (dispatcher's signature, validity window,
//! deployment, this node in its audience), the ticket's SDK key is checked against its rate
//! ([`NodeConfig::key_rate`]), the inputs are validated against the model, the idle workload
//! is stopped, the task runs through the deployment's [`Batcher`], and a usage record is
//! queued for the dispatcher. Usage records are kept (bounded) until the dispatcher
//! acknowledges them; when the buffer is full the node refuses new tasks with `Busy` rather
//! than lose a record.
//!
//! Limits, each answered with a typed error rather than growth: requests in progress per
//! client connection ([`NodeConfig::client_concurrency_max`]; more wait), tasks per SDK key
//! (`Busy`), the model queue ([`BatchConfig::queue_len_max`], `Busy`) and unacknowledged
//! usage ([`NodeConfig::usage_buffer_max`], `Busy`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crat_backend::LoadedModel;
use crat_backend::validate::validate_inputs;
use crat_core::bps::Bps;
use crat_core::clock::Clock;
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr};
use crat_core::limit::{KeyedRateLimiter, RateLimit};
use crat_core::sign::{BackendInfo, Receipt, Registration, Signed, TicketVerifier, outputs_digest};
use crat_core::tensor::NamedTensor;
use crat_core::wire::{
    Assignment, CHUNK_BYTES_MAX, ClientToNode, DispatcherPush, DispatcherReply, ErrorCode,
    Heartbeat, InferRequest, NodeAck, NodeLoad, NodeRequest, NodeToClient, ReplicaState,
    USAGE_RECORDS_MAX, UsageRecord, UsageReport, WireError,
};
use crat_transport::{ConnectionExt, Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;
use parking_lot::{Mutex, RwLock};

use crate::batch::{BatchConfig, Batcher, RunError, measure_batch_size};
use crate::cache::{CacheError, ModelCache, ModelStore};
use crate::idle::{IdleController, IdleWorkload};
use crate::probe::HardwareReport;

/// How batch sizes are chosen per model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchSizing {
    /// Measure at load ([`measure_batch_size`]) over these candidate sizes.
    Measure(Vec<u32>),
    /// Use this size for every model.
    Fixed(u32),
}

/// Everything a node needs to know besides its key, transport, backend and store.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the dispatcher listens.
    pub dispatcher_addr: PeerAddr,
    /// The dispatcher's identity (pinned on connect; it signs tickets).
    pub dispatcher_id: NodeId,
    /// Addresses clients reach this node at (registered with the dispatcher).
    pub advertise_addrs: Vec<PeerAddr>,
    /// Frame caps.
    pub frame_limits: FrameLimits,
    /// Batching limits (its `batch_size_max` is replaced per model by `batch_sizing`).
    pub batch: BatchConfig,
    /// How batch sizes are chosen.
    pub batch_sizing: BatchSizing,
    /// Bytes of loaded models kept in memory.
    pub memory_bytes_max: u64,
    /// Heartbeat interval until the dispatcher says otherwise. Default 5 s.
    pub heartbeat_interval_ms: u64,
    /// How often usage is reported. Default 1 s.
    pub usage_flush_ms: u64,
    /// Usage records kept while unacknowledged; above it new tasks are refused. Default 100,000.
    pub usage_buffer_max: usize,
    /// Requests served at once per client connection; further requests wait (on QUIC the
    /// transport's `streams_concurrent_max` holds the peer's extra streams). Default 256.
    pub client_concurrency_max: usize,
    /// Tasks per SDK key (the ticket's key, checked after the ticket) this node accepts; over
    /// it a task is answered `Busy` and the SDK tries another replica. `None`: unlimited.
    /// Default 10,000/s, bursts of 20,000.
    pub key_rate: Option<RateLimit>,
    /// SDK keys whose rate is tracked at once (least recently used forgotten beyond).
    /// Default 16,384.
    pub keys_tracked_max: usize,
    /// Longest wait between dispatcher reconnection attempts. Default 30 s.
    pub reconnect_backoff_ms_max: u64,
}

impl NodeConfig {
    /// Defaults for a node of `dispatcher_id` at `dispatcher_addr`, advertising `advertise`.
    pub fn new(dispatcher_addr: PeerAddr, dispatcher_id: NodeId, advertise: PeerAddr) -> Self {
        Self {
            dispatcher_addr,
            dispatcher_id,
            advertise_addrs: vec![advertise],
            frame_limits: FrameLimits::default(),
            batch: BatchConfig::default(),
            batch_sizing: BatchSizing::Measure(vec![1, 2, 4, 8, 16, 32]),
            memory_bytes_max: 8 << 30,
            heartbeat_interval_ms: 5_000,
            usage_flush_ms: 1_000,
            usage_buffer_max: 100_000,
            client_concurrency_max: 256,
            key_rate: Some(RateLimit {
                per_s: 10_000,
                burst: 20_000,
            }),
            keys_tracked_max: 16_384,
            reconnect_backoff_ms_max: 30_000,
        }
    }
}

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The transport failed in a way the node cannot recover from (endpoint closed).
    #[error("transport: {0}")]
    Transport(#[from] crat_transport::TransportError),
    /// The dispatcher refused the registration.
    #[error("registration refused: {0}")]
    Refused(WireError),
}

/// One deployment this node serves.
struct Served {
    assignment: Assignment,
    model: Arc<dyn LoadedModel>,
    batcher: Batcher,
}

struct Inner<T: Transport> {
    key: SigningKey,
    id: NodeId,
    transport: T,
    config: NodeConfig,
    cache: ModelCache,
    store: ModelStore,
    hardware: HardwareReport,
    backend_info: BackendInfo,
    clock: Arc<dyn Clock>,
    idle: Option<IdleController<Box<dyn IdleWorkload>>>,
    served: RwLock<HashMap<DeploymentId, Arc<Served>>>,
    /// Deployments being set up (so an assignment repeated by heartbeats starts once).
    starting: Mutex<HashMap<DeploymentId, ()>>,
    /// Deployments whose model failed to load, with that model: not retried every heartbeat
    /// (only if the dispatcher assigns another model, or drops and re-adds the deployment).
    failed: Mutex<HashMap<DeploymentId, ModelId>>,
    usage: Mutex<VecDeque<UsageRecord>>,
    /// Tickets whose signature checked out (one ed25519 verification per ticket, not per task).
    tickets: Mutex<TicketVerifier>,
    /// Task rates per SDK key.
    key_rates: Option<Mutex<KeyedRateLimiter<KeyId>>>,
    /// The origin of the rate limiter's milliseconds.
    started: Instant,
    dispatcher: RwLock<Option<T::Connection>>,
    inflight: AtomicU32,
    heartbeat_interval_ms: AtomicU64,
    /// Compute challenges answered and kept for their opening (proof of hardware).
    challenges: Arc<crate::challenge::Challenges>,
}

/// A running node. Cheap to clone.
pub struct Node<T: Transport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for Node<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// The parts a node is built from.
pub struct NodeParts<T: Transport> {
    /// The node's identity key (also its transport identity).
    pub key: SigningKey,
    /// Its transport endpoint (identity must be `key`).
    pub transport: T,
    /// Loaded-model cache with the chosen backend.
    pub cache: ModelCache,
    /// Model files on disk.
    pub store: ModelStore,
    /// What the probe found.
    pub hardware: HardwareReport,
    /// The optional idle workload.
    pub idle: Option<IdleController<Box<dyn IdleWorkload>>>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> NodeToClient {
    NodeToClient::Error(WireError::new(code, message))
}

impl<T: Transport> Node<T> {
    /// Assembles a node.
    pub fn new(parts: NodeParts<T>, config: NodeConfig) -> Self {
        let backend_info = BackendInfo {
            name: parts.cache.backend().name().to_owned(),
            execution_provider: parts.cache.backend().execution_provider().to_owned(),
        };
        let challenges = Arc::new(crate::challenge::Challenges::new(
            parts.cache.backend().clone(),
        ));
        let heartbeat = config.heartbeat_interval_ms;
        let dispatcher_id = config.dispatcher_id;
        let key_rates = config
            .key_rate
            .map(|limit| Mutex::new(KeyedRateLimiter::new(limit, config.keys_tracked_max)));
        Self {
            inner: Arc::new(Inner {
                id: NodeId::from_key(&parts.key.verifying_key()),
                key: parts.key,
                transport: parts.transport,
                cache: parts.cache,
                store: parts.store,
                hardware: parts.hardware,
                backend_info,
                clock: parts.clock,
                idle: parts.idle,
                config,
                served: RwLock::new(HashMap::new()),
                starting: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
                usage: Mutex::new(VecDeque::new()),
                tickets: Mutex::new(TicketVerifier::new(dispatcher_id, 4096)),
                key_rates,
                started: Instant::now(),
                dispatcher: RwLock::new(None),
                inflight: AtomicU32::new(0),
                heartbeat_interval_ms: AtomicU64::new(heartbeat),
                challenges,
            }),
        }
    }

    /// The node's identity.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Its transport endpoint (e.g. to close it: the node then stops serving).
    pub fn transport(&self) -> &T {
        &self.inner.transport
    }

    /// Deployments ready to serve.
    pub fn ready(&self) -> Vec<DeploymentId> {
        self.inner.served.read().keys().copied().collect()
    }

    /// Deployments whose model failed to load here (reported to the dispatcher as
    /// [`ReplicaState::Failed`]; not retried unless it assigns another model).
    pub fn failed(&self) -> Vec<DeploymentId> {
        self.inner.failed.lock().keys().copied().collect()
    }

    /// Usage records not yet acknowledged by the dispatcher.
    pub fn usage_pending(&self) -> usize {
        self.inner.usage.lock().len()
    }

    /// Runs the node until its transport is closed.
    pub async fn run(&self) -> Result<(), NodeError> {
        let clients = tokio::spawn(self.clone().accept_clients());
        let usage = tokio::spawn(self.clone().usage_loop());
        let result = self.dispatcher_loop().await;
        clients.abort();
        usage.abort();
        result
    }

    async fn accept_clients(self) {
        loop {
            let conn = match self.inner.transport.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(error = %e, "no longer accepting clients");
                    return;
                }
            };
            let node = self.clone();
            tokio::spawn(serve(
                conn,
                Conversation::ClientNode,
                self.inner.config.frame_limits,
                self.inner.config.client_concurrency_max,
                move |req: ClientToNode| {
                    let node = node.clone();
                    async move { node.handle_client(req).await }
                },
            ));
        }
    }

    async fn handle_client(&self, req: ClientToNode) -> NodeToClient {
        match req {
            ClientToNode::Ping => NodeToClient::Pong,
            ClientToNode::Infer(req) => self.infer(*req).await,
        }
    }

    /// Serves one task; public so a node builder can put its own front end before it.
    pub async fn infer(&self, req: InferRequest) -> NodeToClient {
        let inner = &self.inner;
        let now = inner.clock.now_s();
        let verified = inner
            .tickets
            .lock()
            .verify(&req.ticket, now, &req.deployment, &inner.id)
            .map(|_| ());
        let ticket = match verified {
            Ok(()) => req.ticket.body.clone(),
            Err(e) => return error(ErrorCode::TicketRejected, e.to_string()),
        };
        if let Some(rates) = &inner.key_rates {
            let now_ms = u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Err(e) = rates.lock().allow(&ticket.key, now_ms) {
                return error(ErrorCode::Busy, format!("{} at this node: {e}", ticket.key));
            }
        }
        let Some(served) = inner.served.read().get(&req.deployment).cloned() else {
            return error(
                ErrorCode::NotFound,
                format!("{} is not served by this node", req.deployment),
            );
        };
        if inner.usage.lock().len() >= inner.config.usage_buffer_max {
            return error(
                ErrorCode::Busy,
                "usage not yet acknowledged; try another replica",
            );
        }
        let input_bytes: u64 = req
            .inputs
            .iter()
            .map(|t| t.tensor.bytes().len() as u64)
            .sum();
        let inputs = match validate_inputs(
            served.model.info(),
            req.inputs,
            served.assignment.max_input_bytes,
        ) {
            Ok(i) => i,
            Err(e) => return error(ErrorCode::InvalidInput, e.to_string()),
        };
        if let Some(idle) = &inner.idle {
            idle.work_arrived(now).await;
        }
        inner.inflight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = served.batcher.infer(inputs).await;
        let compute_us = started.elapsed().as_micros() as u64;
        inner.inflight.fetch_sub(1, Ordering::Relaxed);
        let outputs = match result {
            Ok(o) => o,
            Err(RunError::Busy) => return error(ErrorCode::Busy, "model queue is full"),
            Err(RunError::Timeout(ms)) => {
                return error(ErrorCode::Timeout, format!("run exceeded {ms} ms"));
            }
            Err(RunError::Backend(e)) => return error(ErrorCode::Internal, e.to_string()),
            Err(e) => return error(ErrorCode::Internal, e.to_string()),
        };
        let outputs: Vec<NamedTensor> = served
            .model
            .info()
            .outputs
            .iter()
            .zip(outputs)
            .map(|(spec, t)| NamedTensor::new(spec.name.clone(), t))
            .collect();
        let output_bytes = outputs.iter().map(|t| t.tensor.bytes().len() as u64).sum();
        inner.usage.lock().push_back(UsageRecord {
            task: req.task,
            deployment: req.deployment,
            key: ticket.key,
            ticket_nonce: ticket.nonce,
            input_bytes,
            output_bytes,
            compute_us,
        });
        // The receipt commits to exactly what is returned; a spot check rests on it.
        let receipt = Signed::sign(
            Receipt {
                task: req.task,
                deployment: req.deployment,
                node: inner.id,
                outputs_digest: outputs_digest(&outputs),
            },
            &inner.key,
        );
        NodeToClient::Receipted {
            task: req.task,
            outputs,
            compute_us,
            receipt: Box::new(receipt),
        }
    }

    fn registration(&self) -> Signed<Registration> {
        let inner = &self.inner;
        Signed::sign(
            Registration {
                node: inner.id,
                hardware: inner.hardware.hardware.clone(),
                rating: inner.hardware.rating,
                backends: vec![inner.backend_info.clone()],
                listen_addrs: inner.config.advertise_addrs.clone(),
                model_bytes_max: inner.config.memory_bytes_max,
                issued_at_s: inner.clock.now_s(),
                nonce: fresh_nonce(),
            },
            &inner.key,
        )
    }

    async fn call(
        &self,
        req: &NodeRequest,
    ) -> Result<DispatcherReply, crat_transport::TransportError> {
        let conn = self.inner.dispatcher.read().clone().ok_or_else(|| {
            crat_transport::TransportError::Closed(crat_transport::Closed::NotConnected)
        })?;
        conn.call(
            req,
            Conversation::NodeDispatcher,
            self.inner.config.frame_limits,
        )
        .await
    }

    /// Connects, registers, then heartbeats until the connection fails; repeats with backoff.
    async fn dispatcher_loop(&self) -> Result<(), NodeError> {
        let inner = &self.inner;
        let mut backoff_ms = 250u64;
        loop {
            match self.session().await {
                // A dispatcher over a limit (its replay memory, say) asks to come back later.
                Err(NodeError::Refused(e)) if e.code == ErrorCode::Busy => {
                    tracing::warn!(error = %e, backoff_ms, "dispatcher busy; registering later");
                }
                Err(NodeError::Refused(e)) => return Err(NodeError::Refused(e)),
                Err(NodeError::Transport(e)) => {
                    tracing::warn!(error = %e, backoff_ms, "dispatcher connection lost");
                }
                Ok(()) => {}
            }
            *inner.dispatcher.write() = None;
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(inner.config.reconnect_backoff_ms_max);
        }
    }

    async fn session(&self) -> Result<(), NodeError> {
        let inner = &self.inner;
        let conn = inner
            .transport
            .connect(&inner.config.dispatcher_addr, &inner.config.dispatcher_id)
            .await?;
        *inner.dispatcher.write() = Some(conn.clone());
        // Pushes from the dispatcher arrive on this connection.
        let node = self.clone();
        let pushes = tokio::spawn(serve(
            conn.clone(),
            Conversation::NodeDispatcher,
            inner.config.frame_limits,
            16,
            move |push: DispatcherPush| {
                let node = node.clone();
                async move { node.handle_push(push).await }
            },
        ));
        let result = self.register_and_heartbeat().await;
        pushes.abort();
        result
    }

    async fn register_and_heartbeat(&self) -> Result<(), NodeError> {
        let inner = &self.inner;
        match self
            .call(&NodeRequest::Register(Box::new(self.registration())))
            .await?
        {
            DispatcherReply::Registered {
                heartbeat_interval_ms,
                assignments,
                ..
            } => {
                inner
                    .heartbeat_interval_ms
                    .store(u64::from(heartbeat_interval_ms.max(10)), Ordering::Relaxed);
                self.apply_assignments(assignments, true);
            }
            DispatcherReply::Error(e) => return Err(NodeError::Refused(e)),
            other => {
                return Err(NodeError::Refused(WireError::new(
                    ErrorCode::BadRequest,
                    format!("unexpected answer to registration: {other:?}"),
                )));
            }
        }
        tracing::info!(node = %inner.id, "registered with the dispatcher");
        let mut seq = 0u64;
        loop {
            let interval = inner.heartbeat_interval_ms.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(interval)).await;
            seq += 1;
            let heartbeat = Heartbeat {
                seq,
                load: NodeLoad {
                    inflight: inner.inflight.load(Ordering::Relaxed),
                    queued: inner
                        .served
                        .read()
                        .values()
                        .map(|s| s.batcher.queued() as u32)
                        .sum(),
                    utilisation_bps: inner
                        .hardware
                        .gpu_stats
                        .first()
                        .map_or(Bps::ZERO, |s| Bps(s.utilisation_bps)),
                },
                loaded_models: inner.cache.loaded(),
                ready: self.ready(),
            };
            match self.call(&NodeRequest::Heartbeat(heartbeat)).await? {
                DispatcherReply::HeartbeatAck {
                    demand,
                    assignments,
                } => {
                    self.apply_assignments(assignments, true);
                    if let Some(idle) = &inner.idle {
                        idle.demand(demand.level_bps.get(), inner.clock.now_s())
                            .await;
                    }
                }
                DispatcherReply::Error(e) => {
                    tracing::warn!(error = %e, "heartbeat refused; registering again");
                    return Ok(());
                }
                other => tracing::warn!(?other, "unexpected heartbeat answer"),
            }
        }
    }

    async fn handle_push(&self, push: DispatcherPush) -> NodeAck {
        match push {
            DispatcherPush::Assign(a) => {
                self.apply_assignments(vec![a], false);
                NodeAck::Ok
            }
            DispatcherPush::Unassign { deployment } => {
                self.inner.served.write().remove(&deployment);
                NodeAck::Ok
            }
            DispatcherPush::Demand(d) => {
                if let Some(idle) = &self.inner.idle {
                    idle.demand(d.level_bps.get(), self.inner.clock.now_s())
                        .await;
                }
                NodeAck::Ok
            }
            DispatcherPush::Challenge(req) => self.inner.challenges.commit(req).await,
            DispatcherPush::OpenRows { id, rows } => self.inner.challenges.open(id, rows).await,
        }
    }

    /// Starts serving new assignments; with `complete`, the list is the whole set and
    /// deployments missing from it are dropped.
    fn apply_assignments(&self, assignments: Vec<Assignment>, complete: bool) {
        let inner = &self.inner;
        if complete {
            let keep: Vec<DeploymentId> = assignments.iter().map(|a| a.deployment).collect();
            inner.served.write().retain(|d, _| keep.contains(d));
            inner.failed.lock().retain(|d, _| keep.contains(d));
        }
        for a in assignments {
            if inner.served.read().contains_key(&a.deployment)
                || inner.failed.lock().get(&a.deployment) == Some(&a.model)
            {
                continue;
            }
            if inner.starting.lock().insert(a.deployment, ()).is_some() {
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                let (deployment, model) = (a.deployment, a.model);
                let state = match node.start_deployment(a).await {
                    Ok(()) => ReplicaState::Ready,
                    Err(e @ CacheError::Unavailable { .. }) => {
                        // The dispatcher could not be reached: not the model's fault. The
                        // next heartbeat that lists the deployment tries again.
                        tracing::warn!(%deployment, error = %e, "model not fetched; will retry");
                        node.inner.starting.lock().remove(&deployment);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%deployment, error = %e, "cannot serve deployment");
                        node.inner.failed.lock().insert(deployment, model);
                        ReplicaState::Failed(e.to_string())
                    }
                };
                node.inner.starting.lock().remove(&deployment);
                let report = NodeRequest::ReplicaState { deployment, state };
                if let Err(e) = node.call(&report).await {
                    tracing::warn!(%deployment, error = %e, "replica state not reported");
                }
            });
        }
    }

    async fn start_deployment(&self, a: Assignment) -> Result<(), CacheError> {
        let inner = &self.inner;
        let node = self.clone();
        let model_id = a.model;
        let model = inner
            .cache
            .get_or_load(model_id, || async move {
                node.model_bytes(model_id, a.model_bytes).await
            })
            .await?;
        let mut config = inner.config.batch;
        config.batch_size_max = match &inner.config.batch_sizing {
            BatchSizing::Fixed(n) => *n,
            BatchSizing::Measure(sizes) => {
                let (m, sizes) = (model.clone(), sizes.clone());
                tokio::task::spawn_blocking(move || measure_batch_size(m.as_ref(), &sizes, 3))
                    .await
                    .ok()
                    .flatten()
                    .map_or(1, |t| {
                        tracing::info!(model = %model_id, chosen = t.batch_size_max, per_item_ns = ?t.per_item_ns, "batch size measured");
                        t.batch_size_max
                    })
            }
        };
        let batcher = Batcher::spawn(model.clone(), config);
        inner.served.write().insert(
            a.deployment,
            Arc::new(Served {
                assignment: a,
                model,
                batcher,
            }),
        );
        Ok(())
    }

    /// The model's bytes: from the local store, else fetched from the dispatcher in chunks
    /// and stored (hash verified by the store).
    async fn model_bytes(&self, id: ModelId, size: u64) -> Result<Vec<u8>, CacheError> {
        let inner = &self.inner;
        if let Some(bytes) = inner.store.get(&id)? {
            return Ok(bytes);
        }
        if size > inner.store.disk_bytes_max() {
            return Err(CacheError::TooLarge {
                bytes: size,
                budget: inner.store.disk_bytes_max(),
            });
        }
        let unavailable = |reason: String| CacheError::Unavailable { model: id, reason };
        let mut bytes = Vec::with_capacity(size as usize);
        while (bytes.len() as u64) < size {
            let len = (size - bytes.len() as u64).min(u64::from(CHUNK_BYTES_MAX)) as u32;
            let req = NodeRequest::FetchModel {
                model: id,
                offset: bytes.len() as u64,
                len,
            };
            match self
                .call(&req)
                .await
                .map_err(|e| unavailable(e.to_string()))?
            {
                DispatcherReply::ModelChunk {
                    offset,
                    total_bytes,
                    data,
                } if offset == bytes.len() as u64
                    && total_bytes == size
                    && !data.is_empty()
                    && data.len() <= len as usize =>
                {
                    bytes.extend_from_slice(&data);
                }
                DispatcherReply::Error(e) => return Err(unavailable(e.to_string())),
                other => return Err(unavailable(format!("unexpected answer {other:?}"))),
            }
        }
        inner.store.put(&id, &bytes)?;
        Ok(bytes)
    }

    async fn usage_loop(self) {
        let inner = &self.inner;
        loop {
            tokio::time::sleep(Duration::from_millis(inner.config.usage_flush_ms)).await;
            let batch: Vec<UsageRecord> = {
                let usage = inner.usage.lock();
                usage.iter().take(USAGE_RECORDS_MAX).cloned().collect()
            };
            if batch.is_empty() {
                continue;
            }
            let n = batch.len();
            match self
                .call(&NodeRequest::Usage(UsageReport { records: batch }))
                .await
            {
                Ok(DispatcherReply::UsageAck { .. }) => {
                    // Only now are they safe to forget; new records were appended behind.
                    inner.usage.lock().drain(..n);
                }
                Ok(other) => tracing::warn!(?other, "usage report refused; will retry"),
                Err(e) => tracing::debug!(error = %e, "usage report not delivered; will retry"),
            }
        }
    }
}

/// 16 bytes that differ between every registration this process signs: the dispatcher
/// accepts each registration nonce once. Uniqueness is what matters (the registration is
/// signed; nobody gains from predicting it), so std's per-process random SipHash keys over a
/// counter are enough, without a random-number crate.
fn fresh_nonce() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}
