//! The SDK's one error type, with a typed variant per server [`ErrorCode`].

use crat_core::tensor::TensorError;
use crat_core::wire::{DispatcherResponse, ErrorCode, WireError};
use crat_transport::TransportError;

/// Everything an SDK call can fail with.
///
/// Variants named after an [`ErrorCode`] carry the message the dispatcher or node sent;
/// [`Error::code`] gives the code back. Which ones the SDK retries on another replica is
/// described on [`Deployment::infer_task`](crate::Deployment::infer_task).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was malformed or made no sense in the peer's state ([`ErrorCode::BadRequest`]).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The SDK key is unknown or its secret is wrong ([`ErrorCode::Unauthenticated`]).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The SDK key has expired ([`ErrorCode::KeyExpired`]).
    #[error("key expired: {0}")]
    KeyExpired(String),
    /// The SDK key was revoked ([`ErrorCode::KeyRevoked`]).
    #[error("key revoked: {0}")]
    KeyRevoked(String),
    /// The balance or allowance does not cover the cost ([`ErrorCode::InsufficientCredits`]).
    #[error("insufficient credits: {0}")]
    InsufficientCredits(String),
    /// The model was refused: not ONNX, hash mismatch, unsupported ([`ErrorCode::ModelRejected`]).
    #[error("model rejected: {0}")]
    ModelRejected(String),
    /// Something exceeds a size cap ([`ErrorCode::TooLarge`]), or a request is too large to
    /// frame at all (detected locally, before sending).
    #[error("too large: {0}")]
    TooLarge(String),
    /// The named model, deployment or upload does not exist ([`ErrorCode::NotFound`]).
    #[error("not found: {0}")]
    NotFound(String),
    /// No node can take the work now ([`ErrorCode::NoCapacity`]).
    #[error("no capacity: {0}")]
    NoCapacity(String),
    /// The inputs do not match the model: names, dtypes, shapes ([`ErrorCode::InvalidInput`]).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A node refused the ticket ([`ErrorCode::TicketRejected`]). The SDK renews the lease
    /// and retries before returning this.
    #[error("ticket rejected: {0}")]
    TicketRejected(String),
    /// The peer is over a rate or queue limit ([`ErrorCode::Busy`]).
    #[error("busy: {0}")]
    Busy(String),
    /// The work did not finish in time: the peer's limit ([`ErrorCode::Timeout`]) or the
    /// SDK's own exchange timeout.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The peer failed internally ([`ErrorCode::Internal`]).
    #[error("internal error at peer: {0}")]
    Internal(String),
    /// A per-instance replica is at its share of the deployment's guaranteed rate
    /// ([`ErrorCode::RateLimited`]): the plan bought that rate and no more. The SDK tries the
    /// other replicas before returning this.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The lease's ticket cannot pay for the task ([`ErrorCode::BudgetExhausted`]). The SDK
    /// renews the lease once (a new ticket carries what is left of the allowance) before
    /// returning this.
    #[error("budget exhausted: {0}")]
    BudgetExhausted(String),
    /// The key or account holds its whole share of something the network shares (leases
    /// still remembered, deployments; [`ErrorCode::QuotaExceeded`]): more once some of it is
    /// released (leases expire, a deployment is stopped).
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The deployment's plan allows no model update now ([`ErrorCode::UpdateTooFrequent`]):
    /// the message says when it allows the next, if ever.
    #[error("update too frequent: {0}")]
    UpdateTooFrequent(String),
    /// An error code this SDK version does not know.
    #[error("remote error: {0}")]
    Remote(WireError),
    /// Every attempt to run a task failed on a retryable error (replicas down, busy or
    /// re-placed), or the lease named no replica.
    #[error("no replica could run the task after {attempts} attempts{}", last.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NoReplica {
        /// Attempts made.
        attempts: u32,
        /// The last failure, if any attempt was made.
        last: Option<Box<Error>>,
    },
    /// The deployment is stopped (by its owner or for lack of credits).
    #[error("deployment stopped: {0}")]
    Stopped(String),
    /// Connecting or exchanging frames failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The peer answered something this request cannot be answered with.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Reading a local file failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A tensor could not be built or read as the requested type.
    #[error("tensor: {0}")]
    Tensor(#[from] TensorError),
    /// An array's shape or layout cannot be converted.
    #[error("shape: {0}")]
    Shape(String),
    /// No tensor of this name is among the outputs.
    #[error("no tensor named {0:?}")]
    NoSuchTensor(String),
    /// A node answered without a receipt, or with one that is not its signature over exactly
    /// this task, these inputs and these outputs: the answer is discarded (it could not be
    /// checked) and the task goes to another replica.
    #[error("invalid receipt from node: {0}")]
    InvalidReceipt(String),
    /// A spot-checked task got answers that disagree, and no majority of replicas agreed
    /// (or no third replica of another operator was there to decide): no result is
    /// returned rather than one that failed validation.
    #[error("validation: {0}")]
    Validation(String),
}

impl Error {
    /// The typed error for a refusal from the dispatcher or a node.
    pub fn from_wire(e: WireError) -> Self {
        let m = e.message.clone();
        match e.code {
            ErrorCode::BadRequest => Self::BadRequest(m),
            ErrorCode::Unauthenticated => Self::Unauthenticated(m),
            ErrorCode::KeyExpired => Self::KeyExpired(m),
            ErrorCode::KeyRevoked => Self::KeyRevoked(m),
            ErrorCode::InsufficientCredits => Self::InsufficientCredits(m),
            ErrorCode::ModelRejected => Self::ModelRejected(m),
            ErrorCode::TooLarge => Self::TooLarge(m),
            ErrorCode::NotFound => Self::NotFound(m),
            ErrorCode::NoCapacity => Self::NoCapacity(m),
            ErrorCode::InvalidInput => Self::InvalidInput(m),
            ErrorCode::TicketRejected => Self::TicketRejected(m),
            ErrorCode::Busy => Self::Busy(m),
            ErrorCode::Timeout => Self::Timeout(m),
            ErrorCode::Internal => Self::Internal(m),
            ErrorCode::RateLimited => Self::RateLimited(m),
            ErrorCode::BudgetExhausted => Self::BudgetExhausted(m),
            ErrorCode::QuotaExceeded => Self::QuotaExceeded(m),
            ErrorCode::UpdateTooFrequent => Self::UpdateTooFrequent(m),
            _ => Self::Remote(e),
        }
    }

    /// The server code this error stands for, if it came from a server (or is its local
    /// equivalent: [`Error::Timeout`] and [`Error::TooLarge`]).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::KeyExpired(_) => ErrorCode::KeyExpired,
            Self::KeyRevoked(_) => ErrorCode::KeyRevoked,
            Self::InsufficientCredits(_) => ErrorCode::InsufficientCredits,
            Self::ModelRejected(_) => ErrorCode::ModelRejected,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::NoCapacity(_) => ErrorCode::NoCapacity,
            Self::InvalidInput(_) => ErrorCode::InvalidInput,
            Self::TicketRejected(_) => ErrorCode::TicketRejected,
            Self::Busy(_) => ErrorCode::Busy,
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::Internal(_) => ErrorCode::Internal,
            Self::RateLimited(_) => ErrorCode::RateLimited,
            Self::BudgetExhausted(_) => ErrorCode::BudgetExhausted,
            Self::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            Self::UpdateTooFrequent(_) => ErrorCode::UpdateTooFrequent,
            Self::Remote(e) => e.code,
            _ => return None,
        })
    }

    /// True for errors that are the account's fault (credits, key): no retry can help.
    pub fn is_account_error(&self) -> bool {
        matches!(
            self,
            Self::Unauthenticated(_)
                | Self::KeyExpired(_)
                | Self::KeyRevoked(_)
                | Self::InsufficientCredits(_)
        )
    }

    /// True when a node's answer (or the failure to get one) says "try another replica":
    /// transport failures, timeouts, `Busy`, `RateLimited`, `NotFound`, `NoCapacity`,
    /// `Internal`, answers
    /// without a valid receipt and replies that make no sense. Errors that are the caller's or the account's fault are not.
    pub(crate) fn is_failover(&self) -> bool {
        match self {
            Self::Transport(TransportError::Frame(crat_transport::FrameError::TooLarge {
                ..
            })) => false,
            Self::Transport(_)
            | Self::Timeout(_)
            | Self::Busy(_)
            | Self::NotFound(_)
            | Self::NoCapacity(_)
            | Self::Internal(_)
            | Self::InvalidReceipt(_)
            | Self::RateLimited(_)
            | Self::Protocol(_) => true,
            _ => false,
        }
    }
}

/// The error for a dispatcher answer that does not fit the call `what` it answers.
pub(crate) fn unexpected(what: &str, got: &DispatcherResponse) -> Error {
    let name = match got {
        DispatcherResponse::Upload { .. } => "Upload",
        DispatcherResponse::ModelStored { .. } => "ModelStored",
        DispatcherResponse::Quote(_) => "Quote",
        DispatcherResponse::Deployment(_) => "Deployment",
        DispatcherResponse::Lease(_) => "Lease",
        DispatcherResponse::Balance(_) => "Balance",
        DispatcherResponse::Key(_) => "Key",
        DispatcherResponse::RelayAccess { .. } => "RelayAccess",
        DispatcherResponse::Ok => "Ok",
        DispatcherResponse::Error(_) => "Error",
    };
    Error::Protocol(format!("dispatcher answered {what} with {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_back_to_itself() {
        for code in ErrorCode::ALL {
            let e = Error::from_wire(WireError::new(code, "why"));
            assert_eq!(e.code(), Some(code));
            assert!(e.to_string().contains("why"), "{e}");
            assert!(
                !matches!(e, Error::Remote(_)),
                "{code:?} has a typed variant"
            );
        }
        assert!(Error::from_wire(WireError::new(ErrorCode::KeyRevoked, "")).is_account_error());
        assert!(Error::from_wire(WireError::new(ErrorCode::Busy, "")).is_failover());
        assert!(!Error::from_wire(WireError::new(ErrorCode::InvalidInput, "")).is_failover());
    }
}
