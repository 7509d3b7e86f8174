//! `crat-testnet`: a whole CryptoRAT network in one process, for tests, demos, examples and
//! benchmarks. It is test support: no library crate depends on it except as a
//! dev-dependency, and nothing here is part of the dispatcher's or the node's API.
//!
//! | item | what it owns |
//! |---|---|
//! | [`LocalNetwork`] | a real dispatcher and real compute nodes on loopback QUIC: start, add nodes (keyed, on a chosen loopback address), wait until they are online, kill a node, restart the dispatcher on the same data, shut down |
//! | [`LocalNetwork::start_iroh`], [`transports`] | the same network on iroh with a relay in this process: node↔client paths direct, or relayed only ([`IrohPaths`]) while every peer reaches the dispatcher directly; [`LocalTransport`] says where each role's endpoint listens on each transport |
//! | [`spawn_node`] | one node with declared hardware registering with any dispatcher (what [`LocalNetwork`] does for each of its nodes); [`spawn_node_declaring`] declares any GPU list |
//! | [`loopback_quic`] | the QUIC settings every endpoint on loopback uses |
//! | [`netlab`] | network namespaces with NAT routers (endpoint-independent or symmetric), public hosts and port mappings, for tests of peers behind NAT (root, Linux) |
//! | [`PerturbedBackend`] | the cheating backend: wraps a real one and returns wrong answers on a fixed share of runs |
//!
//! Nothing is simulated but the nodes' declared GPUs: inference runs on the backend each
//! [`NodeSpec`] names, and the dispatcher keeps a real SQLite ledger in the directory given.
//! With the `tract` feature (default) the dispatcher runs canary tasks with tract.
//! Nodes prove their hardware with compute challenges like any node; unless the caller's
//! `DispatcherConfig::hardware` differs from the default, [`LocalNetwork::start`] uses
//! `ProofConfig::test_scale()` (tiny challenges, tight GPU deadlines), so nodes here prove
//! their CPU (rating 1, no mining income) and never a GPU they only declare.
//!
//! The crate's own tests (`tests/`) are the dispatcher's end-to-end tests: uploads, deploys,
//! tasks with failover, metering and round closing; limits and replays; the malicious-model
//! corpus; canaries, spot checks and exclusion.
//!
//! A dispatcher and one tract node, which registers:
//!
//! ```
//! use std::sync::Arc;
//! use crat_backend::tract::TractBackend;
//! use crat_dispatcher::DispatcherConfig;
//! use crat_testnet::{LocalNetwork, NodeSpec};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let node = NodeSpec {
//!     gpu: Some("NVIDIA GeForce RTX 3090".into()),
//!     backend: Arc::new(TractBackend::new()),
//!     batch_size: 4,
//! };
//! let net = LocalNetwork::start(DispatcherConfig::new(dir.path().join("dispatcher")), dir.path(), vec![node]).await?;
//! assert_eq!(net.dispatcher().online_nodes(), 1);
//! assert!(!net.nodes[0].is_stopped());
//! net.shutdown();
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod netlab;
mod network;
mod perturbed;
pub mod transports;

pub use network::{
    LocalNetwork, LocalNode, NodeSpec, NodeTarget, declared_gpu, loopback_quic, spawn_node,
    spawn_node_declaring,
};
pub use perturbed::PerturbedBackend;
pub use transports::{IrohNet, IrohPaths, LocalTransport, loopback_iroh};
