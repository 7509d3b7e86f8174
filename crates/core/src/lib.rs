//! `crat-core`: the types and rules every CryptoRAT crate shares.
//!
//! Sans-IO: nothing here reads a clock, opens a socket or touches a file. Time comes in as an
//! argument (Unix seconds, named `*_s`), randomness as bytes, and effects go out as values.
//!
//! - [`id`]: the base types, with no protocol dependency: [`NodeId`](id::NodeId),
//!   [`ModelId`](id::ModelId), [`DeploymentId`](id::DeploymentId), [`TaskId`](id::TaskId),
//!   [`KeyId`](id::KeyId), [`SdkKey`](id::SdkKey), [`PeerAddr`](id::PeerAddr), with stable
//!   text forms (`id` ← `sign` ← `wire`: no module cycle).
//! - [`money`]: [`MicroUsd`](money::MicroUsd), [`Credits`](money::Credits),
//!   [`MicroCrat`](money::MicroCrat): integer newtypes with checked arithmetic.
//! - [`tensor`]: validated [`Tensor`](tensor::Tensor)s.
//! - [`wire`]: every message of the three conversations and their one encoding.
//! - [`sign`]: [`Signed`](sign::Signed) values, [`Ticket`](sign::Ticket)s and node
//!   [`Registration`](sign::Registration)s, with domain-separated ed25519 signatures, and the
//!   [`NonceTracker`](sign::NonceTracker) that makes single-use values single-use.
//! - [`limit`]: per-key request-rate limits (token buckets in a bounded map); [`expiring`]: the
//!   one bounded map whose entries expire, behind every "seen once" memory.
//! - [`dispatch`]: the dispatch state machine (placement, heartbeats, exclusion); [`policy`]:
//!   the dispatcher's other rules (ticket memory, usage admission, spot-check reports,
//!   budgets, keys, registration), sans-IO like it.
//! - [`bps`]: [`Bps`](bps::Bps), basis points (10,000 = 100 %) for shares and rates.
//! - [`clock`]: the [`Clock`](clock::Clock) trait the I/O crates read the time through.
//! - [`pricing`]: what requests and instances cost, in credits.
//! - [`hardware`], [`gpu_table`]: what a node reports, and the GPU → rating/income table.
//! - [`splitmix`]: the SplitMix64 generator, for numbers a seed must always reproduce.
//! - [`placement`], [`verify`]: replica placement scoring, and output agreement within a
//!   tolerance.
//!
//! ```
//! use crat_core::id::{DeploymentId, KeyId, NodeId, TaskId};
//! use crat_core::money::Credits;
//! use crat_core::pricing::TaskPrice;
//! use crat_core::sign::{Signed, Ticket};
//! use crat_core::tensor::{NamedTensor, Tensor};
//! use crat_core::wire::{self, ClientToNode, InferRequest};
//! use ed25519_dalek::SigningKey;
//!
//! // The dispatcher signs a ticket for one deployment, one node and one client...
//! let dispatcher = SigningKey::from_bytes(&[1; 32]);
//! let node = NodeId::from_key(&SigningKey::from_bytes(&[2; 32]).verifying_key());
//! let client = NodeId::from_key(&SigningKey::from_bytes(&[7; 32]).verifying_key());
//! let deployment = DeploymentId::from_bytes([3; 16]);
//! let ticket = Signed::sign(
//!     Ticket {
//!         deployment,
//!         key: KeyId::from_bytes([4; 16]),
//!         credit_budget: Credits::new(100),
//!         issued_at_s: 10,
//!         expires_at_s: 70,
//!         nonce: [5; 16],
//!         audience: vec![node],
//!         client,
//!         price: TaskPrice::FREE,
//!     },
//!     &dispatcher,
//! );
//! // ...the client sends a task with it straight to the node...
//! let image = Tensor::from_slice(&[1, 1, 28, 28], &[0.5f32; 784])?;
//! // The request carries the digest of its inputs, which the node's receipt will name.
//! let request = ClientToNode::Infer(Box::new(InferRequest::new(
//!     TaskId::from_bytes([6; 16]),
//!     deployment,
//!     ticket,
//!     vec![NamedTensor::new("input", image)],
//! )));
//! let bytes = wire::encode(&request)?;
//! // ...and the node decodes it and checks the ticket offline.
//! let ClientToNode::Infer(got) = wire::decode::<ClientToNode>(&bytes)? else { unreachable!() };
//! let dispatcher_id = NodeId::from_key(&dispatcher.verifying_key());
//! got.ticket.verify_ticket(&dispatcher_id, 30, &deployment, &node, &client)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod bounded;
pub mod bps;
pub mod clock;
pub mod dispatch;
pub mod expiring;
pub mod gpu_table;
pub mod hardware;
pub mod id;
pub mod limit;
mod merkle;
pub mod money;
pub mod placement;
pub mod policy;
pub mod pricing;
pub mod sign;
pub mod splitmix;
pub mod tensor;
pub mod verify;
pub mod wire;

#[cfg(feature = "proptest")]
pub mod strategies;
