//! Test harness: a scripted fake dispatcher (client side and node side) over the in-memory
//! transport, real `crat-node` nodes with the tract backend, and a clock driven by hand.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crat_backend::InferenceBackend;
use crat_backend::tract::TractBackend;
use crat_core::bps::Bps;
use crat_core::clock::Clock;
use crat_core::hardware::CpuInfo;
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr, SdkKey};
use crat_core::money::{Credits, MicroUsd};
use crat_core::pricing::{DeployPlan, PriceQuote, TaskPrice};
use crat_core::sign::{Signed, Ticket};
use crat_core::tensor::Tensor;
use crat_core::wire::{
    Assignment, ClientCall, ClientRequest, Demand, DeploymentInfo, DeploymentState,
    DispatcherReply, DispatcherResponse, ErrorCode, KeyInfo, KeyStatus, Lease, NodeRequest,
    Replica, ReplicaState, UsageRecord, WireError,
};
use crat_node::batch::BatchConfig;
use crat_node::cache::{ModelCache, ModelStore};
use crat_node::probe::{FakeProbe, HardwareProbe};
use crat_node::runtime::{BatchSizing, Node, NodeConfig, NodeParts};
use crat_sdk::{Client, ClientConfig};
use crat_transport::memory::{MemoryConnection, MemoryNetwork, MemoryTransport};
use crat_transport::{Connection, Conversation, FrameLimits, Transport, TransportError, serve};
use ed25519_dalek::SigningKey;

pub const TINY: &[u8] = include_bytes!("../../../backend/models/tiny_cnn.onnx");
pub const NOW: u64 = 1_000_000;
pub const CLIENT_ADDR: &str = "mem:dispatcher";
pub const NODE_SIDE_ADDR: &str = "mem:dispatcher-nodes";

/// A clock both the nodes and the SDK read; tests move it by hand.
pub struct TestClock(pub AtomicU64);

impl TestClock {
    pub fn advance(&self, s: u64) {
        self.0.fetch_add(s, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_s(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn sdk_key() -> SdkKey {
    SdkKey {
        id: KeyId::from_bytes([7; 16]),
        secret: [8; 32],
    }
}

pub fn dispatcher_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

pub fn dispatcher_id() -> NodeId {
    NodeId::from_key(&dispatcher_key().verifying_key())
}

/// How the next lease is spoilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseFault {
    /// The ticket names no replica: every node refuses it.
    WrongAudience,
}

pub struct Upload {
    pub total: u64,
    pub data: Vec<u8>,
    pub have: Vec<bool>,
}

impl Upload {
    pub fn contiguous(&self, chunk: u64) -> u64 {
        let n = self.have.iter().take_while(|h| **h).count() as u64;
        (n * chunk).min(self.total)
    }
}

pub struct FakeState {
    pub uploads: HashMap<ModelId, Upload>,
    pub models: HashMap<ModelId, Vec<u8>>,
    /// Offsets of every chunk received, in arrival order.
    pub chunk_log: Vec<u64>,
    /// Chunks at these offsets fail once with `Internal`.
    pub fail_chunks: HashSet<u64>,
    pub deployments: HashMap<DeploymentId, (ModelId, DeployPlan, bool)>,
    pub ready: HashMap<DeploymentId, Vec<NodeId>>,
    /// Registered nodes, in order.
    pub nodes: Vec<Replica>,
    pub usage: Vec<(NodeId, UsageRecord)>,
    pub balance: Credits,
    pub leases_issued: u32,
    /// Acknowledgements the client sent.
    pub acks: Vec<crat_core::policy::acks::AckProof>,
    /// Input shapes the client told, per deployment.
    pub shapes: Vec<(DeploymentId, crat_core::wire::ShapeCount)>,
    /// Nodes reported for answers without a valid receipt.
    pub no_receipt_reports: Vec<NodeId>,
    pub lease_faults: VecDeque<LeaseFault>,
    pub ticket_lifetime_s: u64,
    pub replicas_wanted: u32,
    next_deployment: u8,
}

pub struct Fake {
    pub state: Mutex<FakeState>,
    pub clock: Arc<TestClock>,
    pub chunk_bytes_max: u32,
}

impl Fake {
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn err(code: ErrorCode, m: impl Into<String>) -> DispatcherResponse {
        DispatcherResponse::Error(WireError::new(code, m))
    }

    fn info(&self, s: &FakeState, id: DeploymentId) -> Option<DeploymentInfo> {
        let (model, plan, stopped) = s.deployments.get(&id)?;
        let ready = s.ready.get(&id).map_or(0, Vec::len) as u32;
        Some(DeploymentInfo {
            id,
            model: *model,
            plan: *plan,
            state: if *stopped {
                DeploymentState::Stopped
            } else if ready >= s.replicas_wanted {
                DeploymentState::Ready
            } else {
                DeploymentState::Pending
            },
            replicas_ready: ready,
            replicas_on_model: ready,
            updates: 0,
            next_update_at_s: None,
            replicas_wanted: s.replicas_wanted,
            price: quote(),
            allowance_left: Credits::ZERO,
            verifiability: crat_core::wire::Verifiability::Verifiable,
            failure: None,
            shortfall: None,
            signature: None,
        })
    }

    /// Answers `req` from the client with transport identity `client`.
    pub fn handle_client(&self, client: NodeId, req: ClientRequest) -> DispatcherResponse {
        if req.key != sdk_key() {
            return Self::err(ErrorCode::Unauthenticated, "unknown key");
        }
        let chunk = u64::from(self.chunk_bytes_max);
        let mut s = self.state();
        match req.call {
            ClientCall::UploadBegin { model, total_bytes } => {
                if s.models.contains_key(&model) {
                    return DispatcherResponse::ModelStored {
                        model,
                        bytes: total_bytes,
                    };
                }
                let up = s.uploads.entry(model).or_insert_with(|| Upload {
                    total: total_bytes,
                    data: vec![0; total_bytes as usize],
                    have: vec![false; total_bytes.div_ceil(chunk) as usize],
                });
                DispatcherResponse::Upload {
                    received_bytes: up.contiguous(chunk),
                    total_bytes,
                    chunk_bytes_max: self.chunk_bytes_max,
                }
            }
            ClientCall::UploadChunk {
                model,
                offset,
                data,
            } => {
                s.chunk_log.push(offset);
                if s.fail_chunks.remove(&offset) {
                    return Self::err(ErrorCode::Internal, "disk hiccup");
                }
                let Some(up) = s.uploads.get_mut(&model) else {
                    return Self::err(ErrorCode::NotFound, "no such upload");
                };
                let end = offset + data.len() as u64;
                if offset % chunk != 0
                    || end > up.total
                    || (data.len() as u64 != chunk && end != up.total)
                {
                    return Self::err(ErrorCode::BadRequest, "unaligned chunk");
                }
                up.data[offset as usize..end as usize].copy_from_slice(&data);
                up.have[(offset / chunk) as usize] = true;
                DispatcherResponse::Upload {
                    received_bytes: up.contiguous(chunk),
                    total_bytes: up.total,
                    chunk_bytes_max: self.chunk_bytes_max,
                }
            }
            ClientCall::UploadFinish { model } => {
                let Some(up) = s.uploads.get(&model) else {
                    return Self::err(ErrorCode::NotFound, "no such upload");
                };
                if !up.have.iter().all(|h| *h) {
                    return Self::err(ErrorCode::BadRequest, "chunks missing");
                }
                if ModelId::of_bytes(&up.data) != model {
                    return Self::err(ErrorCode::ModelRejected, "hash mismatch");
                }
                let up = s.uploads.remove(&model).unwrap();
                let bytes = up.total;
                s.models.insert(model, up.data);
                DispatcherResponse::ModelStored { model, bytes }
            }
            ClientCall::Quote { model, .. } => {
                if !s.models.contains_key(&model) {
                    return Self::err(ErrorCode::NotFound, "no such model");
                }
                DispatcherResponse::Quote(quote())
            }
            ClientCall::Deploy { model, plan } => {
                if !s.models.contains_key(&model) {
                    return Self::err(ErrorCode::NotFound, "no such model");
                }
                let cost = match plan {
                    DeployPlan::PerRequest(p) => p.credit_allowance,
                    DeployPlan::PerInstance(_) => Credits::new(100),
                };
                let Some(left) = s.balance.checked_sub(cost) else {
                    return Self::err(
                        ErrorCode::InsufficientCredits,
                        format!("{cost} needed, {} left", s.balance),
                    );
                };
                s.balance = left;
                s.next_deployment += 1;
                let id = DeploymentId::from_bytes([s.next_deployment; 16]);
                s.deployments.insert(id, (model, plan, false));
                DispatcherResponse::Deployment(self.info(&s, id).unwrap())
            }
            ClientCall::UpdateModel { .. } => Self::err(
                ErrorCode::BadRequest,
                "this test dispatcher does not update models (crates/testnet tests them)",
            ),
            ClientCall::Deployment { deployment } => match self.info(&s, deployment) {
                Some(i) => DispatcherResponse::Deployment(i),
                None => Self::err(ErrorCode::NotFound, "no such deployment"),
            },
            ClientCall::Undeploy { deployment } => match s.deployments.get_mut(&deployment) {
                Some(d) => {
                    d.2 = true;
                    DispatcherResponse::Ok
                }
                None => Self::err(ErrorCode::NotFound, "no such deployment"),
            },
            ClientCall::Lease { deployment } => {
                if !s.deployments.contains_key(&deployment) {
                    return Self::err(ErrorCode::NotFound, "no such deployment");
                }
                let ready = s.ready.get(&deployment).cloned().unwrap_or_default();
                let replicas: Vec<Replica> = s
                    .nodes
                    .iter()
                    .filter(|r| ready.contains(&r.node))
                    .cloned()
                    .collect();
                let mut audience: Vec<NodeId> = replicas.iter().map(|r| r.node).collect();
                if s.lease_faults.pop_front() == Some(LeaseFault::WrongAudience) {
                    audience = vec![NodeId::from_bytes([99; 32])];
                }
                s.leases_issued += 1;
                let now = self.clock.now_s();
                let mut nonce = [0; 16];
                nonce[..4].copy_from_slice(&s.leases_issued.to_le_bytes());
                let ticket = Signed::sign(
                    Ticket {
                        deployment,
                        key: req.key.id,
                        credit_budget: Credits::new(1_000_000),
                        issued_at_s: now,
                        expires_at_s: now + s.ticket_lifetime_s,
                        nonce,
                        audience,
                        client,
                        price: TaskPrice::FREE,
                    },
                    &dispatcher_key(),
                );
                DispatcherResponse::Lease(Lease {
                    replicas,
                    ticket,
                    validation_bps: Bps::ZERO,
                })
            }
            ClientCall::Balance => DispatcherResponse::Balance(s.balance),
            ClientCall::ReportValidation(_) => DispatcherResponse::Ok,
            ClientCall::Acknowledge(proofs) => {
                s.acks.extend(proofs);
                DispatcherResponse::Ok
            }
            ClientCall::SetModelPublic { .. } => DispatcherResponse::Ok,
            ClientCall::ReportNoReceipt { node, .. } => {
                s.no_receipt_reports.push(node);
                DispatcherResponse::Ok
            }
            ClientCall::InputShapes { deployment, shapes } => {
                s.shapes.extend(shapes.into_iter().map(|c| (deployment, c)));
                DispatcherResponse::Ok
            }
            ClientCall::KeyStatus => DispatcherResponse::Key(KeyInfo {
                id: req.key.id,
                status: KeyStatus::Active,
                created_at_s: NOW - 100,
                expires_at_s: None,
            }),
            ClientCall::RelayAccess { .. } => DispatcherResponse::RelayAccess { allowed: false },
        }
    }

    fn assignments(&self, s: &FakeState) -> Vec<Assignment> {
        let mut out: Vec<Assignment> = s
            .deployments
            .iter()
            .filter(|(_, (_, _, stopped))| !stopped)
            .map(|(id, (model, plan, _))| Assignment {
                deployment: *id,
                model: *model,
                model_bytes: s.models[model].len() as u64,
                max_input_bytes: plan.max_input_bytes(),
                rate_per_s: None,
            })
            .collect();
        out.sort_by_key(|a| a.deployment);
        out
    }

    pub fn handle_node(&self, node: NodeId, req: NodeRequest) -> DispatcherReply {
        let mut s = self.state();
        match req {
            NodeRequest::Register(r) => {
                let body = &r.body;
                assert_eq!(body.node, node);
                s.nodes.retain(|n| n.node != node);
                s.nodes.push(Replica {
                    node,
                    addrs: body.listen_addrs.clone(),
                    operator: u64::from(node.as_bytes()[0]),
                    direct: None,
                });
                DispatcherReply::Registered {
                    dispatcher: dispatcher_id(),
                    heartbeat_interval_ms: 50,
                    assignments: self.assignments(&s),
                }
            }
            NodeRequest::Heartbeat(_) => DispatcherReply::HeartbeatAck {
                demand: Demand {
                    level_bps: Bps(9_000),
                },
                assignments: self.assignments(&s),
            },
            NodeRequest::FetchModel { model, offset, len } => {
                let Some(bytes) = s.models.get(&model) else {
                    return DispatcherReply::Error(WireError::new(ErrorCode::NotFound, "no"));
                };
                let start = offset as usize;
                let end = (start + len as usize).min(bytes.len());
                DispatcherReply::ModelChunk {
                    offset,
                    total_bytes: bytes.len() as u64,
                    data: bytes[start..end].to_vec(),
                }
            }
            NodeRequest::ReplicaState {
                deployment, state, ..
            } => {
                if state == ReplicaState::Ready {
                    let ready = s.ready.entry(deployment).or_default();
                    if !ready.contains(&node) {
                        ready.push(node);
                    }
                }
                DispatcherReply::Ok
            }
            NodeRequest::Usage(report) => {
                let n = report.records.len() as u32;
                s.usage
                    .extend(report.records.into_iter().map(|r| (node, r)));
                DispatcherReply::UsageAck {
                    accepted: n,
                    duplicates: 0,
                    held: vec![],
                }
            }
            // This fake keeps no books.
            NodeRequest::Standing { .. } | NodeRequest::StandingOf(_) => DispatcherReply::Error(
                WireError::new(ErrorCode::NotFound, "the fake dispatcher keeps no standing"),
            ),
            NodeRequest::Reach => DispatcherReply::Error(WireError::new(
                ErrorCode::NotFound,
                "the fake dispatcher probes nothing",
            )),
        }
    }
}

pub fn quote() -> PriceQuote {
    PriceQuote {
        upfront: Credits::new(100),
        per_request_max: Credits::new(3),
        capacity: Credits::ZERO,
        updates: Credits::ZERO,
        credit_price_usd_micro: MicroUsd::new(1_000),
    }
}

/// The fake dispatcher on `net`: clients at [`CLIENT_ADDR`], nodes at [`NODE_SIDE_ADDR`].
pub fn start_dispatcher(
    net: &MemoryNetwork,
    clock: Arc<TestClock>,
    chunk_bytes_max: u32,
) -> Arc<Fake> {
    let fake = Arc::new(Fake {
        state: Mutex::new(FakeState {
            uploads: HashMap::new(),
            models: HashMap::new(),
            chunk_log: Vec::new(),
            fail_chunks: HashSet::new(),
            deployments: HashMap::new(),
            ready: HashMap::new(),
            nodes: Vec::new(),
            usage: Vec::new(),
            balance: Credits::new(1_000_000),
            leases_issued: 0,
            acks: Vec::new(),
            shapes: Vec::new(),
            no_receipt_reports: Vec::new(),
            lease_faults: VecDeque::new(),
            ticket_lifetime_s: 600,
            replicas_wanted: 1,
            next_deployment: 0,
        }),
        clock,
        chunk_bytes_max,
    });
    let clients = net.bind(CLIENT_ADDR, dispatcher_id()).unwrap();
    let nodes = net.bind(NODE_SIDE_ADDR, dispatcher_id()).unwrap();
    let f = fake.clone();
    tokio::spawn(async move {
        while let Ok(conn) = clients.accept().await {
            let f = f.clone();
            let client = conn.remote_id();
            tokio::spawn(serve(
                conn,
                Conversation::ClientDispatcher,
                FrameLimits::default(),
                64,
                move |req: ClientRequest| {
                    let answer = f.handle_client(client, req);
                    async move { answer }
                },
            ));
        }
    });
    let f = fake.clone();
    tokio::spawn(async move {
        while let Ok(conn) = nodes.accept().await {
            let f = f.clone();
            let node = conn.remote_id();
            tokio::spawn(serve(
                conn,
                Conversation::NodeDispatcher,
                FrameLimits::default(),
                16,
                move |req: NodeRequest| {
                    let answer = f.handle_node(node, req);
                    async move { answer }
                },
            ));
        }
    });
    fake
}

/// A memory transport shared with the test, so the test can close it under a running node.
pub struct SharedTransport(pub Arc<MemoryTransport>);

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// `Transport` is an `async_trait` trait; this is its desugared form (the SDK has no
// async-trait dependency).
impl Transport for SharedTransport {
    type Connection = MemoryConnection;

    fn local_id(&self) -> NodeId {
        self.0.local_id()
    }

    fn local_addr(&self) -> PeerAddr {
        self.0.local_addr()
    }

    fn connect<'a, 'b, 'c, 'async_trait>(
        &'a self,
        addr: &'b PeerAddr,
        expected: &'c NodeId,
    ) -> BoxFut<'async_trait, Result<MemoryConnection, TransportError>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        Self: 'async_trait,
    {
        self.0.connect(addr, expected)
    }

    fn accept<'a, 'async_trait>(
        &'a self,
    ) -> BoxFut<'async_trait, Result<MemoryConnection, TransportError>>
    where
        'a: 'async_trait,
        Self: 'async_trait,
    {
        self.0.accept()
    }

    fn close(&self) {
        self.0.close();
    }
}

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A real node (tract backend) on `net` at `mem:node{n}`.
pub struct TestNode {
    pub id: NodeId,
    pub node: Node<SharedTransport>,
    transport: Arc<MemoryTransport>,
    run: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl TestNode {
    pub fn start(net: &MemoryNetwork, clock: Arc<TestClock>, n: u8) -> Self {
        let key = SigningKey::from_bytes(&[10 + n; 32]);
        let id = NodeId::from_key(&key.verifying_key());
        let addr = format!("mem:node{n}");
        let transport = Arc::new(net.bind(&addr, id).unwrap());
        let dir = std::env::temp_dir().join(format!(
            "crat-sdk-test-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let backend: Arc<dyn InferenceBackend> = Arc::new(TractBackend::new());
        let mut config = NodeConfig::new(
            NODE_SIDE_ADDR.parse().unwrap(),
            dispatcher_id(),
            addr.parse().unwrap(),
        );
        config.batch_sizing = BatchSizing::Fixed(8);
        config.batch = BatchConfig {
            queue_delay_us_max: 2_000,
            ..BatchConfig::default()
        };
        config.usage_flush_ms = 50;
        let cpu = CpuInfo {
            model: "test".into(),
            cores: 2,
            memory_bytes: 1 << 30,
        };
        let node = Node::new(
            NodeParts {
                key,
                transport: SharedTransport(transport.clone()),
                cache: ModelCache::new(backend, 1 << 30),
                store: ModelStore::open(&dir, 1 << 30).unwrap(),
                hardware: FakeProbe::new(vec![], cpu).probe(),
                idle: None,
                clock,
            },
            config,
        );
        let run = tokio::spawn({
            let node = node.clone();
            async move {
                let _ = node.run().await;
            }
        });
        Self {
            id,
            node,
            transport,
            run,
            dir,
        }
    }

    /// The node dies: its endpoint closes (every connection fails, dialling it fails).
    pub fn kill(&self) {
        self.run.abort();
        self.transport.close();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn config(clock: Arc<TestClock>) -> ClientConfig {
    ClientConfig {
        clock,
        infer_timeout_ms: 20_000,
        ready_poll_ms_initial: 10,
        ready_poll_ms_max: 100,
        ..ClientConfig::default()
    }
}

pub async fn client(
    net: &MemoryNetwork,
    name: &str,
    key: SdkKey,
    config: ClientConfig,
) -> Result<Client<MemoryTransport>, crat_sdk::Error> {
    let identity = SigningKey::from_bytes(&[3; 32]);
    let transport = net
        .bind(name, NodeId::from_key(&identity.verifying_key()))
        .unwrap();
    Client::connect_with(
        transport,
        identity,
        CLIENT_ADDR.parse().unwrap(),
        dispatcher_id(),
        key,
        config,
    )
    .await
}

pub fn clock() -> Arc<TestClock> {
    Arc::new(TestClock(AtomicU64::new(NOW)))
}

pub fn image(seed: u32) -> Tensor {
    let values: Vec<f32> = (0..784u32)
        .map(|i| ((i * 31 + seed * 17) % 255) as f32 / 255.0)
        .collect();
    Tensor::from_slice(&[1, 1, 28, 28], &values).unwrap()
}

/// Polls `f` every 10 ms until it holds; panics after 20 s.
pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not reached in 20 s");
}

/// Largest absolute difference between two f32 slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
