//! `crat-sdk`: the client library an integrator embeds to use the CryptoRAT network.
//!
//! A [`Client`] talks to the dispatcher (upload a model, get a price, deploy, check the
//! balance and the key); a [`Deployment`] sends tasks straight to the nodes that serve it,
//! with a lease (replicas + a ticket signed by the dispatcher) fetched and renewed behind the
//! scenes, pooled node connections, and failover of the same task id to another replica
//! when a node fails. [`convert`] turns [`ndarray`] arrays into tensors and back.
//!
//! **Spot checks.** A share of tasks (the lease's `validation_bps`, set by the dispatcher,
//! 1 % by default) is run again on a validator replica of another node and another operator
//! (address block); on disagreement a third replica decides and the majority's answer is
//! returned, so a result that failed validation is never returned while a correct replica
//! answers ([`Error::Validation`] when no majority exists). The validator's run has the same
//! task id and is not charged again. The nodes' signed receipts go to the dispatcher, which
//! credits the validators and records the failures ([`Stats::validations`]). A deployment
//! whose model failed the dispatcher's determinism gate (a random operator, or answers that
//! disagree with themselves) is *unverifiable* (`DeploymentInfo::verifiability`, from
//! [`Deployment::info`]): its leases sample no task, so its answers are never spot-checked.
//!
//! **What the client proves and signs.** Each request carries the digest of its inputs; an
//! answer counts only with the node's receipt naming exactly these inputs and these outputs
//! (otherwise [`Error::InvalidReceipt`] and the task fails over). The client signs, per ticket
//! and node, a cumulative acknowledgement of the answers it received and hands it to the node
//! and to the dispatcher: usage is charged only within it ([`Deployment::flush_acks`]). A
//! lease's ticket names the client's transport identity (only this client can use it), the
//! price of a task and a budget the node keeps to ([`Error::BudgetExhausted`]); a per-instance
//! replica serves its share of the plan's rate ([`Error::RateLimited`]).
//!
//! The API is generic over the [`Transport`]: [`connect`] gives a client over QUIC;
//! [`Client::connect`] takes any transport (tests use the in-memory one) with the transport's
//! identity key, which signs the acknowledgements.
//!
//! ```no_run
//! use crat_core::money::Credits;
//! use crat_core::pricing::{DeployPlan, PerRequestPlan};
//! use crat_sdk::convert::{named_array, tensor};
//! use ndarray::ArrayD;
//! use std::time::Duration;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = "sk_00112233445566778899aabbccddeeff_\
//!            0000000000000000000000000000000000000000000000000000000000000000".parse()?;
//! let dispatcher_id = "0101010101010101010101010101010101010101010101010101010101010101".parse()?;
//! let client = crat_sdk::connect("203.0.113.7:7400".parse()?, dispatcher_id, key).await?;
//!
//! // Upload (resumable, content-addressed) and deploy.
//! let model = client
//!     .upload_model_file("tiny_cnn.onnx", |p| println!("{}/{} bytes", p.acked_bytes, p.total_bytes))
//!     .await?;
//! let plan = DeployPlan::PerRequest(PerRequestPlan {
//!     max_input_bytes: 1 << 20,
//!     credit_allowance: Credits::new(10_000),
//! });
//! println!("price: {:?}", client.quote(model, plan).await?);
//! let deployment = client.deploy(model, plan).await?;
//! deployment.wait_ready(Duration::from_secs(60)).await?;
//!
//! // One task, straight to a node.
//! let image = ArrayD::<f32>::zeros(vec![1, 1, 28, 28]);
//! let outputs = deployment.infer(vec![tensor("input", image.view())?]).await?;
//! let probs = named_array::<f32>(&outputs, "probs")?;
//! println!("probs {probs:?}, balance {}", client.balance().await?);
//! println!("{:?}", deployment.stats());
//! # Ok(())
//! # }
//! ```
//!
//! For many inputs, [`Deployment::infer_many`] runs a stream of tasks with bounded
//! concurrency and yields results in input order.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crat_core::id::{NodeId, SdkKey};
use crat_transport::quic::{QuicConfig, QuicTransport};
use ed25519_dalek::SigningKey;

mod acks;
mod client;
mod config;
pub mod convert;
mod deployment;
mod error;
mod pool;
mod shapes;
mod stats;

pub use client::{Client, UploadProgress};
pub use config::ClientConfig;
pub use crat_transport::Transport;
pub use deployment::{Deployment, new_task_id};
pub use error::Error;
pub use stats::Stats;

/// Connects to the dispatcher at `dispatcher_addr` over QUIC, with default settings.
///
/// Binds a client endpoint on an ephemeral port (on loopback for a loopback dispatcher,
/// otherwise on every interface) with a fresh random identity, and pins `dispatcher_id`.
/// Must run inside a tokio runtime.
pub async fn connect(
    dispatcher_addr: SocketAddr,
    dispatcher_id: NodeId,
    key: SdkKey,
) -> Result<Client<QuicTransport>, Error> {
    connect_quic_with(
        dispatcher_addr,
        dispatcher_id,
        key,
        ClientConfig::default(),
        QuicConfig::default(),
    )
    .await
}

/// Where a client of the dispatcher at `dispatcher` binds: an ephemeral port on loopback for a
/// loopback dispatcher, otherwise on every interface (of the dispatcher's IP version).
pub fn client_bind_addr(dispatcher: SocketAddr) -> SocketAddr {
    let ip = dispatcher.ip();
    let local_ip = match (ip.is_loopback(), ip) {
        (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (false, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (false, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(local_ip, 0)
}

/// [`connect`] with explicit client and QUIC settings.
pub async fn connect_quic_with(
    dispatcher_addr: SocketAddr,
    dispatcher_id: NodeId,
    key: SdkKey,
    config: ClientConfig,
    quic: QuicConfig,
) -> Result<Client<QuicTransport>, Error> {
    let identity = SigningKey::from_bytes(&rand::random());
    let transport = QuicTransport::bind(client_bind_addr(dispatcher_addr), &identity, quic)?;
    Client::connect_with(
        transport,
        identity,
        dispatcher_addr.into(),
        dispatcher_id,
        key,
        config,
    )
    .await
}
