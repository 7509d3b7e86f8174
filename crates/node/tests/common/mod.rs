//! Helpers shared by the node's integration tests: a scripted fake dispatcher over the
//! in-memory transport, a node started against it, and a backend whose runs wait on a gate.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crat_backend::{BackendError, InferenceBackend, LoadedModel, ModelInfo};
use crat_core::bps::Bps;
use crat_core::clock::Clock;
use crat_core::hardware::CpuInfo;
use crat_core::id::{DeploymentId, KeyId, ModelId, NodeId, TaskId};
use crat_core::money::Credits;
use crat_core::pricing::TaskPrice;
use crat_core::sign::{Signed, Ticket};
use crat_core::tensor::{NamedTensor, Tensor};
use crat_core::wire::{
    Assignment, ClientToNode, Demand, DispatcherReply, ErrorCode, InferRequest, NodeRequest,
    NodeToClient, ReplicaState, UsageRecord, WireError,
};
use crat_node::cache::{ModelCache, ModelStore};
use crat_node::probe::{FakeProbe, HardwareProbe};
use crat_node::runtime::{BatchSizing, Node, NodeConfig, NodeError, NodeParts};
use crat_transport::memory::{MemoryConnection, MemoryNetwork, MemoryTransport};
use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;

pub const TINY: &[u8] = include_bytes!("../../../backend/models/tiny_cnn.onnx");
pub const NOW: u64 = 1_000_000;

pub struct ManualClock(pub AtomicU64);

impl Clock for ManualClock {
    fn now_s(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
pub struct Seen {
    pub states: Vec<(DeploymentId, ReplicaState)>,
    pub usage: Vec<UsageRecord>,
    /// The acknowledgements the usage reports carried.
    pub acks: Vec<crat_core::policy::acks::AckProof>,
    pub heartbeats: u64,
    pub registered: Option<NodeId>,
    /// Usage reports are answered `Busy` (a dispatcher that cannot take them now).
    pub refuse_usage: bool,
    /// The first this many records of every usage report are held (answered as held for a
    /// client's acknowledgement, as a dispatcher does), the rest accepted.
    pub hold_usage: usize,
    /// Usage reports answered with `UsageAck`.
    pub usage_reports: u64,
}

pub fn dep(n: u8) -> DeploymentId {
    DeploymentId::from_bytes([n; 16])
}

pub fn assignment(d: DeploymentId, model: &[u8]) -> Assignment {
    Assignment {
        deployment: d,
        model: ModelId::of_bytes(model),
        model_bytes: model.len() as u64,
        max_input_bytes: 1 << 20,
        rate_per_s: None,
    }
}

/// A dispatcher that assigns `models` to whoever registers and serves their bytes.
pub fn fake_dispatcher(
    conn: MemoryConnection,
    models: Vec<(Assignment, Vec<u8>)>,
    seen: Arc<Mutex<Seen>>,
) {
    let me = conn.clone();
    tokio::spawn(serve(
        conn,
        Conversation::NodeDispatcher,
        FrameLimits::default(),
        16,
        move |req: NodeRequest| {
            let seen = seen.clone();
            let models = models.clone();
            let remote = me.remote_id();
            async move {
                let assignments: Vec<Assignment> = models.iter().map(|(a, _)| a.clone()).collect();
                match req {
                    NodeRequest::Register(r) => {
                        let body = r.verify_registration(NOW).unwrap();
                        assert_eq!(body.node, remote, "registration signer is the QUIC peer");
                        seen.lock().unwrap().registered = Some(body.node);
                        DispatcherReply::Registered {
                            dispatcher: NodeId::from_key(&dispatcher_key().verifying_key()),
                            heartbeat_interval_ms: 50,
                            assignments,
                        }
                    }
                    NodeRequest::Heartbeat(_) => {
                        seen.lock().unwrap().heartbeats += 1;
                        DispatcherReply::HeartbeatAck {
                            demand: Demand {
                                level_bps: Bps(9_000),
                            },
                            assignments,
                        }
                    }
                    NodeRequest::FetchModel { model, offset, len } => {
                        let Some((_, bytes)) = models.iter().find(|(a, _)| a.model == model) else {
                            return DispatcherReply::Error(WireError::new(
                                ErrorCode::NotFound,
                                "no such model",
                            ));
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
                        seen.lock().unwrap().states.push((deployment, state));
                        DispatcherReply::Ok
                    }
                    NodeRequest::Usage(report) => {
                        let n = report.records.len() as u32;
                        let mut seen = seen.lock().unwrap();
                        if seen.refuse_usage {
                            return DispatcherReply::Error(WireError::new(
                                ErrorCode::Busy,
                                "not now",
                            ));
                        }
                        let held = seen.hold_usage.min(n as usize);
                        seen.usage.extend(report.records.into_iter().skip(held));
                        seen.acks.extend(report.acks);
                        seen.usage_reports += 1;
                        DispatcherReply::UsageAck {
                            accepted: n - held as u32,
                            duplicates: 0,
                            held: (0..held as u32).collect(),
                        }
                    }
                    // This fake keeps no books.
                    NodeRequest::Standing { .. } | NodeRequest::StandingOf(_) => {
                        DispatcherReply::Error(WireError::new(
                            ErrorCode::NotFound,
                            "the fake dispatcher keeps no standing",
                        ))
                    }
                    NodeRequest::Reach => DispatcherReply::Error(WireError::new(
                        ErrorCode::NotFound,
                        "the fake dispatcher probes nothing",
                    )),
                }
            }
        },
    ));
}

pub fn dispatcher_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

pub fn ticket(
    signer: &SigningKey,
    deployment: DeploymentId,
    node: NodeId,
    expires_at_s: u64,
) -> Signed<Ticket> {
    ticket_for(
        signer,
        deployment,
        node,
        expires_at_s,
        KeyId::from_bytes([9; 16]),
    )
}

/// A ticket charging SDK key `key`.
pub fn ticket_for(
    signer: &SigningKey,
    deployment: DeploymentId,
    node: NodeId,
    expires_at_s: u64,
    key: KeyId,
) -> Signed<Ticket> {
    Signed::sign(
        Ticket {
            deployment,
            key,
            credit_budget: Credits::new(1_000),
            issued_at_s: NOW - 10,
            expires_at_s,
            nonce: [4; 16],
            audience: vec![node],
            // The test clients' identity (see `Harness::client`).
            client: NodeId::from_bytes([3; 32]),
            price: TaskPrice {
                fixed: Credits::new(1),
                per_block: Credits::ZERO,
                block_bytes: 1,
            },
        },
        signer,
    )
}

pub fn image(seed: u32) -> Tensor {
    let values: Vec<f32> = (0..784u32)
        .map(|i| ((i * 31 + seed * 17) % 255) as f32 / 255.0)
        .collect();
    Tensor::from_slice(&[1, 1, 28, 28], &values).unwrap()
}

pub async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached in 10 s");
}

/// A node running against [`fake_dispatcher`] on its own in-memory network.
pub struct TestNode {
    pub node: Node<MemoryTransport>,
    pub id: NodeId,
    pub seen: Arc<Mutex<Seen>>,
    pub net: MemoryNetwork,
    pub clock: Arc<ManualClock>,
    running: tokio::task::JoinHandle<Result<(), NodeError>>,
    dir: PathBuf,
    /// Client endpoints, kept open as long as the node.
    clients: Mutex<Vec<MemoryTransport>>,
}

static NODE_DIRS: AtomicUsize = AtomicUsize::new(0);

impl TestNode {
    /// Starts a node (key `[2; 32]`) serving `models`, with batch size 1 unless `configure`
    /// says otherwise, and waits until every model is ready or failed.
    pub async fn start(
        models: Vec<(Assignment, Vec<u8>)>,
        backend: Arc<dyn InferenceBackend>,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        Self::start_with(models, backend, Seen::default(), configure).await
    }

    /// [`Self::start`] against a fake dispatcher set up as `seen` says from the start.
    pub async fn start_with(
        models: Vec<(Assignment, Vec<u8>)>,
        backend: Arc<dyn InferenceBackend>,
        seen: Seen,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        let net = MemoryNetwork::new();
        let dkey = dispatcher_key();
        let did = NodeId::from_key(&dkey.verifying_key());
        let dispatcher = net.bind("mem:dispatcher", did).unwrap();
        let nkey = SigningKey::from_bytes(&[2; 32]);
        let id = NodeId::from_key(&nkey.verifying_key());
        let transport = net.bind("mem:node", id).unwrap();
        let seen = Arc::new(Mutex::new(seen));
        {
            let (seen, models) = (seen.clone(), models.clone());
            tokio::spawn(async move {
                while let Ok(conn) = dispatcher.accept().await {
                    fake_dispatcher(conn, models.clone(), seen.clone());
                }
            });
        }
        let dir = std::env::temp_dir().join(format!(
            "crat-node-test-{}-{}",
            std::process::id(),
            NODE_DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let clock = Arc::new(ManualClock(AtomicU64::new(NOW)));
        let mut config = NodeConfig::new(
            "mem:dispatcher".parse().unwrap(),
            did,
            "mem:node".parse().unwrap(),
        );
        config.batch_sizing = BatchSizing::Fixed(1);
        config.usage_flush_ms = 50;
        configure(&mut config);
        let cpu = CpuInfo {
            model: "test".into(),
            cores: 2,
            memory_bytes: 1 << 30,
        };
        let node = Node::new(
            NodeParts {
                key: nkey,
                transport,
                cache: ModelCache::new(backend, 1 << 30),
                store: ModelStore::open(&dir, 1 << 30).unwrap(),
                hardware: FakeProbe::new(vec![], cpu).probe(),
                idle: None,
                clock: clock.clone(),
            },
            config,
        );
        let running = tokio::spawn({
            let node = node.clone();
            async move { node.run().await }
        });
        let n = models.len();
        wait_for(|| seen.lock().unwrap().states.len() >= n).await;
        Self {
            node,
            id,
            seen,
            net,
            clock,
            running,
            dir,
            clients: Mutex::new(Vec::new()),
        }
    }

    /// A client connection to the node from a fresh endpoint.
    pub async fn client(&self, name: &str) -> MemoryConnection {
        let client = self
            .net
            .bind(&format!("mem:{name}"), NodeId::from_bytes([3; 32]))
            .unwrap();
        let conn = client
            .connect(&"mem:node".parse().unwrap(), &self.id)
            .await
            .unwrap();
        self.clients.lock().unwrap().push(client);
        conn
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.running.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An `Infer` request for task `task`.
pub fn infer(
    task: u64,
    ticket: Signed<Ticket>,
    deployment: DeploymentId,
    x: Tensor,
) -> ClientToNode {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&task.to_le_bytes());
    ClientToNode::Infer(Box::new(InferRequest::new(
        TaskId::from_bytes(id),
        deployment,
        ticket,
        vec![NamedTensor::new("input", x)],
    )))
}

/// One call on `conn`.
pub async fn call(conn: &MemoryConnection, req: &ClientToNode) -> NodeToClient {
    conn.call::<_, NodeToClient>(req, Conversation::ClientNode, FrameLimits::default())
        .await
        .unwrap()
}

/// The error code of an answer, or `None` for outputs.
pub fn code(r: &NodeToClient) -> Option<ErrorCode> {
    match r {
        NodeToClient::Error(e) => Some(e.code),
        NodeToClient::Outputs { .. } | NodeToClient::Receipted { .. } => None,
        NodeToClient::Pong => panic!("Pong to a task"),
    }
}

/// Runs of a [`GatedBackend`]'s models wait here until it is opened.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    running: AtomicUsize,
}

impl Gate {
    /// A closed gate.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Lets every waiting and future run through.
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    /// Runs waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// A backend whose models run like `inner`'s, after waiting for the gate.
pub struct GatedBackend {
    pub inner: Arc<dyn InferenceBackend>,
    pub gate: Arc<Gate>,
}

struct GatedModel {
    inner: Arc<dyn LoadedModel>,
    gate: Arc<Gate>,
}

impl InferenceBackend for GatedBackend {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn execution_provider(&self) -> &str {
        "cpu"
    }

    fn load(&self, model: &[u8]) -> Result<Arc<dyn LoadedModel>, BackendError> {
        Ok(Arc::new(GatedModel {
            inner: self.inner.load(model)?,
            gate: self.gate.clone(),
        }))
    }
}

impl LoadedModel for GatedModel {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        self.gate.running.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate.open.lock().unwrap();
        while !*open {
            open = self.gate.opened.wait(open).unwrap();
        }
        drop(open);
        self.gate.running.fetch_sub(1, Ordering::SeqCst);
        self.inner.run(inputs)
    }

    fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes()
    }
}
