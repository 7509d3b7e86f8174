//! Every message of the three conversations, and their one encoding.
//!
//! | conversation | requester → responder | module |
//! |---|---|---|
//! | node ↔ dispatcher | [`NodeRequest`] → [`DispatcherReply`]; pushes [`DispatcherPush`] → [`NodeAck`] | here |
//! | client ↔ dispatcher | [`ClientRequest`] → [`DispatcherResponse`] | here |
//! | client ↔ node | [`ClientToNode`] → [`NodeToClient`] | here |
//!
//! Each exchange is one request and one response (on QUIC, one bidirectional stream).
//!
//! # Encoding
//! A message is encoded as the protocol version ([`PROTOCOL_VERSION`], 2 bytes little-endian)
//! followed by its postcard encoding. [`decode`] refuses another version, trailing bytes and
//! non-canonical encodings (over-long varints), so one message has exactly one encoding and a
//! decoded message re-encodes to the same bytes. Size caps are applied before decoding by the
//! framing layer in `crat-transport`; nothing here allocates more than the input's length.
//!
//! ```
//! use crat_core::wire::{self, ClientToNode, NodeToClient};
//! let bytes = wire::encode(&ClientToNode::Ping)?;
//! assert_eq!(wire::decode::<ClientToNode>(&bytes)?, ClientToNode::Ping);
//! // A reply type cannot be read as a request... and neither can garbage.
//! assert!(wire::decode::<ClientToNode>(&[3, 0, 0xff]).is_err());
//! # Ok::<(), crat_core::wire::CodecError>(())
//! ```

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bps::Bps;
use crate::id::{DeploymentId, KeyId, ModelId, NodeId, PeerAddr, SdkKey, TaskId};
use crate::money::Credits;
use crate::policy::acks::AckProof;
use crate::pricing::{DeployPlan, PriceQuote};
use crate::sign::{Ack, ProvenReceipt, Registration, Signed, Ticket};
use crate::tensor::NamedTensor;

/// The protocol version every message starts with.
pub const PROTOCOL_VERSION: u16 = 7;
/// Longest error message carried in a [`WireError`].
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
/// Largest model chunk in an upload or fetch (fits the 1 MiB control frame with room to spare).
pub const CHUNK_BYTES_MAX: u32 = 768 * 1024;
/// Most usage records in one [`UsageReport`].
pub const USAGE_RECORDS_MAX: usize = 4096;
/// Most acknowledgements in one [`UsageReport`] or [`ClientCall::Acknowledge`].
pub const ACKS_MAX: usize = 256;
/// Most tensors in one message's inputs or outputs (decoded no further).
pub const TENSORS_MAX: usize = 1_024;
/// Most addresses of one node (in a registration, a lease's replica).
pub const ADDRS_MAX: usize = 16;
/// Most distinct input shapes in one [`ClientCall::InputShapes`].
pub const SHAPES_MAX: usize = 8;
/// Most inputs in one [`ShapeCount`].
pub const SHAPE_INPUTS_MAX: usize = 16;
/// Longest input name in a [`ShapeCount`], in bytes.
pub const SHAPE_NAME_BYTES_MAX: usize = 256;
/// Most rows a dispatcher asks a node to open for one compute challenge
/// ([`DispatcherPush::OpenRows`]).
pub const CHALLENGE_ROWS_MAX: usize = 64;
/// Longest Merkle path of an opened row: a product has at most 2¹⁶ rows
/// ([`crate::policy::challenge::DIM_MAX`]), so at most 16 sibling hashes.
pub const CHALLENGE_PATH_MAX: usize = 16;
/// Most bytes of row values in one [`NodeAck::Opened`]: room inside the 1 MiB control frame.
pub const CHALLENGE_OPENED_BYTES_MAX: usize = 768 * 1024;

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Fewer than the two version bytes.
    #[error("message is shorter than its version header")]
    Truncated,
    /// Another protocol version.
    #[error("protocol version {got} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version the peer sent.
        got: u16,
    },
    /// The body is not a valid message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes left over after one complete message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A valid message written in a non-canonical way (e.g. over-long varints).
    #[error("message is not canonically encoded")]
    NonCanonical,
    /// The message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// A type that travels as a whole message (has the version header).
pub trait Message: Serialize + DeserializeOwned {}

/// A response type that can carry a [`WireError`] in place of an answer, so a server can
/// refuse any request (oversized, undecodable, unauthorised) with a typed error.
pub trait Reply: Message {
    /// The response that carries `error`.
    fn error(error: WireError) -> Self;
}

/// Appends the encoding of `msg` (version + postcard) to `out`.
pub fn encode_into<M: Message>(msg: &M, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    postcard::to_io(msg, &mut *out)
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// The encoding of `msg`: version + postcard.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(encoded_len(msg)?);
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Exact length of `encode(msg)`, computed without encoding.
pub fn encoded_len<M: Message>(msg: &M) -> Result<usize, CodecError> {
    postcard::experimental::serialized_size(msg)
        .map(|n| n + 2)
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes exactly one message of type `M` from `bytes`.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, CodecError> {
    let (version, body) = bytes
        .split_first_chunk::<2>()
        .ok_or(CodecError::Truncated)?;
    let got = u16::from_le_bytes(*version);
    if got != PROTOCOL_VERSION {
        return Err(CodecError::Version { got });
    }
    let (msg, rest) =
        postcard::take_from_bytes::<M>(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing(rest.len()));
    }
    // postcard's encoding is deterministic and only varints have longer spellings, so a
    // message is canonical exactly when re-encoding it takes as many bytes as we consumed.
    if encoded_len(&msg)? != bytes.len() {
        return Err(CodecError::NonCanonical);
    }
    Ok(msg)
}

/// What went wrong, as a machine-readable code. SDK error types map from these.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed or makes no sense in this state.
    BadRequest,
    /// The SDK key is unknown or its secret is wrong.
    Unauthenticated,
    /// The SDK key has expired.
    KeyExpired,
    /// The SDK key was revoked.
    KeyRevoked,
    /// The balance or allowance does not cover the cost.
    InsufficientCredits,
    /// The model was refused (not ONNX, hash mismatch, unsupported).
    ModelRejected,
    /// Something exceeds a size cap.
    TooLarge,
    /// The named model, deployment or upload does not exist.
    NotFound,
    /// No node can take the work now.
    NoCapacity,
    /// The inputs do not match the model (names, dtypes, shapes).
    InvalidInput,
    /// The ticket is forged, expired, for another deployment or another node.
    TicketRejected,
    /// The peer is over a rate or queue limit; retry later.
    Busy,
    /// The work did not finish within its time limit.
    Timeout,
    /// The peer failed internally; the request may be retried elsewhere.
    Internal,
    /// A per-instance replica is at its share of the deployment's guaranteed rate; another
    /// replica (or a later try) may take the task.
    RateLimited,
    /// The ticket's credit budget does not cover this task: lease again (a new ticket carries
    /// what is left of the allowance).
    BudgetExhausted,
    /// The key or account holds its whole share of a resource the network shares (tickets
    /// still remembered, deployments): it gets more once some of it is released (tickets
    /// expire, a deployment stops). Others are not refused for it.
    QuotaExceeded,
    /// The deployment's plan allows no model update now: its update frequency allows the
    /// next one later (the message says when), or none at all (`never`).
    UpdateTooFrequent,
}

impl ErrorCode {
    /// Every code, in declaration order (for tables, tests and the SDKs' error classes; the
    /// test `error_code_all_lists_every_code` keeps it complete).
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::KeyExpired,
        ErrorCode::KeyRevoked,
        ErrorCode::InsufficientCredits,
        ErrorCode::ModelRejected,
        ErrorCode::TooLarge,
        ErrorCode::NotFound,
        ErrorCode::NoCapacity,
        ErrorCode::InvalidInput,
        ErrorCode::TicketRejected,
        ErrorCode::Busy,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::RateLimited,
        ErrorCode::BudgetExhausted,
        ErrorCode::QuotaExceeded,
        ErrorCode::UpdateTooFrequent,
    ];

    /// The code in `snake_case` (`"bad_request"`, `"busy"`), for metric labels and logs: one
    /// short, stable name per code, so a label over codes has a bounded set of values.
    pub const fn label(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::KeyRevoked => "key_revoked",
            ErrorCode::InsufficientCredits => "insufficient_credits",
            ErrorCode::ModelRejected => "model_rejected",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::TicketRejected => "ticket_rejected",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BudgetExhausted => "budget_exhausted",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::UpdateTooFrequent => "update_too_frequent",
        }
    }
}

/// An error returned in place of a response.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail, at most [`ERROR_MESSAGE_BYTES_MAX`] bytes.
    pub message: String,
}

impl WireError {
    /// An error with a message, truncated to [`ERROR_MESSAGE_BYTES_MAX`] at a char boundary.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate_at_char(&mut message, ERROR_MESSAGE_BYTES_MAX);
        Self { code, message }
    }
}

/// Shortens `text` to at most `bytes_max` bytes, at a char boundary.
pub(crate) fn truncate_at_char(text: &mut String, bytes_max: usize) {
    if text.len() > bytes_max {
        let mut cut = bytes_max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for WireError {}

// ---------------------------------------------------------------------------------------------
// node ↔ dispatcher

/// A node's load, sent with every heartbeat.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Tasks running now.
    pub inflight: u32,
    /// Tasks waiting in queues.
    pub queued: u32,
    /// Accelerator utilisation in basis points (0..=10,000).
    pub utilisation_bps: Bps,
}

/// Sent by a node every heartbeat interval; missing several marks it offline.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increases by one per heartbeat since registration.
    pub seq: u64,
    /// Current load.
    pub load: NodeLoad,
    /// Models loaded in memory.
    pub loaded_models: Vec<ModelId>,
    /// Deployments this node serves and is ready for, each with the model it serves.
    pub ready: Vec<ReadyReplica>,
}

/// A deployment a node serves, and the model it serves it with (while a model update rolls
/// out, a replica serves the model before until the new one is loaded).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadyReplica {
    /// The deployment.
    pub deployment: DeploymentId,
    /// The model it answers with.
    pub model: ModelId,
}

/// What one task used, reported by the node that ran it; charged once per (deployment, task
/// id, inputs digest): a retry of the same task on another replica is charged once, a task id
/// reused with other inputs is another task.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The task.
    pub task: TaskId,
    /// Its deployment.
    pub deployment: DeploymentId,
    /// [`tensors_digest`](crate::sign::tensors_digest) of its inputs.
    pub inputs_digest: [u8; 32],
    /// The key to charge.
    pub key: KeyId,
    /// Nonce of the ticket the task came with.
    pub ticket_nonce: [u8; 16],
    /// Input bytes (what per-request pricing reads).
    pub input_bytes: u64,
    /// Output bytes.
    pub output_bytes: u64,
    /// Time spent computing, in microseconds.
    pub compute_us: u64,
}

/// A batch of usage records, at most [`USAGE_RECORDS_MAX`], with the latest acknowledgement
/// the node holds of each ticket they name (at most [`ACKS_MAX`]): a record is charged only
/// within what the client acknowledged (see [`crate::policy::acks`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UsageReport {
    /// The records.
    pub records: Vec<UsageRecord>,
    /// The clients' acknowledgements, each with its ticket.
    pub acks: Vec<AckProof>,
}

/// Where a replica stands on its node.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Fetching or loading the model.
    Loading,
    /// Serving.
    Ready,
    /// Could not load; the reason is the backend's.
    Failed(String),
}

/// An instruction to serve a deployment.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Assignment {
    /// The deployment.
    pub deployment: DeploymentId,
    /// Its model.
    pub model: ModelId,
    /// The model's size, for the cache budget.
    pub model_bytes: u64,
    /// The plan's input limit, enforced by the node.
    pub max_input_bytes: u64,
    /// For a per-instance plan, this replica's share of the guaranteed rate (tasks per
    /// second, also its burst), enforced by the node: beyond it tasks are refused with
    /// [`ErrorCode::RateLimited`]. `None` for per-request plans, whose tasks are paid one by
    /// one.
    pub rate_per_s: Option<u32>,
}

/// Network demand as the dispatcher sees it; nodes start their idle workload when it is low.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Demand {
    /// Demand relative to capacity, in basis points (0 idle … 10,000 saturated).
    pub level_bps: Bps,
}

/// Requests a node sends to the dispatcher.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum NodeRequest {
    /// Join the network (boxed: a registration is far larger than the other requests).
    Register(Box<Signed<Registration>>),
    /// I am alive; this is my load.
    Heartbeat(Heartbeat),
    /// Send me a piece of a model.
    FetchModel {
        /// The model.
        model: ModelId,
        /// Byte offset.
        offset: u64,
        /// Bytes wanted, at most [`CHUNK_BYTES_MAX`].
        len: u32,
    },
    /// A replica changed state.
    ReplicaState {
        /// The deployment.
        deployment: DeploymentId,
        /// The model the state is about (the assignment's).
        model: ModelId,
        /// Its new state.
        state: ReplicaState,
    },
    /// Tasks I ran.
    Usage(UsageReport),
    /// How do I stand: what I proved, this round so far, and my earnings of the last
    /// `rounds` closed rounds (at most [`STANDING_ROUNDS_MAX`]; more is refused with
    /// [`ErrorCode::BadRequest`]). Answered [`DispatcherReply::Standing`] about the node
    /// whose key the connection was made with; it may be the first request of a connection
    /// (an operator's tool holding the node's key asks without registering).
    Standing {
        /// Closed rounds wanted, newest first.
        rounds: u32,
    },
    /// [`NodeRequest::Standing`] about the node that signed `query` (not the connection's
    /// identity): for an operator's tool on an endpoint of its own while the node runs. It
    /// may be the first request of a connection.
    StandingOf(Box<crate::sign::Signed<crate::sign::StandingQuery>>),
    /// Can I be reached directly? The dispatcher dials the address this connection's packets
    /// come from, from another port (a NAT or firewall lets that in only when it forwards the
    /// port), and answers [`DispatcherReply::Reach`]. For `crat node doctor`; it may be the
    /// first request of a connection, and needs no registration.
    Reach,
}

impl Message for NodeRequest {}

/// How the dispatcher sees a node's address ([`NodeRequest::Reach`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Reach {
    /// The address the request's packets came from (after any NAT: the node's public address
    /// and port), when the connection shows one.
    pub observed: Option<PeerAddr>,
    /// Whether a connection from another port of the dispatcher's host to `observed` got
    /// through; `None` when it was not tried (nothing observed, or no probe endpoint).
    pub inbound: Option<bool>,
    /// How long the attempt took, milliseconds.
    pub probe_ms: u32,
}

/// Most closed rounds one [`NodeRequest::Standing`] returns.
pub const STANDING_ROUNDS_MAX: u32 = 64;

/// A node's standing with the dispatcher ([`NodeRequest::Standing`]): the numbers its
/// payouts are computed from, as the dispatcher holds them. Money in integers: µUSD and
/// µCRAT.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeStanding {
    /// The node.
    pub node: NodeId,
    /// Whether the dispatcher counts it online now (registered, heartbeats on time, its
    /// last challenge passed).
    pub online: bool,
    /// What its compute challenges proved: its rating and mining income are these, never
    /// its claim.
    pub proven: ProvenHardware,
    /// Challenge rounds passed since its current connection registered.
    pub challenges_passed: u64,
    /// Challenge rounds failed or missed since then.
    pub challenges_failed: u64,
    /// CRAT held after the last closed round, µCRAT.
    pub crat_micro: crate::money::MicroCrat,
    /// Committed rounds in a row up to the last closed round.
    pub streak: u64,
    /// Uptime over all closed rounds, seconds.
    pub uptime_total_s: u64,
    /// The round running now, so far.
    pub round: RoundSoFar,
    /// Earnings of closed rounds it took part in, newest first (at most the `rounds` asked).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, {STANDING_ROUNDS_MAX as usize}>")]
    pub closed: Vec<RoundEarnings>,
    /// Whether the dispatcher reached it directly when it registered ([`Replica::direct`]):
    /// clients behind NATs reach a node that is not only through a relay or hole punching.
    pub direct: Option<bool>,
}

/// What a node's compute challenges proved ([`crate::policy::hardware::Proven`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ProvenHardware {
    /// Its proven rating (1 until a GPU is proven).
    pub rating: crate::hardware::PowerRating,
    /// Daily mining income of its proven GPUs, µUSD: what a committed round pays.
    pub mining_income_usd_micro_per_day: crate::money::MicroUsd,
    /// Whether its CPU challenge passed.
    pub cpu: bool,
    /// Its proven GPUs (at most [`GPUS_MAX`](crate::policy::hardware::GPUS_MAX)).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, {crate::policy::hardware::GPUS_MAX}>")]
    pub gpus: Vec<ProvenGpu>,
    /// Whether a challenge round has finished since it connected (`false`: the above is
    /// what the ledger holds, nothing proven on this connection yet).
    pub challenged: bool,
}

/// One proven GPU.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ProvenGpu {
    /// Its index in the node's registration.
    pub device: u32,
    /// The GPU table's row it was proven as.
    pub name: String,
    /// That row's rating.
    pub rating: crate::hardware::PowerRating,
}

/// The round running now, as far as it went: what the node's numbers would give if it
/// ended now (the `crat-rewards` rules of `docs/economics.md` on the round so far, its
/// length cut to `elapsed_s`). An estimate: other nodes' uptime and the round's income still
/// change.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RoundSoFar {
    /// The round's index.
    pub index: u64,
    /// When it started (Unix seconds).
    pub start_s: u64,
    /// Its full length, seconds.
    pub length_s: u64,
    /// Seconds of it gone when the estimate was made.
    pub elapsed_s: u64,
    /// Seconds online in it so far.
    pub uptime_s: u64,
    /// Whether it is still committed: down no longer than the round allows so far.
    pub committed: bool,
    /// Whether it would be eligible for a bonus now.
    pub eligible: bool,
    /// Its rank among the eligible nodes now; `None` when not eligible.
    pub rank: Option<u64>,
    /// Nodes ranked (eligible) now.
    pub ranked: u64,
    /// Ranks a bonus would go to now.
    pub paid_ranks: u64,
    /// Guaranteed USD so far, µUSD.
    pub guaranteed_usd_micro: crate::money::MicroUsd,
    /// Bonus USD its rank would get from the income so far, µUSD.
    pub bonus_usd_micro: crate::money::MicroUsd,
    /// Tasks it served in the round so far that clients acknowledged and were charged.
    pub tasks_served: u64,
}

/// A node's outcome of one closed round, as stored when the round closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RoundEarnings {
    /// The round's index.
    pub index: u64,
    /// When it started (Unix seconds).
    pub start_s: u64,
    /// Seconds online in it.
    pub uptime_s: u64,
    /// Whether it was committed for the whole round.
    pub committed: bool,
    /// Its rank; `None` when not eligible.
    pub rank: Option<u64>,
    /// Guaranteed USD paid, µUSD.
    pub guaranteed_usd_micro: crate::money::MicroUsd,
    /// Bonus USD paid, µUSD.
    pub bonus_usd_micro: crate::money::MicroUsd,
    /// CRAT issued (streak, peak hours, validations), µCRAT.
    pub crat_issued_micro: crate::money::MicroCrat,
    /// CRAT slashed, µCRAT.
    pub crat_slashed_micro: crate::money::MicroCrat,
    /// CRAT held at its end, µCRAT.
    pub crat_end_micro: crate::money::MicroCrat,
}

/// The dispatcher's replies to [`NodeRequest`]s.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DispatcherReply {
    /// Registration accepted.
    Registered {
        /// The dispatcher's key, which signs tickets.
        dispatcher: NodeId,
        /// How often to heartbeat.
        heartbeat_interval_ms: u32,
        /// What to serve.
        assignments: Vec<Assignment>,
    },
    /// Heartbeat received.
    HeartbeatAck {
        /// Current demand.
        demand: Demand,
        /// The full set of deployments this node should serve.
        assignments: Vec<Assignment>,
    },
    /// A piece of a model.
    ModelChunk {
        /// Byte offset.
        offset: u64,
        /// The model's total size.
        total_bytes: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Usage stored: how many records were new and how many were already known; the
    /// records listed in `held` (indices into the report) were not acknowledged by their
    /// client yet: the node keeps them and reports them again later.
    UsageAck {
        /// Newly charged.
        accepted: u32,
        /// Already charged before (same deployment, task id and inputs), or never chargeable.
        duplicates: u32,
        /// Records to report again, by index, ascending.
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, USAGE_RECORDS_MAX>")]
        held: Vec<u32>,
    },
    /// Done.
    Ok,
    /// Refused.
    Error(WireError),
    /// The node's standing ([`NodeRequest::Standing`]; boxed: far larger than the other
    /// replies).
    Standing(Box<NodeStanding>),
    /// How the dispatcher sees the node's address ([`NodeRequest::Reach`]).
    Reach(Reach),
}

impl Message for DispatcherReply {}

impl Reply for DispatcherReply {
    fn error(error: WireError) -> Self {
        Self::Error(error)
    }
}

/// Requests the dispatcher pushes to a node on the node's connection.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DispatcherPush {
    /// Start serving a deployment.
    Assign(Assignment),
    /// Stop serving a deployment.
    Unassign {
        /// The deployment.
        deployment: DeploymentId,
    },
    /// Demand changed.
    Demand(Demand),
    /// A compute challenge (proof of hardware, `crat_core::policy::hardware`): compute
    /// `A · B` from the seed on the named device and answer [`NodeAck::Committed`] with the
    /// Merkle root of its rows before the deadline.
    Challenge(ChallengeRequest),
    /// Open these rows of challenge `id`'s committed product; answered [`NodeAck::Opened`].
    OpenRows {
        /// The challenge.
        id: u64,
        /// Rows to open, at most [`CHALLENGE_ROWS_MAX`].
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, CHALLENGE_ROWS_MAX>")]
        rows: Vec<u32>,
    },
}

impl Message for DispatcherPush {}

/// One compute challenge: `A (n × k) · B (k × m)` generated from `seed`
/// ([`crate::policy::challenge::ChallengeSpec`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// Chosen by the dispatcher, unique per node; names the answer and the opening.
    pub id: u64,
    /// The matrices' seed (fresh and secret until sent).
    pub seed: [u8; 32],
    /// Rows of `A` and of the product.
    pub n: u32,
    /// Inner dimension.
    pub k: u32,
    /// Columns of `B` and of the product.
    pub m: u32,
    /// The GPU to run it on, as an index into the registration's GPU list; `None`: the CPU
    /// (or whatever the node serves with).
    pub device: Option<u32>,
    /// How long the dispatcher waits for the commitment, from sending the challenge.
    pub deadline_ms: u32,
}

/// One opened row of a challenge's product.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RowOpening {
    /// The row.
    pub row: u32,
    /// Its `m` values, `f32` little-endian.
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
    /// Sibling hashes from the row's leaf up, at most [`CHALLENGE_PATH_MAX`].
    pub path: Vec<[u8; 32]>,
}

/// A node's answer to a [`DispatcherPush`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum NodeAck {
    /// Done.
    Ok,
    /// Refused.
    Error(WireError),
    /// The answer to [`DispatcherPush::Challenge`]: the Merkle root of the product's rows.
    Committed {
        /// The challenge.
        id: u64,
        /// The root.
        root: [u8; 32],
    },
    /// The answer to [`DispatcherPush::OpenRows`], in the order asked.
    Opened {
        /// The challenge.
        id: u64,
        /// The rows.
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, CHALLENGE_ROWS_MAX>")]
        rows: Vec<RowOpening>,
    },
}

impl Message for NodeAck {}

impl Reply for NodeAck {
    fn error(error: WireError) -> Self {
        Self::Error(error)
    }
}

// ---------------------------------------------------------------------------------------------
// client ↔ dispatcher

/// Where a deployment stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DeploymentState {
    /// Replicas are being placed and loaded.
    Pending,
    /// Enough replicas are warm.
    Ready,
    /// Fewer replicas than the plan needs are warm.
    Degraded,
    /// Stopped by its owner or out of credits.
    Stopped,
    /// Stopped because its model failed to load on several nodes (see
    /// [`DeploymentInfo::failure`]).
    Failed,
}

/// A deployment as the dispatcher describes it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DeploymentInfo {
    /// Its id.
    pub id: DeploymentId,
    /// Its model: the one it serves, or is switching to after an update
    /// ([`ClientCall::UpdateModel`]).
    pub model: ModelId,
    /// Its plan.
    pub plan: DeployPlan,
    /// Its state.
    pub state: DeploymentState,
    /// Replicas ready now.
    pub replicas_ready: u32,
    /// Of those, the replicas serving `model`: while an update rolls out, the others still
    /// serve the model before it (each switches once the new model is loaded and warm).
    pub replicas_on_model: u32,
    /// Model updates made so far.
    pub updates: u32,
    /// The earliest time (Unix seconds) the plan allows the next update; `None` when it
    /// allows no more.
    pub next_update_at_s: Option<u64>,
    /// Replicas the plan needs.
    pub replicas_wanted: u32,
    /// What it cost / costs.
    pub price: PriceQuote,
    /// Credits left in a per-request allowance (0 for per-instance plans).
    pub allowance_left: Credits,
    /// Whether its answers can be checked: the verdict of the dispatcher's determinism gate,
    /// fixed at deploy time.
    pub verifiability: Verifiability,
    /// Why the deployment failed ([`DeploymentState::Failed`]): the nodes' load errors.
    pub failure: Option<String>,
    /// Why it has fewer replicas placed than `replicas_wanted` (a network too small, or too
    /// busy): it is served by the replicas it has, [`DeploymentState::Degraded`] once they
    /// are warm, and topped up as capacity joins. `None` when every wanted replica is placed.
    pub shortfall: Option<String>,
    /// What its model takes and returns, as the model declares it (from the upload check);
    /// `None` for a model whose declaration the wire cannot carry
    /// ([`ModelSignature::is_bounded`]).
    pub signature: Option<ModelSignature>,
}

impl DeploymentInfo {
    /// Whether it serves as well as it can now: [`DeploymentState::Ready`], or
    /// [`DeploymentState::Degraded`] for want of capacity ([`DeploymentInfo::shortfall`]) with
    /// a replica warm (on a network too small for every wanted replica, as ready as it gets
    /// until nodes join). What the SDK's and the CLI's waits wait for.
    pub fn is_serving(&self) -> bool {
        self.state == DeploymentState::Ready
            || (self.state == DeploymentState::Degraded
                && self.shortfall.is_some()
                && self.replicas_ready > 0)
    }

    /// Whether every warm replica serves `model`: a model update has rolled out.
    pub fn is_switched(&self) -> bool {
        self.replicas_on_model == self.replicas_ready
    }
}

/// Most dimensions of one tensor in a [`ModelSignature`] (models may declare more than a
/// task's tensors carry, [`RANK_MAX`](crate::tensor::RANK_MAX)).
pub const SIGNATURE_RANK_MAX: usize = 64;
/// Longest tensor name in a [`ModelSignature`], in bytes.
pub const SIGNATURE_NAME_BYTES_MAX: usize = 1_024;

/// What a model takes and returns: its graph's declared inputs and outputs, in graph order
/// (initializers left out). Clients read names, element types and shapes here (the KServe
/// v2 model metadata is this).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ModelSignature {
    /// Inputs (at most [`TENSORS_MAX`]).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, TENSORS_MAX>")]
    pub inputs: Vec<TensorSignature>,
    /// Outputs (at most [`TENSORS_MAX`]).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, TENSORS_MAX>")]
    pub outputs: Vec<TensorSignature>,
}

impl ModelSignature {
    /// Whether it is within the limits above (tensors, rank, name length).
    pub fn is_bounded(&self) -> bool {
        self.inputs.len() <= TENSORS_MAX
            && self.outputs.len() <= TENSORS_MAX
            && self
                .inputs
                .iter()
                .chain(&self.outputs)
                .all(TensorSignature::is_bounded)
    }

    /// Whether a model with this signature can replace one with signature `old` under the
    /// same callers ([`ClientCall::UpdateModel`]): the same inputs by name and element type,
    /// each accepting every shape the old one accepted (a dimension the old model fixed is
    /// the same or left open, one it left open stays open); and every output of the old
    /// model, by name and element type, with the same rank where both declare a shape
    /// (dimensions both fix are equal). New outputs may be added; none may go.
    pub fn check_replaces(&self, old: &ModelSignature) -> Result<(), SignatureMismatch> {
        for o in &old.inputs {
            let n = find_tensor(&self.inputs, &o.name)
                .ok_or_else(|| SignatureMismatch::InputGone(o.name.clone()))?;
            if n.dtype != o.dtype {
                return Err(SignatureMismatch::DType(o.name.clone(), o.dtype, n.dtype));
            }
            let accepts = match (&o.shape, &n.shape) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(os), Some(ns)) => {
                    os.len() == ns.len()
                        && os.iter().zip(ns).all(|(od, nd)| nd.is_none() || nd == od)
                }
            };
            if !accepts {
                return Err(SignatureMismatch::InputShape(o.name.clone()));
            }
        }
        if let Some(extra) = self
            .inputs
            .iter()
            .find(|n| find_tensor(&old.inputs, &n.name).is_none())
        {
            return Err(SignatureMismatch::InputAdded(extra.name.clone()));
        }
        for o in &old.outputs {
            let n = find_tensor(&self.outputs, &o.name)
                .ok_or_else(|| SignatureMismatch::OutputGone(o.name.clone()))?;
            if n.dtype != o.dtype {
                return Err(SignatureMismatch::DType(o.name.clone(), o.dtype, n.dtype));
            }
            if let (Some(os), Some(ns)) = (&o.shape, &n.shape)
                && (os.len() != ns.len()
                    || os
                        .iter()
                        .zip(ns)
                        .any(|(od, nd)| od.is_some() && nd.is_some() && od != nd))
            {
                return Err(SignatureMismatch::OutputShape(o.name.clone()));
            }
        }
        Ok(())
    }
}

fn find_tensor<'a>(tensors: &'a [TensorSignature], name: &str) -> Option<&'a TensorSignature> {
    tensors.iter().find(|t| t.name == name)
}

/// Why a model cannot replace another under the same callers
/// ([`ModelSignature::check_replaces`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureMismatch {
    /// An input of the old model is not an input of the new one.
    #[error("input {0:?} of the deployed model is not an input of the new one")]
    InputGone(String),
    /// The new model takes an input the old one did not (callers do not send it).
    #[error("the new model takes input {0:?}, which the deployed model does not")]
    InputAdded(String),
    /// An input or output changed element type.
    #[error("{0:?} is {1:?} in the deployed model and {2:?} in the new one")]
    DType(String, crate::tensor::DType, crate::tensor::DType),
    /// An input accepts fewer shapes than before.
    #[error("input {0:?} of the new model does not accept every shape the deployed model accepts")]
    InputShape(String),
    /// An output of the old model is not an output of the new one.
    #[error("output {0:?} of the deployed model is not an output of the new one")]
    OutputGone(String),
    /// An output changed rank or a fixed dimension.
    #[error("output {0:?} has another rank or fixed dimension in the new model")]
    OutputShape(String),
}

/// One declared input or output of a model.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TensorSignature {
    /// Its name in the graph (at most [`SIGNATURE_NAME_BYTES_MAX`] bytes).
    pub name: String,
    /// Its element type.
    pub dtype: crate::tensor::DType,
    /// Its dimensions, outermost first: `None` for a dimension the model leaves open (a
    /// batch size, a sequence length). The whole shape is `None` for an output whose shape
    /// the model does not declare.
    #[serde(deserialize_with = "bounded_shape")]
    pub shape: Option<Vec<Option<u64>>>,
}

impl TensorSignature {
    /// Whether it is within the limits above.
    pub fn is_bounded(&self) -> bool {
        self.name.len() <= SIGNATURE_NAME_BYTES_MAX
            && self
                .shape
                .as_ref()
                .is_none_or(|s| s.len() <= SIGNATURE_RANK_MAX)
    }
}

/// An optional shape decoded with at most [`SIGNATURE_RANK_MAX`] dimensions.
fn bounded_shape<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Option<u64>>>, D::Error> {
    #[derive(Deserialize)]
    struct Dims(
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, SIGNATURE_RANK_MAX>")]
        Vec<Option<u64>>,
    );
    Ok(Option::<Dims>::deserialize(deserializer)?.map(|d| d.0))
}

/// Whether a deployment's answers can be checked by recomputing them (canaries, spot checks):
/// the verdict of the dispatcher's determinism gate on its model, fixed when it is deployed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Verifiability {
    /// The model uses no random operator and gave the same answers (within the validation
    /// tolerance) twice on each of the dispatcher's reference backends, and on all of them
    /// alike. Canaries and spot checks count: a node whose answer disagrees fails a
    /// validation.
    Verifiable,
    /// The model's answers cannot be checked: honest replicas could disagree. The dispatcher
    /// sends it no canary, leases sample no task for a spot check (`validation_bps` 0), and no
    /// validation counts against a node for it. The client gets unverified answers.
    Unverifiable(Unverifiable),
}

impl Verifiability {
    /// Whether canaries and spot checks count for the deployment.
    pub fn is_verifiable(self) -> bool {
        self == Self::Verifiable
    }
}

impl fmt::Display for Verifiability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verifiable => f.write_str("verifiable"),
            Self::Unverifiable(why) => write!(f, "unverifiable: {why}"),
        }
    }
}

/// Why a model's answers cannot be checked.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Unverifiable {
    /// The model uses a random operator (`RandomUniform`, `RandomNormal`, their `Like`
    /// forms, `Multinomial`, `Bernoulli`): without a seed its answers differ from run to run;
    /// with one they still differ between runtimes and between sessions of one runtime.
    /// Decided from the model's operators, without running it.
    RandomOperator,
    /// Two runs of the model on the same inputs on one reference backend disagreed.
    Nondeterministic,
    /// Two reference backends (say tract and ONNX Runtime) disagreed on the same inputs, so
    /// honest nodes on different backends would too.
    BackendsDisagree,
    /// The gate's runs did not finish within its time limit.
    TimedOut,
    /// The model, the memory it is estimated to need (above what the dispatcher's reference
    /// backends may hold: it is never loaded there), or the inputs it declares are above the
    /// gate's limits.
    TooLarge,
    /// No reference backend could load and run the model on generated inputs (an operator
    /// or an input type it does not support).
    NotRunnable,
}

impl fmt::Display for Unverifiable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RandomOperator => "the model uses a random operator",
            Self::Nondeterministic => "two runs on the same inputs disagreed",
            Self::BackendsDisagree => "two reference backends disagreed on the same inputs",
            Self::TimedOut => "the determinism check ran out of time",
            Self::TooLarge => {
                "the model, its estimated memory or its inputs are above the determinism check's limits"
            }
            Self::NotRunnable => "no reference backend could run the model",
        })
    }
}

/// One replica a client may call.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Replica {
    /// The node's identity (pinned when connecting).
    pub node: NodeId,
    /// Its addresses (at most [`ADDRS_MAX`]).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, ADDRS_MAX>")]
    pub addrs: Vec<PeerAddr>,
    /// Its operator (address block, see `crat_core::dispatch::operator_of`): a spot check's
    /// validator is never of the worker's operator.
    pub operator: u64,
    /// Whether the dispatcher reached it directly from outside (a connection from another
    /// port to its observed address): `Some(true)`, clients connect straight to it;
    /// `Some(false)`, it is behind a NAT or firewall, and a connection starts on a relay
    /// (hole punching may then find a direct path); `None`, not checked yet.
    pub direct: Option<bool>,
}

/// Permission to call a deployment's replicas directly.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Lease {
    /// Where to send tasks.
    pub replicas: Vec<Replica>,
    /// The ticket to present to them.
    pub ticket: Signed<Ticket>,
    /// Share of tasks the client spot-checks on a second replica, in basis points.
    pub validation_bps: Bps,
}

/// Status of an SDK key.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Past its lifetime.
    Expired,
    /// Revoked by its owner or an operator.
    Revoked,
}

/// An SDK key as the dispatcher describes it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Its id.
    pub id: KeyId,
    /// Its status.
    pub status: KeyStatus,
    /// When it was created (Unix seconds).
    pub created_at_s: u64,
    /// When it expires, if ever (Unix seconds).
    pub expires_at_s: Option<u64>,
}

/// What a client asks of the dispatcher.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClientCall {
    /// Start or resume uploading a model.
    UploadBegin {
        /// blake3 of the whole model.
        model: ModelId,
        /// Its size.
        total_bytes: u64,
    },
    /// One piece of an upload.
    UploadChunk {
        /// The model being uploaded.
        model: ModelId,
        /// Where this piece starts.
        offset: u64,
        /// The bytes, at most [`CHUNK_BYTES_MAX`].
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// All pieces sent: verify and store.
    UploadFinish {
        /// The model.
        model: ModelId,
    },
    /// What would deploying cost?
    Quote {
        /// The model.
        model: ModelId,
        /// The plan.
        plan: DeployPlan,
    },
    /// Deploy a stored model.
    Deploy {
        /// The model.
        model: ModelId,
        /// The plan.
        plan: DeployPlan,
    },
    /// Replace a deployment's model by another stored model with a compatible signature
    /// ([`ModelSignature::check_replaces`]): same deployment, ticket and endpoint; each
    /// replica loads the new model and switches once it is warm, serving the old one until
    /// then. Bounded by the plan's update frequency ([`ErrorCode::UpdateTooFrequent`]).
    /// Answered with the deployment's description; asking for the model it already has
    /// changes nothing (a retry is safe).
    UpdateModel {
        /// The deployment.
        deployment: DeploymentId,
        /// The new model.
        model: ModelId,
    },
    /// Describe a deployment.
    Deployment {
        /// Which.
        deployment: DeploymentId,
    },
    /// Stop a deployment (its allowance left goes back to the account once the usage window
    /// of its last tickets has ended).
    Undeploy {
        /// Which.
        deployment: DeploymentId,
    },
    /// Replicas and a ticket for a deployment.
    Lease {
        /// Which.
        deployment: DeploymentId,
    },
    /// Credits left.
    Balance,
    /// Status of the calling key.
    KeyStatus,
    /// May `endpoint` use the network's relays? Asked by a relay (`crat relay`, with an SDK
    /// key of its own) when an endpoint connects to it: answered
    /// [`DispatcherResponse::RelayAccess`], yes for nodes the dispatcher knows, clients that
    /// used a valid key within the last hour, and the dispatcher's own canary endpoints.
    RelayAccess {
        /// The endpoint (its transport identity).
        endpoint: NodeId,
    },
    /// The outcome of a spot check.
    ReportValidation(Box<ValidationReport>),
    /// Acknowledgements of work received from nodes (at most [`ACKS_MAX`]), so that work a
    /// node did not report is charged anyway.
    Acknowledge(Vec<AckProof>),
    /// The shapes of the inputs this client sent to one of its account's deployments, and
    /// how many tasks had each since its last report (at most [`SHAPES_MAX`]): the
    /// dispatcher's canaries take their shapes from them, so that they look like the
    /// deployment's real traffic. Values are never sent.
    InputShapes {
        /// The deployment.
        deployment: DeploymentId,
        /// The shapes seen.
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, SHAPES_MAX>")]
        shapes: Vec<ShapeCount>,
    },
    /// Make a model this account uploaded public (anyone may then deploy it by its hash) or
    /// private again. A model is otherwise usable only by the accounts that uploaded its
    /// bytes.
    SetModelPublic {
        /// The model.
        model: ModelId,
        /// Public or not.
        public: bool,
    },
    /// A replica of one of this account's deployments answered without a valid receipt. An
    /// unsigned answer proves nothing against the node (anyone can claim to have received
    /// one), so the dispatcher checks the node itself, with a canary soon after; only that
    /// canary's verdict counts.
    ReportNoReceipt {
        /// The deployment.
        deployment: DeploymentId,
        /// The node that answered.
        node: NodeId,
    },
}

/// One input's name and dimensions.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InputDims {
    /// The input's name (at most [`SHAPE_NAME_BYTES_MAX`] bytes).
    pub name: String,
    /// Its dimensions (at most [`RANK_MAX`](crate::tensor::RANK_MAX)).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, { crate::tensor::RANK_MAX }>")]
    pub dims: Vec<u64>,
}

/// The shapes of one task's inputs, and how many tasks had them.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ShapeCount {
    /// Each input's name and dimensions (at most [`SHAPE_INPUTS_MAX`]).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, SHAPE_INPUTS_MAX>")]
    pub inputs: Vec<InputDims>,
    /// Tasks sent with these shapes.
    pub tasks: u64,
}

impl ShapeCount {
    /// Whether it is within the limits above (the dispatcher refuses one that is not).
    pub fn is_bounded(&self) -> bool {
        self.inputs.len() <= SHAPE_INPUTS_MAX
            && self.inputs.iter().all(|i| {
                i.name.len() <= SHAPE_NAME_BYTES_MAX && i.dims.len() <= crate::tensor::RANK_MAX
            })
    }
}

/// Most receipts in a [`ValidationReport`] (worker, validator, tie-breaker).
pub const REPORT_RECEIPTS_MAX: usize = 3;

/// What a client found when it ran one task on several replicas: the nodes' signed
/// receipts, in the order they were asked (the first is the worker, the others validators),
/// and which of them agreed with each other (the majority, within the tolerance of
/// `crat_core::verify`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ValidationReport {
    /// The receipts, 2 or 3.
    pub receipts: Vec<ProvenReceipt>,
    /// The nodes whose answers agreed (at least 2, more than half of the receipts).
    pub majority: Vec<NodeId>,
}

/// A client's request: the key that authenticates it and the call.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClientRequest {
    /// The caller's SDK key.
    pub key: SdkKey,
    /// What it asks.
    pub call: ClientCall,
}

impl Message for ClientRequest {}

/// The dispatcher's answers to a [`ClientRequest`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DispatcherResponse {
    /// Upload progress (also the answer to `UploadBegin`, for resuming).
    Upload {
        /// Bytes received so far, contiguous from 0.
        received_bytes: u64,
        /// The model's size.
        total_bytes: u64,
        /// Largest chunk the dispatcher accepts.
        chunk_bytes_max: u32,
    },
    /// Model verified and stored.
    ModelStored {
        /// Its id.
        model: ModelId,
        /// Its size.
        bytes: u64,
    },
    /// A price.
    Quote(PriceQuote),
    /// A deployment's description (answer to `Deploy` and `Deployment`).
    Deployment(DeploymentInfo),
    /// A lease.
    Lease(Lease),
    /// Credits left.
    Balance(Credits),
    /// A key's status.
    Key(KeyInfo),
    /// Whether an endpoint may use the relays ([`ClientCall::RelayAccess`]).
    RelayAccess {
        /// Yes or no.
        allowed: bool,
    },
    /// Done.
    Ok,
    /// Refused.
    Error(WireError),
}

impl Message for DispatcherResponse {}

impl Reply for DispatcherResponse {
    fn error(error: WireError) -> Self {
        Self::Error(error)
    }
}

// ---------------------------------------------------------------------------------------------
// client ↔ node

/// One inference task, sent straight to a node.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InferRequest {
    /// The task (the same id on every retry).
    pub task: TaskId,
    /// The deployment to run.
    pub deployment: DeploymentId,
    /// The dispatcher's permission.
    pub ticket: Signed<Ticket>,
    /// [`tensors_digest`](crate::sign::tensors_digest) of `inputs`: the node refuses a
    /// request whose inputs do not hash to it, and its receipt and usage record carry it.
    pub inputs_digest: [u8; 32],
    /// Named inputs.
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, TENSORS_MAX>")]
    pub inputs: Vec<NamedTensor>,
    /// The client's latest acknowledgement of this node's work under the ticket, if it has a
    /// newer one to give.
    pub ack: Option<Box<Signed<Ack>>>,
}

impl InferRequest {
    /// A request for `task` with `inputs`, carrying their digest.
    pub fn new(
        task: TaskId,
        deployment: DeploymentId,
        ticket: Signed<Ticket>,
        inputs: Vec<NamedTensor>,
    ) -> Self {
        Self {
            task,
            deployment,
            ticket,
            inputs_digest: crate::sign::tensors_digest(&inputs),
            inputs,
            ack: None,
        }
    }
}

/// What a client sends a node.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClientToNode {
    /// Run a task.
    Infer(Box<InferRequest>),
    /// Are you there?
    Ping,
}

impl Message for ClientToNode {}

/// A node's answer to a [`ClientToNode`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum NodeToClient {
    /// Outputs without a receipt. Nodes of this build never send it (they answer
    /// [`NodeToClient::Receipted`]); a client treats it as a failed attempt, because an
    /// answer a node does not sign for cannot be checked.
    Outputs {
        /// The task.
        task: TaskId,
        /// Named outputs.
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, TENSORS_MAX>")]
        outputs: Vec<NamedTensor>,
        /// Time spent computing, in microseconds.
        compute_us: u64,
    },
    /// Here.
    Pong,
    /// Refused or failed.
    Error(WireError),
    /// The task's outputs with the node's signed [`Receipt`] for them.
    Receipted {
        /// The task.
        task: TaskId,
        /// Named outputs.
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, TENSORS_MAX>")]
        outputs: Vec<NamedTensor>,
        /// Time spent computing, in microseconds.
        compute_us: u64,
        /// The node's receipt (its digests are of the request's inputs and of `outputs`).
        receipt: Box<ProvenReceipt>,
    },
}

impl Message for NodeToClient {}

impl Reply for NodeToClient {
    fn error(error: WireError) -> Self {
        Self::Error(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn error_code_all_lists_every_code() {
        // A new code fails to compile here until it is given the next index, and then this
        // test until it is in `ErrorCode::ALL`.
        fn index(code: ErrorCode) -> usize {
            match code {
                ErrorCode::BadRequest => 0,
                ErrorCode::Unauthenticated => 1,
                ErrorCode::KeyExpired => 2,
                ErrorCode::KeyRevoked => 3,
                ErrorCode::InsufficientCredits => 4,
                ErrorCode::ModelRejected => 5,
                ErrorCode::TooLarge => 6,
                ErrorCode::NotFound => 7,
                ErrorCode::NoCapacity => 8,
                ErrorCode::InvalidInput => 9,
                ErrorCode::TicketRejected => 10,
                ErrorCode::Busy => 11,
                ErrorCode::Timeout => 12,
                ErrorCode::Internal => 13,
                ErrorCode::RateLimited => 14,
                ErrorCode::BudgetExhausted => 15,
                ErrorCode::QuotaExceeded => 16,
                ErrorCode::UpdateTooFrequent => 17,
            }
        }
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(index(code), i, "{code:?}");
        }
    }

    #[test]
    fn error_code_labels_are_distinct_snake_case_of_the_name() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let label = code.label();
            assert!(seen.insert(label), "{label} twice");
            let camel: String = label
                .split('_')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect();
            assert_eq!(camel, format!("{code:?}"));
        }
    }

    #[test]
    fn a_model_replaces_another_when_callers_cannot_tell_the_difference() {
        use crate::tensor::DType;
        let t = |name: &str, dtype, shape: Option<Vec<Option<u64>>>| TensorSignature {
            name: name.into(),
            dtype,
            shape,
        };
        let old = ModelSignature {
            inputs: vec![t("x", DType::F32, Some(vec![None, Some(3)]))],
            outputs: vec![t("y", DType::F32, Some(vec![None, Some(10)]))],
        };
        assert_eq!(old.check_replaces(&old), Ok(()));
        // Opening a dimension, adding an output: fine.
        let wider = ModelSignature {
            inputs: vec![t("x", DType::F32, Some(vec![None, None]))],
            outputs: vec![
                t("y", DType::F32, Some(vec![None, Some(10)])),
                t("z", DType::I64, None),
            ],
        };
        assert_eq!(wider.check_replaces(&old), Ok(()));
        // The reverse fixes a dimension callers may vary, and drops an output.
        assert_eq!(
            old.check_replaces(&wider),
            Err(SignatureMismatch::InputShape("x".into()))
        );
        let mut renamed = old.clone();
        renamed.inputs[0].name = "image".into();
        assert_eq!(
            renamed.check_replaces(&old),
            Err(SignatureMismatch::InputGone("x".into()))
        );
        let mut retyped = old.clone();
        retyped.outputs[0].dtype = DType::F16;
        assert_eq!(
            retyped.check_replaces(&old),
            Err(SignatureMismatch::DType("y".into(), DType::F32, DType::F16))
        );
        let mut more = old.clone();
        more.inputs.push(t("mask", DType::Bool, Some(vec![None])));
        assert_eq!(
            more.check_replaces(&old),
            Err(SignatureMismatch::InputAdded("mask".into()))
        );
        let mut reshaped = old.clone();
        reshaped.outputs[0].shape = Some(vec![None, Some(11)]);
        assert_eq!(
            reshaped.check_replaces(&old),
            Err(SignatureMismatch::OutputShape("y".into()))
        );
    }

    #[test]
    fn version_trailing_and_canonical() {
        let bytes = encode(&NodeAck::Ok).unwrap();
        assert_eq!(bytes, vec![7, 0, 0]);
        assert_eq!(decode::<NodeAck>(&bytes).unwrap(), NodeAck::Ok);
        assert_eq!(decode::<NodeAck>(&[]), Err(CodecError::Truncated));
        assert_eq!(
            decode::<NodeAck>(&[1, 0, 0]),
            Err(CodecError::Version { got: 1 })
        );
        for old in [2, 3, 4, 5, 6] {
            assert_eq!(
                decode::<NodeAck>(&[old, 0, 0]),
                Err(CodecError::Version { got: old.into() })
            );
        }
        assert_eq!(
            decode::<NodeAck>(&[7, 0, 0, 0]),
            Err(CodecError::Trailing(1))
        );
        assert!(matches!(
            decode::<NodeAck>(&[7, 0]),
            Err(CodecError::Malformed(_))
        ));
        // Variant 0 spelled as a two-byte varint.
        assert_eq!(
            decode::<NodeAck>(&[7, 0, 0x80, 0x00]),
            Err(CodecError::NonCanonical)
        );
    }

    #[test]
    fn tensor_messages_are_validated_on_decode() {
        let msg = NodeToClient::Outputs {
            task: TaskId::from_bytes([1; 16]),
            outputs: vec![NamedTensor::new(
                "y",
                Tensor::from_slice(&[2], &[1.0f32, 2.0]).unwrap(),
            )],
            compute_us: 5,
        };
        let mut bytes = encode(&msg).unwrap();
        assert_eq!(decode::<NodeToClient>(&bytes).unwrap(), msg);
        // Shape dim 2 → 3: the data no longer matches the shape.
        // Layout tail: shape dim (1) | data len (1) | 8 data bytes | compute_us (1).
        let pos = bytes.len() - 1 - 8 - 1 - 1;
        assert_eq!(bytes[pos], 2);
        bytes[pos] = 3;
        assert!(matches!(
            decode::<NodeToClient>(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn wire_error_truncates_at_char_boundary() {
        let e = WireError::new(ErrorCode::Internal, "é".repeat(1000));
        assert!(e.message.len() <= ERROR_MESSAGE_BYTES_MAX);
        assert!(e.message.len() >= ERROR_MESSAGE_BYTES_MAX - 1);
    }
}
