//! The runnable examples of CryptoRAT, one module per role:
//!
//! - [`integrator`]: upload, deploy and call a model with `crat-sdk`;
//! - [`node_builder`]: compose a compute node from `crat-node` + `crat-transport`;
//! - [`operator`]: run a dispatcher, manage accounts and keys, read round payouts.
//!
//! Each `examples/<name>.rs` program parses its command line and calls the `run` function of
//! its module here, where the walkthrough lives (so the integration tests can run exactly the
//! same code with small limits). Read a module top to bottom: every step is commented.
//!
//! Without arguments each example is self-contained: it starts what it needs (dispatcher,
//! nodes) in-process on loopback QUIC, with its data in a temporary directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use crat_core::hardware::{CpuInfo, GpuInfo};
use crat_core::id::NodeId;
use crat_core::id::PeerAddr;
use crat_node::backend::tract::TractBackend;
use crat_node::cache::{ModelCache, ModelStore};
use crat_node::probe::{FakeProbe, HardwareProbe};
use crat_node::runtime::{BatchSizing, Node, NodeConfig, NodeParts};
use crat_transport::SystemClock;
use crat_transport::quic::QuicTransport;
use ed25519_dalek::SigningKey;
use tokio::task::JoinHandle;

pub mod integrator;
pub mod node_builder;
pub mod operator;

/// The tiny CNN every example deploys: input `input` `[N, 1, 28, 28]` f32, output `probs`
/// `[N, 10]` (a softmax over ten classes).
pub const TINY_CNN: &[u8] = include_bytes!("../../crates/node/models/tiny_cnn.onnx");

/// Unix seconds now (the dispatcher's ledger and rounds count in Unix seconds).
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings only). Safe to call twice.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A minimal `--name value` / `--flag` command-line parser, enough for the examples.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, String>,
    positional: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()` (skipping the program name). A `--name` followed by another
    /// `--…` or by nothing is a flag with the value `"true"`.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses `args`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut parsed = Self::default();
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                bail!("see examples/README.md for the options of this example");
            }
            match arg.strip_prefix("--") {
                Some(name) => {
                    let value = match args.peek() {
                        Some(next) if !next.starts_with("--") => args.next(),
                        _ => None,
                    };
                    parsed
                        .values
                        .insert(name.to_owned(), value.unwrap_or_else(|| "true".into()));
                }
                None => parsed.positional.push(arg),
            }
        }
        Ok(parsed)
    }

    /// The value of `--name`, parsed.
    pub fn get<T>(&self, name: &str) -> anyhow::Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.values
            .get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}"))
            })
            .transpose()
    }

    /// True if `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Arguments that are not options, in order.
    pub fn positional(&self) -> &[String] {
        &self.positional
    }
}

/// Starts a small compute node in this process (tract backend, declaring `gpu`), the way
/// `crat_dispatcher::local::LocalNetwork` does: model files under `dir`, a fixed batch size,
/// quick heartbeats. [`node_builder`] shows how to assemble a real one step by step.
pub fn spawn_demo_node(
    dispatcher_addr: SocketAddr,
    dispatcher_id: NodeId,
    dir: &Path,
    gpu: &str,
) -> anyhow::Result<(Node<QuicTransport>, JoinHandle<()>)> {
    let key = SigningKey::from_bytes(&rand::random());
    let transport = QuicTransport::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &key,
        crat_dispatcher::local::loopback_quic(),
    )
    .context("binding the node's QUIC endpoint")?;
    let addr = transport.socket_addr();
    let hardware = FakeProbe::new(
        vec![GpuInfo {
            name: gpu.to_owned(),
            memory_bytes: 24 << 30,
            driver: "declared".into(),
            compute_capability: None,
        }],
        CpuInfo {
            model: "demo".into(),
            cores: 2,
            memory_bytes: 8 << 30,
        },
    )
    .probe();
    let mut config = NodeConfig::new(
        PeerAddr::from(dispatcher_addr),
        dispatcher_id,
        PeerAddr::from(addr),
    );
    config.batch_sizing = BatchSizing::Fixed(4);
    config.heartbeat_interval_ms = 500;
    config.usage_flush_ms = 200;
    config.reconnect_backoff_ms_max = 500;
    let node = Node::new(
        NodeParts {
            key,
            transport,
            cache: ModelCache::new(Arc::new(TractBackend::new()), 1 << 30),
            store: ModelStore::open(dir, 1 << 30)?,
            hardware,
            idle: None,
            clock: Arc::new(SystemClock),
        },
        config,
    );
    let task = tokio::spawn({
        let node = node.clone();
        async move {
            if let Err(e) = node.run().await {
                eprintln!("demo node stopped: {e}");
            }
        }
    });
    Ok((node, task))
}
