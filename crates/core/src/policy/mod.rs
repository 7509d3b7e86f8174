//! The dispatcher's rules, sans-IO: what it remembers about tickets, which usage it charges
//! and at what price, which spot-check reports it believes and credits, how often it samples,
//! what a lease's ticket may spend, which SDK keys it serves and what a node's hardware is worth.
//!
//! Like [`crate::dispatch`], nothing here reads a clock, opens a socket or touches a ledger:
//! time comes in as `now_s`, facts the caller looked up come in as arguments, and decisions
//! come out as values (typed errors where something is refused). The dispatcher service is
//! glue around these functions, and the simulator can call the same ones.
//!
//! - [`tickets`]: the memory of issued tickets that usage is checked against;
//! - [`usage`]: usage admission: which records may be charged, at what price;
//! - [`reports`]: spot-check report plausibility, the report cap, the suspect sampling rate;
//! - [`budget`]: a ticket's credit budget under each plan;
//! - [`keys`]: whether an SDK key may be served now;
//! - [`lifecycle`]: when a deployment ends by itself (a reservation's lifetime, a spent
//!   allowance);
//! - [`challenge`]: the arithmetic of compute challenges (exact matrix products committed by
//!   a Merkle root over rows), the basis of a proof of hardware;
//! - [`hardware`]: the proof of hardware built on it: challenge sizes and deadlines from the
//!   claimed GPUs' throughput, the proven rating and income, and the random re-challenges
//!   that end an online session at the last passed one;
//! - [`updates`]: when a deployment's plan allows a model update and what it costs.
//!
//! ```
//! use crat_core::id::{DeploymentId, KeyId, NodeId};
//! use crat_core::money::Credits;
//! use crat_core::policy::tickets::IssuedTickets;
//! use crat_core::pricing::TaskPrice;
//! use crat_core::sign::Ticket;
//!
//! let node = NodeId::from_bytes([7; 32]);
//! let deployment = DeploymentId::from_bytes([1; 16]);
//! let ticket = Ticket {
//!     deployment,
//!     key: KeyId::from_bytes([2; 16]),
//!     credit_budget: Credits::new(100),
//!     issued_at_s: 0,
//!     expires_at_s: 300,
//!     nonce: [3; 16],
//!     audience: vec![node],
//!     client: NodeId::from_bytes([9; 32]),
//!     price: TaskPrice::FREE,
//! };
//! // At most 1,000 tickets remembered, 100 of them of one key.
//! let mut issued = IssuedTickets::new(1_000, 100);
//! issued.insert(0, &ticket, 300 + 3_600)?;
//! // Usage under that ticket is charged only for its deployment, reported by its audience.
//! assert_eq!(issued.allows(&[3; 16], &deployment, &node), Some(true));
//! assert_eq!(issued.allows(&[3; 16], &deployment, &NodeId::from_bytes([8; 32])), Some(false));
//! # Ok::<(), crat_core::policy::tickets::TicketsFull>(())
//! ```

pub mod acks;
pub mod budget;
pub mod challenge;
pub mod hardware;
pub mod keys;
pub mod lifecycle;
pub mod reports;
pub mod tickets;
pub mod updates;
pub mod usage;
