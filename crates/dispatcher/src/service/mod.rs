//! The dispatcher service: the [`Dispatch`] state machine, the sans-IO rules of
//! [`crat_core::policy`], the ledger, the blob store and a transport, wired together.
//!
//! One endpoint serves nodes and clients. A connection whose first request is a node
//! registration signed by the connection's own (TLS-proven) identity is a node connection;
//! any other connection is a client connection, and each of its requests carries an SDK key.
//!
//! Every request that moves money or usage is committed to the ledger before its answer is
//! sent. Ledger calls run on tokio's blocking pool, so an `fsync` never stalls the network.
//!
//! The glue is split by conversation: [`node`] (registration, heartbeats, model fetches,
//! usage), [`client`] (uploads, deployments, leases, balances, spot-check reports),
//! [`canary`] (the dispatcher's own test tasks, shaped by what clients tell of their inputs
//! in [`shapes`]), [`gate`] (the determinism gate a model
//! passes at deploy time), [`hardware`] (compute challenges: proof of hardware and of
//! commitment) and [`closing`] (rounds). Decisions live in
//! [`crat_core::dispatch`] and [`crat_core::policy`]; [`reply`] maps every refusal to a wire
//! error once. Locks are taken one after another, never nested (except `settlement` inside
//! `settle_retries`, always in that order).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crat_core::clock::Clock;
use crat_core::dispatch::{Dispatch, NODES_MAX};
use crat_core::expiring::ExpiringMap;
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId};
use crat_core::limit::KeyedRateLimiter;
use crat_core::policy::acks::AckBook;
use crat_core::policy::reports::{ReportBook, SamplingRates};
use crat_core::policy::tickets::IssuedTickets;
use crat_core::sign::NonceTracker;
use crat_core::wire::{
    CHUNK_BYTES_MAX, ClientRequest, DispatcherReply, DispatcherResponse, ErrorCode, NodeRequest,
};
use crat_rewards::Settlement;
use crat_rewards::file_export::FileSettlement;
use crat_transport::{
    Connection, Conversation, Frame, IncomingExchange, SteadyClock, Transport, TransportError,
    serve,
};
use ed25519_dalek::SigningKey;
use parking_lot::{Mutex, RwLock};

use crate::blob::{BlobStore, LocalBlobStore, UploadConfig, Uploads};
use crate::cluster::{Link, serve_link};
use crate::ledger::{DeploymentRecord, KeyRecord, Ledger, LedgerError, SqliteLedger};
use crate::rounds::RoundError;
use reply::{Refusal, err};

mod acks;
mod canary;
mod client;
mod closing;
mod config;
mod gate;
mod hardware;
mod node;
mod reach;
mod reply;
mod shapes;
mod standing;

use canary::CanaryState;
pub use canary::{CanaryConfig, CanaryOutcome, CanaryParts, InputsError, canary_inputs};
pub use config::{ACCEPTED_EXCHANGES_INITIAL, DispatcherConfig, StoreOptions};
use gate::Gate;
pub use gate::GateConfig;

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
    /// Another dispatcher sharing the ledger became the active one: this one stopped
    /// ([`crate::cluster`]).
    #[error("another dispatcher sharing the ledger is the active one now; this one stopped")]
    Superseded,
}

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
    pub settlement: Box<dyn Settlement>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// What canary tasks and the determinism gate need; `None`: no canaries, and the gate
    /// decides from the model check alone.
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
    /// Usage records held back: their client had not acknowledged them (yet).
    pub usage_held: u64,
    /// Acknowledgements accepted (from clients and forwarded by nodes).
    pub acks: u64,
    /// (ticket, node) pairs whose acknowledged but unreported work was charged from the
    /// acknowledgement.
    pub usage_settled: u64,
    /// Rounds closed by this process.
    pub rounds_closed: u64,
    /// Rounds this process settled for the first time (a round recognised by the
    /// settlement as paid before, after a crash, does not count).
    pub rounds_settled: u64,
    /// Settlement attempts that failed (each retried with backoff).
    pub settlement_failures: u64,
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
    /// Models a canary found estimated above what the reference backends may hold
    /// (`CanaryConfig::reference_memory_bytes_max`): not loaded, their deployments exempt
    /// from canaries from then on. (Models the determinism gate found so are unverifiable and
    /// never reach a canary.)
    pub canary_models_exempt: u64,
    /// Reference models loaded for canaries (a model the determinism gate ran at deploy is
    /// kept from the gate, not loaded again).
    pub canary_reference_loads: u64,
    /// Clients' reports of answers without a valid receipt (each may send a canary to the
    /// node at once).
    pub receipt_reports: u64,
    /// SDK keys looked up in the ledger (not in the key cache, nor remembered as unknown).
    pub key_lookups: u64,
    /// Requests refused because their key id was remembered as unknown (no ledger lookup).
    pub unknown_keys_cached: u64,
}

struct CachedKey {
    record: KeyRecord,
    fetched: Instant,
}

struct NodeConn<C> {
    serial: u64,
    conn: C,
}

/// The counters behind [`DispatcherStats`].
#[derive(Default)]
struct Counters {
    leases: AtomicU64,
    usage_records: AtomicU64,
    usage_duplicates: AtomicU64,
    usage_held: AtomicU64,
    acks: AtomicU64,
    usage_settled: AtomicU64,
    rounds_closed: AtomicU64,
    rounds_settled: AtomicU64,
    settlement_failures: AtomicU64,
    validations_ok: AtomicU64,
    validations_failed: AtomicU64,
    canaries_passed: AtomicU64,
    canaries_failed: AtomicU64,
    canaries_inconclusive: AtomicU64,
    canary_models_exempt: AtomicU64,
    canary_reference_loads: AtomicU64,
    receipt_reports: AtomicU64,
    key_lookups: AtomicU64,
    unknown_keys_cached: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DispatcherStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DispatcherStats {
            leases: get(&self.leases),
            usage_records: get(&self.usage_records),
            usage_duplicates: get(&self.usage_duplicates),
            usage_held: get(&self.usage_held),
            acks: get(&self.acks),
            usage_settled: get(&self.usage_settled),
            rounds_closed: get(&self.rounds_closed),
            rounds_settled: get(&self.rounds_settled),
            settlement_failures: get(&self.settlement_failures),
            validations_ok: get(&self.validations_ok),
            validations_failed: get(&self.validations_failed),
            canaries_passed: get(&self.canaries_passed),
            canaries_failed: get(&self.canaries_failed),
            canaries_inconclusive: get(&self.canaries_inconclusive),
            canary_models_exempt: get(&self.canary_models_exempt),
            canary_reference_loads: get(&self.canary_reference_loads),
            receipt_reports: get(&self.receipt_reports),
            key_lookups: get(&self.key_lookups),
            unknown_keys_cached: get(&self.unknown_keys_cached),
        }
    }
}

struct Inner<T: Transport> {
    key: SigningKey,
    id: NodeId,
    transport: T,
    config: DispatcherConfig,
    ledger: Arc<dyn Ledger>,
    blobs: Arc<dyn BlobStore>,
    uploads: Uploads,
    settlement: Mutex<Box<dyn Settlement>>,
    clock: Arc<dyn Clock>,
    dispatch: Mutex<Dispatch>,
    node_conns: Mutex<HashMap<NodeId, NodeConn<Link<T::Connection>>>>,
    keys: RwLock<HashMap<KeyId, CachedKey>>,
    /// SDK key ids the ledger did not hold, until `unknown_key_cache_ms` after the lookup
    /// (times in milliseconds since `started`).
    unknown_keys: Mutex<ExpiringMap<KeyId, ()>>,
    /// Request rates of SDK keys on the network path.
    key_rates: Option<Mutex<KeyedRateLimiter<KeyId>>>,
    /// Registration rates per source address block.
    block_rates: Option<Mutex<KeyedRateLimiter<u64>>>,
    /// Heartbeat rates per node.
    heartbeat_rates: Option<Mutex<KeyedRateLimiter<NodeId>>>,
    /// Registrations accepted within their freshness window (node, nonce).
    registrations: Mutex<NonceTracker<(NodeId, [u8; 16])>>,
    /// The origin of the rate limiter's milliseconds and of the restart grace.
    started: Instant,
    deployments: RwLock<HashMap<DeploymentId, DeploymentRecord>>,
    /// Per-request deployments whose allowance was first seen spent, and when.
    spent_since: Mutex<HashMap<DeploymentId, u64>>,
    /// Why failed deployments failed (their nodes' load errors), until they are refunded and
    /// forgotten.
    load_failures: Mutex<HashMap<DeploymentId, String>>,
    serial: AtomicU64,
    next_round: Mutex<Option<u64>>,
    /// Online sessions waiting for the ledger: (node, session start) → the latest end seen.
    /// A heartbeat extends its node's session here, not in the ledger; every tick writes them
    /// all in one transaction (`node.rs`'s `flush_sessions`), so a dispatcher that crashes
    /// loses at most a tick of uptime, and the ledger sees a write a tick, whatever the node
    /// count.
    sessions: Mutex<HashMap<(NodeId, u64), u64>>,
    /// Held by a flush of `sessions` from the moment it takes them until the ledger has them:
    /// a flush that found nothing waiting while another was still writing would let a round
    /// close over the ledger without the last seconds of uptime.
    flushing: tokio::sync::Mutex<()>,
    /// Whether this dispatcher closes and settles rounds ([`Ledger::lead_rounds`], asked every
    /// tick).
    leading: AtomicBool,
    /// Told when another dispatcher sharing the ledger became the active one.
    superseded: tokio::sync::Notify,
    /// Backoff of the rounds whose settlement failed; held for a whole settlement pass, and
    /// the one lock held while another (`settlement`) is taken.
    settle_retries: Mutex<crate::rounds::SettleRetries>,
    canary: Option<CanaryState<T>>,
    /// The determinism gate's reference backends and verdicts.
    gate: Gate,
    /// Credited spot-check reports, their caps and the suspect sampling rate.
    reports: Mutex<ReportBook>,
    /// Tickets issued, for checking usage.
    tickets: Mutex<IssuedTickets>,
    /// What clients acknowledged of each node's work per ticket, and what was charged.
    acks: Mutex<AckBook>,
    counters: Counters,
    /// Proof of hardware: each connected node's proof and its next challenge.
    hardware: hardware::HardwareState,
    /// The running round's estimate that answers standing queries, reused for
    /// `standing_estimate_ms`.
    standing: Mutex<Option<Arc<standing::Estimate>>>,
    /// The probe that checks whether nodes are reachable directly.
    reach: reach::ReachState<T>,
    /// Client endpoints that used a valid key lately: they may use the relays
    /// ([`ClientCall::RelayAccess`](crat_core::wire::ClientCall::RelayAccess)); times in
    /// milliseconds since `started`.
    relay_members: Mutex<ExpiringMap<NodeId, ()>>,
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
        Self::open_on_clock(
            config,
            key,
            transport,
            canary,
            Arc::new(SteadyClock::system()),
        )
    }

    /// [`Dispatcher::open_with`] on `clock` instead of the system's [`SteadyClock`] (tests
    /// step a wall clock under it).
    pub fn open_on_clock(
        config: DispatcherConfig,
        key: SigningKey,
        transport: T,
        canary: Option<CanaryParts<T>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DispatcherError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| DispatcherError::Storage(format!("{}: {e}", config.data_dir.display())))?;
        let ledger = Arc::new(SqliteLedger::open(&config.ledger_path())?);
        Self::open_on_ledger(config, key, transport, canary, clock, ledger)
    }

    /// [`Dispatcher::open_with`] on `ledger` instead of the SQLite file under
    /// `config.data_dir` (a [`crate::ledger::PgLedger`] that several dispatchers share); the
    /// models, uploads and payouts stay under `config.data_dir`.
    pub fn open_with_ledger(
        config: DispatcherConfig,
        key: SigningKey,
        transport: T,
        canary: Option<CanaryParts<T>>,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Self, DispatcherError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| DispatcherError::Storage(format!("{}: {e}", config.data_dir.display())))?;
        Self::open_on_ledger(
            config,
            key,
            transport,
            canary,
            Arc::new(SteadyClock::system()),
            ledger,
        )
    }

    fn open_on_ledger(
        config: DispatcherConfig,
        key: SigningKey,
        transport: T,
        canary: Option<CanaryParts<T>>,
        clock: Arc<dyn Clock>,
        ledger: Arc<dyn Ledger>,
    ) -> Result<Self, DispatcherError> {
        let blobs = open_blobs(&config)?;
        let uploads = Uploads::open(UploadConfig {
            model_bytes_max: config.model_bytes_max,
            memory_bytes_max: config.model_memory_bytes_max,
            uploads_max: config.uploads_max,
            uploads_per_account_max: config.uploads_per_account_max,
            upload_bytes_per_account_max: config.upload_bytes_per_account_max,
            free_bytes_min: config.upload_free_bytes_min,
            chunk_bytes: CHUNK_BYTES_MAX,
            ..UploadConfig::new(config.data_dir.join("uploads"))
        })
        .map_err(|e| DispatcherError::Storage(e.to_string()))?;
        let settlement = Box::new(FileSettlement::new(config.payouts_dir.clone()));
        Self::new(
            DispatcherParts {
                key,
                transport,
                ledger,
                blobs,
                uploads,
                settlement,
                clock,
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
        // Time never goes back across a restart: the clock reads at least the latest time
        // the ledger recorded and the time the last closed round was closed at, whatever
        // the wall clock says now (see `crat_core::clock`).
        let mut floor_s = parts.ledger.latest_time_s()?;
        if let Some(last) = parts.ledger.last_round()? {
            floor_s = floor_s.max(
                config
                    .round_clock()
                    .start(last.index.saturating_add(1))
                    .saturating_add(config.round_close_delay_s),
            );
        }
        parts.clock.raise_to(floor_s);
        let mut dispatch = Dispatch::new(config.dispatch.clone());
        let mut deployments = HashMap::new();
        for d in parts.ledger.active_deployments()? {
            dispatch
                .restore(d.id, d.model, d.model_bytes, d.plan)
                .map_err(|e| DispatcherError::Config(e.to_string()))?;
            deployments.insert(d.id, d);
        }
        // Stopped, not refunded yet: no replicas, but their late usage is still charged.
        for d in parts.ledger.stopping_deployments()? {
            deployments.insert(d.id, d);
        }
        let key_rates = config
            .client_key_rate
            .map(|limit| Mutex::new(KeyedRateLimiter::new(limit, config.client_keys_tracked_max)));
        let unknown_keys = Mutex::new(ExpiringMap::new(config.unknown_keys_cached_max));
        let block_rates = config.registration_rate_per_block.map(|limit| {
            Mutex::new(KeyedRateLimiter::new(
                limit,
                config.registrations_tracked_max,
            ))
        });
        let heartbeat_rates = config
            .heartbeat_rate
            .map(|limit| Mutex::new(KeyedRateLimiter::new(limit, NODES_MAX)));
        let registrations = Mutex::new(NonceTracker::new(config.registrations_tracked_max));
        let rates = SamplingRates::new(config.validation_bps, config.validation_bps_suspect)
            .map_err(|e| DispatcherError::Config(e.to_string()))?;
        let reports = Mutex::new(ReportBook::new(
            rates,
            config.validation_reports_tracked_max,
            config.validation_reports_slack,
        ));
        let tickets = Mutex::new(IssuedTickets::new(
            config.tickets_tracked_max,
            config.tickets_per_key_max,
        ));
        let acks = Mutex::new(restore_acks(&*parts.ledger, config.acks_tracked_max)?);
        let references = parts
            .canary
            .as_ref()
            .map(|c| c.references.clone())
            .unwrap_or_default();
        let bounds = gate::MemoryBounds {
            node_bytes_max: config.model_memory_bytes_max,
            reference_bytes_max: config.canary.reference_memory_bytes_max,
        };
        let gate = Gate::new(
            references,
            config.gate.clone(),
            config.canary.tolerance,
            bounds,
        );
        for d in deployments.values() {
            gate.remember(d.model, d.verifiability);
        }
        let canary = parts.canary.map(|c| CanaryState::new(c, &config.canary));
        let leading = parts.ledger.lead_rounds().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot tell whether this dispatcher closes rounds; asked again every tick");
            false
        });
        metrics::gauge!(crate::metrics::ROUND_LEADER).set(f64::from(u8::from(leading)));
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
                unknown_keys,
                key_rates,
                block_rates,
                heartbeat_rates,
                registrations,
                started: Instant::now(),
                deployments: RwLock::new(deployments),
                spent_since: Mutex::new(HashMap::new()),
                load_failures: Mutex::new(HashMap::new()),
                serial: AtomicU64::new(0),
                next_round: Mutex::new(None),
                leading: AtomicBool::new(leading),
                sessions: Mutex::new(HashMap::new()),
                flushing: tokio::sync::Mutex::new(()),
                superseded: tokio::sync::Notify::new(),
                settle_retries: closing::settle_retries(),
                canary,
                gate,
                reports,
                tickets,
                acks,
                counters: Counters::default(),
                hardware: hardware::HardwareState::new(),
                standing: Mutex::new(None),
                reach: reach::ReachState::new(),
                relay_members: Mutex::new(ExpiringMap::new(reach::RELAY_MEMBERS_MAX)),
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
        self.inner.counters.snapshot()
    }

    /// Nodes online now.
    pub fn online_nodes(&self) -> usize {
        self.inner.dispatch.lock().online_count()
    }

    /// Whether this dispatcher closes and settles rounds now: always with a ledger of its own
    /// (SQLite); with a shared one (PostgreSQL), exactly one of the dispatchers sharing it
    /// does, and another takes over within seconds when it stops or dies
    /// ([`Ledger::lead_rounds`]).
    pub fn leads_rounds(&self) -> bool {
        self.inner.leading.load(Ordering::Relaxed)
    }

    /// Writes to the ledger what waits to be written (the online sessions of the last tick);
    /// call it before a clean stop.
    pub async fn flush(&self) {
        self.flush_sessions().await;
    }

    /// Stops accepting and closes every connection; a dispatcher that closes rounds hands
    /// that over to another sharing its ledger.
    pub fn close(&self) {
        self.inner.ledger.resign_rounds();
        self.inner.leading.store(false, Ordering::Relaxed);
        self.inner.transport.close();
        if let Some(c) = &self.inner.canary {
            c.close();
        }
    }

    /// Until when `node` is excluded from placement for failed validations, if it is now.
    pub fn excluded_until(&self, node: &NodeId) -> Option<u64> {
        self.inner.dispatch.lock().excluded_until(node)
    }

    /// The nodes holding warm replicas of `deployment` now.
    pub fn ready_replicas(&self, deployment: &DeploymentId) -> Vec<NodeId> {
        self.inner
            .dispatch
            .lock()
            .ready_replicas(deployment)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    /// A stored model's bytes, read in chunks; an error above `bytes_max` bytes.
    async fn read_model(&self, model: &ModelId, bytes_max: u64) -> Result<Vec<u8>, String> {
        let blobs = &self.inner.blobs;
        let size = blobs
            .size(model)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("model {model} is not stored"))?;
        if size > bytes_max {
            return Err(format!("model {model} is over {bytes_max} bytes"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).map_err(|e| e.to_string())?);
        while (bytes.len() as u64) < size {
            let len = u32::try_from((size - bytes.len() as u64).min(u64::from(CHUNK_BYTES_MAX)))
                .unwrap_or(CHUNK_BYTES_MAX);
            let chunk = blobs
                .read_range(model, bytes.len() as u64, len)
                .await
                .map_err(|e| e.to_string())?;
            if chunk.is_empty() {
                return Err(format!("model {model} is shorter than its size"));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Runs `f` on the ledger on tokio's blocking pool.
    async fn db<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Ledger) -> Result<R, LedgerError> + Send + 'static,
    ) -> Result<R, Refusal> {
        let ledger = self.inner.ledger.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || f(&*ledger)).await;
        metrics::histogram!(crate::metrics::LEDGER_CALL_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if !matches!(result, Ok(Ok(_))) {
            metrics::counter!(crate::metrics::LEDGER_ERRORS_TOTAL).increment(1);
        }
        result
            .map_err(|e| Refusal::Internal(format!("ledger task failed: {e}")))?
            .map_err(Refusal::Ledger)
    }

    /// Runs until the transport is closed: accepts nodes and clients, ticks the state
    /// machine, closes rounds.
    pub async fn run(&self) -> Result<(), DispatcherError> {
        // Aborted when `run` returns or is dropped (a cancelled run must not leave the
        // ticker holding the dispatcher, and with it the socket, alive).
        let _ticker = AbortOnDrop(tokio::spawn(self.clone().tick_loop()));
        let _settler = AbortOnDrop(tokio::spawn(self.clone().settle_loop()));
        let _canaries = AbortOnDrop(tokio::spawn(self.clone().canary_loop()));
        let _challenges = AbortOnDrop(tokio::spawn(self.clone().hardware_loop()));
        self.announce().await;
        let result = loop {
            tokio::select! {
                accepted = self.inner.transport.accept() => match accepted {
                    Ok(conn) => {
                        tokio::spawn(self.clone().accepted(conn));
                    }
                    Err(e) => break e,
                },
                () = self.inner.superseded.notified() => {
                    tracing::error!("another dispatcher sharing the ledger is the active one; stopping");
                    self.inner.transport.close();
                    return Err(DispatcherError::Superseded);
                }
            }
        };
        tracing::info!(error = %result, "dispatcher stopped accepting");
        Ok(())
    }

    /// Where the dispatchers standing by reach this one: `DispatcherConfig::cluster_addr`,
    /// else the transport's address.
    fn cluster_addr(&self) -> crat_core::id::PeerAddr {
        self.inner
            .config
            .cluster_addr
            .clone()
            .unwrap_or_else(|| self.inner.transport.local_addr())
    }

    /// Records in the ledger, while this dispatcher leads it, where the standbys reach it
    /// ([`crate::cluster`]).
    async fn announce(&self) {
        if !self.inner.leading.load(Ordering::Relaxed) {
            return;
        }
        let addr = self.cluster_addr();
        let shown = addr.clone();
        match self.db(move |l| l.announce_active(&addr)).await {
            Ok(()) => tracing::info!(addr = %shown, "active dispatcher"),
            Err(e) => tracing::warn!(error = ?e, "cannot record where this dispatcher is reached"),
        }
    }

    /// Exchanges a client's connection or a standby's link may have open at once.
    fn exchanges_max(&self) -> u32 {
        u32::try_from(self.inner.config.concurrency_max).unwrap_or(u32::MAX)
    }

    /// Tells a node connection (its first request a registration signed by the
    /// connection's identity) from a client connection, and serves it.
    async fn connection(self, conn: Link<T::Connection>) {
        let max = self.inner.config.frame_limits.control_bytes_max;
        let Ok(mut first) = conn.accept_exchange().await else {
            return;
        };
        let Ok(frame) = first.read_request(max).await else {
            return;
        };
        self.serve_first(conn, first, frame).await;
    }

    /// A connection this dispatcher accepted: a standby's link to it, when the first request
    /// is the cluster key's claim of the connection's identity ([`crate::cluster`]); otherwise
    /// a node's or a client's, served by [`Dispatcher::connection`]'s rules.
    async fn accepted(self, conn: T::Connection) {
        let max = self.inner.config.frame_limits.control_bytes_max;
        let Ok(mut first) = conn.accept_exchange().await else {
            return;
        };
        let Ok(frame) = first.read_request(max).await else {
            return;
        };
        if crate::cluster::is_link(&frame, &self.inner.id, &conn.remote_id()) {
            conn.allow_exchanges(self.exchanges_max());
            respond(first, &crate::cluster::link_accepted(), max).await;
            let me = self.clone();
            serve_link(conn, self.inner.config.frame_limits, move |c| {
                me.clone().connection(c)
            })
            .await;
            return;
        }
        let first = crate::cluster::LinkExchange::Direct(first);
        self.serve_first(Link::Direct(conn), first, frame).await;
    }

    /// Serves a connection whose first request `frame` came in `first`.
    async fn serve_first(
        self,
        conn: Link<T::Connection>,
        first: <Link<T::Connection> as Connection>::Incoming,
        frame: Frame,
    ) {
        let max = self.inner.config.frame_limits.control_bytes_max;
        let remote = conn.remote_id();
        match frame.decode::<NodeRequest>() {
            Ok(NodeRequest::Register(reg)) if reg.signer == remote => {
                let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
                let reply = self
                    .register(&conn, serial, *reg)
                    .await
                    .unwrap_or_else(|e| DispatcherReply::Error(e.into()));
                let registered = matches!(reply, DispatcherReply::Registered { .. });
                metrics::counter!(
                    crate::metrics::REGISTRATIONS_TOTAL,
                    "result" => crate::metrics::reply_result(&reply)
                )
                .increment(1);
                respond(first, &reply, max).await;
                if registered {
                    self.probe_registered(remote, conn.observed_addr());
                    self.node_connection(conn, serial).await;
                    return;
                }
                // Refused: the connection stays open (as a client connection) until the peer
                // closes it; dropping it now would discard the answer still in flight.
            }
            // An operator's tool holding the node's key asks for its standing without
            // registering: answered about the key the handshake proved. The connection then
            // stays open as after a refused registration.
            Ok(NodeRequest::Standing { rounds }) => {
                let reply = match self.standing(remote, rounds).await {
                    Ok(s) => DispatcherReply::Standing(Box::new(s)),
                    Err(e) => DispatcherReply::Error(e.into()),
                };
                respond(first, &reply, max).await;
            }
            // The same, about the node that signed the query (an operator's tool on an
            // endpoint of its own while the node runs).
            Ok(NodeRequest::StandingOf(query)) => {
                let now = self.inner.clock.now_s();
                let reply = match query.verify_query(now) {
                    Ok(q) => match self.standing(q.node, q.rounds).await {
                        Ok(s) => DispatcherReply::Standing(Box::new(s)),
                        Err(e) => DispatcherReply::Error(e.into()),
                    },
                    Err(e) => {
                        DispatcherReply::Error(err(ErrorCode::Unauthenticated, e.to_string()))
                    }
                };
                respond(first, &reply, max).await;
            }
            // `crat node doctor`: can the peer be reached directly at the address its packets
            // come from? Needs no registration (it is only ever about the asker's address).
            Ok(NodeRequest::Reach) => {
                let reply = DispatcherReply::Reach(self.reach(&conn).await);
                respond(first, &reply, max).await;
            }
            _ => {
                let reply = match frame.decode::<ClientRequest>() {
                    Ok(req) => self.handle_remote_client(remote, req).await,
                    Err(e) => DispatcherResponse::Error(err(ErrorCode::BadRequest, e.to_string())),
                };
                respond(first, &reply, max).await;
            }
        }
        // Not a node: a client (or a node's operator tool) may want many exchanges at once.
        conn.allow_exchanges(self.exchanges_max());
        let me = self.clone();
        serve(
            conn,
            Conversation::ClientDispatcher,
            self.inner.config.frame_limits,
            self.inner.config.concurrency_max,
            move |req: ClientRequest| {
                let me = me.clone();
                async move { me.handle_remote_client(remote, req).await }
            },
        )
        .await;
    }
}

/// The acknowledgement book a (re)started dispatcher begins with: the ledger's unsettled
/// pairs, soonest settlement first, up to `capacity`. Those beyond stay in the ledger (a
/// warning says so): their records are held until their windows end, and the ledger's
/// settlement charges them from the acknowledgement (see `acks.rs`).
fn restore_acks(ledger: &dyn Ledger, capacity: usize) -> Result<AckBook, DispatcherError> {
    let mut book = AckBook::new(capacity);
    let limit = u32::try_from(capacity).unwrap_or(u32::MAX - 1);
    let unsettled = ledger.unsettled_acks(limit.saturating_add(1))?;
    let found = unsettled.len();
    let mut beyond = 0usize;
    for a in unsettled {
        if book
            .restore(a.ticket_nonce, a.node, a.entry, a.settle_at_s)
            .is_err()
        {
            beyond += 1;
        }
    }
    if beyond > 0 {
        tracing::warn!(
            capacity,
            beyond,
            "unsettled acknowledgements beyond the book's capacity (at least this many): kept \
             in the ledger, their records held until their windows end, then settled from it"
        );
    }
    tracing::info!(
        pairs = found - beyond,
        "acknowledgements taken back from the ledger"
    );
    Ok(book)
}

/// The model store `config` names: its object store URL, else its models directory.
fn open_blobs(config: &DispatcherConfig) -> Result<Arc<dyn BlobStore>, DispatcherError> {
    let storage = |e: crate::blob::BlobError| DispatcherError::Storage(e.to_string());
    match &config.models_store {
        #[cfg(feature = "object-store")]
        Some(url) => {
            let options: Vec<(&str, &str)> = config
                .models_store_options
                .0
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Ok(Arc::new(
                crate::blob::ObjectBlobStore::from_url_with(url, &options).map_err(storage)?,
            ))
        }
        #[cfg(not(feature = "object-store"))]
        Some(url) => Err(DispatcherError::Config(format!(
            "models store {url}: this build has no object store support (crat-dispatcher \
             feature `object-store`)"
        ))),
        None => Ok(Arc::new(
            LocalBlobStore::open(&config.models_dir).map_err(storage)?,
        )),
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
