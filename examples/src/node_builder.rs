//! A compute node assembled by hand from `crat-node` and `crat-transport`: the same parts
//! `crat node` uses, each chosen explicitly so you can swap any of them.
//!
//! The steps: probe the hardware, choose an inference backend (and see why better ones were
//! passed over), open the model store and cache, configure batching, optionally run an idle
//! workload, bind a QUIC endpoint with the node's key, and run the node until stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use crat_backend::select::{SelectConfig, select_backend};
use crat_core::hardware::GpuInfo;
use crat_core::id::NodeId;
use crat_core::id::PeerAddr;
use crat_dispatcher::{Dispatcher, DispatcherConfig};
use crat_node::batch::BatchConfig;
use crat_node::cache::{ModelCache, ModelStore};
use crat_node::idle::{CommandWorkload, IdleController, IdleError, IdlePolicy, IdleWorkload};
use crat_node::probe::{FakeProbe, HardwareProbe, SystemProbe};
use crat_node::runtime::{BatchSizing, Node, NodeConfig, NodeParts};
use crat_transport::SteadyClock;
use crat_transport::Transport;
use crat_transport::quic::{QuicConfig, QuicTransport};
use ed25519_dalek::SigningKey;

use crate::now_s;

/// How to build and run the node.
#[derive(Clone, Debug)]
pub struct Options {
    /// The dispatcher's address and id; `None` starts a dispatcher in this process.
    pub dispatcher: Option<(SocketAddr, NodeId)>,
    /// UDP address to serve clients on.
    pub listen: SocketAddr,
    /// Address clients reach the node at; default: the bound listen address (set it when
    /// listening on `0.0.0.0` or behind NAT).
    pub advertise: Option<SocketAddr>,
    /// Where model files are kept; `None`: a temporary directory.
    pub data_dir: Option<PathBuf>,
    /// The GPU to declare when the probe finds none. Declaring earns nothing: the rating and
    /// mining income come from the GPU table only for a card the node proves by answering the
    /// dispatcher's compute challenges in time (docs/hardware-proof.md). `None`: run as a
    /// CPU-only node.
    pub declared_gpu: Option<String>,
    /// A command run while the node is idle and the network quiet (a miner, in real life);
    /// `None`: no idle workload.
    pub idle_command: Option<Vec<String>>,
    /// Seconds without work before the idle workload may start.
    pub idle_after_s: u64,
    /// Stop after this long; `None`: run until Ctrl-C.
    pub run_for: Option<Duration>,
}

impl Options {
    /// Self-contained defaults: an in-process dispatcher, a declared RTX 3090, `sleep 3600`
    /// as the idle workload after 2 idle seconds, and a 5-second run.
    pub fn self_contained() -> Self {
        Self {
            dispatcher: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            data_dir: None,
            declared_gpu: Some("NVIDIA GeForce RTX 3090".into()),
            idle_command: Some(vec!["sleep".into(), "3600".into()]),
            idle_after_s: 2,
            run_for: Some(Duration::from_secs(5)),
        }
    }
}

/// What the node was and did.
#[derive(Debug)]
pub struct Report {
    /// Its identity (the public half of its key).
    pub node: NodeId,
    /// `backend/execution provider`, e.g. `tract/cpu` or `ort/cuda`.
    pub backend: String,
    /// Why each better backend was passed over.
    pub fallbacks: Vec<String>,
    /// Its power rating (1..=5).
    pub rating: u8,
    /// Whether the in-process dispatcher saw it online (`None` with a remote dispatcher).
    pub registered: Option<bool>,
    /// Times the idle workload was started.
    pub idle_starts: u32,
}

/// Builds the node and runs it until Ctrl-C or `options.run_for`.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let scratch = tempfile::tempdir()?;

    // 0. The dispatcher. A real node is given one (`--dispatcher`, `--dispatcher-id`); the
    //    self-contained mode opens one on a temporary directory, on loopback.
    let (dispatcher_addr, dispatcher_id, local_dispatcher) = match options.dispatcher {
        Some((addr, id)) => (addr, id, None),
        None => {
            let key = SigningKey::from_bytes(&rand::random());
            let transport = QuicTransport::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                &key,
                QuicConfig::default(),
            )?;
            let addr = transport.socket_addr();
            let mut config = DispatcherConfig::new(scratch.path().join("dispatcher"));
            config.dispatch.heartbeat_interval_s = 1;
            // A demo dispatcher: tiny compute challenges with generous deadlines, so a node on
            // this CPU proves the GPU it declares in milliseconds (the defaults are the real
            // sizes: 2.2 TFLOP per GPU, docs/hardware-proof.md).
            config.hardware = crat_core::policy::hardware::ProofConfig {
                allowance_ms: 30_000,
                ..crat_core::policy::hardware::ProofConfig::test_scale()
            };
            let dispatcher = Dispatcher::open(config, key, transport)?;
            tokio::spawn({
                let dispatcher = dispatcher.clone();
                async move { dispatcher.run().await }
            });
            println!("started a dispatcher {} at {addr}", dispatcher.id());
            (addr, dispatcher.id(), Some(dispatcher))
        }
    };

    // 1. Hardware. `SystemProbe` asks NVML for GPUs and /proc for the CPU; without a GPU
    //    driver it describes the CPU only. A node may declare its GPU instead (`FakeProbe`
    //    reports whatever it is given), which is how demos run on laptops.
    let probed = SystemProbe.probe();
    for note in &probed.notes {
        println!("probe: {note}");
    }
    let gpu_found = !probed.hardware.gpus.is_empty();
    let hardware = match (&options.declared_gpu, gpu_found) {
        (Some(name), false) => FakeProbe::new(
            vec![GpuInfo {
                name: name.clone(),
                memory_bytes: 0,
                driver: "declared".into(),
                compute_capability: None,
            }],
            probed.hardware.cpu.clone(),
        )
        .probe(),
        _ => probed,
    };
    println!(
        "hardware: {} GPU(s) {:?}, CPU {} ({} cores); rating {}",
        hardware.hardware.gpus.len(),
        hardware
            .hardware
            .gpus
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        hardware.hardware.cpu.model,
        hardware.hardware.cpu.cores,
        hardware.rating.get()
    );
    println!("rating: {}", hardware.rating_reason);

    // 2. Backend. `select_backend` tries ONNX Runtime + CUDA, then ONNX Runtime on the CPU,
    //    then tract, and keeps the first that loads and runs a probe model. Which ones exist
    //    depends on crat-backend's features (`tract`, `ort`, `cuda`).
    let selected = select_backend(&SelectConfig {
        gpu_detected: Some(gpu_found),
        ..SelectConfig::default()
    })?;
    println!("backend: {}", selected.describe());
    for reason in &selected.fallbacks {
        println!("  passed over: {reason}");
    }

    // 3. Models: files on disk, content-addressed and hash-checked on every read (the store),
    //    and loaded models in memory under a byte budget (the cache).
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("node"));
    let store = ModelStore::open(data_dir.join("models"), 16 << 30)?;
    let cache = ModelCache::new(selected.backend.clone(), 4 << 30);

    // 4. The endpoint. The node's ed25519 key is its identity on the network: clients and
    //    the dispatcher pin it when they dial (a real node keeps it in a file).
    let key = SigningKey::from_bytes(&rand::random());
    let transport = QuicTransport::bind(options.listen, &key, QuicConfig::default())?;
    let advertise = options.advertise.unwrap_or_else(|| transport.socket_addr());

    // 5. Settings: batching merges compatible requests along the batch dimension. Here
    //    requests may wait up to 2 ms for company, and the batch size is measured per model
    //    at load among 1, 4 and 16.
    let mut config = NodeConfig::new(
        PeerAddr::from(dispatcher_addr),
        dispatcher_id,
        PeerAddr::from(advertise),
    );
    config.batch = BatchConfig {
        queue_delay_us_max: 2_000,
        queue_len_max: 512,
        ..BatchConfig::default()
    };
    config.batch_sizing = BatchSizing::Measure(vec![1, 4, 16]);
    config.heartbeat_interval_ms = 1_000;

    // 6. The idle workload: started when the node has had no work for `idle_after_s` and the
    //    dispatcher reports low demand, stopped (SIGTERM, then SIGKILL after the grace
    //    period) the moment a task arrives.
    let idle_starts = Arc::new(AtomicU32::new(0));
    let workload = options.idle_command.as_ref().and_then(|cmd| {
        let (program, args) = cmd.split_first()?;
        Some(Counted {
            inner: Arc::new(CommandWorkload::new(
                program.clone(),
                args.to_vec(),
                Duration::from_secs(2),
            )),
            starts: idle_starts.clone(),
        })
    });
    let idle = workload.clone().map(|w| {
        let policy = IdlePolicy {
            idle_s_min: options.idle_after_s,
            demand_bps_max: 2_000,
        };
        IdleController::new(Box::new(w) as Box<dyn IdleWorkload>, policy, now_s())
    });

    // 7. Assemble and run. `Node::run` registers (signed with the node key), heartbeats,
    //    serves clients and reports usage until the transport is closed.
    let node = Node::new(
        NodeParts {
            key,
            transport,
            cache,
            store,
            hardware: hardware.clone(),
            idle,
            clock: Arc::new(SteadyClock::system()),
        },
        config,
    );
    println!(
        "node {} serving on {advertise}, dispatcher {dispatcher_id} at {dispatcher_addr}",
        node.id()
    );
    let stop = async {
        match options.run_for {
            Some(limit) => tokio::time::sleep(limit).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let mut registered = None;
    tokio::select! {
        result = node.run() => result?,
        () = stop => {
            registered = local_dispatcher.as_ref().map(|d| d.online_nodes() == 1);
            println!("stopping");
            node.transport().close();
        }
    }

    // Stop the idle workload (the `sleep` child) if it is running.
    if let Some(w) = &workload {
        w.stop().await?;
    }
    if let Some(d) = &local_dispatcher {
        d.close();
    }
    Ok(Report {
        node: node.id(),
        backend: selected.describe(),
        fallbacks: selected.fallbacks,
        rating: hardware.rating.get(),
        registered,
        idle_starts: idle_starts.load(Ordering::Relaxed),
    })
}

/// A workload that wraps another and counts (and prints) its starts: how to plug your own
/// [`IdleWorkload`] into a node. Clones share the process.
#[derive(Clone)]
struct Counted {
    inner: Arc<CommandWorkload>,
    starts: Arc<AtomicU32>,
}

#[async_trait]
impl IdleWorkload for Counted {
    async fn start(&self) -> Result<(), IdleError> {
        let was_running = self.inner.is_running();
        self.inner.start().await?;
        if !was_running {
            self.starts.fetch_add(1, Ordering::Relaxed);
            println!("idle: workload started (pid {:?})", self.inner.pid().await);
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), IdleError> {
        if self.inner.is_running() {
            println!("idle: stopping workload");
        }
        self.inner.stop().await
    }

    fn is_running(&self) -> bool {
        self.inner.is_running()
    }
}
