//! The dispatcher service: the [`Dispatch`] state machine, the ledger, the blob store and a
//! transport, wired together.
//!
//! One endpoint serves nodes and clients. A connection whose first request is a node
//! registration signed by the connection's own (TLS-proven) identity is a node connection;
//! any other connection is a client connection, and each of its requests carries an SDK key.
//!
//! Every request that moves money or usage is committed to the ledger before its answer is
//! sent. Ledger calls run on tokio's blocking pool, so an `fsync` never stalls the network.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crat_core::clock::Clock;
use crat_core::dispatch::{Dispatch, DispatchConfig, DispatchError, Effect};
use crat_core::gpu_table::GpuTable;
use crat_core::hardware::PowerRating;
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, SdkKey, TaskId};
use crat_core::limit::{KeyedRateLimiter, RateLimit};
use crat_core::money::{Credits, MicroUsd};
use crat_core::pricing::{DeployPlan, PricingParams};
use crat_core::sign::{
    NonceTracker, Registration, ReplayError, Signed, TICKET_AUDIENCE_MAX, Ticket,
};
use crat_core::wire::{
    CHUNK_BYTES_MAX, ClientCall, ClientRequest, DeploymentInfo, DeploymentState, DispatcherPush,
    DispatcherReply, DispatcherResponse, ErrorCode, KeyInfo, KeyStatus, Lease, NodeAck,
    NodeRequest, USAGE_RECORDS_MAX, UsageReport, WireError,
};
use crat_rewards::file_export::FileSettlement;
use crat_rewards::{Params, Settlement};
use crat_transport::SystemClock;
use crat_transport::{
    Connection, ConnectionExt, Conversation, Frame, FrameLimits, IncomingExchange, Transport,
    TransportError, serve,
};
use ed25519_dalek::SigningKey;

use crate::blob::{BlobStore, LocalBlobStore, UploadConfig, UploadError, Uploads};
use crate::ledger::{
    AccountName, DeploymentRecord, KeyRecord, Ledger, LedgerError, ModelRecord, NodeRecord,
    SqliteLedger, UsageCharge,
};
use crate::rounds::{ClosedRound, RoundClock, RoundError, close_round};

mod canary;

use canary::CanaryState;
pub use canary::{CanaryConfig, CanaryOutcome, CanaryParts, canary_inputs};

/// Everything a dispatcher is configured with.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Where the ledger, models, partial uploads and payouts live.
    pub data_dir: PathBuf,
    /// Dispatch rules (heartbeats, replicas, capacity).
    pub dispatch: DispatchConfig,
    /// Prices.
    pub pricing: PricingParams,
    /// Round economics; `rewards.round_s` is the round length.
    pub rewards: Params,
    /// Start of round 0 (Unix seconds). Default 0: rounds are aligned to `round_s`.
    pub round_epoch_s: u64,
    /// How long after a round ends it is closed (so last heartbeats land). Default 10 s.
    pub round_close_delay_s: u64,
    /// Lifetime of a lease's ticket. Default 300 s.
    pub ticket_lifetime_s: u64,
    /// Tickets remembered (by nonce) so that usage is charged only under a ticket this
    /// dispatcher issued for that deployment to that node. Past it, with every remembered
    /// ticket still live, a lease is answered `Busy`. Default 262,144.
    pub tickets_tracked_max: usize,
    /// How long after a ticket expires its usage is still accepted (nodes retry reports).
    /// Also how long after a start usage under tickets of a previous run is accepted from a
    /// node that serves the deployment. Default 3,600 s.
    pub usage_grace_s: u64,
    /// Frame caps.
    pub frame_limits: FrameLimits,
    /// Largest model accepted. Default 1 GiB.
    pub model_bytes_max: u64,
    /// Partial uploads kept at once. Default 64.
    pub uploads_max: usize,
    /// Requests handled at once per connection. Default 256.
    pub concurrency_max: usize,
    /// Requests per SDK key arriving over the network, once the key is authenticated; over
    /// it a request is answered `Busy`. `None`: unlimited. Default 2,000/s, bursts of 4,000
    /// (a 100 MB upload is about 130 requests). In-process calls
    /// ([`Dispatcher::handle_client`]) are not limited.
    pub client_key_rate: Option<RateLimit>,
    /// SDK keys whose request rate is tracked at once (least recently used forgotten beyond).
    /// Default 65,536.
    pub client_keys_tracked_max: usize,
    /// Node registrations remembered for their freshness window, so that each is accepted
    /// once; when this many are fresh, registering is answered `Busy`. Default 65,536.
    pub registrations_tracked_max: usize,
    /// How long a key's status is cached (revocations take effect within this). Default 1 s.
    pub key_cache_ms: u64,
    /// How often the state machine ticks and round closing is checked. Default 1 s.
    pub tick_ms: u64,
    /// Canary tasks (sent only by a dispatcher built with [`CanaryParts`]).
    pub canary: CanaryConfig,
    /// Share of tasks clients spot-check on a second replica (sent in every lease), in
    /// basis points. Default 100 (1 %). At most 10,000.
    pub validation_bps: u16,
    /// The share for a deployment one of whose replicas failed a validation within the
    /// exclusion window ([`crat_core::dispatch::Dispatch::suspect`]): a cheater caught once
    /// is checked ten times as often until it is caught again and excluded, or the window
    /// passes. Basis points; default 1,000 (10 %); never below `validation_bps`.
    pub validation_bps_suspect: u16,
    /// Spot-check reports remembered (by task) so that each task is credited once; the
    /// oldest are forgotten beyond. Default 65,536.
    pub validation_reports_tracked_max: usize,
    /// Reports credited per deployment beyond what its sampling rate explains: a
    /// deployment's reports are credited up to `2 × validation_bps / 10,000 × its tasks`
    /// (usage records) plus this, so a client colluding with a replica cannot report every
    /// task. Over it a report is answered `Busy`. Default 16.
    pub validation_reports_slack: u64,
}

impl DispatcherConfig {
    /// Defaults, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            dispatch: DispatchConfig::default(),
            pricing: PricingParams::default(),
            rewards: Params::default(),
            round_epoch_s: 0,
            round_close_delay_s: 10,
            ticket_lifetime_s: 300,
            tickets_tracked_max: 262_144,
            usage_grace_s: 3_600,
            frame_limits: FrameLimits::default(),
            model_bytes_max: 1 << 30,
            uploads_max: 64,
            concurrency_max: 256,
            client_key_rate: Some(RateLimit {
                per_s: 2_000,
                burst: 4_000,
            }),
            client_keys_tracked_max: 65_536,
            registrations_tracked_max: 65_536,
            key_cache_ms: 1_000,
            tick_ms: 1_000,
            canary: CanaryConfig::default(),
            validation_bps: 100,
            validation_bps_suspect: 1_000,
            validation_reports_tracked_max: 65_536,
            validation_reports_slack: 16,
        }
    }

    /// The round clock these settings describe.
    pub fn round_clock(&self) -> RoundClock {
        RoundClock {
            epoch_s: self.round_epoch_s,
            round_s: self.rewards.round_s,
        }
    }

    /// The ledger file.
    pub fn ledger_path(&self) -> PathBuf {
        self.data_dir.join("ledger.sqlite")
    }
}

/// Why the dispatcher could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatcherError {
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The upload area or blob store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// A setting is out of range.
    #[error("config: {0}")]
    Config(String),
    /// A round could not be closed.
    #[error("round: {0}")]
    Round(#[from] RoundError),
}

/// An object-safe [`Settlement`].
pub trait Settle: Send + 'static {
    /// Pays `batch` (idempotently).
    fn settle(
        &mut self,
        batch: &crat_rewards::PayoutBatch,
    ) -> Result<crat_rewards::SettlementReceipt, String>;
}

impl<S: Settlement + Send + 'static> Settle for S {
    fn settle(
        &mut self,
        batch: &crat_rewards::PayoutBatch,
    ) -> Result<crat_rewards::SettlementReceipt, String> {
        Settlement::settle(self, batch).map_err(|e| e.to_string())
    }
}

struct SettleAdapter<'a>(&'a mut dyn Settle);

impl Settlement for SettleAdapter<'_> {
    type Error = SettleFailed;
    fn settle(
        &mut self,
        batch: &crat_rewards::PayoutBatch,
    ) -> Result<crat_rewards::SettlementReceipt, SettleFailed> {
        self.0.settle(batch).map_err(SettleFailed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SettleFailed(String);

/// The parts a dispatcher is built from (see [`Dispatcher::open`] for the defaults).
pub struct DispatcherParts<T: Transport> {
    /// The dispatcher's key: its transport identity and the key that signs tickets.
    pub key: SigningKey,
    /// Its endpoint.
    pub transport: T,
    /// The database.
    pub ledger: Arc<dyn Ledger>,
    /// Where models are stored.
    pub blobs: Arc<dyn BlobStore>,
    /// Where uploads are staged.
    pub uploads: Uploads,
    /// Where payouts go.
    pub settlement: Box<dyn Settle>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// What canary tasks need; `None`: no canaries.
    pub canary: Option<CanaryParts<T>>,
}

/// Counters for monitoring and the demo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatcherStats {
    /// Leases issued.
    pub leases: u64,
    /// Usage records charged.
    pub usage_records: u64,
    /// Usage records that were duplicates of charged tasks.
    pub usage_duplicates: u64,
    /// Rounds closed by this process.
    pub rounds_closed: u64,
    /// Validations of other nodes' work credited from spot-check reports.
    pub validations_ok: u64,
    /// Failed validations recorded from spot-check reports (canaries not included).
    pub validations_failed: u64,
    /// Canaries answered correctly.
    pub canaries_passed: u64,
    /// Canaries answered wrongly (each recorded as a failed validation).
    pub canaries_failed: u64,
    /// Canaries without a verdict (error, timeout, unreachable node).
    pub canaries_inconclusive: u64,
}

struct CachedKey {
    record: KeyRecord,
    fetched: Instant,
}

struct NodeConn<C> {
    serial: u64,
    conn: C,
}

struct Inner<T: Transport> {
    key: SigningKey,
    id: NodeId,
    transport: T,
    config: DispatcherConfig,
    ledger: Arc<dyn Ledger>,
    blobs: Arc<dyn BlobStore>,
    uploads: Uploads,
    settlement: Mutex<Box<dyn Settle>>,
    clock: Arc<dyn Clock>,
    dispatch: Mutex<Dispatch>,
    node_conns: Mutex<HashMap<NodeId, NodeConn<T::Connection>>>,
    keys: RwLock<HashMap<KeyId, CachedKey>>,
    /// Request rates of SDK keys on the network path.
    key_rates: Option<Mutex<KeyedRateLimiter<KeyId>>>,
    /// Registrations accepted within their freshness window (node, nonce).
    registrations: Mutex<NonceTracker<(NodeId, [u8; 16])>>,
    /// The origin of the rate limiter's milliseconds.
    started: Instant,
    deployments: RwLock<HashMap<DeploymentId, DeploymentRecord>>,
    serial: AtomicU64,
    leases: AtomicU64,
    usage_records: AtomicU64,
    usage_duplicates: AtomicU64,
    rounds_closed: AtomicU64,
    next_round: Mutex<Option<u64>>,
    canary: Option<CanaryState<T>>,
    /// Tasks whose spot-check report was accepted.
    reported: Mutex<canary::BoundedSet<(DeploymentId, TaskId)>>,
    /// Reports credited per deployment (since start).
    report_counts: Mutex<HashMap<DeploymentId, u64>>,
    /// Tickets issued, for checking usage.
    tickets: Mutex<IssuedTickets>,
    /// Deployments that were sampled at the suspect rate (their reports are capped by it).
    suspected: Mutex<canary::BoundedSet<DeploymentId>>,
    validations_ok: AtomicU64,
    validations_failed: AtomicU64,
    canaries_passed: AtomicU64,
    canaries_failed: AtomicU64,
    canaries_inconclusive: AtomicU64,
}

/// Tickets this dispatcher issued, by nonce, until a while after they expire: usage is
/// charged only under a ticket issued for its deployment whose audience names the reporting
/// node, so a node cannot charge a deployment it was never leased for. Bounded; entries
/// are forgotten in issue order, which is also expiry order (one lifetime for all).
pub(crate) struct IssuedTickets {
    by_nonce: HashMap<[u8; 16], (DeploymentId, Vec<NodeId>)>,
    order: std::collections::VecDeque<([u8; 16], u64)>,
    capacity: usize,
}

impl IssuedTickets {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            by_nonce: HashMap::new(),
            order: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Forgets the tickets whose time has passed.
    pub(crate) fn forget_old(&mut self, now_s: u64) {
        while let Some((nonce, forget_at_s)) = self.order.front() {
            if *forget_at_s > now_s {
                break;
            }
            self.by_nonce.remove(nonce);
            self.order.pop_front();
        }
    }

    /// Remembers `ticket` until `forget_at_s`; `false` when full of tickets still
    /// remembered.
    pub(crate) fn insert(&mut self, now_s: u64, ticket: &Ticket, forget_at_s: u64) -> bool {
        self.forget_old(now_s);
        if self.by_nonce.len() >= self.capacity {
            return false;
        }
        self.by_nonce
            .insert(ticket.nonce, (ticket.deployment, ticket.audience.clone()));
        self.order.push_back((ticket.nonce, forget_at_s));
        true
    }

    /// Whether usage under ticket `nonce` for `deployment` by `node` is allowed; `None`
    /// when the ticket is not known.
    pub(crate) fn allows(
        &self,
        nonce: &[u8; 16],
        deployment: &DeploymentId,
        node: &NodeId,
    ) -> Option<bool> {
        self.by_nonce
            .get(nonce)
            .map(|(d, audience)| d == deployment && audience.contains(node))
    }
}

/// A running dispatcher. Cheap to clone.
pub struct Dispatcher<T: Transport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for Dispatcher<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError::new(code, message)
}

fn ledger_err(e: LedgerError) -> WireError {
    match e {
        LedgerError::InsufficientCredits { .. } => {
            err(ErrorCode::InsufficientCredits, e.to_string())
        }
        LedgerError::NotFound(_) => err(ErrorCode::NotFound, e.to_string()),
        LedgerError::Invalid(_) | LedgerError::Exists(_) => {
            err(ErrorCode::BadRequest, e.to_string())
        }
        _ => {
            tracing::error!(error = %e, "ledger failure");
            err(ErrorCode::Internal, "ledger failure")
        }
    }
}

fn upload_err(e: UploadError) -> WireError {
    let code = match &e {
        UploadError::TooLarge { .. } => ErrorCode::TooLarge,
        UploadError::HashMismatch { .. } | UploadError::NotOnnx(_) => ErrorCode::ModelRejected,
        UploadError::Busy { .. } => ErrorCode::Busy,
        UploadError::NotStarted(_) => ErrorCode::NotFound,
        UploadError::Mismatch(_) | UploadError::BadChunk(_) | UploadError::Incomplete { .. } => {
            ErrorCode::BadRequest
        }
        _ => ErrorCode::Internal,
    };
    err(code, e.to_string())
}

fn dispatch_err(e: DispatchError) -> WireError {
    let code = match &e {
        DispatchError::NoCapacity(_) | DispatchError::NotReady(_) => ErrorCode::NoCapacity,
        DispatchError::UnknownDeployment(_) | DispatchError::UnknownNode(_) => ErrorCode::NotFound,
        DispatchError::Full(_) => ErrorCode::Busy,
        _ => ErrorCode::BadRequest,
    };
    err(code, e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn new_id<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b
}

impl<T: Transport> Dispatcher<T> {
    /// A dispatcher with the embedded defaults under `config.data_dir`: a SQLite ledger,
    /// a local model directory, an upload staging directory and file settlement.
    pub fn open(
        config: DispatcherConfig,
        key: SigningKey,
        transport: T,
    ) -> Result<Self, DispatcherError> {
        Self::open_with(config, key, transport, None)
    }

    /// [`Dispatcher::open`], sending canary tasks with `canary` (see [`CanaryConfig`]).
    pub fn open_with(
        config: DispatcherConfig,
        key: SigningKey,
        transport: T,
        canary: Option<CanaryParts<T>>,
    ) -> Result<Self, DispatcherError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| DispatcherError::Storage(format!("{}: {e}", config.data_dir.display())))?;
        let ledger = Arc::new(SqliteLedger::open(&config.ledger_path())?);
        let blobs = Arc::new(
            LocalBlobStore::open(&config.data_dir.join("models"))
                .map_err(|e| DispatcherError::Storage(e.to_string()))?,
        );
        let uploads = Uploads::open(UploadConfig {
            model_bytes_max: config.model_bytes_max,
            uploads_max: config.uploads_max,
            chunk_bytes: CHUNK_BYTES_MAX,
            ..UploadConfig::new(config.data_dir.join("uploads"))
        })
        .map_err(|e| DispatcherError::Storage(e.to_string()))?;
        let settlement = Box::new(FileSettlement::new(config.data_dir.join("payouts")));
        Self::new(
            DispatcherParts {
                key,
                transport,
                ledger,
                blobs,
                uploads,
                settlement,
                clock: Arc::new(SystemClock),
                canary,
            },
            config,
        )
    }

    /// Assembles a dispatcher from parts; loads active deployments from the ledger.
    pub fn new(
        parts: DispatcherParts<T>,
        mut config: DispatcherConfig,
    ) -> Result<Self, DispatcherError> {
        // Exclusions last whole rounds of the rewards' length.
        config.dispatch.round_s = config.rewards.round_s;
        config
            .rewards
            .validate()
            .map_err(|e| DispatcherError::Config(e.to_string()))?;
        config
            .pricing
            .validate()
            .map_err(|e| DispatcherError::Config(e.to_string()))?;
        if config.ticket_lifetime_s == 0
            || config.ticket_lifetime_s > crat_core::sign::TICKET_LIFETIME_S_MAX
        {
            return Err(DispatcherError::Config(format!(
                "ticket_lifetime_s must be 1..={}",
                crat_core::sign::TICKET_LIFETIME_S_MAX
            )));
        }
        let mut dispatch = Dispatch::new(config.dispatch.clone());
        let mut deployments = HashMap::new();
        for d in parts.ledger.active_deployments()? {
            dispatch
                .restore(d.id, d.model, d.model_bytes, d.plan)
                .map_err(|e| DispatcherError::Config(e.to_string()))?;
            deployments.insert(d.id, d);
        }
        let key_rates = config
            .client_key_rate
            .map(|limit| Mutex::new(KeyedRateLimiter::new(limit, config.client_keys_tracked_max)));
        let registrations = Mutex::new(NonceTracker::new(config.registrations_tracked_max));
        let canary = parts.canary.map(|c| CanaryState::new(c, &config.canary));
        let reported = Mutex::new(canary::BoundedSet::new(
            config.validation_reports_tracked_max,
        ));
        let suspected = Mutex::new(canary::BoundedSet::new(
            config.validation_reports_tracked_max,
        ));
        let tickets = Mutex::new(IssuedTickets::new(config.tickets_tracked_max));
        if config.validation_bps_suspect > 10_000 {
            return Err(DispatcherError::Config(
                "validation_bps_suspect must be 0..=10000".into(),
            ));
        }
        if config.validation_bps > 10_000 {
            return Err(DispatcherError::Config(
                "validation_bps must be 0..=10000".into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                id: NodeId::from_key(&parts.key.verifying_key()),
                key: parts.key,
                transport: parts.transport,
                config,
                ledger: parts.ledger,
                blobs: parts.blobs,
                uploads: parts.uploads,
                settlement: Mutex::new(parts.settlement),
                clock: parts.clock,
                dispatch: Mutex::new(dispatch),
                node_conns: Mutex::new(HashMap::new()),
                keys: RwLock::new(HashMap::new()),
                key_rates,
                registrations,
                started: Instant::now(),
                deployments: RwLock::new(deployments),
                serial: AtomicU64::new(0),
                leases: AtomicU64::new(0),
                usage_records: AtomicU64::new(0),
                usage_duplicates: AtomicU64::new(0),
                rounds_closed: AtomicU64::new(0),
                next_round: Mutex::new(None),
                reported,
                report_counts: Mutex::new(HashMap::new()),
                suspected,
                tickets,
                validations_ok: AtomicU64::new(0),
                validations_failed: AtomicU64::new(0),
                canary,
                canaries_passed: AtomicU64::new(0),
                canaries_failed: AtomicU64::new(0),
                canaries_inconclusive: AtomicU64::new(0),
            }),
        })
    }

    /// The dispatcher's identity (pinned by nodes and clients; it signs tickets).
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Where it listens.
    pub fn local_addr(&self) -> crat_core::id::PeerAddr {
        self.inner.transport.local_addr()
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.inner.ledger
    }

    /// Counters.
    pub fn stats(&self) -> DispatcherStats {
        let i = &self.inner;
        DispatcherStats {
            leases: i.leases.load(Ordering::Relaxed),
            usage_records: i.usage_records.load(Ordering::Relaxed),
            usage_duplicates: i.usage_duplicates.load(Ordering::Relaxed),
            rounds_closed: i.rounds_closed.load(Ordering::Relaxed),
            validations_ok: i.validations_ok.load(Ordering::Relaxed),
            validations_failed: i.validations_failed.load(Ordering::Relaxed),
            canaries_passed: i.canaries_passed.load(Ordering::Relaxed),
            canaries_failed: i.canaries_failed.load(Ordering::Relaxed),
            canaries_inconclusive: i.canaries_inconclusive.load(Ordering::Relaxed),
        }
    }

    /// Nodes online now.
    pub fn online_nodes(&self) -> usize {
        lock(&self.inner.dispatch).online_count()
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.inner.transport.close();
        if let Some(c) = &self.inner.canary {
            c.close();
        }
    }

    /// Until when `node` is excluded from placement for failed validations, if it is now.
    pub fn excluded_until(&self, node: &NodeId) -> Option<u64> {
        lock(&self.inner.dispatch).excluded_until(node)
    }

    /// The nodes holding warm replicas of `deployment` now.
    pub fn ready_replicas(&self, deployment: &DeploymentId) -> Vec<NodeId> {
        lock(&self.inner.dispatch)
            .ready_replicas(deployment)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    async fn db<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Ledger) -> R + Send + 'static,
    ) -> Result<R, WireError> {
        let ledger = self.inner.ledger.clone();
        tokio::task::spawn_blocking(move || f(&*ledger))
            .await
            .map_err(|e| err(ErrorCode::Internal, format!("ledger task failed: {e}")))
    }

    /// Runs until the transport is closed: accepts nodes and clients, ticks the state
    /// machine, closes rounds.
    pub async fn run(&self) -> Result<(), DispatcherError> {
        // Aborted when `run` returns or is dropped (a cancelled run must not leave the
        // ticker holding the dispatcher, and with it the socket, alive).
        let _ticker = AbortOnDrop(tokio::spawn(self.clone().tick_loop()));
        let _canaries = AbortOnDrop(tokio::spawn(self.clone().canary_loop()));
        let result = loop {
            match self.inner.transport.accept().await {
                Ok(conn) => {
                    tokio::spawn(self.clone().connection(conn));
                }
                Err(e) => break e,
            }
        };
        tracing::info!(error = %result, "dispatcher stopped accepting");
        Ok(())
    }

    async fn tick_loop(self) {
        let period = Duration::from_millis(self.inner.config.tick_ms.max(10));
        loop {
            tokio::time::sleep(period).await;
            let now = self.inner.clock.now_s();
            let effects = lock(&self.inner.dispatch).tick(now);
            self.apply(effects).await;
            match self.close_due_rounds().await {
                Ok(closed) => {
                    for c in closed {
                        tracing::info!(
                            round = c.record.index,
                            paid_usd_micro = c.record.paid_usd_micro.get(),
                            payouts = c.payouts.payouts.len(),
                            "round closed"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "closing a round failed"),
            }
        }
    }

    /// Closes every round that ended at least `round_close_delay_s` ago and is not closed
    /// yet (the first round is the one the first node registered in). Returns what it
    /// closed.
    pub async fn close_due_rounds(&self) -> Result<Vec<ClosedRound>, DispatcherError> {
        let now = self.inner.clock.now_s();
        let clock = self.inner.config.round_clock();
        let next = {
            let cached = *lock(&self.inner.next_round);
            match cached {
                Some(n) => n,
                None => {
                    let (last, first_reg) = self
                        .db(|l| {
                            let last = l.last_round()?;
                            let first = l.nodes()?.iter().map(|n| n.registered_at_s).min();
                            Ok::<_, LedgerError>((last, first))
                        })
                        .await
                        .map_err(|e| DispatcherError::Storage(e.message))??;
                    match (last, first_reg) {
                        (Some(r), _) => r.index + 1,
                        (None, Some(t)) => clock.index_at(t),
                        (None, None) => return Ok(Vec::new()),
                    }
                }
            }
        };
        let mut closed = Vec::new();
        let mut index = next;
        while clock
            .start(index + 1)
            .saturating_add(self.inner.config.round_close_delay_s)
            <= now
        {
            closed.push(self.close_round(index).await?);
            index += 1;
        }
        *lock(&self.inner.next_round) = Some(index);
        Ok(closed)
    }

    /// Closes round `index` now (idempotent: a stored round is only settled again).
    pub async fn close_round(&self, index: u64) -> Result<ClosedRound, DispatcherError> {
        let inner = self.inner.clone();
        let closed = tokio::task::spawn_blocking(move || {
            let mut settlement = lock(&inner.settlement);
            let mut adapter = SettleAdapter(&mut **settlement);
            close_round(
                &*inner.ledger,
                &inner.config.rewards,
                &inner.config.pricing,
                inner.config.round_clock(),
                index,
                &mut adapter,
            )
        })
        .await
        .map_err(|e| DispatcherError::Storage(format!("round task failed: {e}")))??;
        self.inner.rounds_closed.fetch_add(1, Ordering::Relaxed);
        Ok(closed)
    }

    async fn connection(self, conn: T::Connection) {
        let max = self.inner.config.frame_limits.control_bytes_max;
        let Ok(mut first) = conn.accept_exchange().await else {
            return;
        };
        let Ok(frame) = first.read_request(max).await else {
            return;
        };
        let remote = conn.remote_id();
        match frame.decode::<NodeRequest>() {
            Ok(NodeRequest::Register(reg)) if reg.signer == remote => {
                let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
                let reply = self.register(&conn, serial, *reg).await;
                let registered = matches!(reply, DispatcherReply::Registered { .. });
                respond(first, &reply, max).await;
                if registered {
                    self.node_connection(conn, serial).await;
                    return;
                }
                // Refused: the connection stays open (as a client connection) until the peer
                // closes it; dropping it now would discard the answer still in flight.
            }
            _ => {
                let reply = match frame.decode::<ClientRequest>() {
                    Ok(req) => self.handle_remote_client(req).await,
                    Err(e) => DispatcherResponse::Error(err(ErrorCode::BadRequest, e.to_string())),
                };
                respond(first, &reply, max).await;
            }
        }
        let me = self.clone();
        serve(
            conn,
            Conversation::ClientDispatcher,
            self.inner.config.frame_limits,
            self.inner.config.concurrency_max,
            move |req: ClientRequest| {
                let me = me.clone();
                async move { me.handle_remote_client(req).await }
            },
        )
        .await;
    }

    async fn node_connection(&self, conn: T::Connection, serial: u64) {
        let node = conn.remote_id();
        let me = self.clone();
        let e = serve(
            conn,
            Conversation::NodeDispatcher,
            self.inner.config.frame_limits,
            self.inner.config.concurrency_max,
            move |req: NodeRequest| {
                let me = me.clone();
                async move { me.handle_node(node, req).await }
            },
        )
        .await;
        tracing::info!(%node, error = %e, "node connection ended");
        let current = {
            let mut conns = lock(&self.inner.node_conns);
            match conns.get(&node) {
                Some(c) if c.serial == serial => {
                    conns.remove(&node);
                    true
                }
                _ => false,
            }
        };
        if current {
            let effects = lock(&self.inner.dispatch).node_left(&node);
            self.apply(effects).await;
        }
    }

    async fn register(
        &self,
        conn: &T::Connection,
        serial: u64,
        reg: Signed<Registration>,
    ) -> DispatcherReply {
        let now = self.inner.clock.now_s();
        let r = match reg.verify_registration(now) {
            Ok(r) => r.clone(),
            Err(e) => {
                return DispatcherReply::Error(err(ErrorCode::Unauthenticated, e.to_string()));
            }
        };
        // Each registration is accepted once: a copy presented again while it is still fresh
        // (on this connection or another) is a replay.
        let once = lock(&self.inner.registrations).check((r.node, r.nonce), r.expires_at_s(), now);
        match once {
            Ok(()) => {}
            Err(e @ ReplayError::Full { .. }) => {
                return DispatcherReply::Error(err(ErrorCode::Busy, format!("registration: {e}")));
            }
            Err(e) => {
                return DispatcherReply::Error(err(
                    ErrorCode::Unauthenticated,
                    format!("registration refused: {e}"),
                ));
            }
        }
        // The rating and income come from the GPU table, not from the node's own claim.
        let table = GpuTable::builtin();
        let mut rating = PowerRating::MIN;
        let mut income = MicroUsd::ZERO;
        for gpu in &r.hardware.gpus {
            let a = table.assess(gpu);
            rating = rating.max(a.rating);
            income = income.saturating_add(a.mining_income_usd_micro_per_day);
        }
        let record = NodeRecord {
            id: r.node,
            rating: u8::from(rating),
            registered_at_s: now,
            mining_income_usd_micro_per_day: income,
            crat_micro: crat_core::money::MicroCrat::ZERO,
            streak: 0,
            uptime_total_s: 0,
        };
        match self.db(move |l| l.upsert_node(&record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return DispatcherReply::Error(ledger_err(e)),
            Err(e) => return DispatcherReply::Error(e),
        }
        lock(&self.inner.node_conns).insert(
            r.node,
            NodeConn {
                serial,
                conn: conn.clone(),
            },
        );
        let (effects, assignments) = {
            let mut d = lock(&self.inner.dispatch);
            let effects = d.node_joined(
                now,
                r.node,
                rating,
                r.listen_addrs.clone(),
                r.hardware.clone(),
                r.model_bytes_max,
            );
            (effects, d.assignments_for(&r.node))
        };
        // Its own assignments travel in the answer; pushes go to the others.
        let effects = effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::Push { node, .. } if *node == r.node))
            .collect();
        self.apply(effects).await;
        tracing::info!(node = %r.node, %rating, "node registered");
        DispatcherReply::Registered {
            dispatcher: self.inner.id,
            heartbeat_interval_ms: u32::try_from(
                self.inner
                    .config
                    .dispatch
                    .heartbeat_interval_s
                    .saturating_mul(1000),
            )
            .unwrap_or(u32::MAX),
            assignments,
        }
    }

    /// Carries out the state machine's effects.
    async fn apply(&self, effects: Vec<Effect>) {
        let mut sessions = Vec::new();
        for effect in effects {
            match effect {
                Effect::Push { node, push } => self.push(node, push),
                Effect::Online {
                    node,
                    session_start_s,
                    until_s,
                } => sessions.push((node, session_start_s, until_s)),
                Effect::Offline {
                    node,
                    session_start_s,
                    last_seen_s,
                } => {
                    tracing::info!(%node, "node offline");
                    sessions.push((node, session_start_s, last_seen_s));
                }
                Effect::DeploymentState { deployment, state } => {
                    tracing::info!(%deployment, ?state, "deployment state");
                }
            }
        }
        if !sessions.is_empty() {
            let result = self
                .db(move |l| {
                    for (node, start, end) in sessions {
                        l.record_online(&node, start, end)?;
                    }
                    Ok::<_, LedgerError>(())
                })
                .await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "uptime not recorded"),
                Err(e) => tracing::error!(error = %e, "uptime not recorded"),
            }
        }
    }

    fn push(&self, node: NodeId, push: DispatcherPush) {
        let conn = lock(&self.inner.node_conns)
            .get(&node)
            .map(|c| c.conn.clone());
        let Some(conn) = conn else { return };
        let limits = self.inner.config.frame_limits;
        tokio::spawn(async move {
            match conn
                .call::<_, NodeAck>(&push, Conversation::NodeDispatcher, limits)
                .await
            {
                Ok(NodeAck::Ok) => {}
                Ok(NodeAck::Error(e)) => tracing::warn!(%node, error = %e, "push refused"),
                Err(e) => tracing::debug!(%node, error = %e, "push not delivered"),
            }
        });
    }

    /// Answers one request from a registered node.
    async fn handle_node(&self, node: NodeId, req: NodeRequest) -> DispatcherReply {
        let now = self.inner.clock.now_s();
        match req {
            NodeRequest::Register(_) => DispatcherReply::Error(err(
                ErrorCode::BadRequest,
                "already registered on this connection",
            )),
            NodeRequest::Heartbeat(hb) => {
                let result = lock(&self.inner.dispatch).heartbeat(now, &node, &hb);
                match result {
                    Ok(effects) => {
                        self.apply(effects).await;
                        let d = lock(&self.inner.dispatch);
                        DispatcherReply::HeartbeatAck {
                            demand: d.demand(),
                            assignments: d.assignments_for(&node),
                        }
                    }
                    Err(e) => {
                        DispatcherReply::Error(err(ErrorCode::Unauthenticated, e.to_string()))
                    }
                }
            }
            NodeRequest::FetchModel { model, offset, len } => {
                if len == 0 || len > CHUNK_BYTES_MAX {
                    return DispatcherReply::Error(err(
                        ErrorCode::BadRequest,
                        format!("chunk length must be 1..={CHUNK_BYTES_MAX}"),
                    ));
                }
                // Models may be proprietary: a node gets only what it was assigned.
                let assigned = lock(&self.inner.dispatch)
                    .assignments_for(&node)
                    .iter()
                    .any(|a| a.model == model);
                if !assigned {
                    return DispatcherReply::Error(err(
                        ErrorCode::NotFound,
                        format!("model {model} is not assigned to this node"),
                    ));
                }
                let total = match self.inner.blobs.size(&model).await {
                    Ok(Some(t)) => t,
                    Ok(None) => {
                        return DispatcherReply::Error(err(
                            ErrorCode::NotFound,
                            format!("model {model}"),
                        ));
                    }
                    Err(e) => {
                        return DispatcherReply::Error(err(ErrorCode::Internal, e.to_string()));
                    }
                };
                match self.inner.blobs.read_range(&model, offset, len).await {
                    Ok(data) => DispatcherReply::ModelChunk {
                        offset,
                        total_bytes: total,
                        data,
                    },
                    Err(e) => DispatcherReply::Error(err(ErrorCode::BadRequest, e.to_string())),
                }
            }
            NodeRequest::ReplicaState { deployment, state } => {
                let effects =
                    lock(&self.inner.dispatch).replica_state(now, &node, &deployment, &state);
                self.apply(effects).await;
                DispatcherReply::Ok
            }
            NodeRequest::Usage(report) => self.usage(node, now, report).await,
        }
    }

    async fn usage(&self, node: NodeId, now: u64, report: UsageReport) -> DispatcherReply {
        if report.records.len() > USAGE_RECORDS_MAX {
            return DispatcherReply::Error(err(
                ErrorCode::TooLarge,
                format!("more than {USAGE_RECORDS_MAX} records"),
            ));
        }
        let mut charges = Vec::with_capacity(report.records.len());
        let mut unknown = 0u32;
        let mut refused = 0u32;
        {
            let after_start = self.inner.started.elapsed().as_secs()
                < self
                    .inner
                    .config
                    .ticket_lifetime_s
                    .saturating_add(self.inner.config.usage_grace_s);
            // Charged only under a ticket issued for the record's deployment to this node. A
            // ticket of a previous run (unknown nonce) counts shortly after a start, from a
            // node serving the deployment. (Locks taken one after another, never nested
            // with the deployments' lock.)
            let allowed: Vec<bool> = {
                let mut tickets = lock(&self.inner.tickets);
                tickets.forget_old(now);
                let known: Vec<Option<bool>> = report
                    .records
                    .iter()
                    .map(|r| tickets.allows(&r.ticket_nonce, &r.deployment, &node))
                    .collect();
                drop(tickets);
                let dispatch = lock(&self.inner.dispatch);
                report
                    .records
                    .iter()
                    .zip(known)
                    .map(|(r, known)| {
                        known
                            .unwrap_or_else(|| after_start && dispatch.serves(&node, &r.deployment))
                    })
                    .collect()
            };
            let deployments = self
                .inner
                .deployments
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (record, allowed) in report.records.into_iter().zip(allowed) {
                // Canaries are the dispatcher's own tasks: nobody is charged for them.
                if self
                    .inner
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.is_canary(&record.task))
                {
                    unknown += 1;
                    continue;
                }
                // The ledger stores integers as i64; absurd statistics are a node's bug.
                let sane = [record.input_bytes, record.output_bytes, record.compute_us]
                    .iter()
                    .all(|v| i64::try_from(*v).is_ok());
                let Some(d) = deployments.get(&record.deployment).filter(|_| sane) else {
                    // Not a deployment of ours: nothing to charge, never retried.
                    unknown += 1;
                    continue;
                };
                if !allowed {
                    refused += 1;
                    unknown += 1;
                    continue;
                }
                let cost = match d.plan {
                    DeployPlan::PerRequest(_) => self
                        .inner
                        .config
                        .pricing
                        .request_cost(d.model_bytes, record.input_bytes)
                        .unwrap_or(d.price.per_request_max),
                    DeployPlan::PerInstance(_) => Credits::ZERO,
                };
                charges.push(UsageCharge {
                    record,
                    node,
                    cost,
                    at_s: now,
                });
            }
        }
        let touched: Vec<DeploymentId> = {
            let mut t: Vec<DeploymentId> = charges.iter().map(|c| c.record.deployment).collect();
            t.sort();
            t.dedup();
            t
        };
        let result = self
            .db(move |l| {
                let outcome = l.charge_usage(&charges)?;
                let mut after = Vec::new();
                for id in touched {
                    if let Some(d) = l.deployment(&id)? {
                        after.push(d);
                    }
                }
                Ok::<_, LedgerError>((outcome, after))
            })
            .await;
        match result {
            Ok(Ok((outcome, after))) => {
                {
                    let mut deployments = self
                        .inner
                        .deployments
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for d in after {
                        if let Some(slot) = deployments.get_mut(&d.id) {
                            *slot = d;
                        }
                    }
                }
                self.inner
                    .usage_records
                    .fetch_add(u64::from(outcome.accepted), Ordering::Relaxed);
                self.inner
                    .usage_duplicates
                    .fetch_add(u64::from(outcome.duplicates), Ordering::Relaxed);
                if unknown > 0 {
                    tracing::warn!(
                        %node,
                        unknown,
                        refused,
                        "usage for unknown deployments or without a ticket naming the node ignored"
                    );
                }
                DispatcherReply::UsageAck {
                    accepted: outcome.accepted,
                    duplicates: outcome.duplicates + unknown,
                }
            }
            Ok(Err(e)) => DispatcherReply::Error(ledger_err(e)),
            Err(e) => DispatcherReply::Error(e),
        }
    }

    /// Checks an SDK key: known, secret matches, not revoked, not expired.
    async fn authenticate(&self, key: &SdkKey) -> Result<KeyRecord, WireError> {
        let now = self.inner.clock.now_s();
        let cached = {
            let keys = self
                .inner
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            keys.get(&key.id)
                .filter(|c| {
                    c.fetched.elapsed() < Duration::from_millis(self.inner.config.key_cache_ms)
                })
                .map(|c| c.record.clone())
        };
        let record = match cached {
            Some(r) => r,
            None => {
                let id = key.id;
                let found = self.db(move |l| l.key(&id)).await?.map_err(ledger_err)?;
                let Some(record) = found else {
                    return Err(err(ErrorCode::Unauthenticated, "unknown SDK key"));
                };
                let mut keys = self
                    .inner
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if keys.len() >= 100_000 {
                    keys.clear();
                }
                keys.insert(
                    key.id,
                    CachedKey {
                        record: record.clone(),
                        fetched: Instant::now(),
                    },
                );
                record
            }
        };
        // blake3::Hash compares in constant time.
        if blake3::hash(&key.secret) != blake3::Hash::from_bytes(record.secret_hash) {
            return Err(err(ErrorCode::Unauthenticated, "wrong SDK key secret"));
        }
        if record.revoked_at_s.is_some() {
            return Err(err(
                ErrorCode::KeyRevoked,
                format!("{} was revoked", key.id),
            ));
        }
        if record.expires_at_s.is_some_and(|t| t <= now) {
            return Err(err(
                ErrorCode::KeyExpired,
                format!("{} has expired", key.id),
            ));
        }
        Ok(record)
    }

    /// Answers one client request (also usable in-process, e.g. by benchmarks). Not subject
    /// to [`DispatcherConfig::client_key_rate`], which guards the network path.
    pub async fn handle_client(&self, req: ClientRequest) -> DispatcherResponse {
        match self.client(req, false).await {
            Ok(r) => r,
            Err(e) => DispatcherResponse::Error(e),
        }
    }

    /// A client request from the network: rate-limited per key.
    async fn handle_remote_client(&self, req: ClientRequest) -> DispatcherResponse {
        match self.client(req, true).await {
            Ok(r) => r,
            Err(e) => DispatcherResponse::Error(e),
        }
    }

    /// `Busy` when `key` is over its request rate. Checked after authentication, so nobody
    /// can spend another key's allowance by naming it.
    fn check_rate(&self, key: &KeyId) -> Result<(), WireError> {
        let Some(rates) = &self.inner.key_rates else {
            return Ok(());
        };
        let now_ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        lock(rates)
            .allow(key, now_ms)
            .map_err(|e| err(ErrorCode::Busy, format!("{key}: {e}")))
    }

    async fn client(
        &self,
        req: ClientRequest,
        rate_limited: bool,
    ) -> Result<DispatcherResponse, WireError> {
        let key = self.authenticate(&req.key).await?;
        if rate_limited {
            self.check_rate(&key.id)?;
        }
        let now = self.inner.clock.now_s();
        match req.call {
            ClientCall::UploadBegin { model, total_bytes } => {
                if let Some(stored) = self.already_stored(model, &key.account, now).await? {
                    return Ok(stored);
                }
                let p = self
                    .inner
                    .uploads
                    .begin(model, total_bytes)
                    .await
                    .map_err(upload_err)?;
                Ok(upload_progress(p))
            }
            ClientCall::UploadChunk {
                model,
                offset,
                data,
            } => {
                let p = self
                    .inner
                    .uploads
                    .write(model, offset, &data)
                    .await
                    .map_err(upload_err)?;
                Ok(upload_progress(p))
            }
            ClientCall::UploadFinish { model } => {
                if let Some(stored) = self.already_stored(model, &key.account, now).await? {
                    return Ok(stored);
                }
                let staged = self.inner.uploads.finish(model).await.map_err(upload_err)?;
                self.inner
                    .blobs
                    .put_file(&model, &staged.path)
                    .await
                    .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
                self.remember_model(model, staged.bytes, &key.account, now)
                    .await?;
                tracing::info!(%model, bytes = staged.bytes, "model stored");
                Ok(DispatcherResponse::ModelStored {
                    model,
                    bytes: staged.bytes,
                })
            }
            ClientCall::Quote { model, plan } => {
                let bytes = self.model_bytes(model).await?;
                let quote = self
                    .inner
                    .config
                    .pricing
                    .quote(bytes, &plan)
                    .map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
                Ok(DispatcherResponse::Quote(quote))
            }
            ClientCall::Deploy { model, plan } => self.deploy(&key, model, plan, now).await,
            ClientCall::Deployment { deployment } => {
                let d = self.owned_deployment(&key, &deployment)?;
                Ok(DispatcherResponse::Deployment(self.describe(&d)))
            }
            ClientCall::Undeploy { deployment } => {
                self.owned_deployment(&key, &deployment)?;
                let effects = lock(&self.inner.dispatch).undeploy(&deployment);
                let stopped = self
                    .db(move |l| l.stop_deployment(&deployment, now))
                    .await?
                    .map_err(ledger_err)?;
                self.inner
                    .deployments
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&stopped.id);
                self.apply(effects).await;
                Ok(DispatcherResponse::Ok)
            }
            ClientCall::Lease { deployment } => self
                .lease(&key, &deployment, now)
                .map(DispatcherResponse::Lease),
            ClientCall::Balance => {
                let account = key.account.clone();
                let b = self
                    .db(move |l| l.balance(&account))
                    .await?
                    .map_err(ledger_err)?;
                Ok(DispatcherResponse::Balance(b))
            }
            ClientCall::ReportValidation(report) => {
                self.validation_report(&key, *report, now).await?;
                Ok(DispatcherResponse::Ok)
            }
            ClientCall::KeyStatus => Ok(DispatcherResponse::Key(KeyInfo {
                id: key.id,
                status: KeyStatus::Active,
                created_at_s: key.created_at_s,
                expires_at_s: key.expires_at_s,
            })),
        }
    }

    /// `ModelStored` if the blob store has `model` already (content-addressed: a model
    /// stored once is stored for everyone), after noting it for `account`.
    async fn already_stored(
        &self,
        model: ModelId,
        account: &AccountName,
        now: u64,
    ) -> Result<Option<DispatcherResponse>, WireError> {
        let size = self
            .inner
            .blobs
            .size(&model)
            .await
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        let Some(size) = size else { return Ok(None) };
        self.remember_model(model, size, account, now).await?;
        Ok(Some(DispatcherResponse::ModelStored { model, bytes: size }))
    }

    async fn remember_model(
        &self,
        model: ModelId,
        bytes: u64,
        account: &AccountName,
        now: u64,
    ) -> Result<(), WireError> {
        let record = ModelRecord {
            id: model,
            bytes,
            account: account.clone(),
            stored_at_s: now,
        };
        self.db(move |l| l.insert_model(&record))
            .await?
            .map_err(ledger_err)
    }

    async fn model_bytes(&self, model: ModelId) -> Result<u64, WireError> {
        let found = self
            .db(move |l| l.model(&model))
            .await?
            .map_err(ledger_err)?;
        found.map(|m| m.bytes).ok_or_else(|| {
            err(
                ErrorCode::NotFound,
                format!("model {model} is not uploaded"),
            )
        })
    }

    fn owned_deployment(
        &self,
        key: &KeyRecord,
        id: &DeploymentId,
    ) -> Result<DeploymentRecord, WireError> {
        let deployments = self
            .inner
            .deployments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        deployments
            .get(id)
            .filter(|d| d.account == key.account)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound, format!("deployment {id}")))
    }

    fn describe(&self, d: &DeploymentRecord) -> DeploymentInfo {
        let (state, ready, wanted) = if d.stopped_at_s.is_some() {
            (DeploymentState::Stopped, 0, 0)
        } else {
            lock(&self.inner.dispatch)
                .deployment_state(&d.id)
                .unwrap_or((DeploymentState::Stopped, 0, 0))
        };
        DeploymentInfo {
            id: d.id,
            model: d.model,
            plan: d.plan,
            state,
            replicas_ready: ready,
            replicas_wanted: wanted,
            price: d.price,
            allowance_left: d.allowance_left,
        }
    }

    async fn deploy(
        &self,
        key: &KeyRecord,
        model: ModelId,
        plan: DeployPlan,
        now: u64,
    ) -> Result<DispatcherResponse, WireError> {
        let model_bytes = self.model_bytes(model).await?;
        let price = self
            .inner
            .config
            .pricing
            .quote(model_bytes, &plan)
            .map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
        let account = key.account.clone();
        let balance = self
            .db(move |l| l.balance(&account))
            .await?
            .map_err(ledger_err)?;
        if balance < price.upfront {
            return Err(err(
                ErrorCode::InsufficientCredits,
                format!(
                    "deploying costs {} credits up front; the balance is {}",
                    price.upfront.get(),
                    balance.get()
                ),
            ));
        }
        let id = DeploymentId::from_bytes(new_id());
        // Place first (nothing is charged if there is no capacity), then charge; if the
        // charge fails the placement is undone before any node hears of it.
        let effects = lock(&self.inner.dispatch)
            .deploy(now, id, model, model_bytes, plan)
            .map_err(dispatch_err)?;
        let record = DeploymentRecord {
            id,
            account: key.account.clone(),
            key: key.id,
            model,
            model_bytes,
            plan,
            price,
            allowance_left: match plan {
                DeployPlan::PerRequest(p) => p.credit_allowance,
                DeployPlan::PerInstance(_) => Credits::ZERO,
            },
            created_at_s: now,
            stopped_at_s: None,
        };
        let stored = record.clone();
        match self.db(move |l| l.create_deployment(&stored)).await {
            Ok(Ok(_balance)) => {}
            Ok(Err(e)) => {
                lock(&self.inner.dispatch).undeploy(&id);
                return Err(ledger_err(e));
            }
            Err(e) => {
                lock(&self.inner.dispatch).undeploy(&id);
                return Err(e);
            }
        }
        self.inner
            .deployments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, record.clone());
        self.apply(effects).await;
        tracing::info!(deployment = %id, %model, upfront = price.upfront.get(), "deployed");
        Ok(DispatcherResponse::Deployment(self.describe(&record)))
    }

    /// The sampling rate for a deployment's next lease: the configured one, or the suspect
    /// one while a replica of it has failed a validation recently.
    fn validation_bps(&self, id: &DeploymentId) -> u16 {
        let config = &self.inner.config;
        if !lock(&self.inner.dispatch).suspect(id) {
            return config.validation_bps;
        }
        lock(&self.inner.suspected).insert(*id);
        config.validation_bps.max(config.validation_bps_suspect)
    }

    /// The rate a deployment's credited reports are capped by: the highest it was sampled
    /// at (reports for tasks sampled at the suspect rate stay creditable afterwards).
    fn report_cap_bps(&self, id: &DeploymentId) -> u16 {
        let config = &self.inner.config;
        if lock(&self.inner.suspected).contains(id) {
            config.validation_bps.max(config.validation_bps_suspect)
        } else {
            config.validation_bps
        }
    }

    /// Issues a lease: the warm replicas and a ticket for them.
    fn lease(&self, key: &KeyRecord, id: &DeploymentId, now: u64) -> Result<Lease, WireError> {
        let d = self.owned_deployment(key, id)?;
        let budget = self.ticket_budget(&d, now)?;
        let mut replicas = lock(&self.inner.dispatch)
            .lease_replicas(id)
            .map_err(dispatch_err)?;
        replicas.truncate(TICKET_AUDIENCE_MAX);
        let ticket = Ticket {
            deployment: *id,
            key: key.id,
            credit_budget: budget,
            issued_at_s: now,
            expires_at_s: now.saturating_add(self.inner.config.ticket_lifetime_s),
            nonce: new_id(),
            audience: replicas.iter().map(|r| r.node).collect(),
        };
        let forget_at_s = ticket
            .expires_at_s
            .saturating_add(self.inner.config.usage_grace_s);
        if !lock(&self.inner.tickets).insert(now, &ticket, forget_at_s) {
            return Err(err(
                ErrorCode::Busy,
                "too many live tickets; try again shortly",
            ));
        }
        self.inner.leases.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            replicas,
            ticket: Signed::sign(ticket, &self.inner.key),
            validation_bps: crat_core::bps::Bps(self.validation_bps(id)),
        })
    }

    /// Checks a spot-check report and credits it: each validator (receipt after the first)
    /// in the majority gets a `validations_ok`, each node outside it a `validations_failed`
    /// (which may exclude it from placement).
    ///
    /// # Security
    /// The receipts are signed by the nodes, so a client cannot invent an answer for a node,
    /// and a task is credited once. Which answers *agreed* is the client's word: digests
    /// cannot be compared within a tolerance, so the dispatcher only refuses reports that
    /// are inconsistent on their face (a node outside the majority whose digest equals a
    /// majority node's, receipts of one operator, nodes that are not the deployment's warm
    /// replicas, a task reported twice). A client lying about agreement could cost a node
    /// its CRAT, and a client colluding with a replica could report agreement on every task
    /// of a plan whose tasks cost it nothing (per-instance) to farm validation CRAT, which
    /// is why a deployment's credited reports are capped at twice its sampling rate
    /// ([`DispatcherConfig::validation_reports_slack`]). Canaries, which need no client's
    /// word, are the check that does not rest on it.
    async fn validation_report(
        &self,
        key: &KeyRecord,
        report: crat_core::wire::ValidationReport,
        now: u64,
    ) -> Result<(), WireError> {
        let bad = |m: String| err(ErrorCode::BadRequest, m);
        let receipts = &report.receipts;
        if !(2..=crat_core::wire::REPORT_RECEIPTS_MAX).contains(&receipts.len()) {
            return Err(bad(format!(
                "a report carries 2..={} receipts",
                crat_core::wire::REPORT_RECEIPTS_MAX
            )));
        }
        let first = &receipts[0].body;
        let (task, deployment) = (first.task, first.deployment);
        self.owned_deployment(key, &deployment)?;
        // Only the deployment's replicas did its work (a node that signs receipts for tasks
        // it never ran would otherwise earn validation CRAT with a colluding client).
        let replicas = lock(&self.inner.dispatch).ready_replicas(&deployment);
        let mut nodes = Vec::with_capacity(receipts.len());
        let mut operators = Vec::with_capacity(receipts.len());
        for r in receipts {
            r.verify(Some(&r.body.node))
                .map_err(|e| err(ErrorCode::Unauthenticated, format!("receipt: {e}")))?;
            if r.body.task != task || r.body.deployment != deployment {
                return Err(bad("receipts of different tasks".into()));
            }
            if nodes.contains(&r.body.node) {
                return Err(bad(format!("two receipts of {}", r.body.node)));
            }
            let operator = replicas
                .iter()
                .find(|(n, _)| *n == r.body.node)
                .map(|(_, o)| *o)
                .ok_or_else(|| {
                    err(
                        ErrorCode::NotFound,
                        format!("node {} is not a replica of {deployment}", r.body.node),
                    )
                })?;
            if operators.contains(&operator) {
                return Err(bad("two receipts from one operator".into()));
            }
            nodes.push(r.body.node);
            operators.push(operator);
        }
        let majority = &report.majority;
        let distinct: std::collections::BTreeSet<&NodeId> = majority.iter().collect();
        if distinct.len() != majority.len()
            || majority.len() < 2
            || majority.len() * 2 <= receipts.len()
            || !majority.iter().all(|n| nodes.contains(n))
        {
            return Err(bad(
                "the majority must be most of the receipts' nodes".into()
            ));
        }
        let digests_in: Vec<[u8; 32]> = receipts
            .iter()
            .filter(|r| majority.contains(&r.body.node))
            .map(|r| r.body.outputs_digest)
            .collect();
        if receipts.iter().any(|r| {
            !majority.contains(&r.body.node) && digests_in.contains(&r.body.outputs_digest)
        }) {
            return Err(bad("identical answers reported as disagreeing".into()));
        }
        if lock(&self.inner.reported).contains(&(deployment, task)) {
            return Err(bad(format!("{task} was reported already")));
        }
        // No more reports than the sampling rate explains (twice, plus a slack).
        let (tasks, _) = self
            .db(move |l| l.usage_totals(&deployment))
            .await?
            .map_err(ledger_err)?;
        let allowed = tasks
            .saturating_mul(2 * u64::from(self.report_cap_bps(&deployment)))
            .checked_div(10_000)
            .unwrap_or(0)
            .saturating_add(self.inner.config.validation_reports_slack);
        {
            let mut counts = lock(&self.inner.report_counts);
            if counts.len() >= crat_core::dispatch::DEPLOYMENTS_MAX {
                counts.clear();
            }
            let n = counts.entry(deployment).or_insert(0);
            if *n >= allowed {
                return Err(err(
                    ErrorCode::Busy,
                    format!("{deployment}: more reports than its sampling rate explains"),
                ));
            }
            let mut reported = lock(&self.inner.reported);
            if reported.contains(&(deployment, task)) {
                return Err(bad(format!("{task} was reported already")));
            }
            reported.insert((deployment, task));
            *n += 1;
        }
        let ok: Vec<NodeId> = nodes[1..]
            .iter()
            .filter(|n| majority.contains(n))
            .copied()
            .collect();
        let failed: Vec<NodeId> = nodes
            .iter()
            .filter(|n| !majority.contains(n))
            .copied()
            .collect();
        let credited = ok.clone();
        self.db(move |l| {
            for n in &credited {
                l.record_validation(n, true, now)?;
            }
            Ok::<_, LedgerError>(())
        })
        .await?
        .map_err(ledger_err)?;
        self.inner
            .validations_ok
            .fetch_add(ok.len() as u64, Ordering::Relaxed);
        for n in failed {
            tracing::warn!(node = %n, %task, "spot check failed");
            self.inner
                .validations_failed
                .fetch_add(1, Ordering::Relaxed);
            self.validation_failed(n).await;
        }
        Ok(())
    }

    /// The credit budget of a ticket for `d` now, or why none may be issued.
    fn ticket_budget(&self, d: &DeploymentRecord, now: u64) -> Result<Credits, WireError> {
        let id = &d.id;
        Ok(match d.plan {
            DeployPlan::PerRequest(_) => {
                if d.allowance_left == Credits::ZERO {
                    return Err(err(
                        ErrorCode::InsufficientCredits,
                        format!("the allowance of {id} is spent"),
                    ));
                }
                d.allowance_left
            }
            DeployPlan::PerInstance(p) => {
                if now >= d.created_at_s.saturating_add(p.key_lifetime_s) {
                    return Err(err(
                        ErrorCode::KeyExpired,
                        format!("the reservation of {id} ended"),
                    ));
                }
                d.price.upfront
            }
        })
    }
}

fn upload_progress(p: crate::blob::UploadProgress) -> DispatcherResponse {
    DispatcherResponse::Upload {
        received_bytes: p.received_bytes,
        total_bytes: p.total_bytes,
        chunk_bytes_max: CHUNK_BYTES_MAX,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn respond<I: IncomingExchange, M: crat_core::wire::Message>(incoming: I, msg: &M, max: u32) {
    match Frame::encode(msg, max) {
        Ok(frame) => {
            if let Err(e) = incoming.respond(frame).await {
                tracing::debug!(error = %e, "response not delivered");
            }
        }
        Err(e) => tracing::warn!(error = %e, "response cannot be framed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(nonce: u8, deployment: u8, audience: &[u8]) -> Ticket {
        Ticket {
            deployment: DeploymentId::from_bytes([deployment; 16]),
            key: crat_core::id::KeyId::from_bytes([1; 16]),
            credit_budget: Credits::new(10),
            issued_at_s: 0,
            expires_at_s: 10,
            nonce: [nonce; 16],
            audience: audience
                .iter()
                .map(|b| NodeId::from_bytes([*b; 32]))
                .collect(),
        }
    }

    #[test]
    fn issued_tickets_name_deployment_and_audience_and_are_bounded() {
        let mut t = IssuedTickets::new(2);
        let node = |b: u8| NodeId::from_bytes([b; 32]);
        let dep = |b: u8| DeploymentId::from_bytes([b; 16]);
        assert!(t.insert(0, &ticket(1, 7, &[1, 2]), 100));
        assert!(t.insert(0, &ticket(2, 7, &[3]), 150));
        assert_eq!(t.allows(&[1; 16], &dep(7), &node(2)), Some(true));
        assert_eq!(t.allows(&[1; 16], &dep(7), &node(3)), Some(false));
        assert_eq!(t.allows(&[1; 16], &dep(8), &node(1)), Some(false));
        assert_eq!(t.allows(&[3; 16], &dep(7), &node(1)), None);
        // Full of remembered tickets: refused, nothing forgotten early.
        assert!(!t.insert(50, &ticket(3, 7, &[1]), 200));
        assert_eq!(t.allows(&[1; 16], &dep(7), &node(1)), Some(true));
        // The first one's time passes: room again, and it is forgotten.
        assert!(t.insert(100, &ticket(3, 7, &[1]), 200));
        assert_eq!(t.allows(&[1; 16], &dep(7), &node(1)), None);
        t.forget_old(1_000);
        assert_eq!(t.allows(&[3; 16], &dep(7), &node(1)), None);
    }
}
