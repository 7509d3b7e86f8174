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
//! use crat_core::sign::{Signed, Ticket, TicketError};
//! use ed25519_dalek::SigningKey;
//!
//! let dispatcher = SigningKey::from_bytes(&[1; 32]);
//! let dispatcher_id = NodeId::from_key(&dispatcher.verifying_key());
//! let node = NodeId::from_key(&SigningKey::from_bytes(&[2; 32]).verifying_key());
//! let ticket = Ticket {
//!     deployment: DeploymentId::from_bytes([3; 16]),
//!     key: KeyId::from_bytes([4; 16]),
//!     credit_budget: Credits::new(1_000),
//!     issued_at_s: 1_000,
//!     expires_at_s: 1_600,
//!     nonce: [5; 16],
//!     audience: vec![node],
//! };
//! let signed = Signed::sign(ticket, &dispatcher);
//! let deployment = DeploymentId::from_bytes([3; 16]);
//! assert!(signed.verify_ticket(&dispatcher_id, 1_200, &deployment, &node).is_ok());
//! assert!(matches!(
//!     signed.verify_ticket(&dispatcher_id, 1_600, &deployment, &node),
//!     Err(TicketError::Expired { .. })
//! ));
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};

use crate::hardware::{HardwareInfo, PowerRating};
use crate::id::{DeploymentId, KeyId, NodeId};
use crate::money::Credits;
use crate::wire::PeerAddr;

/// Longest ticket lifetime a node accepts (`expires_at_s - issued_at_s`): one day.
pub const TICKET_LIFETIME_S_MAX: u64 = 86_400;
/// Most nodes a ticket may name as its audience.
pub const TICKET_AUDIENCE_MAX: usize = 64;
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
    /// The signer's id is not a valid ed25519 key.
    #[error("signer id is not a valid ed25519 key")]
    BadKey,
    /// The signature does not match the body under the signer's key and this type's domain.
    #[error("signature does not verify")]
    BadSignature,
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

    /// Checks the signature and, if given, that the signer is `expected`.
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
        key.verify(&signing_bytes(T::DOMAIN, &self.body), &self.signature)
            .map_err(|_| SignatureError::BadSignature)?;
        Ok(&self.body)
    }
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
    /// The audience list is longer than [`TICKET_AUDIENCE_MAX`].
    #[error("ticket audience is longer than {TICKET_AUDIENCE_MAX}")]
    Audience,
}

impl Signed<Ticket> {
    /// Everything a node checks before running a task: the dispatcher's signature, the
    /// validity window at `now_s`, the deployment, and that `node` is in the audience.
    pub fn verify_ticket(
        &self,
        dispatcher: &NodeId,
        now_s: u64,
        deployment: &DeploymentId,
        node: &NodeId,
    ) -> Result<&Ticket, TicketError> {
        let t = self.verify(Some(dispatcher))?;
        t.check_claims(now_s, deployment, node)?;
        Ok(t)
    }
}

impl Ticket {
    /// Everything but the signature: the validity window at `now_s`, the deployment, and
    /// that `node` is in the audience.
    pub fn check_claims(
        &self,
        now_s: u64,
        deployment: &DeploymentId,
        node: &NodeId,
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
        ticket.body.check_claims(now_s, deployment, node)?;
        Ok(&ticket.body)
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
    /// Backends it can run, best first.
    pub backends: Vec<BackendInfo>,
    /// Where clients reach it.
    pub listen_addrs: Vec<PeerAddr>,
    /// Most bytes of models it can keep loaded.
    pub model_bytes_max: u64,
    /// When it signed this (Unix seconds).
    pub issued_at_s: u64,
}

impl Signable for Registration {
    const DOMAIN: &'static [u8] = b"crat/v1/registration\0";
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

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    const DEP: DeploymentId = DeploymentId::from_bytes([3; 16]);

    #[test]
    fn valid_ticket_verifies() {
        let (d, n) = (key(1), key(2));
        let s = Signed::sign(ticket(id(&n)), &d);
        assert_eq!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n)),
            Ok(&ticket(id(&n)))
        );
    }

    #[test]
    fn verifier_remembers_only_identical_tickets() {
        let (d, n) = (key(1), key(2));
        let mut v = TicketVerifier::new(id(&d), 2);
        let good = Signed::sign(ticket(id(&n)), &d);
        assert_eq!(v.verify(&good, 1_500, &DEP, &id(&n)), Ok(&good.body));
        // Seen before: still checked for window, deployment and audience every time.
        assert_eq!(v.verify(&good, 1_500, &DEP, &id(&n)), Ok(&good.body));
        assert!(matches!(
            v.verify(&good, 2_000, &DEP, &id(&n)),
            Err(TicketError::Expired { .. })
        ));
        assert!(matches!(
            v.verify(&good, 1_500, &DEP, &id(&d)),
            Err(TicketError::WrongNode { .. })
        ));
        // The same signature on a tampered body is not a cache hit: it fails verification.
        let mut tampered = good.clone();
        tampered.body.credit_budget = Credits::new(1);
        assert_eq!(
            v.verify(&tampered, 1_500, &DEP, &id(&n)),
            Err(TicketError::Signature(SignatureError::BadSignature))
        );
        let mut tampered = good.clone();
        tampered.body.audience.push(id(&d));
        assert!(v.verify(&tampered, 1_500, &DEP, &id(&d)).is_err());
        // Another dispatcher's ticket never verifies, cached or not.
        let forged = Signed::sign(ticket(id(&n)), &key(3));
        for _ in 0..2 {
            assert!(v.verify(&forged, 1_500, &DEP, &id(&n)).is_err());
        }
        // Bounded: more tickets than the capacity still verify.
        for i in 0..5u8 {
            let mut t = ticket(id(&n));
            t.nonce[0] = i;
            let s = Signed::sign(t, &d);
            assert!(v.verify(&s, 1_500, &DEP, &id(&n)).is_ok());
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
                s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n)),
                Err(TicketError::Signature(SignatureError::BadSignature))
            );
        }
        let mut s = good.clone();
        s.body.deployment = DeploymentId::from_bytes([8; 16]);
        let other = s.body.deployment;
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &other, &id(&n)),
            Err(TicketError::Signature(SignatureError::BadSignature))
        ));
        let mut s = good;
        s.signature = Signature::from_bytes(&[0; 64]);
        assert!(s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n)).is_err());
    }

    #[test]
    fn wrong_key_is_rejected() {
        let (d, n, impostor) = (key(1), key(2), key(3));
        // Signed by someone else, who claims to be the dispatcher.
        let mut s = Signed::sign(ticket(id(&n)), &impostor);
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n)),
            Err(TicketError::Signature(SignatureError::WrongSigner { .. }))
        ));
        s.signer = id(&d);
        assert_eq!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n)),
            Err(TicketError::Signature(SignatureError::BadSignature))
        );
    }

    #[test]
    fn expiry_window_deployment_and_audience() {
        let (d, n) = (key(1), key(2));
        let s = Signed::sign(ticket(id(&n)), &d);
        assert!(matches!(
            s.verify_ticket(&id(&d), 2_000, &DEP, &id(&n)),
            Err(TicketError::Expired { .. })
        ));
        assert!(matches!(
            s.verify_ticket(&id(&d), 999, &DEP, &id(&n)),
            Err(TicketError::Window { .. })
        ));
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &DeploymentId::from_bytes([1; 16]), &id(&n)),
            Err(TicketError::WrongDeployment { .. })
        ));
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&key(4))),
            Err(TicketError::WrongNode { .. })
        ));
        let mut long = ticket(id(&n));
        long.expires_at_s = long.issued_at_s + TICKET_LIFETIME_S_MAX + 1;
        let s = Signed::sign(long, &d);
        assert!(matches!(
            s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n)),
            Err(TicketError::Window { .. })
        ));
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
                s.verify_ticket(&id(&d), 1_500, &DEP, &id(&n)),
                Err(TicketError::Signature(SignatureError::BadSignature)),
                "domain {domain:?}"
            );
        }
    }
}
