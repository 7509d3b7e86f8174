//! A whole network on one machine: a dispatcher and compute nodes on loopback, in this
//! process, on QUIC ([`LocalNetwork::start`]) or on iroh with an in-process relay
//! ([`LocalNetwork::start_iroh`]; see [`crate::transports`]). Nothing in it is simulated except
//! the nodes' declared GPUs (inference runs on whatever backend the caller passes, usually
//! tract or ONNX Runtime on the CPU).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crat_backend::InferenceBackend;
use crat_core::clock::Clock;
use crat_core::hardware::{CpuInfo, GpuInfo};
use crat_core::id::NodeId;
use crat_core::id::PeerAddr;
use crat_core::policy::hardware::ProofConfig;
use crat_dispatcher::{CanaryParts, Dispatcher, DispatcherConfig, DispatcherError};
use crat_node::cache::{ModelCache, ModelStore};
use crat_node::probe::{FakeProbe, HardwareProbe};
use crat_node::runtime::{BatchSizing, Node, NodeConfig, NodeParts};
use crat_transport::SteadyClock;
use crat_transport::Transport;
use crat_transport::iroh::{IrohTransport, Relay};
use crat_transport::quic::{QuicConfig, QuicTransport};
use ed25519_dalek::SigningKey;
use tokio::task::JoinHandle;

use crate::transports::{IrohNet, IrohPaths, LocalTransport, bind_quic};

/// One node to start.
#[derive(Clone)]
pub struct NodeSpec {
    /// The GPU it declares (a name from the GPU table), or none for a CPU-only node.
    pub gpu: Option<String>,
    /// The backend it runs models with.
    pub backend: Arc<dyn InferenceBackend>,
    /// Batch size (fixed, so start-up does not spend time measuring).
    pub batch_size: u32,
}

/// A running node, started by [`spawn_node`] (for a [`LocalNetwork`] or on its own).
pub struct LocalNode<T: Transport = QuicTransport> {
    /// The node.
    pub node: Node<T>,
    /// The UDP socket it listens on: where clients reach it on QUIC; on iroh its direct
    /// address (clients may reach it through the relay instead).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl<T: Transport> LocalNode<T> {
    /// Its identity.
    pub fn id(&self) -> NodeId {
        self.node.id()
    }

    /// Kills it: closes every connection and stops its tasks, like a crashed process.
    pub fn kill(&self) {
        self.node.transport().close();
        self.task.abort();
    }

    /// Whether it was killed or stopped.
    pub fn is_stopped(&self) -> bool {
        self.task.is_finished()
    }
}

/// The dispatcher a node registers with, where the node keeps its model files, and the
/// clock it reads.
#[derive(Clone)]
pub struct NodeTarget {
    /// The dispatcher's address.
    pub dispatcher_addr: SocketAddr,
    /// The dispatcher's identity.
    pub dispatcher_id: NodeId,
    /// The node's model store directory.
    pub store_dir: PathBuf,
    /// The node's clock (a [`SteadyClock`] over the system's clocks, unless a test steps a
    /// wall clock under it).
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTarget")
            .field("dispatcher_addr", &self.dispatcher_addr)
            .field("dispatcher_id", &self.dispatcher_id)
            .field("store_dir", &self.store_dir)
            .finish_non_exhaustive()
    }
}

/// Starts a node on `ip` (port chosen by the system) that registers with `target`'s
/// dispatcher, as [`LocalNetwork`] starts its nodes: the GPU of `spec` declared (24 GiB), a
/// 2-core loopback CPU, model store and cache of 4 GiB, a fixed batch size, heartbeats every
/// 500 ms, usage flushed every 100 ms and reconnects after at most 500 ms; `configure` is
/// applied to the configuration last. The node runs on a task of the current tokio runtime;
/// use it for a node beside a dispatcher that is not a [`LocalNetwork`]'s.
pub fn spawn_node(
    target: NodeTarget,
    spec: NodeSpec,
    key: SigningKey,
    ip: IpAddr,
    configure: impl FnOnce(&mut NodeConfig),
) -> Result<LocalNode, DispatcherError> {
    let gpus = spec.gpu.iter().map(|name| declared_gpu(name)).collect();
    spawn_node_declaring(target, spec, gpus, key, ip, configure)
}

/// A declared GPU as [`spawn_node`] declares it: `name`, 24 GiB, no compute capability.
pub fn declared_gpu(name: &str) -> GpuInfo {
    GpuInfo {
        name: name.to_owned(),
        memory_bytes: 24 << 30,
        driver: "demo".into(),
        compute_capability: None,
    }
}

/// [`spawn_node`] declaring `gpus` (any number) instead of `spec`'s one GPU.
pub fn spawn_node_declaring(
    target: NodeTarget,
    spec: NodeSpec,
    gpus: Vec<GpuInfo>,
    key: SigningKey,
    ip: IpAddr,
    configure: impl FnOnce(&mut NodeConfig),
) -> Result<LocalNode, DispatcherError> {
    let transport = bind_quic(SocketAddr::new(ip, 0), &key)?;
    let listen = PeerAddr::from(transport.socket_addr());
    let dispatcher = PeerAddr::from(target.dispatcher_addr);
    run_node(
        dispatcher,
        target,
        (transport, listen),
        spec,
        gpus,
        key,
        configure,
    )
}

/// Starts a node on `bound` (its endpoint and the address it claims) that registers with the
/// dispatcher at `dispatcher` (`target`'s address is not used), as [`spawn_node`] describes.
fn run_node<T: LocalTransport>(
    dispatcher: PeerAddr,
    target: NodeTarget,
    bound: (T, PeerAddr),
    spec: NodeSpec,
    gpus: Vec<GpuInfo>,
    key: SigningKey,
    configure: impl FnOnce(&mut NodeConfig),
) -> Result<LocalNode<T>, DispatcherError> {
    let (transport, listen) = bound;
    let addr = transport
        .sockets()
        .first()
        .copied()
        .ok_or_else(|| DispatcherError::Config("a node endpoint without a socket".into()))?;
    let cpu = CpuInfo {
        model: "loopback".into(),
        cores: 2,
        memory_bytes: 8 << 30,
    };
    let store = ModelStore::open(target.store_dir, 4 << 30)
        .map_err(|e| DispatcherError::Storage(e.to_string()))?;
    let mut config = NodeConfig::new(dispatcher, target.dispatcher_id, listen);
    config.batch_sizing = BatchSizing::Fixed(spec.batch_size.max(1));
    config.heartbeat_interval_ms = 500;
    config.usage_flush_ms = 100;
    config.reconnect_backoff_ms_max = 500;
    configure(&mut config);
    let node = Node::new(
        NodeParts {
            key,
            transport,
            cache: ModelCache::new(spec.backend.clone(), 4 << 30),
            store,
            hardware: FakeProbe::new(gpus, cpu).probe(),
            idle: None,
            clock: target.clock,
        },
        config,
    );
    let task = tokio::spawn({
        let node = node.clone();
        async move {
            if let Err(e) = node.run().await {
                tracing::warn!(error = %e, "node stopped");
            }
        }
    });
    Ok(LocalNode { node, addr, task })
}

/// A dispatcher and its nodes on loopback, on transport `T`: QUIC unless started with
/// [`LocalNetwork::start_iroh`] (or [`LocalNetwork::start_with`] on another
/// [`LocalTransport`]).
pub struct LocalNetwork<T: LocalTransport = QuicTransport> {
    /// The dispatcher (`None` only while [`LocalNetwork::restart_dispatcher`] runs).
    dispatcher: Option<Dispatcher<T>>,
    /// Its key.
    pub dispatcher_key: SigningKey,
    /// Its address (its first socket, on IPv4 loopback; [`LocalNetwork::dispatcher_peer_addr`]
    /// names every socket of a dispatcher on both loopbacks).
    pub dispatcher_addr: SocketAddr,
    /// The nodes, in start order.
    pub nodes: Vec<LocalNode<T>>,
    /// Every socket of the dispatcher (a restarted one binds them again).
    dispatcher_sockets: Vec<SocketAddr>,
    /// The address peers dial the dispatcher at.
    dispatcher_dial: PeerAddr,
    config: DispatcherConfig,
    dispatcher_task: JoinHandle<()>,
    dir: PathBuf,
    /// The clock the dispatcher and the nodes read (one machine, one clock).
    clock: Arc<dyn Clock>,
    /// What the endpoints share (the relay of an iroh network).
    setup: T::Setup,
}

/// QUIC settings for loopback: a short idle timeout so a killed peer is noticed quickly, and
/// 6,500-byte datagrams from the first packet (loopback's MTU is 64 KiB; see
/// [`QuicConfig::mtu_bytes_max`] for the measured effect on bulk transfers).
pub fn loopback_quic() -> QuicConfig {
    QuicConfig {
        idle_timeout_ms: 3_000,
        keep_alive_interval_ms: 1_000,
        mtu_bytes_max: 6_500,
        mtu_bytes_initial: 6_500,
        ..QuicConfig::default()
    }
}

/// Client identities the canaries of a local network go out from.
const CANARY_IDENTITIES: usize = 3;

/// Canary parts on loopback: [`CANARY_IDENTITIES`] endpoints where the network's clients are,
/// with throwaway identities, and the tract backend (none without the `tract` feature).
async fn canary_parts<T: LocalTransport>(
    setup: &T::Setup,
) -> Result<Option<CanaryParts<T>>, DispatcherError> {
    #[cfg(feature = "tract")]
    {
        let mut transports = Vec::with_capacity(CANARY_IDENTITIES);
        for _ in 0..CANARY_IDENTITIES {
            transports.push(T::bind_client(setup, &SigningKey::from_bytes(&rand::random())).await?);
        }
        Ok(Some(CanaryParts {
            transports,
            references: vec![Arc::new(crat_backend::tract::TractBackend::new())],
        }))
    }
    #[cfg(not(feature = "tract"))]
    {
        let _ = setup;
        Ok(None)
    }
}

/// A dispatcher on `addrs` with its canaries, running; with its sockets and its address.
async fn start_dispatcher<T: LocalTransport>(
    setup: &T::Setup,
    config: DispatcherConfig,
    key: SigningKey,
    addrs: &[SocketAddr],
    clock: Arc<dyn Clock>,
) -> Result<(Dispatcher<T>, Vec<SocketAddr>, PeerAddr, JoinHandle<()>), DispatcherError> {
    let transport = T::bind_dispatcher(setup, addrs, &key).await?;
    let sockets = transport.sockets();
    let dial = transport.dial_addr();
    let canary = canary_parts::<T>(setup).await?;
    let dispatcher = Dispatcher::open_on_clock(config, key, transport, canary, clock)?;
    let task = tokio::spawn({
        let d = dispatcher.clone();
        async move {
            if let Err(e) = d.run().await {
                tracing::error!(error = %e, "dispatcher stopped");
            }
        }
    });
    Ok((dispatcher, sockets, dial, task))
}

impl LocalNetwork<QuicTransport> {
    /// Starts a dispatcher with `config` (its data directory is used as is; nodes keep
    /// their model files under `dir`) and one node per spec, and waits until every node has
    /// registered. Everything runs on a [`SteadyClock`] over the system's clocks.
    pub async fn start(
        config: DispatcherConfig,
        dir: &Path,
        nodes: Vec<NodeSpec>,
    ) -> Result<Self, DispatcherError> {
        Self::start_on_clock(config, dir, nodes, Arc::new(SteadyClock::system())).await
    }

    /// [`LocalNetwork::start`] with the dispatcher and every node reading `clock` (a test
    /// steps a wall clock under a [`SteadyClock`]).
    pub async fn start_on_clock(
        config: DispatcherConfig,
        dir: &Path,
        nodes: Vec<NodeSpec>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DispatcherError> {
        Self::start_with((), config, dir, nodes, clock).await
    }

    /// Starts one more node.
    pub fn add_node(&mut self, spec: NodeSpec) -> Result<&LocalNode, DispatcherError> {
        self.add_node_with(spec, |_| {})
    }

    /// Starts one more node, with `configure` applied to its configuration last (limits,
    /// intervals).
    pub fn add_node_with(
        &mut self,
        spec: NodeSpec,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Result<&LocalNode, DispatcherError> {
        self.add_node_keyed(spec, SigningKey::from_bytes(&rand::random()), configure)
    }

    /// [`LocalNetwork::add_node_with`] with the node's key chosen by the caller (so a test can
    /// prepare the node's ledger record before it registers).
    pub fn add_node_keyed(
        &mut self,
        spec: NodeSpec,
        key: SigningKey,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Result<&LocalNode, DispatcherError> {
        self.add_node_on(spec, key, IpAddr::from([127, 0, 0, 1]), configure)
    }

    /// [`LocalNetwork::add_node_keyed`] listening on `ip`. On Linux every address of
    /// 127.0.0.0/8 is loopback, so nodes on `127.0.N.1` are of different operators (address
    /// blocks), as spot checks need.
    pub fn add_node_on(
        &mut self,
        spec: NodeSpec,
        key: SigningKey,
        ip: IpAddr,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Result<&LocalNode, DispatcherError> {
        let gpus = spec.gpu.iter().map(|name| declared_gpu(name)).collect();
        self.add_node_declaring(spec, gpus, key, ip, configure)
    }

    /// [`LocalNetwork::add_node_on`] declaring `gpus` (any number, e.g. 1,000 B200s) instead
    /// of `spec`'s one GPU.
    pub fn add_node_declaring(
        &mut self,
        spec: NodeSpec,
        gpus: Vec<GpuInfo>,
        key: SigningKey,
        ip: IpAddr,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Result<&LocalNode, DispatcherError> {
        let transport = bind_quic(SocketAddr::new(ip, 0), &key)?;
        let listen = PeerAddr::from(transport.socket_addr());
        self.push_node((transport, listen), spec, gpus, key, configure)
    }
}

impl LocalNetwork<IrohTransport> {
    /// [`LocalNetwork::start`] on iroh: a relay in this process, nodes and clients using it,
    /// and between them the `paths` chosen (see [`crate::transports`]).
    pub async fn start_iroh(
        paths: IrohPaths,
        config: DispatcherConfig,
        dir: &Path,
        nodes: Vec<NodeSpec>,
    ) -> Result<Self, DispatcherError> {
        let setup = IrohNet::start(paths).await?;
        Self::start_with(setup, config, dir, nodes, Arc::new(SteadyClock::system())).await
    }

    /// The relay nodes and clients use.
    pub fn relay(&self) -> &Relay {
        self.setup.relay()
    }

    /// Which paths nodes and clients have between them.
    pub fn paths(&self) -> IrohPaths {
        self.setup.paths()
    }
}

impl<T: LocalTransport> LocalNetwork<T> {
    /// The dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher<T> {
        #[allow(clippy::expect_used)]
        self.dispatcher
            .as_ref()
            .expect("a dispatcher runs except inside restart_dispatcher")
    }

    /// What this network's endpoints share (on iroh: its relay, and the settings of its
    /// peers' endpoints, [`IrohNet::peer_config`](crate::transports::IrohNet::peer_config)).
    pub fn setup(&self) -> &T::Setup {
        &self.setup
    }

    /// The address peers dial the dispatcher at: [`LocalNetwork::dispatcher_addr`] on QUIC;
    /// every socket of it on iroh (each peer uses the one of its IP version).
    pub fn dispatcher_peer_addr(&self) -> PeerAddr {
        self.dispatcher_dial.clone()
    }

    /// Binds an endpoint with identity `key` where this network's clients are (for an SDK
    /// client or a hand-written one): on iroh, with the relay, and on IPv6 loopback in a
    /// relayed-only network.
    pub async fn bind_client(&self, key: &SigningKey) -> Result<T, DispatcherError> {
        T::bind_client(&self.setup, key).await
    }

    /// [`LocalNetwork::start_on_clock`] on any [`LocalTransport`], its endpoints sharing
    /// `setup`.
    pub async fn start_with(
        setup: T::Setup,
        mut config: DispatcherConfig,
        dir: &Path,
        nodes: Vec<NodeSpec>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DispatcherError> {
        // Nodes here compute on this machine's CPU: challenges at the real sizes would take
        // seconds each. Unless the caller chose other proof settings, challenges are tiny and
        // their GPU deadlines tight, so a node proves its CPU and never a GPU it only declares.
        if config.hardware == ProofConfig::default() {
            config.hardware = ProofConfig::test_scale();
        }
        let key = SigningKey::from_bytes(&rand::random());
        let (dispatcher, dispatcher_sockets, dispatcher_dial, dispatcher_task) = start_dispatcher(
            &setup,
            config.clone(),
            key.clone(),
            &T::dispatcher_binds(&setup),
            clock.clone(),
        )
        .await?;
        let dispatcher_addr = *dispatcher_sockets
            .first()
            .ok_or_else(|| DispatcherError::Config("a dispatcher without a socket".into()))?;
        let mut net = Self {
            dispatcher: Some(dispatcher),
            dispatcher_key: key,
            dispatcher_addr,
            nodes: Vec::new(),
            dispatcher_sockets,
            dispatcher_dial,
            config,
            dispatcher_task,
            dir: dir.to_owned(),
            clock,
            setup,
        };
        for spec in nodes {
            let gpus = spec.gpu.iter().map(|name| declared_gpu(name)).collect();
            let key = SigningKey::from_bytes(&rand::random());
            net.add_node_at(spec, gpus, key, IpAddr::from([127, 0, 0, 1]), |_| {})
                .await?;
        }
        net.wait_online(net.nodes.len(), Duration::from_secs(30))
            .await?;
        Ok(net)
    }

    /// Starts one more node on `ip` (an IPv4 loopback address; see
    /// [`LocalNetwork::add_node_on`]) with identity `key`, declaring `gpus`, with `configure`
    /// applied to its configuration last: [`LocalNetwork::add_node_declaring`] on any transport
    /// (binding an iroh endpoint waits for its relay, hence `async`).
    pub async fn add_node_at(
        &mut self,
        spec: NodeSpec,
        gpus: Vec<GpuInfo>,
        key: SigningKey,
        ip: IpAddr,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Result<&LocalNode<T>, DispatcherError> {
        let bound = T::bind_node(&self.setup, ip, &key).await?;
        self.push_node(bound, spec, gpus, key, configure)
    }

    /// Starts a node on `bound` (its endpoint and the address it claims) that registers with
    /// this network's dispatcher, and keeps it.
    fn push_node(
        &mut self,
        bound: (T, PeerAddr),
        spec: NodeSpec,
        gpus: Vec<GpuInfo>,
        key: SigningKey,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Result<&LocalNode<T>, DispatcherError> {
        let index = self.nodes.len();
        let node = run_node(
            self.dispatcher_dial.clone(),
            NodeTarget {
                dispatcher_addr: self.dispatcher_addr,
                dispatcher_id: self.dispatcher().id(),
                store_dir: self.dir.join(format!("node-{index}")),
                clock: self.clock.clone(),
            },
            bound,
            spec,
            gpus,
            key,
            configure,
        )?;
        self.nodes.push(node);
        Ok(&self.nodes[index])
    }

    /// Waits until `count` nodes are online at the dispatcher.
    pub async fn wait_online(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<(), DispatcherError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.dispatcher().online_nodes() < count {
            if tokio::time::Instant::now() >= deadline {
                return Err(DispatcherError::Config(format!(
                    "{} of {count} nodes online after {timeout:?}",
                    self.dispatcher().online_nodes()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// [`LocalNetwork::restart_dispatcher`] with `configure` applied to the dispatcher's
    /// configuration first (kept for later restarts): a dispatcher whose limits changed over
    /// the same ledger and models.
    pub async fn restart_dispatcher_with(
        &mut self,
        configure: impl FnOnce(&mut DispatcherConfig),
    ) -> Result<(), DispatcherError> {
        configure(&mut self.config);
        self.restart_dispatcher().await
    }

    /// Kills the dispatcher (its connections drop) and starts a new one on the same data
    /// directory, key and address; nodes reconnect on their own.
    pub async fn restart_dispatcher(&mut self) -> Result<(), DispatcherError> {
        let old = self.dispatcher.take();
        if let Some(old) = &old {
            old.close();
        }
        self.dispatcher_task.abort();
        let _ = (&mut self.dispatcher_task).await;
        drop(old);
        // The UDP port is free once the old endpoint is dropped (its connections' tasks end
        // as they notice the close); retry until then.
        let mut tries = 0;
        let (dispatcher, _, _, task) = loop {
            match start_dispatcher(
                &self.setup,
                self.config.clone(),
                self.dispatcher_key.clone(),
                &self.dispatcher_sockets,
                self.clock.clone(),
            )
            .await
            {
                Ok(started) => break started,
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(error = %e, "dispatcher address busy; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.dispatcher = Some(dispatcher);
        self.dispatcher_task = task;
        Ok(())
    }

    /// Stops everything.
    pub fn shutdown(&self) {
        for n in &self.nodes {
            n.kill();
        }
        if let Some(d) = &self.dispatcher {
            d.close();
        }
        self.dispatcher_task.abort();
    }
}

impl<T: LocalTransport> Drop for LocalNetwork<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
