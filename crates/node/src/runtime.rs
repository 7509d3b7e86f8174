//! The node runtime: a node's life on the network, over any [`Transport`].
//!
//! [`Node::run`] registers with the dispatcher (a [`Registration`] signed by the node key),
//! then concurrently: heartbeats (load, loaded models, ready deployments) and applies the
//! assignments and demand each answer carries; answers the dispatcher's pushes; accepts
//! clients and serves their `Infer` requests; and reports usage. A lost dispatcher
//! connection is re-established with capped backoff; clients keep being served meanwhile.
//!
//! Serving one task: the ticket is verified offline (dispatcher's signature, validity window,
//! deployment, this node in its audience, and the connection's peer is the client that leased
//! it), the ticket's SDK key is checked against its rate ([`NodeConfig::key_rate`]), the inputs
//! must hash to the request's digest and a task id served under the ticket before must come
//! with the same inputs ([`NodeConfig::tasks_tracked_max`]), the inputs are validated against
//! the model, a per-instance replica checks its share of the plan's guaranteed rate (the
//! assignment's `rate_per_s`), the task's cost at the ticket's price is taken from the
//! ticket's credit budget, the idle workload is stopped, the task runs through the
//! deployment's [`Batcher`], a usage record is queued for the dispatcher, and the outputs go
//! back with a signed [`Receipt`] naming the digests of the inputs and the outputs. Usage
//! records are kept (bounded) until the dispatcher acknowledges them; when the buffer is full
//! the node refuses new tasks with `Busy` rather than lose a record.
//!
//! Limits, each answered with a typed error rather than growth: requests in progress per
//! client connection ([`NodeConfig::client_concurrency_max`]; more wait), tasks per SDK key
//! (`Busy`), a per-instance replica's rate (`RateLimited`), a ticket's budget
//! (`BudgetExhausted`), tickets tracked at once ([`NodeConfig::tickets_tracked_max`], `Busy`),
//! the model queue ([`BatchConfig::queue_len_max`], `Busy`) and unacknowledged usage
//! ([`NodeConfig::usage_buffer_max`], `Busy`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crat_backend::LoadedModel;
use crat_backend::validate::validate_inputs;
use crat_core::bps::Bps;
use crat_core::clock::Clock;
use crat_core::expiring::{ExpiringMap, WhenFull};
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr, TaskId};
use crat_core::limit::{KeyedRateLimiter, RateLimit};
use crat_core::money::Credits;
use crat_core::policy::acks::AckProof;
use crat_core::sign::{
    Ack, BackendInfo, Receipt, Registration, Signed, Ticket, TicketVerifier, tensors_digest,
};
use crat_core::tensor::{NamedTensor, tensors_bytes};
use crat_core::wire::{
    ACKS_MAX, Assignment, CHUNK_BYTES_MAX, ClientToNode, DispatcherPush, DispatcherReply,
    ErrorCode, Heartbeat, InferRequest, NodeAck, NodeLoad, NodeRequest, NodeToClient, ReadyReplica,
    ReplicaState, USAGE_RECORDS_MAX, UsageRecord, UsageReport, WireError,
};
use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;
use parking_lot::{Mutex, RwLock};

use crate::activity::{Activity, ActivitySnapshot};
use crate::batch::{
    BatchConfig, BatchTuning, Batcher, MEASURE_REPS, RunError, has_symbolic_inner_size,
    measure_batch_size,
};
use crate::cache::{CacheError, ModelCache, ModelStore};
use crate::idle::{IdleController, IdleStatus, IdleWorkload};
use crate::metrics::{self as m, Failure};
use crate::probe::HardwareReport;
use crate::receipts::ReceiptSigner;

/// How batch sizes are chosen per model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchSizing {
    /// Measure at load ([`measure_batch_size`]) over these candidate sizes; a model with
    /// symbolic sizes beyond the batch dimension is measured on the batches it serves
    /// instead ([`Batcher::measure_while_serving`]).
    Measure(Vec<u32>),
    /// Use this size for every model.
    Fixed(u32),
}

/// How often the node's gauges are refreshed from its state (see [`crate::metrics`]).
pub const GAUGES_INTERVAL_MS: u64 = 1_000;

/// First wait before dialling the dispatcher again after losing it (it doubles up to
/// [`NodeConfig::reconnect_backoff_ms_max`] while the dispatcher stays away).
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 250;

/// Everything a node needs to know besides its key, transport, backend and store.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the dispatcher listens.
    pub dispatcher_addr: PeerAddr,
    /// Other addresses of the same dispatcher (dispatchers sharing one ledger and key,
    /// `crat_dispatcher::cluster`): after each lost or failed connection the node dials the
    /// next of `dispatcher_addr` and these, in turn. Default: none.
    pub dispatcher_alternates: Vec<PeerAddr>,
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
    /// How often usage is reported. Default 1 s. A report holds at most
    /// [`USAGE_RECORDS_MAX`] records; after a full one that the dispatcher mostly took, the
    /// next goes at once, so a node serving more tasks a second than a report holds does not
    /// fall behind.
    pub usage_flush_ms: u64,
    /// Usage records kept while unacknowledged; above it new tasks are refused. Default 100,000.
    pub usage_buffer_max: usize,
    /// A file where the usage not yet acknowledged by the dispatcher is kept (rewritten
    /// atomically and fsynced at each report interval when it changed, read back at start), so
    /// that a node restart loses no billable work but the last interval's (which the clients'
    /// acknowledgements still charge). `None` (the default) keeps it in memory only; `crat
    /// node` keeps it in its data directory.
    pub usage_journal: Option<std::path::PathBuf>,
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
    /// Longest wait between dispatcher reconnection attempts (the wait starts at
    /// [`RECONNECT_BACKOFF_MS_MIN`] after each loss of a registered session). Default 30 s.
    pub reconnect_backoff_ms_max: u64,
    /// (ticket, task id) pairs remembered with their inputs' digest until the ticket
    /// expires, so that a task id served under a ticket is refused with other inputs (the
    /// soonest-expiring are forgotten beyond; a forgotten task id reused with other inputs is
    /// then served and charged as another task). Default 262,144 (about 40 MiB).
    pub tasks_tracked_max: usize,
    /// Tickets whose spending is tracked at once (each until it expires); a task under yet
    /// another ticket is answered `Busy`. Default 65,536.
    pub tickets_tracked_max: usize,
    /// Tasks served under one ticket and not yet acknowledged by its client; beyond it, its
    /// tasks are answered `Busy` (the client acknowledges every few tasks). Default 1,024.
    pub unacknowledged_tasks_max: u64,
    /// Whether [`Node::run`] joins the network at once (the default) or waits, stopped, for
    /// [`Node::start`] (an operator's START button).
    pub serve_at_start: bool,
}

impl NodeConfig {
    /// Defaults for a node of `dispatcher_id` at `dispatcher_addr`, advertising `advertise`.
    pub fn new(dispatcher_addr: PeerAddr, dispatcher_id: NodeId, advertise: PeerAddr) -> Self {
        Self {
            dispatcher_addr,
            dispatcher_alternates: Vec::new(),
            dispatcher_id,
            advertise_addrs: vec![advertise],
            frame_limits: FrameLimits::default(),
            batch: BatchConfig::default(),
            batch_sizing: BatchSizing::Measure(vec![1, 2, 4, 8, 16, 32]),
            memory_bytes_max: 8 << 30,
            heartbeat_interval_ms: 5_000,
            usage_flush_ms: 1_000,
            usage_buffer_max: 100_000,
            usage_journal: None,
            client_concurrency_max: 256,
            key_rate: Some(RateLimit {
                per_s: 10_000,
                burst: 20_000,
            }),
            keys_tracked_max: 16_384,
            reconnect_backoff_ms_max: 30_000,
            tasks_tracked_max: 262_144,
            tickets_tracked_max: 65_536,
            unacknowledged_tasks_max: 1_024,
            serve_at_start: true,
        }
    }
}

/// Where a node stands with its operator's START and STOP ([`Node::mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeMode {
    /// Off the network: no dispatcher connection, tasks refused (`Busy`), no idle workload.
    Stopped,
    /// Started, not yet registered with the dispatcher (connecting, or waiting to retry).
    Starting,
    /// Registered and serving.
    Online,
    /// Stopping: new tasks are refused while those in flight finish and their usage is
    /// reported.
    Stopping,
}

/// What a [`Node::stop`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StopReport {
    /// The node was already stopped: nothing was done.
    pub already_stopped: bool,
    /// Tasks still running or queued when the drain time ran out (0: all finished).
    pub tasks_unfinished: u64,
    /// Usage records the dispatcher has not yet accepted (held for the client's
    /// acknowledgement, or unsent): kept, in the journal when there is one, and reported
    /// once the node is started again.
    pub usage_unacknowledged: usize,
    /// How long the stop took, ms.
    pub took_ms: u64,
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

/// A task id under one ticket (its nonce).
type TicketTask = ([u8; 16], TaskId);

/// What the node tracks of a ticket in use.
struct TicketUse {
    /// The ticket (forwarded with its acknowledgement, which it lets the dispatcher check).
    ticket: Signed<Ticket>,
    /// What its tasks cost so far.
    spent: Credits,
    /// Tasks paid for under it.
    served: u64,
    /// The client's latest acknowledgement of them.
    ack: Option<Box<Signed<Ack>>>,
}

/// What the node remembers of a task served under a ticket.
#[derive(Clone, Copy)]
struct SeenTask {
    inputs_digest: [u8; 32],
    /// Its cost was taken from the ticket's budget.
    paid: bool,
}

/// One deployment this node serves.
struct Served {
    assignment: Assignment,
    /// The replica's share of a per-instance deployment's guaranteed rate (one bucket).
    rate: Option<Mutex<KeyedRateLimiter<()>>>,
    model: Arc<dyn LoadedModel>,
    batcher: Batcher,
}

struct Inner<T: Transport> {
    /// Which of the dispatcher's addresses the next connection dials
    /// ([`NodeConfig::dispatcher_alternates`]).
    dispatcher_turn: std::sync::atomic::AtomicUsize,
    key: SigningKey,
    /// Signs the answers' receipts, several under one signature when they finish together.
    receipts: Arc<ReceiptSigner>,
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
    /// Deployments whose model is being loaded, and which model.
    starting: Mutex<HashMap<DeploymentId, ModelId>>,
    /// Deployments whose model failed to load, with that model: not retried every heartbeat
    /// (only if the dispatcher assigns another model, or drops and re-adds the deployment).
    failed: Mutex<HashMap<DeploymentId, ModelId>>,
    usage: Mutex<VecDeque<UsageRecord>>,
    /// Bumped whenever `usage` changes, so the journal is rewritten only then.
    usage_changes: AtomicU64,
    /// Tickets whose signature checked out (one ed25519 verification per ticket, not per task).
    tickets: Mutex<TicketVerifier>,
    /// Task rates per SDK key.
    key_rates: Option<Mutex<KeyedRateLimiter<KeyId>>>,
    /// The inputs' digest of each (ticket nonce, task id) served, until the ticket expires.
    tasks: Mutex<ExpiringMap<TicketTask, SeenTask>>,
    /// Each ticket in use here (by nonce), until it expires.
    ticket_uses: Mutex<ExpiringMap<[u8; 16], TicketUse>>,
    /// The origin of the rate limiter's milliseconds.
    started: Instant,
    dispatcher: RwLock<Option<T::Connection>>,
    inflight: AtomicU32,
    heartbeat_interval_ms: AtomicU64,
    /// Compute challenges answered and kept for their opening (proof of hardware).
    challenges: Arc<crate::challenge::Challenges>,
    /// Tasks answered lately (the dashboard's figures).
    activity: Mutex<Activity>,
    /// The operator wants the node on the network (START) or off it (STOP).
    wanted: tokio::sync::watch::Sender<bool>,
    /// New tasks are served (false while stopping and stopped).
    accepting: AtomicBool,
    /// The current dispatcher connection's registration was accepted.
    registered: AtomicBool,
    /// One START or STOP at a time.
    control: tokio::sync::Mutex<()>,
    /// Wakes the usage loop to report at once (a stop flushes).
    flush_usage: tokio::sync::Notify,
    /// Usage reports answered so far, and how many records the last answer held.
    usage_reports: AtomicU64,
    usage_held: AtomicUsize,
    /// Acknowledgements being verified beside their tasks ([`ACKS_CHECKED_BESIDE_MAX`]).
    ack_checks: Arc<tokio::sync::Semaphore>,
}

/// Acknowledgements verified beside their tasks at once; past it one is verified before its
/// task.
const ACKS_CHECKED_BESIDE_MAX: usize = 64;

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
        let serve_at_start = config.serve_at_start;
        let dispatcher_id = config.dispatcher_id;
        let tasks_tracked_max = config.tasks_tracked_max.max(1);
        let tickets_tracked_max = config.tickets_tracked_max.max(1);
        let key_rates = config
            .key_rate
            .map(|limit| Mutex::new(KeyedRateLimiter::new(limit, config.keys_tracked_max)));
        let journaled = config
            .usage_journal
            .as_deref()
            .map(|path| read_journal(path, config.usage_buffer_max))
            .unwrap_or_default();
        Self {
            inner: Arc::new(Inner {
                dispatcher_turn: std::sync::atomic::AtomicUsize::new(0),
                id: NodeId::from_key(&parts.key.verifying_key()),
                receipts: ReceiptSigner::new(parts.key.clone()),
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
                usage: Mutex::new(journaled),
                usage_changes: AtomicU64::new(0),
                tickets: Mutex::new(TicketVerifier::new(dispatcher_id, 4096)),
                key_rates,
                tasks: Mutex::new(ExpiringMap::new(tasks_tracked_max)),
                ticket_uses: Mutex::new(ExpiringMap::new(tickets_tracked_max)),
                started: Instant::now(),
                dispatcher: RwLock::new(None),
                inflight: AtomicU32::new(0),
                heartbeat_interval_ms: AtomicU64::new(heartbeat),
                challenges,
                activity: Mutex::new(Activity::new()),
                wanted: tokio::sync::watch::Sender::new(serve_at_start),
                accepting: AtomicBool::new(serve_at_start),
                registered: AtomicBool::new(false),
                control: tokio::sync::Mutex::new(()),
                flush_usage: tokio::sync::Notify::new(),
                usage_reports: AtomicU64::new(0),
                ack_checks: Arc::new(tokio::sync::Semaphore::new(ACKS_CHECKED_BESIDE_MAX)),
                usage_held: AtomicUsize::new(0),
            }),
        }
    }

    /// The node's identity.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Asks the dispatcher how this node stands: proven hardware, the running round so far,
    /// and its earnings of the last `rounds` closed rounds (at most
    /// [`STANDING_ROUNDS_MAX`](crat_core::wire::STANDING_ROUNDS_MAX)). On the node's
    /// connection while it has one; otherwise (stopped, or the dispatcher lost for now) on a
    /// connection of its own that does not register
    /// ([`ask_standing`](crate::standing::ask_standing)).
    pub async fn standing(
        &self,
        rounds: u32,
    ) -> Result<crat_core::wire::NodeStanding, crate::standing::StandingError> {
        let inner = &self.inner;
        let conn = inner.dispatcher.read().clone();
        match conn {
            Some(conn) => {
                crate::standing::query_standing(&conn, inner.id, rounds, inner.config.frame_limits)
                    .await
            }
            None => {
                crate::standing::ask_standing(
                    &inner.transport,
                    inner.id,
                    &inner.config.dispatcher_addr,
                    &inner.config.dispatcher_id,
                    rounds,
                    inner.config.frame_limits,
                )
                .await
            }
        }
    }

    /// Whether clients reach this node directly: the address the dispatcher sees its packets
    /// come from (its public address after NAT) and whether the dispatcher's dial to it from
    /// another port got through ([`NodeRequest::Reach`](crat_core::wire::NodeRequest::Reach)).
    /// On the node's connection while it has one, else on one of its own.
    pub async fn reach(&self) -> Result<crat_core::wire::Reach, crate::standing::StandingError> {
        let inner = &self.inner;
        let conn = inner.dispatcher.read().clone();
        match conn {
            Some(conn) => crate::standing::query_reach(&conn, inner.config.frame_limits).await,
            None => {
                crate::standing::ask_reach(
                    &inner.transport,
                    &inner.config.dispatcher_addr,
                    &inner.config.dispatcher_id,
                    inner.config.frame_limits,
                )
                .await
            }
        }
    }

    /// Where the node stands with its operator's START / STOP.
    pub fn mode(&self) -> NodeMode {
        let inner = &self.inner;
        if !*inner.wanted.borrow() {
            NodeMode::Stopped
        } else if !inner.accepting.load(Ordering::Acquire) {
            NodeMode::Stopping
        } else if inner.registered.load(Ordering::Acquire) {
            NodeMode::Online
        } else {
            NodeMode::Starting
        }
    }

    /// Joins the network (again): registers with the dispatcher, serves tasks, and lets the
    /// idle workload run by its policy (after a whole idle time). Does nothing to a node
    /// already started; waits for a stop in progress to finish first.
    pub async fn start(&self) {
        let inner = &self.inner;
        let _one = inner.control.lock().await;
        if *inner.wanted.borrow() {
            return;
        }
        tracing::info!(node = %inner.id, "started by its operator");
        inner.accepting.store(true, Ordering::Release);
        inner.wanted.send_replace(true);
        if let Some(idle) = &inner.idle {
            idle.suspend(false, inner.clock.now_s()).await;
        }
    }

    /// Leaves the network gracefully: new tasks are refused with `Busy` (clients' SDKs try
    /// another replica), tasks in flight finish (for at most `drain`), their usage is
    /// reported, and then the dispatcher connection is closed, so the dispatcher takes the
    /// node off its replicas at once rather than after missed heartbeats. The idle workload
    /// stops too. Usage the dispatcher did not accept yet is kept (see [`StopReport`]).
    /// [`Node::run`] keeps running, stopped, until [`Node::start`].
    pub async fn stop(&self, drain: Duration) -> StopReport {
        let inner = &self.inner;
        let started = Instant::now();
        let _one = inner.control.lock().await;
        if !*inner.wanted.borrow() {
            return StopReport {
                already_stopped: true,
                tasks_unfinished: 0,
                usage_unacknowledged: inner.usage.lock().len(),
                took_ms: 0,
            };
        }
        tracing::info!(node = %inner.id, "stopping: finishing the tasks in flight");
        inner.accepting.store(false, Ordering::Release);
        let deadline = started + drain;
        let unfinished = || {
            let (inflight, queued) = self.tasks_inflight();
            u64::from(inflight) + queued
        };
        while unfinished() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Their usage, reported now rather than at the next interval: done when a report
        // answered after the drain left only what the dispatcher holds.
        let reports = inner.usage_reports.load(Ordering::Acquire);
        inner.flush_usage.notify_one();
        loop {
            let pending = inner.usage.lock().len();
            let answered = inner.usage_reports.load(Ordering::Acquire) > reports;
            if pending == 0
                || (answered && pending <= inner.usage_held.load(Ordering::Acquire))
                || Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        inner.wanted.send_replace(false);
        // Closed here rather than left to the dispatcher loop, so that the node is off the
        // network when this returns.
        if let Some(conn) = inner.dispatcher.write().take() {
            conn.close("stopped by its operator");
        }
        inner.registered.store(false, Ordering::Release);
        if let Some(idle) = &inner.idle {
            idle.suspend(true, inner.clock.now_s()).await;
        }
        let report = StopReport {
            already_stopped: false,
            tasks_unfinished: unfinished(),
            usage_unacknowledged: inner.usage.lock().len(),
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        tracing::info!(node = %inner.id, ?report, "stopped by its operator");
        report
    }

    /// Tasks answered lately: rate, latency, totals.
    pub fn activity(&self) -> ActivitySnapshot {
        self.inner.activity.lock().snapshot(self.monotonic_ms())
    }

    /// Tasks running now and queued behind them.
    pub fn tasks_inflight(&self) -> (u32, u64) {
        let inner = &self.inner;
        let queued = inner
            .served
            .read()
            .values()
            .map(|s| s.batcher.queued() as u64)
            .sum();
        (inner.inflight.load(Ordering::Relaxed), queued)
    }

    /// The batching limits in force for `deployment` (the batch size as chosen for its model)
    /// and, for a model whose batch size is measured on the tasks it serves
    /// ([`Batcher::measure_while_serving`]), what that measurement chose, once it has; `None`
    /// when the node does not serve `deployment`.
    pub fn batching(
        &self,
        deployment: &DeploymentId,
    ) -> Option<(BatchConfig, Option<BatchTuning>)> {
        let served = self.inner.served.read();
        let batcher = &served.get(deployment)?.batcher;
        Some((batcher.config(), batcher.tuning()))
    }

    /// What the hardware probe found (and the rating the node claims; the dispatcher pays
    /// on what its challenges prove, see [`Node::standing`]).
    pub fn hardware(&self) -> &HardwareReport {
        &self.inner.hardware
    }

    /// The backend serving its models.
    pub fn backend(&self) -> &BackendInfo {
        &self.inner.backend_info
    }

    /// Its settings.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The idle workload's state, if the node has one.
    pub fn idle_status(&self) -> Option<IdleStatus> {
        let inner = &self.inner;
        inner
            .idle
            .as_ref()
            .map(|idle| idle.status(inner.clock.now_s()))
    }

    fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Its transport endpoint (e.g. to close it: the node then stops serving).
    pub fn transport(&self) -> &T {
        &self.inner.transport
    }

    /// Deployments ready to serve.
    pub fn ready(&self) -> Vec<DeploymentId> {
        self.inner.served.read().keys().copied().collect()
    }

    /// Deployments served now, each with the model serving it (what heartbeats report).
    pub fn ready_replicas(&self) -> Vec<ReadyReplica> {
        self.inner
            .served
            .read()
            .iter()
            .map(|(deployment, s)| ReadyReplica {
                deployment: *deployment,
                model: s.assignment.model,
            })
            .collect()
    }

    /// Deployments whose model is being fetched or loaded, with that model.
    pub fn loading(&self) -> Vec<(DeploymentId, ModelId)> {
        self.inner
            .starting
            .lock()
            .iter()
            .map(|(d, m)| (*d, *m))
            .collect()
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
        // Started stopped (waiting for START): no idle workload either until then.
        if !*self.inner.wanted.borrow()
            && let Some(idle) = &self.inner.idle
        {
            idle.suspend(true, self.inner.clock.now_s()).await;
        }
        let clients = tokio::spawn(self.clone().accept_clients());
        let usage = tokio::spawn(self.clone().usage_loop());
        let gauges = tokio::spawn(self.clone().gauges_loop());
        let result = self.dispatcher_loop().await;
        clients.abort();
        usage.abort();
        gauges.abort();
        result
    }

    /// Sets the gauges read from the node's state (queue depth, tasks in flight, deployments
    /// served, usage pending) every [`GAUGES_INTERVAL_MS`]: read rather than counted up and
    /// down, they cannot drift (a batcher dropped with requests queued, say).
    async fn gauges_loop(self) {
        loop {
            let inner = &self.inner;
            let (served, queued) = {
                let served = inner.served.read();
                let queued: usize = served.values().map(|s| s.batcher.queued()).sum();
                (served.len(), queued)
            };
            metrics::gauge!(m::QUEUE_DEPTH).set(queued as f64);
            metrics::gauge!(m::DEPLOYMENTS_SERVED).set(served as f64);
            metrics::gauge!(m::TASKS_INFLIGHT)
                .set(f64::from(inner.inflight.load(Ordering::Relaxed)));
            metrics::gauge!(m::USAGE_PENDING).set(inner.usage.lock().len() as f64);
            tokio::time::sleep(Duration::from_millis(GAUGES_INTERVAL_MS)).await;
        }
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
            let client = conn.remote_id();
            tokio::spawn(serve(
                conn,
                Conversation::ClientNode,
                self.inner.config.frame_limits,
                self.inner.config.client_concurrency_max,
                move |req: ClientToNode| {
                    let node = node.clone();
                    async move { node.handle_client(client, req).await }
                },
            ));
        }
    }

    async fn handle_client(&self, client: NodeId, req: ClientToNode) -> NodeToClient {
        match req {
            ClientToNode::Ping => NodeToClient::Pong,
            ClientToNode::Infer(req) => self.infer(*req, &client).await,
        }
    }

    /// Serves one task that arrived on a connection from `client` (the peer's transport
    /// identity, which the ticket must name); public so a node builder can put its own front
    /// end before it.
    pub async fn infer(&self, req: InferRequest, client: &NodeId) -> NodeToClient {
        let started = Instant::now();
        let answer = self.serve_task(req, client).await;
        let took = started.elapsed();
        m::task(&answer, took);
        let ok = matches!(answer, NodeToClient::Receipted { .. });
        let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let now_ms = self.monotonic_ms();
        self.inner.activity.lock().record(now_ms, ok, took_us);
        answer
    }

    async fn serve_task(&self, req: InferRequest, client: &NodeId) -> NodeToClient {
        let inner = &self.inner;
        if !inner.accepting.load(Ordering::Acquire) {
            return error(
                ErrorCode::Busy,
                "this node is stopped or stopping; try another replica",
            );
        }
        let now = inner.clock.now_s();
        let verified = inner
            .tickets
            .lock()
            .verify(&req.ticket, now, &req.deployment, &inner.id, client)
            .map(|_| ());
        let ticket = match verified {
            Ok(()) => req.ticket.body.clone(),
            Err(e) => return error(ErrorCode::TicketRejected, e.to_string()),
        };
        // The client's acknowledgement of earlier tasks comes first: it may be what lets
        // this one be served.
        if let Some(ack) = &req.ack {
            self.take_ack(&req.ticket, ack, now);
        }
        if let Some(rates) = &inner.key_rates {
            let now_ms = u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Err(e) = rates.lock().allow(&ticket.key, now_ms) {
                return error(ErrorCode::Busy, format!("{} at this node: {e}", ticket.key));
            }
        }
        // The task is bound to its inputs: the digest the client named (which the receipt
        // and the usage record carry) must be theirs, and a task id served under this
        // ticket is not served again with other inputs.
        let inputs_digest = tensors_digest(&req.inputs);
        if inputs_digest != req.inputs_digest {
            return error(
                ErrorCode::InvalidInput,
                "the inputs do not match the request's inputs digest",
            );
        }
        let task_key = (ticket.nonce, req.task);
        // Whether the task still has to be paid for out of the ticket's budget (a retry of a
        // task already paid for is charged once by the dispatcher, so not again here).
        let unpaid = {
            let mut tasks = inner.tasks.lock();
            match tasks.get(&task_key) {
                Some(seen) if seen.inputs_digest != inputs_digest => {
                    return error(
                        ErrorCode::BadRequest,
                        format!(
                            "{} was served under this ticket with other inputs; a new task needs a new id",
                            req.task
                        ),
                    );
                }
                Some(seen) => !seen.paid,
                None => {
                    // Never refuses: the soonest-expiring pair is forgotten instead.
                    let _ = tasks.insert(
                        task_key,
                        SeenTask {
                            inputs_digest,
                            paid: false,
                        },
                        ticket.expires_at_s,
                        now,
                        WhenFull::ForgetSoonest,
                    );
                    true
                }
            }
        };
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
        let input_bytes = tensors_bytes(&req.inputs);
        let inputs = match validate_inputs(
            served.model.info(),
            req.inputs,
            served.assignment.max_input_bytes,
        ) {
            Ok(i) => i,
            Err(e) => return error(ErrorCode::InvalidInput, e.to_string()),
        };
        // A per-instance replica serves its share of the guaranteed rate, and no more.
        if let Some(rate) = &served.rate {
            let now_ms = u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Err(e) = rate.lock().allow(&(), now_ms) {
                return error(
                    ErrorCode::RateLimited,
                    format!(
                        "{}: this replica's share of the guaranteed rate: {e}",
                        req.deployment
                    ),
                );
            }
        }
        // Tasks under a ticket cost at most its budget, at the price it names.
        if unpaid {
            if let Err(e) = self.spend(&req.ticket, input_bytes, now) {
                return e;
            }
            if let Some(seen) = inner.tasks.lock().get_mut(&task_key) {
                seen.paid = true;
            }
        }
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
            Err(RunError::Busy) => {
                m::failure(Failure::QueueFull);
                return error(ErrorCode::Busy, "model queue is full");
            }
            Err(RunError::Timeout(ms)) => {
                m::failure(Failure::RunTimeout);
                return error(ErrorCode::Timeout, format!("run exceeded {ms} ms"));
            }
            Err(e) => {
                m::failure(Failure::RunError);
                return error(ErrorCode::Internal, e.to_string());
            }
        };
        let outputs: Vec<NamedTensor> = served
            .model
            .info()
            .outputs
            .iter()
            .zip(outputs)
            .map(|(spec, t)| NamedTensor::new(spec.name.clone(), t))
            .collect();
        let output_bytes = tensors_bytes(&outputs);
        inner.usage_changes.fetch_add(1, Ordering::Relaxed);
        inner.usage.lock().push_back(UsageRecord {
            task: req.task,
            deployment: req.deployment,
            inputs_digest,
            key: ticket.key,
            ticket_nonce: ticket.nonce,
            input_bytes,
            output_bytes,
            compute_us,
        });
        // The receipt commits to exactly what is returned; a spot check rests on it.
        // Answers finishing together share one signature (see `crate::receipts`).
        let receipt = inner
            .receipts
            .prove(Receipt {
                task: req.task,
                deployment: req.deployment,
                model: served.assignment.model,
                node: inner.id,
                inputs_digest,
                outputs_digest: tensors_digest(&outputs),
            })
            .await;
        NodeToClient::Receipted {
            task: req.task,
            outputs,
            compute_us,
            receipt: Box::new(receipt),
        }
    }

    /// Runs `f` on what is tracked of `ticket` (tracking it from now until it expires), or
    /// answers `Busy` when too many tickets are tracked.
    fn ticket_use<R>(
        &self,
        ticket: &Signed<Ticket>,
        now_s: u64,
        f: impl FnOnce(&mut TicketUse) -> R,
    ) -> Result<R, NodeToClient> {
        let mut uses = self.inner.ticket_uses.lock();
        if let Some(u) = uses.get_mut(&ticket.body.nonce) {
            return Ok(f(u));
        }
        let fresh = TicketUse {
            ticket: ticket.clone(),
            spent: Credits::ZERO,
            served: 0,
            ack: None,
        };
        let busy = || {
            error(
                ErrorCode::Busy,
                "too many tickets in use at this node; try another replica",
            )
        };
        uses.insert(
            ticket.body.nonce,
            fresh,
            ticket.body.expires_at_s,
            now_s,
            WhenFull::Refuse,
        )
        .map_err(|_| busy())?;
        metrics::counter!(m::TICKETS_TOTAL).increment(1);
        uses.get_mut(&ticket.body.nonce).map(f).ok_or_else(busy)
    }

    /// Keeps the client's acknowledgement of this node's work under `ticket` (the latest one:
    /// the one counting the most tasks), to forward with the usage it covers. One that is not
    /// the ticket's client's signature over this ticket and this node is ignored (a spot
    /// check's validator receives the task as the worker got it, acknowledgement included).
    ///
    /// Its signature is verified beside the task (an ed25519 verification costs about as much
    /// as a small model's run) while the ticket's unacknowledged tasks are under half of
    /// [`NodeConfig::unacknowledged_tasks_max`] (the task is served whatever it says) and at
    /// most [`ACKS_CHECKED_BESIDE_MAX`] are being verified; otherwise before the task, which
    /// it may be what lets through.
    fn take_ack(&self, ticket: &Signed<Ticket>, ack: &Signed<Ack>, now_s: u64) {
        if ack.body.ticket_nonce != ticket.body.nonce || ack.body.node != self.inner.id {
            return;
        }
        let half = self.inner.config.unacknowledged_tasks_max / 2;
        let far_from_the_limit = {
            let uses = self.inner.ticket_uses.lock();
            uses.get(&ticket.body.nonce).is_some_and(|u| {
                let acknowledged = u.ack.as_ref().map_or(0, |a| a.body.tasks);
                u.served.saturating_sub(acknowledged) < half
            })
        };
        let beside = far_from_the_limit
            .then(|| self.inner.ack_checks.clone().try_acquire_owned().ok())
            .flatten();
        match beside {
            Some(permit) => {
                let (me, ticket, ack) = (self.clone(), ticket.clone(), ack.clone());
                tokio::spawn(async move {
                    me.keep_ack(&ticket, &ack, now_s);
                    drop(permit);
                });
            }
            None => self.keep_ack(ticket, ack, now_s),
        }
    }

    /// [`take_ack`](Self::take_ack)'s verification and keeping.
    fn keep_ack(&self, ticket: &Signed<Ticket>, ack: &Signed<Ack>, now_s: u64) {
        if ack.verify(Some(&ticket.body.client)).is_err() {
            return;
        }
        let body = &ack.body;
        let kept = self.ticket_use(ticket, now_s, |u| {
            if u.ack
                .as_ref()
                .is_none_or(|held| held.body.tasks < body.tasks)
            {
                u.ack = Some(Box::new(ack.clone()));
            }
        });
        if kept.is_err() {
            tracing::debug!("acknowledgement not kept: too many tickets tracked");
        }
    }

    /// Takes the cost of a task with `input_bytes` of input from what `ticket` may still
    /// spend at this node, or refuses it: `BudgetExhausted` past the ticket's budget, `Busy`
    /// while more than [`NodeConfig::unacknowledged_tasks_max`] of its tasks are not
    /// acknowledged by the client (or when too many tickets are tracked).
    fn spend(
        &self,
        ticket: &Signed<Ticket>,
        input_bytes: u64,
        now_s: u64,
    ) -> Result<(), NodeToClient> {
        let t = &ticket.body;
        let exhausted = |why: String| error(ErrorCode::BudgetExhausted, why);
        let cost = t
            .price
            .cost(input_bytes)
            .ok_or_else(|| exhausted(format!("a task of {input_bytes} input bytes")))?;
        let unacknowledged_max = self.inner.config.unacknowledged_tasks_max;
        self.ticket_use(ticket, now_s, |u| {
            let acknowledged = u.ack.as_ref().map_or(0, |a| a.body.tasks);
            if u.served.saturating_sub(acknowledged) >= unacknowledged_max {
                return Err(error(
                    ErrorCode::Busy,
                    format!(
                        "{} tasks under this ticket are not acknowledged yet",
                        u.served - acknowledged
                    ),
                ));
            }
            match u.spent.checked_add(cost) {
                Some(total) if total <= t.credit_budget => {
                    u.spent = total;
                    u.served += 1;
                    Ok(())
                }
                _ => Err(exhausted(format!(
                    "the ticket's budget of {} credits is spent ({} used, this task costs {cost})",
                    t.credit_budget, u.spent
                ))),
            }
        })?
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

    /// Connects, registers, then heartbeats until the connection fails; repeats with backoff
    /// ([`RECONNECT_BACKOFF_MS_MIN`], doubling up to
    /// [`NodeConfig::reconnect_backoff_ms_max`]). A session that registered starts the backoff
    /// over: the dispatcher was up, so losing it (a restart, say) is a new outage, not more of
    /// the last one; a node would otherwise wait the longest backoff after every restart of a
    /// dispatcher that restarted a few times before.
    async fn dispatcher_loop(&self) -> Result<(), NodeError> {
        let inner = &self.inner;
        let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        let mut wanted = inner.wanted.subscribe();
        loop {
            // Stopped by its operator: no connection until started again. (The sender lives
            // in `inner`, so the wait cannot fail.)
            let _ = wanted.wait_for(|w| *w).await;
            let mut registered = false;
            let session = tokio::select! {
                s = self.session(&mut registered) => Some(s),
                _ = wanted.wait_for(|w| !*w) => None,
            };
            let Some(session) = session else {
                // The operator's STOP: the dispatcher learns at once that the node left.
                if let Some(conn) = inner.dispatcher.write().take() {
                    conn.close("stopped by its operator");
                }
                inner.registered.store(false, Ordering::Release);
                metrics::gauge!(m::DISPATCHER_CONNECTED).set(0.0);
                backoff_ms = RECONNECT_BACKOFF_MS_MIN;
                continue;
            };
            if registered {
                backoff_ms = RECONNECT_BACKOFF_MS_MIN;
            }
            inner.registered.store(false, Ordering::Release);
            match session {
                // A dispatcher over a limit (its replay memory, say) asks to come back later.
                Err(NodeError::Refused(e)) if e.code == ErrorCode::Busy => {
                    tracing::warn!(error = %e, backoff_ms, "dispatcher busy; registering later");
                }
                Err(NodeError::Refused(e)) => return Err(NodeError::Refused(e)),
                // Closed by a STOP racing the session's end: not a failure.
                Err(NodeError::Transport(_)) if !*inner.wanted.borrow() => {}
                Err(NodeError::Transport(e)) => {
                    m::failure(Failure::DispatcherConnection);
                    tracing::warn!(error = %e, backoff_ms, "dispatcher connection lost");
                }
                Ok(()) => {}
            }
            metrics::gauge!(m::DISPATCHER_CONNECTED).set(0.0);
            *inner.dispatcher.write() = None;
            // The next of the dispatcher's addresses, if it has several.
            inner.dispatcher_turn.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(inner.config.reconnect_backoff_ms_max);
        }
    }

    /// The dispatcher address the next connection dials: `dispatcher_addr` and its alternates
    /// in turn.
    fn dispatcher_addr(&self) -> &PeerAddr {
        let config = &self.inner.config;
        let n = config.dispatcher_alternates.len() + 1;
        match self.inner.dispatcher_turn.load(Ordering::Relaxed) % n {
            0 => &config.dispatcher_addr,
            i => &config.dispatcher_alternates[i - 1],
        }
    }

    /// One connection to the dispatcher: registers, then heartbeats until it fails;
    /// `registered` tells whether the registration was accepted.
    async fn session(&self, registered: &mut bool) -> Result<(), NodeError> {
        let inner = &self.inner;
        let conn = inner
            .transport
            .connect(self.dispatcher_addr(), &inner.config.dispatcher_id)
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
        let result = self.register_and_heartbeat(registered).await;
        pushes.abort();
        result
    }

    async fn register_and_heartbeat(&self, registered: &mut bool) -> Result<(), NodeError> {
        let inner = &self.inner;
        let answer = self
            .call(&NodeRequest::Register(Box::new(self.registration())))
            .await;
        let result = match &answer {
            Ok(DispatcherReply::Registered { .. }) => "ok",
            Ok(_) => "refused",
            Err(_) => "failed",
        };
        metrics::counter!(m::REGISTRATIONS_TOTAL, "result" => result).increment(1);
        match answer? {
            DispatcherReply::Registered {
                heartbeat_interval_ms,
                assignments,
                ..
            } => {
                inner
                    .heartbeat_interval_ms
                    .store(u64::from(heartbeat_interval_ms.max(10)), Ordering::Relaxed);
                self.apply_assignments(assignments, true);
                *registered = true;
                inner.registered.store(true, Ordering::Release);
                metrics::gauge!(m::DISPATCHER_CONNECTED).set(1.0);
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
                ready: self.ready_replicas(),
            };
            let answer = self.call(&NodeRequest::Heartbeat(heartbeat)).await;
            let result = match &answer {
                Ok(DispatcherReply::HeartbeatAck { .. }) => "ok",
                Ok(_) => "refused",
                Err(_) => "failed",
            };
            metrics::counter!(m::HEARTBEATS_TOTAL, "result" => result).increment(1);
            match answer? {
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
            DispatcherPush::Challenge(req) => {
                let ack = self.inner.challenges.commit(req).await;
                let ok = matches!(ack, NodeAck::Committed { .. });
                let result = m::result(ok);
                metrics::counter!(m::CHALLENGES_TOTAL, "phase" => "commit", "result" => result)
                    .increment(1);
                ack
            }
            DispatcherPush::OpenRows { id, rows } => {
                let ack = self.inner.challenges.open(id, rows).await;
                let ok = matches!(ack, NodeAck::Opened { .. });
                let result = m::result(ok);
                metrics::counter!(m::CHALLENGES_TOTAL, "phase" => "open", "result" => result)
                    .increment(1);
                ack
            }
        }
    }

    /// Starts serving new assignments; with `complete`, the list is the whole set and
    /// deployments missing from it are dropped. An assignment of another model to a
    /// deployment served here (a model update) loads the new model while the old one keeps
    /// serving, and switches once it is loaded and warm: tasks already queued finish on the
    /// old model, later ones run on the new.
    fn apply_assignments(&self, assignments: Vec<Assignment>, complete: bool) {
        let inner = &self.inner;
        if complete {
            let keep: Vec<DeploymentId> = assignments.iter().map(|a| a.deployment).collect();
            inner.served.write().retain(|d, _| keep.contains(d));
            inner.failed.lock().retain(|d, _| keep.contains(d));
        }
        for a in assignments {
            let serving = inner
                .served
                .read()
                .get(&a.deployment)
                .map(|s| s.assignment.model);
            if serving == Some(a.model) || inner.failed.lock().get(&a.deployment) == Some(&a.model)
            {
                continue;
            }
            {
                // One load per deployment at a time: one of another model still loading is
                // left to finish, and the next heartbeat's assignments start this one.
                let mut starting = inner.starting.lock();
                if starting.contains_key(&a.deployment) {
                    continue;
                }
                starting.insert(a.deployment, a.model);
            }
            let node = self.clone();
            tokio::spawn(async move {
                let (deployment, model) = (a.deployment, a.model);
                let state = match node.start_deployment(a).await {
                    Ok(()) => ReplicaState::Ready,
                    Err(e @ CacheError::Unavailable { .. }) => {
                        m::failure(Failure::ModelFetch);
                        // The dispatcher could not be reached: not the model's fault. The
                        // next heartbeat that lists the deployment tries again.
                        tracing::warn!(%deployment, error = %e, "model not fetched; will retry");
                        node.inner.starting.lock().remove(&deployment);
                        return;
                    }
                    Err(e) => {
                        m::failure(Failure::ModelLoad);
                        tracing::warn!(%deployment, error = %e, "cannot serve deployment");
                        node.inner.failed.lock().insert(deployment, model);
                        ReplicaState::Failed(e.to_string())
                    }
                };
                node.inner.starting.lock().remove(&deployment);
                let report = NodeRequest::ReplicaState {
                    deployment,
                    model,
                    state,
                };
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
        // Sizes to measure on the batches served, for a model whose symbolic sizes beyond the
        // batch dimension leave nothing to time now.
        let mut measure_later = None;
        config.batch_size_max = match &inner.config.batch_sizing {
            BatchSizing::Fixed(n) => *n,
            BatchSizing::Measure(sizes) => {
                let (m, candidates) = (model.clone(), sizes.clone());
                let tuning = tokio::task::spawn_blocking(move || {
                    measure_batch_size(m.as_ref(), &candidates, MEASURE_REPS)
                })
                .await
                .ok()
                .flatten();
                match tuning {
                    Some(t) => {
                        tracing::info!(model = %model_id, chosen = t.batch_size_max, per_item_ns = ?t.per_item_ns, "batch size measured");
                        t.batch_size_max
                    }
                    None => {
                        if has_symbolic_inner_size(model.info()) {
                            measure_later = Some(sizes.clone());
                        }
                        1
                    }
                }
            }
        };
        let batcher = Batcher::spawn(model.clone(), config)
            .map_err(|e| CacheError::Io(format!("starting the run threads: {e}")))?;
        if let Some(sizes) = measure_later {
            batcher.measure_while_serving(&sizes);
        }
        let rate = a.rate_per_s.map(|per_s| {
            let limit = RateLimit {
                per_s,
                burst: per_s.max(1),
            };
            Mutex::new(KeyedRateLimiter::new(limit, 1))
        });
        inner.served.write().insert(
            a.deployment,
            Arc::new(Served {
                rate,
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
        let mut journaled = u64::MAX;
        // The last report was full and mostly taken: records are waiting behind it.
        let mut behind = false;
        loop {
            if !behind {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(inner.config.usage_flush_ms)) => {}
                    () = inner.flush_usage.notified() => {}
                }
            }
            behind = false;
            if let Some(path) = inner.config.usage_journal.clone() {
                let changes = inner.usage_changes.load(Ordering::Relaxed);
                if changes != journaled {
                    let records: Vec<UsageRecord> = inner.usage.lock().iter().cloned().collect();
                    let written =
                        tokio::task::spawn_blocking(move || write_journal(&path, records)).await;
                    match written {
                        Ok(Ok(())) => journaled = changes,
                        Ok(Err(e)) => {
                            m::failure(Failure::UsageJournal);
                            tracing::error!(error = %e, "usage journal not written");
                        }
                        Err(e) => {
                            m::failure(Failure::UsageJournal);
                            tracing::error!(error = %e, "usage journal task failed");
                        }
                    }
                }
            }
            let batch: Vec<UsageRecord> = {
                let usage = inner.usage.lock();
                usage.iter().take(USAGE_RECORDS_MAX).cloned().collect()
            };
            if batch.is_empty() {
                continue;
            }
            let n = batch.len();
            // The latest acknowledgement of each ticket the records name, with its ticket.
            let acks: Vec<AckProof> = {
                let uses = inner.ticket_uses.lock();
                let mut nonces: Vec<[u8; 16]> = batch.iter().map(|r| r.ticket_nonce).collect();
                nonces.sort_unstable();
                nonces.dedup();
                nonces
                    .iter()
                    .filter_map(|n| uses.get(n))
                    .filter_map(|u| {
                        u.ack.as_ref().map(|ack| AckProof {
                            ticket: u.ticket.clone(),
                            ack: (**ack).clone(),
                        })
                    })
                    .take(ACKS_MAX)
                    .collect()
            };
            match self
                .call(&NodeRequest::Usage(UsageReport {
                    records: batch,
                    acks,
                }))
                .await
            {
                Ok(DispatcherReply::UsageAck { mut held, .. }) => {
                    held.sort_unstable();
                    held.dedup();
                    held.retain(|i| (*i as usize) < n);
                    metrics::counter!(m::USAGE_REPORTED_TOTAL).increment(n as u64);
                    metrics::counter!(m::USAGE_ACKNOWLEDGED_TOTAL, "state" => "held")
                        .increment(held.len() as u64);
                    metrics::counter!(m::USAGE_ACKNOWLEDGED_TOTAL, "state" => "accepted")
                        .increment((n - held.len()) as u64);
                    // Only now are they safe to forget (new records were appended behind),
                    // except those the client has not acknowledged yet: kept, in order.
                    inner.usage_changes.fetch_add(1, Ordering::Relaxed);
                    let mut usage = inner.usage.lock();
                    let sent: Vec<UsageRecord> = usage.drain(..n).collect();
                    for i in held.iter().rev() {
                        if let Some(r) = sent.get(*i as usize) {
                            usage.push_front(r.clone());
                        }
                    }
                    // Held records go again with the next report: only one that took most of
                    // a full report makes the next one go at once (never a loop resending
                    // what the dispatcher holds).
                    behind =
                        n == USAGE_RECORDS_MAX && held.len() <= n / 2 && usage.len() > held.len();
                    inner.usage_held.store(held.len(), Ordering::Release);
                    inner.usage_reports.fetch_add(1, Ordering::AcqRel);
                }
                Ok(other) => {
                    metrics::counter!(m::USAGE_REPORTED_TOTAL).increment(n as u64);
                    m::failure(Failure::UsageReport);
                    tracing::warn!(?other, "usage report refused; will retry");
                }
                Err(e) => {
                    m::failure(Failure::UsageReport);
                    tracing::debug!(error = %e, "usage report not delivered; will retry");
                }
            }
        }
    }
}

/// The usage a previous run left in its journal (at most `max` records; a journal that cannot
/// be read is logged and ignored: the clients' acknowledgements still charge that work).
fn read_journal(path: &std::path::Path, max: usize) -> VecDeque<UsageRecord> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return VecDeque::new(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "usage journal not read");
            return VecDeque::new();
        }
    };
    match crat_core::wire::decode::<NodeRequest>(&bytes) {
        Ok(NodeRequest::Usage(report)) => {
            tracing::info!(
                records = report.records.len(),
                "usage from the journal, to report"
            );
            report.records.into_iter().take(max).collect()
        }
        Ok(_) | Err(_) => {
            tracing::error!(path = %path.display(), "usage journal unreadable; ignored");
            VecDeque::new()
        }
    }
}

/// Replaces the journal with `records`: a temporary file, fsynced, renamed over it, and the
/// directory fsynced.
fn write_journal(path: &std::path::Path, records: Vec<UsageRecord>) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = crat_core::wire::encode(&NodeRequest::Usage(UsageReport {
        records,
        acks: Vec::new(),
    }))
    .map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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
