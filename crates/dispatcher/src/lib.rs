//! `crat-dispatcher`: the dispatch service of a CryptoRAT network.
//!
//! A dispatcher introduces clients to compute nodes and keeps the books; it never carries a
//! tensor. It:
//! - keeps the **node registry** from signed registrations and heartbeats, and records each
//!   node's online sessions (the uptime inputs of the rewards);
//! - stores **models**: chunked, resumable uploads, size-capped, blake3-verified, checked to be
//!   a self-contained ONNX model, content-addressed ([`blob`]);
//! - keeps the **ledger** in a real database ([`ledger`]): accounts, SDK keys (hashed), credits,
//!   deployments, usage (charged once per task id), rounds and payouts; SQLite by default (one
//!   file in the data directory), or PostgreSQL with the `postgres` feature
//!   (`ledger::PgLedger`, [`Dispatcher::open_with_ledger`]), a database several dispatchers
//!   share: one is active, the others stand by, forwarding to it, and take over when it dies
//!   ([`cluster`]);
//! - **deploys** under both pricing plans of `crat_core::pricing`, placing replicas with the
//!   sans-IO [`crat_core::dispatch`] state machine and re-placing them when nodes go away; a
//!   per-request deployment the network is too small for is created with the replicas that
//!   fit, degraded, its `DeploymentInfo::shortfall` saying why, and topped up as nodes join
//!   (nothing placeable, or a per-instance plan short of its rate, is refused `NoCapacity`);
//! - answers each node's **standing** (`NodeRequest::Standing`): what it proved, the running
//!   round so far (estimated with `crat-rewards` on the round cut at now) and its earnings
//!   per closed round, as the ledger stored them;
//! - issues **leases**: the warm replicas plus a ticket signed by the dispatcher key;
//! - **closes rounds** ([`rounds`]): ledger → `crat-rewards` → stored outcome → [`Settlement`],
//!   durably and resumably: the ledger records which closed rounds are settled, and an
//!   unsettled one (a failed settlement, a crash) is retried with backoff, after a restart
//!   too, while later rounds go on closing and settling;
//! - **verifies computations** with canary tasks ([`CanaryConfig`]): tasks whose answer it
//!   computed itself, sent to replicas as ordinary client tasks; a wrong answer is a
//!   `validations_failed` of the node in the ledger (slashing and the loss of the round's
//!   bonus follow in `crat-rewards`), and a node caught repeatedly is excluded from placement
//!   ([`crat_core::dispatch`] documents the rule, the per-operator replica cap and the limits
//!   of address-block sybil resistance);
//! - runs a **determinism gate** on every model at deploy time ([`GateConfig`]): a model that
//!   uses a random operator, or whose answers disagree with themselves on the dispatcher's
//!   reference backends, is deployed as *unverifiable* (shown in its `DeploymentInfo`): no
//!   canary, spot check or validation report counts against a node for it.
//!
//! The crate owns the glue, not the rules: placement, liveness and exclusion are the sans-IO
//! [`crat_core::dispatch`] state machine; ticket memory, usage admission, spot-check report
//! plausibility and caps, sampling rates, ticket budgets, key checks and the proof of
//! hardware (challenge sizes, deadlines, verdicts, schedule) are the sans-IO
//! [`crat_core::policy`]; round economics are `crat-rewards`. The service is split by
//! conversation (node, client, canary, compute challenges, rounds), and every refusal becomes
//! a wire error in one place.
//!
//! - **Nothing is paid on a claim.** A node's rating and mining income are what its compute
//!   challenges proved (at registration, then at random times, 24 a day by default); a missed
//!   or failed challenge ends its online session at the last passed one
//!   (`docs/hardware-proof.md`).
//!
//! Its end-to-end tests (a dispatcher with real nodes and clients on loopback QUIC: e2e,
//! limits, replays, malicious models, verification) live in `crates/testnet/tests/`, beside
//! the network they start, so that the dispatcher's own dependency tree, dev-dependencies
//! included, holds no node code (no NVML, no `nix`).
//!
//! [`Settlement`]: crat_rewards::Settlement
//!
//! # Example
//! A dispatcher on loopback QUIC with its data in a temporary directory, and an account
//! with credits and an SDK key for a client:
//!
//! ```no_run
//! use crat_dispatcher::{Dispatcher, DispatcherConfig, admin, ledger::AccountName};
//! use crat_core::money::Credits;
//! use crat_transport::quic::{QuicConfig, QuicTransport};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
//! let transport = QuicTransport::bind("127.0.0.1:7400".parse()?, &key, QuicConfig::default())?;
//! let dispatcher = Dispatcher::open(DispatcherConfig::new("/tmp/crat-dispatcher"), key, transport)?;
//! let alice = AccountName::new("alice")?;
//! admin::grant(&**dispatcher.ledger(), &alice, Credits::new(1_000_000), 0)?;
//! let sdk_key = admin::create_key(&**dispatcher.ledger(), &alice, 0, None)?;
//! println!("dispatcher {} at {}; key {sdk_key}", dispatcher.id(), dispatcher.local_addr());
//! dispatcher.run().await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod blob;
pub mod cluster;
pub mod ledger;
pub mod metrics;
pub mod rounds;
mod service;

pub use service::{
    ACCEPTED_EXCHANGES_INITIAL, CanaryConfig, CanaryOutcome, CanaryParts, Dispatcher,
    DispatcherConfig, DispatcherError, DispatcherParts, DispatcherStats, GateConfig, InputsError,
    StoreOptions, canary_inputs,
};
