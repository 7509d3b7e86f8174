//! Simulated nodes: each a real ed25519 identity on a real QUIC connection to the dispatcher
//! (many connections share one UDP endpoint, each with its own client certificate:
//! [`QuicTransport::connect_as`]), registering with a signed [`Registration`], heartbeating
//! at the interval the dispatcher names and answering its pushes: compute challenges are
//! computed and opened for real ([`ChallengeSpec`], [`RowTree`]), assignments are kept and
//! reported ready. Nothing else of a node (models, inference) runs.
//!
//! Endpoints bind to distinct loopback addresses, one IPv4 /24 each (`127.B.C.1`), so that
//! the dispatcher's per-address-block limits (registrations, operators) see nodes spread over
//! many blocks, as real nodes are.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crat_core::hardware::{CpuInfo, HardwareInfo, PowerRating};
use crat_core::id::{NodeId, PeerAddr};
use crat_core::policy::challenge::{ChallengeSpec, Opening, RowTree};
use crat_core::sign::{BackendInfo, Registration, Signed};
use crat_core::wire::{
    Assignment, CHALLENGE_ROWS_MAX, ChallengeRequest, DispatcherPush, DispatcherReply, ErrorCode,
    Heartbeat, NodeAck, NodeLoad, NodeRequest, ReadyReplica, UsageReport, WireError,
};
use crat_transport::quic::{QuicConfig, QuicConnection, QuicTransport};
use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::LoadError;
use super::stats::{Counter, Errors, Histogram};

/// Challenges a simulated node keeps committed, waiting for their opening.
const CHALLENGES_KEPT_MAX: usize = 4;
/// Assignments a simulated node keeps.
const ASSIGNMENTS_MAX: usize = 16;
/// Largest challenge product computed (elements of `A·B`); larger ones are refused `Busy`
/// (a dispatcher with real-size challenges would need real hardware).
const CHALLENGE_ELEMENTS_MAX: u64 = 1 << 22;
/// Pushes a simulated node answers at once.
const PUSHES_CONCURRENT_MAX: usize = 4;
/// Joining counts as stalled when, over this long, fewer nodes finished joining than
/// [`STALL_SHARE_PCT`] of the asked rate would have.
const STALL_WINDOW: Duration = Duration::from_secs(30);
/// See [`STALL_WINDOW`].
const STALL_SHARE_PCT: u64 = 10;
/// How often joining prints its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// How the fleet joins.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Simulated nodes.
    pub nodes: usize,
    /// Nodes sharing one UDP endpoint (and one /24 block).
    pub nodes_per_endpoint: usize,
    /// New connections and registrations per second.
    pub join_rate_per_s: u32,
    /// Handshakes and registrations in flight at once (below the dispatcher's handshake
    /// limit, 64 by default).
    pub joins_concurrent_max: usize,
    /// Joining stops when the machine's available memory (`MemAvailable`) falls below this,
    /// so that a run too big for the machine ends in a measurement rather than the OOM killer
    /// (the machine may be shared).
    pub memory_available_min_bytes: u64,
}

/// Nodes launched between two looks at the available memory.
const MEMORY_CHECK_EVERY: usize = 100;

/// The machine's available memory (`MemAvailable` of `/proc/meminfo`), bytes.
pub fn memory_available_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// What the fleet saw.
#[derive(Default)]
pub struct FleetStats {
    /// Registration round trips (handshake excluded).
    pub register: Histogram,
    /// Heartbeat round trips.
    pub heartbeat: Histogram,
    /// Usage report round trips.
    pub usage: Histogram,
    /// Nodes registered.
    pub registered: Counter,
    /// Registrations refused (the dispatcher's answer).
    pub register_refused: Counter,
    /// Connections or registrations that failed on the transport.
    pub connect_failed: Counter,
    /// Heartbeats acknowledged.
    pub heartbeats_ok: Counter,
    /// Heartbeats refused with an error.
    pub heartbeats_refused: Counter,
    /// Heartbeats lost on the transport.
    pub heartbeats_failed: Counter,
    /// Connections that ended after registering.
    pub connections_lost: Counter,
    /// Challenges committed.
    pub challenges_committed: Counter,
    /// Challenge rows opened.
    pub challenges_opened: Counter,
    /// Challenges refused (unknown id, too large).
    pub challenges_refused: Counter,
    /// Assignments pushed.
    pub assignments: Counter,
    /// Nodes launched (joining or joined).
    pub launched: Counter,
    /// Why joining stopped before every node was launched.
    pub join_stopped: Mutex<Option<String>>,
    joiner_done: std::sync::atomic::AtomicBool,
    errors: Errors,
}

impl FleetStats {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.record(what, e);
    }

    /// The first distinct errors seen.
    pub fn errors(&self) -> Vec<String> {
        self.errors.list()
    }
}

/// One simulated node.
pub struct SimNode {
    key: SigningKey,
    /// Its id.
    pub id: NodeId,
    conn: Mutex<Option<QuicConnection>>,
    challenges: Mutex<VecDeque<(u64, ChallengeSpec, RowTree)>>,
    assignments: Mutex<Vec<Assignment>>,
}

impl SimNode {
    /// Its connection to the dispatcher, once connected.
    pub fn conn(&self) -> Option<QuicConnection> {
        self.conn.lock().clone()
    }

    /// Whether it serves `deployment`.
    pub fn serves(&self, deployment: &crat_core::id::DeploymentId) -> bool {
        self.assignments
            .lock()
            .iter()
            .any(|a| a.deployment == *deployment)
    }

    /// Sends a usage report, timing it into `stats.usage`.
    pub async fn report_usage(
        &self,
        report: UsageReport,
        stats: &FleetStats,
    ) -> Result<DispatcherReply, LoadError> {
        let conn = self.conn().ok_or(LoadError::NotConnected)?;
        let started = Instant::now();
        let reply = conn
            .call::<_, DispatcherReply>(
                &NodeRequest::Usage(report),
                Conversation::NodeDispatcher,
                FrameLimits::default(),
            )
            .await?;
        stats.usage.record(started.elapsed());
        Ok(reply)
    }

    fn set_assignments(&self, list: Vec<Assignment>) {
        let mut mine = self.assignments.lock();
        *mine = list;
        mine.truncate(ASSIGNMENTS_MAX);
    }

    fn heartbeat(&self, seq: u64) -> Heartbeat {
        let assigned = self.assignments.lock();
        Heartbeat {
            seq,
            load: NodeLoad {
                inflight: 0,
                queued: 0,
                utilisation_bps: crat_core::bps::Bps::ZERO,
            },
            loaded_models: assigned.iter().map(|a| a.model).collect(),
            ready: assigned
                .iter()
                .map(|a| ReadyReplica {
                    deployment: a.deployment,
                    model: a.model,
                })
                .collect(),
        }
    }

    fn commit(&self, req: &ChallengeRequest, stats: &FleetStats) -> NodeAck {
        let elements = u64::from(req.n) * u64::from(req.m);
        let work = elements.saturating_mul(u64::from(req.k));
        if work > CHALLENGE_ELEMENTS_MAX.saturating_mul(64) {
            stats.challenges_refused.add(1);
            return NodeAck::Error(WireError::new(
                ErrorCode::Busy,
                "challenge too large for a simulated node",
            ));
        }
        let built = ChallengeSpec::new(req.seed, req.n, req.k, req.m).and_then(|spec| {
            let tree = RowTree::build(&spec.product(), spec.m())?;
            Ok((spec, tree))
        });
        match built {
            Ok((spec, tree)) => {
                let root = tree.root();
                let mut kept = self.challenges.lock();
                while kept.len() >= CHALLENGES_KEPT_MAX {
                    kept.pop_front();
                }
                kept.push_back((req.id, spec, tree));
                stats.challenges_committed.add(1);
                NodeAck::Committed { id: req.id, root }
            }
            Err(e) => {
                stats.challenges_refused.add(1);
                NodeAck::Error(WireError::new(ErrorCode::BadRequest, e.to_string()))
            }
        }
    }

    fn open(&self, id: u64, rows: &[u32], stats: &FleetStats) -> NodeAck {
        let kept = {
            let mut all = self.challenges.lock();
            all.iter()
                .position(|(i, _, _)| *i == id)
                .and_then(|i| all.remove(i))
        };
        let Some((_, spec, tree)) = kept else {
            stats.challenges_refused.add(1);
            return NodeAck::Error(WireError::new(
                ErrorCode::NotFound,
                format!("challenge {id}"),
            ));
        };
        let opened: Result<Vec<_>, _> = rows
            .iter()
            .take(CHALLENGE_ROWS_MAX)
            .map(|&row| {
                Ok::<_, crat_core::policy::challenge::ChallengeError>(
                    Opening {
                        row,
                        path: tree.path(row)?,
                        values: spec.product_row(row),
                    }
                    .to_wire(),
                )
            })
            .collect();
        match opened {
            Ok(rows) => {
                stats.challenges_opened.add(1);
                NodeAck::Opened { id, rows }
            }
            Err(e) => {
                stats.challenges_refused.add(1);
                NodeAck::Error(WireError::new(ErrorCode::BadRequest, e.to_string()))
            }
        }
    }

    fn push(&self, push: DispatcherPush, stats: &FleetStats) -> NodeAck {
        match push {
            DispatcherPush::Assign(a) => {
                stats.assignments.add(1);
                let mut mine = self.assignments.lock();
                mine.retain(|x| x.deployment != a.deployment);
                if mine.len() < ASSIGNMENTS_MAX {
                    mine.push(a);
                }
                NodeAck::Ok
            }
            DispatcherPush::Unassign { deployment } => {
                self.assignments
                    .lock()
                    .retain(|x| x.deployment != deployment);
                NodeAck::Ok
            }
            DispatcherPush::Demand(_) => NodeAck::Ok,
            DispatcherPush::Challenge(req) => self.commit(&req, stats),
            DispatcherPush::OpenRows { id, rows } => self.open(id, &rows, stats),
        }
    }
}

/// The simulated nodes and their endpoints.
pub struct Fleet {
    /// The nodes, in join order.
    pub nodes: Vec<Arc<SimNode>>,
    /// What they saw.
    pub stats: Arc<FleetStats>,
    endpoints: Vec<Arc<QuicTransport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    joiner: Option<tokio::task::JoinHandle<()>>,
}

/// The loopback address of endpoint `index`: `127.B.C.1`, one /24 block each, from
/// 127.1.0.1 on.
fn endpoint_ip(index: usize) -> Ipv4Addr {
    let block = index + 256; // 127.1.0.0/24 onwards
    Ipv4Addr::new(127, ((block >> 8) & 0xff) as u8, (block & 0xff) as u8, 1)
}

impl Fleet {
    /// Binds the endpoints and starts joining `config.nodes` nodes to the dispatcher at `addr`
    /// (identity `id`) in the background, at `config.join_rate_per_s`. Must run inside a tokio
    /// runtime.
    pub fn start(config: &FleetConfig, addr: SocketAddr, id: NodeId) -> Result<Self, LoadError> {
        let per = config.nodes_per_endpoint.max(1);
        let endpoint_count = config.nodes.div_ceil(per);
        if endpoint_count > 60_000 {
            return Err(LoadError::Config(format!(
                "{endpoint_count} endpoints: more than the loopback blocks used"
            )));
        }
        let quic = QuicConfig {
            // The dispatcher opens at most a few exchanges at once on a node's connection
            // (pushes), answered PUSHES_CONCURRENT_MAX at a time: QUIC keeps state for every
            // stream a peer may open (20 KB per connection at the default 256).
            streams_concurrent_max: 2 * PUSHES_CONCURRENT_MAX as u32,
            // Many connections share a socket: the default 4 MiB buffers per socket are
            // plenty, and only small frames travel.
            ..QuicConfig::default()
        };
        let mut endpoints = Vec::with_capacity(endpoint_count);
        for i in 0..endpoint_count {
            let key = SigningKey::from_bytes(&rand::random());
            let bind = SocketAddr::from((endpoint_ip(i), 0));
            let t = QuicTransport::bind(bind, &key, quic.clone())
                .map_err(|e| LoadError::Fleet(format!("binding endpoint {i} at {bind}: {e}")))?;
            endpoints.push(Arc::new(t));
        }
        let nodes: Vec<Arc<SimNode>> = (0..config.nodes)
            .map(|_| {
                let key = SigningKey::from_bytes(&rand::random());
                Arc::new(SimNode {
                    id: NodeId::from_key(&key.verifying_key()),
                    key,
                    conn: Mutex::new(None),
                    challenges: Mutex::new(VecDeque::new()),
                    assignments: Mutex::new(Vec::new()),
                })
            })
            .collect();
        let stats = Arc::new(FleetStats::default());
        let joiner = {
            let nodes = nodes.clone();
            let endpoints = endpoints.clone();
            let stats = stats.clone();
            let rate = config.join_rate_per_s.max(1);
            let permits = Arc::new(Semaphore::new(config.joins_concurrent_max.max(1)));
            let floor = config.memory_available_min_bytes;
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for (i, node) in nodes.into_iter().enumerate() {
                    tick.tick().await;
                    if i % MEMORY_CHECK_EVERY == 0
                        && let Some(available) = memory_available_bytes()
                        && available < floor
                    {
                        *stats.join_stopped.lock() = Some(format!(
                            "joining stopped after {i} nodes: the machine's available memory \
                             (MemAvailable) is {} MiB, below the floor of {} MiB",
                            available >> 20,
                            floor >> 20
                        ));
                        break;
                    }
                    stats.launched.add(1);
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let endpoint = endpoints[i / per].clone();
                    let stats = stats.clone();
                    tokio::spawn(run_node(node, endpoint, addr, id, stats, permit));
                }
                stats
                    .joiner_done
                    .store(true, std::sync::atomic::Ordering::Release);
            })
        };
        Ok(Self {
            nodes,
            stats,
            endpoints,
            tasks: Vec::new(),
            joiner: Some(joiner),
        })
    }

    /// Endpoints (UDP sockets) in use.
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// Waits until every node registered or failed, `timeout` passed, or joining stalled
    /// (then it stops launching nodes and says so in `stats.join_stopped`); returns whether
    /// all registered.
    pub async fn joined(&mut self, timeout: Duration, join_rate_per_s: u32) -> bool {
        let deadline = Instant::now() + timeout;
        let total = self.nodes.len() as u64;
        let mut progress = Instant::now();
        let mut window = (Instant::now(), 0u64);
        let stall_min = u64::from(join_rate_per_s) * STALL_WINDOW.as_secs() * STALL_SHARE_PCT / 100;
        loop {
            let s = &self.stats;
            let done = s.registered.get() + s.register_refused.get() + s.connect_failed.get();
            let stopped = s.joiner_done.load(std::sync::atomic::Ordering::Acquire)
                && done >= s.launched.get();
            if done >= total || stopped || Instant::now() >= deadline {
                return s.registered.get() == total;
            }
            if window.0.elapsed() >= STALL_WINDOW {
                if done - window.1 < stall_min {
                    if let Some(j) = self.joiner.take() {
                        j.abort();
                    }
                    *s.join_stopped.lock() = Some(format!(
                        "joining stalled: {} nodes finished joining in the last {} s (asked \
                         {join_rate_per_s}/s); stopped launching at {} launched, {} registered, \
                         {} failed",
                        done - window.1,
                        STALL_WINDOW.as_secs(),
                        s.launched.get(),
                        s.registered.get(),
                        s.connect_failed.get()
                    ));
                    return false;
                }
                window = (Instant::now(), done);
            }
            if progress.elapsed() >= PROGRESS_INTERVAL {
                progress = Instant::now();
                eprintln!(
                    "joining: {} of {total} registered, {} refused, {} failed; heartbeats {} ok, \
                     {} refused, {} lost",
                    s.registered.get(),
                    s.register_refused.get(),
                    s.connect_failed.get(),
                    s.heartbeats_ok.get(),
                    s.heartbeats_refused.get(),
                    s.heartbeats_failed.get()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Closes every connection and endpoint.
    pub fn stop(&mut self) {
        if let Some(j) = self.joiner.take() {
            j.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for n in &self.nodes {
            if let Some(c) = n.conn.lock().take() {
                c.close("load test over");
            }
        }
        for e in &self.endpoints {
            e.close();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One node's life: connect, register (holding a join permit), then heartbeat until the
/// connection ends.
async fn run_node(
    node: Arc<SimNode>,
    endpoint: Arc<QuicTransport>,
    addr: SocketAddr,
    dispatcher: NodeId,
    stats: Arc<FleetStats>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let peer = PeerAddr::from(addr);
    let conn = match endpoint.connect_as(&peer, &dispatcher, &node.key).await {
        Ok(c) => c,
        Err(e) => {
            stats.connect_failed.add(1);
            stats.error("connect", e);
            return;
        }
    };
    *node.conn.lock() = Some(conn.clone());
    let pushes = {
        let node = node.clone();
        let stats = stats.clone();
        tokio::spawn(serve(
            conn.clone(),
            Conversation::NodeDispatcher,
            FrameLimits::default(),
            PUSHES_CONCURRENT_MAX,
            move |push: DispatcherPush| {
                let node = node.clone();
                let stats = stats.clone();
                async move { node.push(push, &stats) }
            },
        ))
    };
    let listen = PeerAddr::from(endpoint.socket_addr());
    let registration = Signed::sign(
        Registration {
            node: node.id,
            hardware: HardwareInfo {
                gpus: Vec::new(),
                cpu: CpuInfo {
                    model: "crat load test".into(),
                    cores: 8,
                    memory_bytes: 16 << 30,
                },
            },
            rating: PowerRating::MIN,
            backends: vec![BackendInfo {
                name: "tract".into(),
                execution_provider: "cpu".into(),
            }],
            listen_addrs: vec![listen],
            model_bytes_max: 8 << 30,
            issued_at_s: crate::load::now_s(),
            nonce: rand::random(),
        },
        &node.key,
    );
    let started = Instant::now();
    let answer = conn
        .call::<_, DispatcherReply>(
            &NodeRequest::Register(Box::new(registration)),
            Conversation::NodeDispatcher,
            FrameLimits::default(),
        )
        .await;
    drop(permit);
    let interval = match answer {
        Ok(DispatcherReply::Registered {
            heartbeat_interval_ms,
            assignments,
            ..
        }) => {
            stats.register.record(started.elapsed());
            stats.registered.add(1);
            node.set_assignments(assignments);
            Duration::from_millis(u64::from(heartbeat_interval_ms.max(10)))
        }
        Ok(other) => {
            stats.register_refused.add(1);
            stats.error("registration", format!("{other:?}"));
            conn.close("registration refused");
            pushes.abort();
            return;
        }
        Err(e) => {
            stats.connect_failed.add(1);
            stats.error("registration", e);
            conn.close("registration failed");
            pushes.abort();
            return;
        }
    };
    for seq in 1u64.. {
        // As `crat node` does: the interval after each answer, so a slow dispatcher sees no
        // catch-up bursts.
        tokio::time::sleep(interval).await;
        let started = Instant::now();
        let answer = conn
            .call::<_, DispatcherReply>(
                &NodeRequest::Heartbeat(node.heartbeat(seq)),
                Conversation::NodeDispatcher,
                FrameLimits::default(),
            )
            .await;
        match answer {
            Ok(DispatcherReply::HeartbeatAck { assignments, .. }) => {
                stats.heartbeat.record(started.elapsed());
                stats.heartbeats_ok.add(1);
                node.set_assignments(assignments);
            }
            Ok(other) => {
                stats.heartbeat.record(started.elapsed());
                stats.heartbeats_refused.add(1);
                stats.error("heartbeat", format!("{other:?}"));
            }
            Err(e) => {
                stats.heartbeats_failed.add(1);
                stats.error("heartbeat", &e);
                if matches!(e, crat_transport::TransportError::Closed(_)) {
                    stats.connections_lost.add(1);
                    break;
                }
            }
        }
    }
    pushes.abort();
}
