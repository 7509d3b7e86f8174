//! Signed values: tickets, registrations and anything else one party vouches for.
//!
//! A [`Signed<T>`] carries the body, the signer's [`NodeId`] and an ed25519 signature over
//! `T::DOMAIN ‖ postcard(body)`. The domain-separation tag differs per body type, so a signature
//! made for one kind of value can never verify as another. Encoding is canonical (see
//! [`crate::wire`]), so the verifier re-encodes the body it decoded and checks exactly what was
//! signed.
//!
//! ```
//! use crat_core::id::{DeploymentId, KeyId, NodeId};
//! use crat_core::money::Credits;
//! use crat_core::pricing::TaskPrice;
//! use crat_core::sign::{Signed, Ticket, TicketError};
//! use ed25519_dalek::SigningKey;
//!
//! let dispatcher = SigningKey::from_bytes(&[1; 32]);
//! let dispatcher_id = NodeId::from_key(&dispatcher.verifying_key());
//! let node = NodeId::from_key(&SigningKey::from_bytes(&[2; 32]).verifying_key());
//! let client = NodeId::from_key(&SigningKey::from_bytes(&[6; 32]).verifying_key());
//! let ticket = Ticket {
//!     deployment: DeploymentId::from_bytes([3; 16]),
//!     key: KeyId::from_bytes([4; 16]),
//!     credit_budget: Credits::new(1_000),
//!     issued_at_s: 1_000,
//!     expires_at_s: 1_600,
//!     nonce: [5; 16],
//!     audience: vec![node],
//!     client,
//!     price: TaskPrice::FREE,
//! };
//! let signed = Signed::sign(ticket, &dispatcher);
//! let deployment = DeploymentId::from_bytes([3; 16]);
//! assert!(signed.verify_ticket(&dispatcher_id, 1_200, &deployment, &node, &client).is_ok());
//! assert!(matches!(
//!     signed.verify_ticket(&dispatcher_id, 1_600, &deployment, &node, &client),
//!     Err(TicketError::Expired { .. })
//! ));
//! // Only the client that leased it may present it.
//! assert!(matches!(
//!     signed.verify_ticket(&dispatcher_id, 1_200, &deployment, &node, &node),
//!     Err(TicketError::WrongClient { .. })
//! ));
//! ```

use curve25519_dalek::{EdwardsPoint, Scalar};
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use crate::hardware::{HardwareInfo, PowerRating};
use crate::id::{DeploymentId, KeyId, NodeId, PeerAddr};
use crate::money::Credits;
use crate::pricing::TaskPrice;

/// Longest ticket lifetime a node accepts (`expires_at_s - issued_at_s`): one day.
pub const TICKET_LIFETIME_S_MAX: u64 = 86_400;
/// Most nodes a ticket may name as its audience.
pub const TICKET_AUDIENCE_MAX: usize = 64;
/// Most backends a registration lists.
pub const BACKENDS_MAX: usize = 16;
/// How old a registration may be when the dispatcher receives it.
pub const REGISTRATION_AGE_S_MAX: u64 = 300;

/// A value type that can be signed, with its domain-separation tag.
pub trait Signable: Serialize {
    /// Prepended to the body's encoding before signing; unique per type.
    const DOMAIN: &'static [u8];
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signer is not the key the verifier expected.
    #[error("signed by {actual}, expected {expected}")]
    WrongSigner {
        /// The expected signer.
        expected: NodeId,
        /// Who the value says signed it.
        actual: NodeId,
    },
    /// The signer's id is not a valid ed25519 key, or is a key of small order (which can
    /// "sign" every message at once).
    #[error("signer id is not a valid ed25519 key")]
    BadKey,
    /// The signature does not match the body under the signer's key and this type's domain.
    #[error("signature does not verify")]
    BadSignature,
    /// A receipt's proof does not lead to the root its node signed.
    #[error("the receipt is not under the root its node signed")]
    BadProof,
}

/// A body with its signer and an ed25519 signature over `DOMAIN ‖ postcard(body)`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signed value.
    pub body: T,
    /// Who signed it.
    pub signer: NodeId,
    /// The signature.
    pub signature: Signature,
}

/// The exact bytes a signature covers.
fn signing_bytes<T: Serialize>(domain: &[u8], body: &T) -> Vec<u8> {
    let mut out = domain.to_vec();
    // Serializing plain data into a Vec cannot fail: postcard fails only on a full buffer or
    // on types serde cannot describe (maps with unknown length), which no signed body contains.
    postcard::to_io(body, &mut out).expect("invariant: signed bodies always serialize");
    out
}

/// A one-time ed25519 signing nonce made ahead of time, for [`Signed::sign_with`].
///
/// An ed25519 signature is `(R, s)` with `R = r·B` and `s = r + H(R ‖ A ‖ M)·a` (RFC 8032
/// §5.1.6). RFC 8032 derives `r` from the key and the message, so that a signer with a broken
/// random source cannot repeat it; a signature whose `r` is uniform modulo ℓ, secret and used
/// once verifies alike (verification never sees how `r` was chosen). Made ahead of time from
/// random bytes, the nonce takes the signature's costly part, the multiplication `r·B`, off
/// the signing path: a node makes nonces while its CPU is idle and signs an answer's receipt
/// with a hash and a multiply-add (`benches/benches/codec.rs`, `receipt/sign_with_nonce`).
///
/// # Security
/// A nonce used for two messages gives the secret key away, and a predictable one too. A
/// `SigningNonce` is neither `Clone` nor `Copy`, signing consumes it, and its scalar is zeroed
/// when it is dropped; the 64 bytes it is made from must come from a cryptographic random
/// source (the operating system's) and serve once. No nonce in hand: [`Signed::sign`], the
/// deterministic RFC 8032 signature.
pub struct SigningNonce {
    r: Scalar,
    /// `r·B`, compressed: the signature's `R`.
    big_r: [u8; 32],
}

impl SigningNonce {
    /// The nonce of `random` (64 bytes from a cryptographic random source, reduced modulo ℓ:
    /// uniform), and its point `r·B`. The bytes are zeroed.
    pub fn from_random(random: &mut [u8; 64]) -> Self {
        let r = Scalar::from_bytes_mod_order_wide(random);
        random.zeroize();
        let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
        Self { r, big_r }
    }

    /// Signs `message` with `key`, consuming the nonce.
    fn sign(mut self, key: &SigningKey, message: &[u8]) -> Signature {
        let mut expanded = ExpandedSecretKey::from(key.as_bytes());
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(self.big_r)
                .chain_update(key.verifying_key().as_bytes())
                .chain_update(message),
        );
        let s = k * expanded.scalar + self.r;
        expanded.scalar.zeroize();
        expanded.hash_prefix.zeroize();
        self.r.zeroize();
        Signature::from_components(self.big_r, s.to_bytes())
    }
}

impl Drop for SigningNonce {
    fn drop(&mut self) {
        self.r.zeroize();
    }
}

impl std::fmt::Debug for SigningNonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningNonce(..)")
    }
}

impl<T: Signable> Signed<T> {
    /// Signs `body` with `key`.
    pub fn sign(body: T, key: &SigningKey) -> Self {
        let signature = key.sign(&signing_bytes(T::DOMAIN, &body));
        Self {
            body,
            signer: NodeId::from_key(&key.verifying_key()),
            signature,
        }
    }

    /// Signs `body` with `key` and a nonce made ahead of time (see [`SigningNonce`]): the
    /// same signature scheme as [`sign`](Self::sign), verified alike, several times cheaper
    /// to make once the nonce is in hand. Without one (`None`), [`sign`](Self::sign).
    pub fn sign_with(body: T, key: &SigningKey, nonce: Option<SigningNonce>) -> Self {
        let Some(nonce) = nonce else {
            return Self::sign(body, key);
        };
        let signature = nonce.sign(key, &signing_bytes(T::DOMAIN, &body));
        Self {
            body,
            signer: NodeId::from_key(&key.verifying_key()),
            signature,
        }
    }

    /// Checks the signature and, if given, that the signer is `expected`.
    ///
    /// # Security
    /// Verification is strict (`verify_strict`): a signer key or a signature `R` of small
    /// order is refused. Plain ed25519 verification accepts, for a small-order ("weak") key,
    /// signatures such as `(R = identity, s = 0)` that verify for every message, so a value
    /// "signed" by such a key would not bind its body.
    pub fn verify(&self, expected: Option<&NodeId>) -> Result<&T, SignatureError> {
        if let Some(expected) = expected
            && *expected != self.signer
        {
            return Err(SignatureError::WrongSigner {
                expected: *expected,
                actual: self.signer,
            });
        }
        let key = self
            .signer
            .verifying_key()
            .map_err(|_| SignatureError::BadKey)?;
        if key.is_weak() {
            return Err(SignatureError::BadKey);
        }
        key.verify_strict(&signing_bytes(T::DOMAIN, &self.body), &self.signature)
            .map_err(|_| SignatureError::BadSignature)?;
        Ok(&self.body)
    }
}

/// A node's signed statement of what it answered to one task: the evidence a spot check
/// rests on. A client cannot forge it (it is signed by the node), and a node cannot deny it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Receipt {
    /// The task.
    pub task: crate::id::TaskId,
    /// Its deployment.
    pub deployment: DeploymentId,
    /// The model that computed the answer: while a model update rolls out, a deployment's
    /// replicas answer with the old model or the new one, and answers are compared (spot
    /// checks, canaries) only with answers of the same model.
    pub model: crate::id::ModelId,
    /// The node that answered (the signer).
    pub node: NodeId,
    /// [`tensors_digest`] of the inputs it ran (the request's, which the node checked): a
    /// spot check compares answers only to the same inputs.
    pub inputs_digest: [u8; 32],
    /// [`tensors_digest`] of the outputs it returned.
    pub outputs_digest: [u8; 32],
}

/// Most receipts one [`ReceiptRoot`] covers.
pub const RECEIPTS_PER_ROOT_MAX: u32 = 256;
/// Most hashes in a [`ProvenReceipt`]'s path: the height of a tree of
/// [`RECEIPTS_PER_ROOT_MAX`] leaves (8).
pub const RECEIPT_PATH_MAX: usize = RECEIPTS_PER_ROOT_MAX.next_power_of_two().ilog2() as usize;

/// Prefix of a receipt's leaf hash in a [`ReceiptRoot`]'s tree.
const RECEIPT_LEAF_DOMAIN: &[u8] = b"crat/v1/receipt-leaf\0";
/// Prefix of an inner node's hash in a [`ReceiptRoot`]'s tree (unlike a leaf's, so an inner
/// node never passes for a receipt).
const RECEIPT_NODE_DOMAIN: &[u8] = b"crat/v1/receipt-node\0";

/// What a node signs for the answers it gives together: the root of a binary hash tree
/// (blake3) whose leaves are their [`Receipt`]s in order, pairs hashed level by level and a
/// level's odd last node carried up as it is. One signature for many answers: an ed25519
/// signature is most of what a small model's task costs a node.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReceiptRoot {
    /// The tree's root.
    pub root: [u8; 32],
    /// Its leaves (receipts), 1 to [`RECEIPTS_PER_ROOT_MAX`].
    pub leaves: u32,
}

impl Signable for ReceiptRoot {
    const DOMAIN: &'static [u8] = b"crat/v1/receipt-root\0";
}

/// A node's receipt for one answer with the proof that the node gave it: the node's
/// signature over the root of the tree of receipts it gave together ([`ReceiptRoot`]), and
/// this receipt's place and path in that tree. The evidence a spot check rests on: a client
/// cannot forge one (the root is signed by the node), and a node cannot deny one.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ProvenReceipt {
    /// The receipt.
    pub body: Receipt,
    /// The signed root of the tree it is a leaf of.
    pub root: Signed<ReceiptRoot>,
    /// Its leaf's position in the tree.
    pub index: u32,
    /// The sibling hashes from its leaf up to the root (none where a level's odd last node
    /// is carried up): at most [`RECEIPT_PATH_MAX`].
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, RECEIPT_PATH_MAX>")]
    pub path: Vec<[u8; 32]>,
}

fn receipt_leaf(receipt: &Receipt) -> [u8; 32] {
    *blake3::hash(&signing_bytes(RECEIPT_LEAF_DOMAIN, receipt)).as_bytes()
}

fn receipt_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(RECEIPT_NODE_DOMAIN);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

impl ProvenReceipt {
    /// Proves every receipt of `bodies` with one signature per [`RECEIPTS_PER_ROOT_MAX`] of
    /// them, in order.
    pub fn sign_all(bodies: Vec<Receipt>, key: &SigningKey) -> Vec<Self> {
        Self::sign_all_with(bodies, key, || None)
    }

    /// [`sign_all`](Self::sign_all), each signature with the next nonce of `nonces` (see
    /// [`SigningNonce`]) while it has one.
    pub fn sign_all_with(
        bodies: Vec<Receipt>,
        key: &SigningKey,
        mut nonces: impl FnMut() -> Option<SigningNonce>,
    ) -> Vec<Self> {
        let mut out = Vec::with_capacity(bodies.len());
        let mut bodies = bodies.into_iter().peekable();
        while bodies.peek().is_some() {
            let group: Vec<Receipt> = bodies
                .by_ref()
                .take(RECEIPTS_PER_ROOT_MAX as usize)
                .collect();
            let levels =
                crate::merkle::levels(group.iter().map(receipt_leaf).collect(), receipt_node);
            let root = Signed::sign_with(
                ReceiptRoot {
                    root: levels[levels.len() - 1][0],
                    leaves: group.len() as u32,
                },
                key,
                nonces(),
            );
            for (i, body) in group.into_iter().enumerate() {
                let path = crate::merkle::path(&levels, i);
                out.push(Self {
                    body,
                    root: root.clone(),
                    index: i as u32,
                    path,
                });
            }
        }
        out
    }

    /// Proves one receipt (a tree of one leaf, its own root).
    pub fn sign(body: Receipt, key: &SigningKey) -> Self {
        Self::sign_all(vec![body], key)
            .pop()
            .expect("invariant: one receipt gives one proof")
    }

    /// Checks the proof: the receipt is leaf `index` of the signed root's tree, names its
    /// signer as its node, and the root's signature verifies (and is `expected`'s, if given).
    pub fn verify(&self, expected: Option<&NodeId>) -> Result<&Receipt, SignatureError> {
        if self.body.node != self.root.signer {
            return Err(SignatureError::WrongSigner {
                expected: self.body.node,
                actual: self.root.signer,
            });
        }
        let leaves = self.root.body.leaves;
        if leaves > RECEIPTS_PER_ROOT_MAX {
            return Err(SignatureError::BadProof);
        }
        let root = crate::merkle::root_from_path(
            receipt_leaf(&self.body),
            self.index as usize,
            leaves as usize,
            &self.path,
            receipt_node,
        );
        if root != Some(self.root.body.root) {
            return Err(SignatureError::BadProof);
        }
        self.root.verify(expected)?;
        Ok(&self.body)
    }
}

/// A client's signed, cumulative acknowledgement of the answers one node gave it under one
/// ticket: the evidence that the work was received, without which it is not charged (see
/// [`policy::acks`](crate::policy::acks)). Signed by the client's transport key, the one the
/// ticket names; each acknowledgement replaces the previous one (it counts from the ticket's
/// first task).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Ack {
    /// The ticket's nonce.
    pub ticket_nonce: [u8; 16],
    /// The node whose answers are acknowledged.
    pub node: NodeId,
    /// Answers received from it under the ticket (each with a valid receipt).
    pub tasks: u64,
    /// What those tasks cost at the ticket's price, summed task by task.
    pub credits: Credits,
    /// Order-independent accumulator over the tasks: the sum, modulo 2²⁵⁶, of
    /// [`ack_term`](crate::policy::acks::ack_term)`(task, inputs digest)`.
    pub accumulator: [u8; 32],
}

impl Signable for Ack {
    const DOMAIN: &'static [u8] = b"crat/v1/ack\0";
}

/// Why a receipt is not evidence for the answer it came with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The answer came without a receipt.
    #[error("the answer came without a receipt")]
    Missing,
    /// The receipt names another task, deployment or node than the one asked.
    #[error("the receipt is for another task, deployment or node")]
    Subject,
    /// The receipt names other inputs than the ones sent.
    #[error("the receipt names other inputs than the ones sent")]
    Inputs,
    /// The receipt names other outputs than the ones returned.
    #[error("the receipt names other outputs than the ones returned")]
    Outputs,
    /// The node's signature does not verify.
    #[error("receipt signature: {0}")]
    Signature(#[from] SignatureError),
}

impl ProvenReceipt {
    /// Checks that this receipt is `node`'s signed statement of exactly this answer: `task` of
    /// `deployment`, run on inputs with digest `inputs_digest`, returning `outputs`. What a
    /// client (or the dispatcher's canary) checks of every answer before using it: an answer
    /// without a valid receipt is a failed attempt.
    pub fn check_answer(
        &self,
        node: &NodeId,
        task: &crate::id::TaskId,
        deployment: &DeploymentId,
        inputs_digest: &[u8; 32],
        outputs: &[crate::tensor::NamedTensor],
    ) -> Result<(), ReceiptError> {
        self.describes(node, task, deployment, inputs_digest, outputs)?;
        self.verify(Some(node))?;
        Ok(())
    }

    /// [`check_answer`](Self::check_answer) without the signature: that the receipt names
    /// exactly this answer (a blake3 of the outputs, no ed25519 verification). A client that
    /// verifies signatures on a sample of answers checks this on every one.
    pub fn describes(
        &self,
        node: &NodeId,
        task: &crate::id::TaskId,
        deployment: &DeploymentId,
        inputs_digest: &[u8; 32],
        outputs: &[crate::tensor::NamedTensor],
    ) -> Result<(), ReceiptError> {
        let r = &self.body;
        if r.task != *task || r.deployment != *deployment || r.node != *node {
            return Err(ReceiptError::Subject);
        }
        if r.inputs_digest != *inputs_digest {
            return Err(ReceiptError::Inputs);
        }
        if r.outputs_digest != tensors_digest(outputs) {
            return Err(ReceiptError::Outputs);
        }
        Ok(())
    }
}

/// blake3 over named tensors' names, dtypes, shapes and bytes, in order: the digest of a
/// task's inputs (carried by its request, usage record and receipt) and of its outputs (in
/// the receipt). Lengths are prefixed, so two different lists never hash alike by
/// concatenation.
pub fn tensors_digest(tensors: &[crate::tensor::NamedTensor]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&(tensors.len() as u64).to_le_bytes());
    for o in tensors {
        h.update(&(o.name.len() as u64).to_le_bytes());
        h.update(o.name.as_bytes());
        h.update(o.tensor.dtype().onnx_name().as_bytes());
        h.update(&(o.tensor.shape().len() as u64).to_le_bytes());
        for d in o.tensor.shape() {
            h.update(&d.to_le_bytes());
        }
        h.update(&(o.tensor.bytes().len() as u64).to_le_bytes());
        h.update(o.tensor.bytes());
    }
    *h.finalize().as_bytes()
}

/// Permission, signed by the dispatcher, to run tasks of one deployment on the named nodes.
///
/// Nodes verify tickets offline against the dispatcher's key they learnt at registration.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Ticket {
    /// The deployment whose tasks it permits.
    pub deployment: DeploymentId,
    /// The SDK key that will be charged.
    pub key: KeyId,
    /// Most credits tasks under this ticket may cost together.
    pub credit_budget: Credits,
    /// When the dispatcher issued it (Unix seconds).
    pub issued_at_s: u64,
    /// First second at which it is no longer valid (Unix seconds).
    pub expires_at_s: u64,
    /// Random value that makes each ticket unique (replay tracking).
    pub nonce: [u8; 16],
    /// The nodes that may accept it (the lease's replicas).
    pub audience: Vec<NodeId>,
    /// The client that leased it: its transport identity. A node accepts the ticket only on
    /// a connection from this peer, so a ticket that leaks is worth nothing to anyone else.
    pub client: NodeId,
    /// What one task under it costs: the node serving it keeps the tasks' total within
    /// `credit_budget`.
    pub price: TaskPrice,
}

impl Signable for Ticket {
    const DOMAIN: &'static [u8] = b"crat/v1/ticket\0";
}

/// Why a node refuses a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// Not signed by the dispatcher, or tampered with.
    #[error("ticket signature: {0}")]
    Signature(#[from] SignatureError),
    /// Past its expiry.
    #[error("ticket expired at {expires_at_s}, now {now_s}")]
    Expired {
        /// Expiry.
        expires_at_s: u64,
        /// The time of the check.
        now_s: u64,
    },
    /// Issued in the future or valid for longer than [`TICKET_LIFETIME_S_MAX`].
    #[error("ticket validity window [{issued_at_s}, {expires_at_s}) is not acceptable at {now_s}")]
    Window {
        /// Issue time.
        issued_at_s: u64,
        /// Expiry.
        expires_at_s: u64,
        /// The time of the check.
        now_s: u64,
    },
    /// For another deployment.
    #[error("ticket is for {ticket}, not {requested}")]
    WrongDeployment {
        /// The ticket's deployment.
        ticket: DeploymentId,
        /// The deployment asked for.
        requested: DeploymentId,
    },
    /// This node is not in the ticket's audience.
    #[error("ticket does not name node {node}")]
    WrongNode {
        /// The node that checked.
        node: NodeId,
    },
    /// Presented by another peer than the client that leased it.
    #[error("ticket was leased by {ticket}, not by this peer ({presenter})")]
    WrongClient {
        /// The client the ticket names.
        ticket: NodeId,
        /// The peer that presented it.
        presenter: NodeId,
    },
    /// The audience list is longer than [`TICKET_AUDIENCE_MAX`].
    #[error("ticket audience is longer than {TICKET_AUDIENCE_MAX}")]
    Audience,
}

impl Signed<Ticket> {
    /// Everything a node checks before running a task: the dispatcher's signature, the
    /// validity window at `now_s`, the deployment, that `node` is in the audience and that
    /// `presenter` (the peer of the connection it came on) is the client that leased it.
    pub fn verify_ticket(
        &self,
        dispatcher: &NodeId,
        now_s: u64,
        deployment: &DeploymentId,
        node: &NodeId,
        presenter: &NodeId,
    ) -> Result<&Ticket, TicketError> {
        let t = self.verify(Some(dispatcher))?;
        t.check_claims(now_s, deployment, node, presenter)?;
        Ok(t)
    }
}

impl Ticket {
    /// Everything but the signature: the validity window at `now_s`, the deployment, that
    /// `node` is in the audience and that `presenter` is the client.
    pub fn check_claims(
        &self,
        now_s: u64,
        deployment: &DeploymentId,
        node: &NodeId,
        presenter: &NodeId,
    ) -> Result<(), TicketError> {
        let t = self;
        if t.audience.len() > TICKET_AUDIENCE_MAX {
            return Err(TicketError::Audience);
        }
        if now_s >= t.expires_at_s {
            return Err(TicketError::Expired {
                expires_at_s: t.expires_at_s,
                now_s,
            });
        }
        if now_s < t.issued_at_s
            || t.expires_at_s.saturating_sub(t.issued_at_s) > TICKET_LIFETIME_S_MAX
        {
            return Err(TicketError::Window {
                issued_at_s: t.issued_at_s,
                expires_at_s: t.expires_at_s,
                now_s,
            });
        }
        if t.deployment != *deployment {
            return Err(TicketError::WrongDeployment {
                ticket: t.deployment,
                requested: *deployment,
            });
        }
        if !t.audience.contains(node) {
            return Err(TicketError::WrongNode { node: *node });
        }
        if t.client != *presenter {
            return Err(TicketError::WrongClient {
                ticket: t.client,
                presenter: *presenter,
            });
        }
        Ok(())
    }
}

/// Verifies tickets for one node, remembering tickets whose signature already checked out so
/// the ed25519 verification (about 20 µs) runs once per ticket rather than once per task.
///
/// A remembered ticket is used only when the presented one is identical to it (body, signer
/// and signature), so a cache hit proves exactly what a fresh verification would; the
/// window, deployment and audience are checked on every call. At most `capacity` tickets
/// are remembered; when full, the memory is cleared (tickets are re-verified, never
/// trusted without a check).
#[derive(Debug)]
pub struct TicketVerifier {
    dispatcher: NodeId,
    capacity: usize,
    seen: std::collections::HashMap<[u8; 64], Signed<Ticket>>,
}

impl TicketVerifier {
    /// A verifier for tickets signed by `dispatcher`, remembering up to `capacity`.
    pub fn new(dispatcher: NodeId, capacity: usize) -> Self {
        Self {
            dispatcher,
            capacity,
            seen: std::collections::HashMap::new(),
        }
    }

    /// [`Signed::verify_ticket`], with the signature check skipped for a ticket seen before.
    pub fn verify<'a>(
        &mut self,
        ticket: &'a Signed<Ticket>,
        now_s: u64,
        deployment: &DeploymentId,
        node: &NodeId,
        presenter: &NodeId,
    ) -> Result<&'a Ticket, TicketError> {
        let key = ticket.signature.to_bytes();
        if self.seen.get(&key) != Some(ticket) {
            ticket.verify(Some(&self.dispatcher))?;
            if self.capacity > 0 {
                if self.seen.len() >= self.capacity {
                    self.seen.clear();
                }
                self.seen.insert(key, ticket.clone());
            }
        }
        ticket
            .body
            .check_claims(now_s, deployment, node, presenter)?;
        Ok(&ticket.body)
    }
}

/// Why [`NonceTracker::check`] refused a nonce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The nonce was already used and its value is still valid: a replay.
    #[error("nonce already used (valid until {expires_at_s})")]
    Replayed {
        /// When the first use stops being valid.
        expires_at_s: u64,
    },
    /// The value it belongs to is no longer valid; there is nothing to remember.
    #[error("nonce expired at {expires_at_s}, now {now_s}")]
    Expired {
        /// Its expiry.
        expires_at_s: u64,
        /// The time of the check.
        now_s: u64,
    },
    /// The tracker holds `capacity` unexpired nonces: it can neither take another nor forget
    /// one (forgetting would let that one be replayed). Try again later.
    #[error("replay tracker is full ({capacity} unexpired nonces)")]
    Full {
        /// The tracker's capacity.
        capacity: usize,
    },
}

/// Remembers the nonces of single-use signed values until they expire, so a value presented
/// twice while still valid is refused the second time.
///
/// Sans-IO: every call takes `now_s`; nothing reads a clock. A nonce is remembered until its
/// `expires_at_s` (exclusive, as for [`Ticket::expires_at_s`]) and forgotten at the first call
/// at or after it, which is safe because the value it belongs to is refused as expired from
/// then on. At most `capacity` nonces are held: when that many are unexpired, a new one is
/// refused with [`ReplayError::Full`] rather than growing or forgetting a live one.
///
/// ```
/// use crat_core::sign::{NonceTracker, ReplayError};
///
/// let mut seen = NonceTracker::new(2);
/// assert_eq!(seen.check([1u8; 16], 100, 10), Ok(()));
/// assert!(matches!(seen.check([1u8; 16], 100, 50), Err(ReplayError::Replayed { .. })));
/// assert_eq!(seen.check([2u8; 16], 60, 50), Ok(()));
/// assert!(matches!(seen.check([3u8; 16], 100, 50), Err(ReplayError::Full { .. })));
/// // At 60 the second nonce has expired and its slot is free again.
/// assert_eq!(seen.check([3u8; 16], 100, 60), Ok(()));
/// ```
#[derive(Debug, Clone)]
pub struct NonceTracker<K = [u8; 16]> {
    seen: crate::expiring::ExpiringMap<K, ()>,
}

impl<K: std::hash::Hash + Eq + Clone> NonceTracker<K> {
    /// A tracker holding at most `capacity` unexpired nonces.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: crate::expiring::ExpiringMap::new(capacity),
        }
    }

    /// Records `nonce`, valid until `expires_at_s`, as used at `now_s`; refuses it if it was
    /// already used and is still valid, if it has expired, or if the tracker is full.
    pub fn check(&mut self, nonce: K, expires_at_s: u64, now_s: u64) -> Result<(), ReplayError> {
        self.seen.forget_expired(now_s);
        if now_s >= expires_at_s {
            return Err(ReplayError::Expired {
                expires_at_s,
                now_s,
            });
        }
        if let Some(first) = self.seen.expires_at_s(&nonce) {
            return Err(ReplayError::Replayed {
                expires_at_s: first,
            });
        }
        self.seen
            .insert(
                nonce,
                (),
                expires_at_s,
                now_s,
                crate::expiring::WhenFull::Refuse,
            )
            .map_err(|full| ReplayError::Full {
                capacity: full.capacity,
            })
    }

    /// Drops every nonce whose expiry is at or before `now_s`.
    pub fn forget_expired(&mut self, now_s: u64) {
        self.seen.forget_expired(now_s);
    }

    /// Nonces held now (expired ones may linger until the next call).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The most nonces held at once.
    pub fn capacity(&self) -> usize {
        self.seen.capacity()
    }
}

/// An inference backend a node can run, as it reports it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Backend name: `ort` or `tract`.
    pub name: String,
    /// Execution provider actually in use: `cuda`, `cpu`.
    pub execution_provider: String,
}

/// What a node tells the dispatcher when it joins, signed by the node's own key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Registration {
    /// The node's identity (must be the signer and the QUIC peer).
    pub node: NodeId,
    /// Its hardware as probed.
    pub hardware: HardwareInfo,
    /// Its power rating.
    pub rating: PowerRating,
    /// Backends it can run, best first (at most [`BACKENDS_MAX`]).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, BACKENDS_MAX>")]
    pub backends: Vec<BackendInfo>,
    /// Where clients reach it (at most [`ADDRS_MAX`](crate::wire::ADDRS_MAX)).
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, { crate::wire::ADDRS_MAX }>")]
    pub listen_addrs: Vec<PeerAddr>,
    /// Most bytes of models it can keep loaded.
    pub model_bytes_max: u64,
    /// When it signed this (Unix seconds).
    pub issued_at_s: u64,
    /// Random, fresh for every registration: the dispatcher accepts each registration once
    /// ([`NonceTracker`]), so one captured within its freshness window cannot be replayed.
    pub nonce: [u8; 16],
}

impl Signable for Registration {
    const DOMAIN: &'static [u8] = b"crat/v1/registration\0";
}

impl Registration {
    /// First second at which [`Signed::verify_registration`] refuses it as stale: how long
    /// its nonce must be remembered.
    pub fn expires_at_s(&self) -> u64 {
        self.issued_at_s
            .saturating_add(REGISTRATION_AGE_S_MAX)
            .saturating_add(1)
    }
}

/// Why the dispatcher refuses a registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// Not signed by the node it names.
    #[error("registration signature: {0}")]
    Signature(#[from] SignatureError),
    /// Older than [`REGISTRATION_AGE_S_MAX`] or from the future.
    #[error("registration issued at {issued_at_s} is stale or early at {now_s}")]
    Stale {
        /// When it was signed.
        issued_at_s: u64,
        /// The time of the check.
        now_s: u64,
    },
}

impl Signed<Registration> {
    /// Checks that the node signed its own registration recently.
    pub fn verify_registration(&self, now_s: u64) -> Result<&Registration, RegistrationError> {
        let r = self.verify(Some(&self.body.node))?;
        if r.issued_at_s > now_s.saturating_add(REGISTRATION_AGE_S_MAX)
            || now_s.saturating_sub(r.issued_at_s) > REGISTRATION_AGE_S_MAX
        {
            return Err(RegistrationError::Stale {
                issued_at_s: r.issued_at_s,
                now_s,
            });
        }
        Ok(r)
    }
}

/// A node's request for its standing, signed by the node's key: sent from an endpoint of
/// another identity (`crat node status` while the node itself runs, on a transport where one
/// identity cannot be on two endpoints at once). Read-only: a copy replayed within its
/// freshness window only asks again.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StandingQuery {
    /// The node asked about (must be the signer).
    pub node: NodeId,
    /// Closed rounds wanted, newest first.
    pub rounds: u32,
    /// When it signed this (Unix seconds); fresh for [`REGISTRATION_AGE_S_MAX`].
    pub issued_at_s: u64,
}

impl Signable for StandingQuery {
    const DOMAIN: &'static [u8] = b"crat/v1/standing-query\0";
}

/// Why the dispatcher refuses a standing query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// Not signed by the node it names.
    #[error("query signature: {0}")]
    Signature(#[from] SignatureError),
    /// Older than [`REGISTRATION_AGE_S_MAX`] or from the future.
    #[error("query issued at {issued_at_s} is stale or early at {now_s}")]
    Stale {
        /// When it was signed.
        issued_at_s: u64,
        /// The time of the check.
        now_s: u64,
    },
}

impl Signed<StandingQuery> {
    /// Checks that the node signed the query recently.
    pub fn verify_query(&self, now_s: u64) -> Result<&StandingQuery, QueryError> {
        let q = self.verify(Some(&self.body.node))?;
        if q.issued_at_s > now_s.saturating_add(REGISTRATION_AGE_S_MAX)
            || now_s.saturating_sub(q.issued_at_s) > REGISTRATION_AGE_S_MAX
        {
            return Err(QueryError::Stale {
                issued_at_s: q.issued_at_s,
                now_s,
            });
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standing_queries_are_signed_by_their_node_and_fresh() {
        let k = key(7);
        let node = NodeId::from_key(&k.verifying_key());
        let q = |node, issued_at_s| StandingQuery {
            node,
            rounds: 3,
            issued_at_s,
        };
        let ok = Signed::sign(q(node, 1_000), &k);
        assert_eq!(ok.verify_query(1_010).unwrap().rounds, 3);
        assert!(matches!(
            ok.verify_query(1_000 + REGISTRATION_AGE_S_MAX + 1),
            Err(QueryError::Stale { .. })
        ));
        // Signed by one key about another node: refused.
        let other = NodeId::from_key(&key(8).verifying_key());
        assert!(matches!(
            Signed::sign(q(other, 1_000), &k).verify_query(1_000),
            Err(QueryError::Signature(SignatureError::WrongSigner { .. }))
        ));
    }

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn id(k: &SigningKey) -> NodeId {
        NodeId::from_key(&k.verifying_key())
    }

    fn ticket(node: NodeId) -> Ticket {
        Ticket {
            deployment: DeploymentId::from_bytes([3; 16]),
            key: KeyId::from_bytes([4; 16]),
            credit_budget: Credits::new(500),
            issued_at_s: 1_000,
            expires_at_s: 2_000,
            nonce: [9; 16],
            audience: vec![node],
            client: client(),
            price: TaskPrice::FREE,
        }
    }

    /// The client the test tickets name.
    fn client() -> NodeId {
        id(&key(5))
    }

    const DEP: DeploymentId = DeploymentId::from_bytes([3; 16]);

    #[test]
    fn a_receipt_is_evidence_only_for_exactly_its_answer() {
        use crate::id::TaskId;
        use crate::tensor::{NamedTensor, Tensor};
        let n = key(2);
        let task = TaskId::from_bytes([7; 16]);
        let inputs = vec![NamedTensor::new(
            "x",
            Tensor::from_slice(&[1], &[1.0f32]).unwrap(),
        )];
        let outputs = vec![NamedTensor::new(
            "y",
            Tensor::from_slice(&[1], &[2.0f32]).unwrap(),
        )];
        let body = Receipt {
            task,
            deployment: DEP,
            model: crate::id::ModelId::from_bytes([9; 32]),
            node: id(&n),
            inputs_digest: tensors_digest(&inputs),
            outputs_digest: tensors_digest(&outputs),
        };
        let r = ProvenReceipt::sign(body.clone(), &n);
        let check = |r: &ProvenReceipt, inputs: &[NamedTensor], outputs: &[NamedTensor]| {
            r.check_answer(&id(&n), &task, &DEP, &tensors_digest(inputs), outputs)
        };
        assert_eq!(check(&r, &inputs, &outputs), Ok(()));
        // Inputs and outputs differ from the digests in order and content.
        assert_eq!(check(&r, &outputs, &outputs), Err(ReceiptError::Inputs));
        assert_eq!(check(&r, &inputs, &inputs), Err(ReceiptError::Outputs));
        assert_eq!(
            r.check_answer(&id(&key(3)), &task, &DEP, &body.inputs_digest, &outputs),
            Err(ReceiptError::Subject)
        );
        // Signed by someone else in the node's name, or tampered with after signing.
        let mut forged = ProvenReceipt::sign(body.clone(), &key(3));
        forged.root.signer = id(&n);
        assert!(matches!(
            check(&forged, &inputs, &outputs),
            Err(ReceiptError::Signature(_))
        ));
    }

    /// Receipt `i` of the node of `key`, in a test's series (tasks and inputs told apart by
    /// `i`).
    fn numbered_receipt(key: &SigningKey, i: u32) -> Receipt {
        Receipt {
            task: crate::id::TaskId::from_bytes([i as u8; 16]),
            deployment: DEP,
            model: crate::id::ModelId::from_bytes([9; 32]),
            node: id(key),
            inputs_digest: [i as u8; 32],
            outputs_digest: [(i >> 8) as u8; 32],
        }
    }

    /// Signatures made with a nonce made ahead of time are ed25519 signatures like any:
    /// they verify (strictly, and with plain RFC 8032 verification), bind their body and
    /// signer, differ from the deterministic signature and from each other (each nonce is
    /// its own), and their `R` is the nonce's point.
    #[test]
    fn signatures_with_nonces_made_ahead_verify_as_ed25519_and_bind_their_body() {
        let k = key(4);
        let q = |rounds| StandingQuery {
            node: id(&k),
            rounds,
            issued_at_s: 1_000,
        };
        let nonce = |b: u8| {
            let mut random = [b; 64];
            random[0] = b.wrapping_mul(31);
            SigningNonce::from_random(&mut random)
        };
        let mut random = [7; 64];
        let n = SigningNonce::from_random(&mut random);
        assert_eq!(random, [0; 64], "the random bytes are zeroed");
        let big_r = n.big_r;
        let a = Signed::sign_with(q(3), &k, Some(n));
        assert_eq!(a.signature.r_bytes(), &big_r);
        assert_eq!(a.verify(Some(&id(&k))), Ok(&q(3)));
        k.verifying_key()
            .verify_strict(&signing_bytes(StandingQuery::DOMAIN, &q(3)), &a.signature)
            .unwrap();
        ed25519_dalek::Verifier::verify(
            &k.verifying_key(),
            &signing_bytes(StandingQuery::DOMAIN, &q(3)),
            &a.signature,
        )
        .unwrap();
        let b = Signed::sign_with(q(3), &k, Some(nonce(8)));
        assert_eq!(b.verify(Some(&id(&k))), Ok(&q(3)));
        assert_ne!(a.signature, b.signature);
        assert_ne!(a.signature, Signed::sign(q(3), &k).signature);
        // Without a nonce: the deterministic signature.
        assert_eq!(Signed::sign_with(q(3), &k, None), Signed::sign(q(3), &k));
        // Another body, another signer: refused.
        let mut changed = b.clone();
        changed.body.rounds = 4;
        assert_eq!(
            changed.verify(None).err(),
            Some(SignatureError::BadSignature)
        );
        let mut other = b.clone();
        other.signer = id(&key(5));
        assert_eq!(other.verify(None).err(), Some(SignatureError::BadSignature));

        // Receipts proven together take one nonce per root, and verify.
        let mut taken = 0u8;
        let count = RECEIPTS_PER_ROOT_MAX + 1;
        let bodies = (0..count).map(|i| numbered_receipt(&k, i)).collect();
        let proofs = ProvenReceipt::sign_all_with(bodies, &k, || {
            taken += 1;
            Some(nonce(taken))
        });
        assert_eq!(taken, 2);
        assert!(proofs.iter().all(|p| p.verify(Some(&id(&k))).is_ok()));
    }

    /// Receipts proven together: each verifies alone with its own path under the one
    /// signature, for every count (odd levels carried up); a receipt, path, index or leaf
    /// count changed after signing, or a proof moved to another receipt, does not.
    #[test]
    fn receipts_proven_together_verify_one_by_one_and_not_otherwise() {
        let n = key(2);
        let receipt = |i: u32| numbered_receipt(&n, i);
        for count in [1u32, 2, 3, 5, 8, 13, 256, 257, 600] {
            let proofs = ProvenReceipt::sign_all((0..count).map(receipt).collect(), &n);
            assert_eq!(proofs.len(), count as usize);
            let roots: std::collections::HashSet<_> =
                proofs.iter().map(|p| p.root.signature.to_bytes()).collect();
            assert_eq!(roots.len(), count.div_ceil(RECEIPTS_PER_ROOT_MAX) as usize);
            for (i, p) in proofs.iter().enumerate() {
                assert_eq!(p.body, receipt(i as u32));
                assert_eq!(p.verify(Some(&id(&n))), Ok(&p.body), "{count}: {i}");
                assert!(p.path.len() <= RECEIPT_PATH_MAX);
            }
            let p = &proofs[proofs.len() / 2];
            let bad = |f: &dyn Fn(&mut ProvenReceipt)| {
                let mut q = p.clone();
                f(&mut q);
                q.verify(Some(&id(&n))).err()
            };
            let proof = Some(SignatureError::BadProof);
            assert_eq!(bad(&|q| q.body.outputs_digest[0] ^= 1), proof);
            assert_eq!(bad(&|q| q.index = q.root.body.leaves), proof);
            if count > 1 {
                assert_eq!(bad(&|q| q.path[0][0] ^= 1), proof);
                assert_eq!(bad(&|q| q.index ^= 1), proof);
                assert_eq!(bad(&|q| q.body = proofs[0].body.clone()), proof);
                assert_eq!(
                    bad(&|q| {
                        q.path.pop();
                    }),
                    proof
                );
            }
            assert_eq!(bad(&|q| q.path.push([0; 32])), proof);
            assert!(matches!(
                bad(&|q| q.root.body.leaves += 1),
                Some(SignatureError::BadProof | SignatureError::BadSignature)
            ));
            assert!(matches!(
                bad(&|q| q.root.body.root[0] ^= 1),
                Some(SignatureError::BadProof)
            ));
            // A receipt naming another node than the root's signer.
            assert!(matches!(
                bad(&|q| q.body.node = id(&key(3))),
                Some(SignatureError::WrongSigner { .. })
            ));
        }
        assert!(ProvenReceipt::sign_all(Vec::new(), &n).is_empty());
    }

    #[test]
    fn valid_ticket_verifies() {
        let (d, n) = (key(1), key(2));
        let s = Signed::sign(ticket(id(&n)), &d);
        assert_eq!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n), &client()),
            Ok(&ticket(id(&n)))
        );
    }

    #[test]
    fn verifier_remembers_only_identical_tickets() {
        let (d, n) = (key(1), key(2));
        let mut v = TicketVerifier::new(id(&d), 2);
        let good = Signed::sign(ticket(id(&n)), &d);
        assert_eq!(
            v.verify(&good, 1_500, &DEP, &id(&n), &client()),
            Ok(&good.body)
        );
        // Seen before: still checked for window, deployment and audience every time.
        assert_eq!(
            v.verify(&good, 1_500, &DEP, &id(&n), &client()),
            Ok(&good.body)
        );
        assert!(matches!(
            v.verify(&good, 2_000, &DEP, &id(&n), &client()),
            Err(TicketError::Expired { .. })
        ));
        assert!(matches!(
            v.verify(&good, 1_500, &DEP, &id(&d), &client()),
            Err(TicketError::WrongNode { .. })
        ));
        // The same signature on a tampered body is not a cache hit: it fails verification.
        let mut tampered = good.clone();
        tampered.body.credit_budget = Credits::new(1);
        assert_eq!(
            v.verify(&tampered, 1_500, &DEP, &id(&n), &client()),
            Err(TicketError::Signature(SignatureError::BadSignature))
        );
        let mut tampered = good.clone();
        tampered.body.audience.push(id(&d));
        assert!(
            v.verify(&tampered, 1_500, &DEP, &id(&d), &client())
                .is_err()
        );
        // Another dispatcher's ticket never verifies, cached or not.
        let forged = Signed::sign(ticket(id(&n)), &key(3));
        for _ in 0..2 {
            assert!(v.verify(&forged, 1_500, &DEP, &id(&n), &client()).is_err());
        }
        // Bounded: more tickets than the capacity still verify.
        for i in 0..5u8 {
            let mut t = ticket(id(&n));
            t.nonce[0] = i;
            let s = Signed::sign(t, &d);
            assert!(v.verify(&s, 1_500, &DEP, &id(&n), &client()).is_ok());
            assert!(v.seen.len() <= 2);
        }
    }

    #[test]
    fn tampered_fields_are_rejected() {
        let (d, n) = (key(1), key(2));
        let good = Signed::sign(ticket(id(&n)), &d);
        let tampers: [fn(&mut Ticket); 6] = [
            |t| t.credit_budget = Credits::new(501),
            |t| t.expires_at_s += 1,
            |t| t.issued_at_s -= 1,
            |t| t.nonce[0] ^= 1,
            |t| t.key = KeyId::from_bytes([5; 16]),
            |t| t.audience.push(NodeId::from_bytes([7; 32])),
        ];
        for tamper in tampers {
            let mut s = good.clone();
            tamper(&mut s.body);
            assert_eq!(
                s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n), &client()),
                Err(TicketError::Signature(SignatureError::BadSignature))
            );
        }
        let mut s = good.clone();
        s.body.deployment = DeploymentId::from_bytes([8; 16]);
        let other = s.body.deployment;
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &other, &id(&n), &client()),
            Err(TicketError::Signature(SignatureError::BadSignature))
        ));
        let mut s = good;
        s.signature = Signature::from_bytes(&[0; 64]);
        assert!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n), &client())
                .is_err()
        );
    }

    #[test]
    fn wrong_key_is_rejected() {
        let (d, n, impostor) = (key(1), key(2), key(3));
        // Signed by someone else, who claims to be the dispatcher.
        let mut s = Signed::sign(ticket(id(&n)), &impostor);
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n), &client()),
            Err(TicketError::Signature(SignatureError::WrongSigner { .. }))
        ));
        s.signer = id(&d);
        assert_eq!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n), &client()),
            Err(TicketError::Signature(SignatureError::BadSignature))
        );
    }

    #[test]
    fn expiry_window_deployment_and_audience() {
        let (d, n) = (key(1), key(2));
        let s = Signed::sign(ticket(id(&n)), &d);
        assert!(matches!(
            s.verify_ticket(&id(&d), 2_000, &DEP, &id(&n), &client()),
            Err(TicketError::Expired { .. })
        ));
        assert!(matches!(
            s.verify_ticket(&id(&d), 999, &DEP, &id(&n), &client()),
            Err(TicketError::Window { .. })
        ));
        assert!(matches!(
            s.verify_ticket(
                &id(&d),
                1_500,
                &DeploymentId::from_bytes([1; 16]),
                &id(&n),
                &client()
            ),
            Err(TicketError::WrongDeployment { .. })
        ));
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&key(4)), &client()),
            Err(TicketError::WrongNode { .. })
        ));
        // A ticket that leaked is refused from anyone but its client.
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n), &id(&key(6))),
            Err(TicketError::WrongClient { .. })
        ));
        let mut long = ticket(id(&n));
        long.expires_at_s = long.issued_at_s + TICKET_LIFETIME_S_MAX + 1;
        let s = Signed::sign(long, &d);
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n), &client()),
            Err(TicketError::Window { .. })
        ));
    }

    #[test]
    fn nonce_tracker_refuses_duplicates_until_expiry() {
        let mut t = NonceTracker::new(8);
        assert_eq!(t.check([1; 16], 100, 10), Ok(()));
        // Presented again while valid, whatever expiry the replay claims.
        for (expiry, now) in [(100, 10), (100, 99), (500, 50)] {
            assert_eq!(
                t.check([1; 16], expiry, now),
                Err(ReplayError::Replayed { expires_at_s: 100 })
            );
        }
        // From its expiry on the value is refused by its own check; the nonce is forgotten.
        assert_eq!(
            t.check([1; 16], 100, 100),
            Err(ReplayError::Expired {
                expires_at_s: 100,
                now_s: 100
            })
        );
        assert!(t.is_empty());
        // Already expired when first seen: refused, not remembered.
        assert!(matches!(
            t.check([2; 16], 5, 10),
            Err(ReplayError::Expired { .. })
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn nonce_tracker_is_bounded_and_refuses_when_full_of_live_nonces() {
        let mut t: NonceTracker<u32> = NonceTracker::new(3);
        assert_eq!(t.capacity(), 3);
        for n in 0..3 {
            assert_eq!(t.check(n, 100 + u64::from(n), 10), Ok(()));
        }
        // Full of unexpired nonces: a new one is refused, and no live one was forgotten.
        assert_eq!(
            t.check(9, 1_000, 50),
            Err(ReplayError::Full { capacity: 3 })
        );
        for n in 0..3 {
            assert!(matches!(
                t.check(n, 200, 50),
                Err(ReplayError::Replayed { .. })
            ));
        }
        assert_eq!(t.len(), 3);
        // Once the first expires, its slot takes the new nonce.
        assert_eq!(t.check(9, 1_000, 100), Ok(()));
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.check(10, 1_000, 100),
            Err(ReplayError::Full { capacity: 3 })
        );
        // Nonces sharing an expiry second leave together.
        let mut t: NonceTracker<u32> = NonceTracker::new(1_000);
        for n in 0..500 {
            t.check(n, 60 + u64::from(n % 2), 0).unwrap();
        }
        t.forget_expired(60);
        assert_eq!(t.len(), 250);
        t.forget_expired(61);
        assert!(t.is_empty());
        let mut zero: NonceTracker<u32> = NonceTracker::new(0);
        assert_eq!(zero.check(1, 10, 0), Err(ReplayError::Full { capacity: 0 }));
    }

    #[test]
    fn nonce_tracker_matches_a_simple_model() {
        // A pseudo-random sequence of checks against a plain list that never forgets early.
        let mut t: NonceTracker<u8> = NonceTracker::new(16);
        let mut model: Vec<(u8, u64)> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut now = 0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += x % 3;
            let nonce = (x >> 8) as u8 % 40;
            let expiry = now + (x >> 16) % 40;
            model.retain(|&(_, e)| e > now);
            let expected = if now >= expiry {
                Err(ReplayError::Expired {
                    expires_at_s: expiry,
                    now_s: now,
                })
            } else if let Some(&(_, e)) = model.iter().find(|(n, _)| *n == nonce) {
                Err(ReplayError::Replayed { expires_at_s: e })
            } else if model.len() >= 16 {
                Err(ReplayError::Full { capacity: 16 })
            } else {
                model.push((nonce, expiry));
                Ok(())
            };
            assert_eq!(t.check(nonce, expiry, now), expected);
            assert_eq!(t.len(), model.len());
        }
    }

    #[test]
    fn registration_nonce_lives_as_long_as_the_registration_is_fresh() {
        let k = key(2);
        let reg = Registration {
            node: id(&k),
            hardware: crate::hardware::HardwareInfo {
                gpus: vec![],
                cpu: crate::hardware::CpuInfo {
                    model: "cpu".into(),
                    cores: 1,
                    memory_bytes: 1,
                },
            },
            rating: PowerRating::MIN,
            backends: vec![],
            listen_addrs: vec![],
            model_bytes_max: 0,
            issued_at_s: 1_000,
            nonce: [7; 16],
        };
        let s = Signed::sign(reg.clone(), &k);
        let last_fresh = reg.expires_at_s() - 1;
        assert!(s.verify_registration(last_fresh).is_ok());
        assert!(matches!(
            s.verify_registration(reg.expires_at_s()),
            Err(RegistrationError::Stale { .. })
        ));
        // The nonce is signed: changing it breaks the signature.
        let mut t = s.clone();
        t.body.nonce[0] ^= 1;
        assert!(t.verify_registration(1_000).is_err());
    }

    #[test]
    fn wrong_domain_tag_is_rejected() {
        let (d, n) = (key(1), key(2));
        let body = ticket(id(&n));
        for domain in [
            &b"crat/v1/registration\0"[..],
            b"crat/v1/ticket",
            b"crat/v2/ticket\0",
            b"",
        ] {
            let s = Signed {
                signature: d.sign(&signing_bytes(domain, &body)),
                body: body.clone(),
                signer: id(&d),
            };
            assert_eq!(
                s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n), &client()),
                Err(TicketError::Signature(SignatureError::BadSignature)),
                "domain {domain:?}"
            );
        }
    }

    #[test]
    fn weak_keys_and_small_order_signatures_are_refused() {
        // Found by the `ticket` and `registration` fuzz targets (seed `weak-key`): the
        // identity point is a valid ed25519 public key, of order 1, and the signature
        // (R = identity, s = 0) passes plain ed25519 verification for *every* message, so
        // such a "signed" value did not bind its body.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = NodeId::from_bytes(identity);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&identity);
        let n = key(2);
        for credits in [1, 500, u64::MAX] {
            let mut body = ticket(id(&n));
            body.credit_budget = Credits::new(credits);
            let s = Signed {
                body,
                signer: weak,
                signature: Signature::from_bytes(&sig),
            };
            assert_eq!(s.verify(None), Err(SignatureError::BadKey));
            assert_eq!(
                s.verify_ticket(&weak, 1_500, &DEP, &id(&n), &client()),
                Err(TicketError::Signature(SignatureError::BadKey))
            );
        }
        // A small-order R under a real key is refused too (it never comes from signing).
        let d = key(1);
        let s = Signed {
            body: ticket(id(&n)),
            signer: id(&d),
            signature: Signature::from_bytes(&sig),
        };
        assert_eq!(s.verify(None), Err(SignatureError::BadSignature));
        // Real signatures still verify.
        assert!(
            Signed::sign(ticket(id(&n)), &d)
                .verify(Some(&id(&d)))
                .is_ok()
        );
    }
}
