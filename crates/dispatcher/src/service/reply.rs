//! The reply boundary: every reason a request is refused, and its one mapping to a
//! [`WireError`].
//!
//! Handlers return `Result<_, Refusal>` and use `?` on ledger, upload, dispatch and policy
//! errors alike; [`Refusal`] becomes a wire error only where the answer is sent, so each
//! kind of failure maps to one [`ErrorCode`] in one place (and internal failures are logged
//! there, never shown to the peer).

use crat_core::dispatch::DispatchError;
use crat_core::id::DeploymentId;
use crat_core::policy::budget::BudgetError;
use crat_core::policy::keys::KeyError;
use crat_core::policy::reports::ReportError;
use crat_core::wire::{ErrorCode, Unverifiable, WireError};

use super::gate::GateError;
use crate::blob::UploadError;
use crate::ledger::LedgerError;

/// Why a request is refused (see the [module docs](self)).
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Already phrased for the wire.
    Wire(WireError),
    /// The ledger refused or failed.
    Ledger(LedgerError),
    /// The upload area refused or failed.
    Upload(UploadError),
    /// The dispatch state machine refused.
    Dispatch(DispatchError),
    /// A spot-check report was refused.
    Report(ReportError),
    /// No ticket may be issued for the deployment.
    Budget(DeploymentId, BudgetError),
    /// The SDK key may not be served.
    Key(KeyError),
    /// The determinism gate gave no verdict.
    Gate(GateError),
    /// A validation report about a deployment whose answers cannot be checked (the
    /// determinism gate's verdict): refused, so that no node is failed over it.
    Unverifiable(DeploymentId, Unverifiable),
    /// A failure of ours (a task that did not finish, a store that failed).
    Internal(String),
}

/// A wire error with `code` and `message`.
pub(crate) fn err(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError::new(code, message)
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        Refusal::Wire(e)
    }
}

impl From<LedgerError> for Refusal {
    fn from(e: LedgerError) -> Self {
        Refusal::Ledger(e)
    }
}

impl From<UploadError> for Refusal {
    fn from(e: UploadError) -> Self {
        Refusal::Upload(e)
    }
}

impl From<DispatchError> for Refusal {
    fn from(e: DispatchError) -> Self {
        Refusal::Dispatch(e)
    }
}

impl From<ReportError> for Refusal {
    fn from(e: ReportError) -> Self {
        Refusal::Report(e)
    }
}

impl From<KeyError> for Refusal {
    fn from(e: KeyError) -> Self {
        Refusal::Key(e)
    }
}

impl From<GateError> for Refusal {
    fn from(e: GateError) -> Self {
        Refusal::Gate(e)
    }
}

impl From<Refusal> for WireError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Wire(e) => e,
            Refusal::Ledger(e) => ledger(e),
            Refusal::Upload(e) => upload(e),
            Refusal::Dispatch(e) => dispatch(e),
            Refusal::Report(e) => report(e),
            Refusal::Budget(id, e) => budget(id, e),
            Refusal::Key(e) => key(e),
            Refusal::Gate(e @ GateError::Busy(_)) => err(ErrorCode::Busy, e.to_string()),
            Refusal::Gate(e @ GateError::OverMemory(_)) => {
                err(ErrorCode::ModelRejected, e.to_string())
            }
            Refusal::Gate(e) => {
                tracing::error!(error = %e, "determinism gate failure");
                err(ErrorCode::Internal, "determinism gate failure")
            }
            Refusal::Unverifiable(id, why) => err(
                ErrorCode::BadRequest,
                format!("{id} is unverifiable ({why}): no validation report counts for it"),
            ),
            Refusal::Internal(m) => err(ErrorCode::Internal, m),
        }
    }
}

fn ledger(e: LedgerError) -> WireError {
    match e {
        LedgerError::InsufficientCredits { .. } => {
            err(ErrorCode::InsufficientCredits, e.to_string())
        }
        LedgerError::NotFound(_) => err(ErrorCode::NotFound, e.to_string()),
        LedgerError::Invalid(_) | LedgerError::Exists(_) => {
            err(ErrorCode::BadRequest, e.to_string())
        }
        _ => {
            tracing::error!(error = %e, "ledger failure");
            err(ErrorCode::Internal, "ledger failure")
        }
    }
}

fn upload(e: UploadError) -> WireError {
    let code = match &e {
        UploadError::TooLarge { .. } => ErrorCode::TooLarge,
        UploadError::HashMismatch { .. }
        | UploadError::NotOnnx(_)
        | UploadError::OverMemory { .. } => ErrorCode::ModelRejected,
        UploadError::Busy { .. } | UploadError::DiskFull { .. } | UploadError::Finishing(_) => {
            ErrorCode::Busy
        }
        UploadError::Quota(_) => ErrorCode::QuotaExceeded,
        UploadError::NotStarted(_) => ErrorCode::NotFound,
        UploadError::Mismatch(_) | UploadError::BadChunk(_) | UploadError::Incomplete { .. } => {
            ErrorCode::BadRequest
        }
        _ => ErrorCode::Internal,
    };
    err(code, e.to_string())
}

fn dispatch(e: DispatchError) -> WireError {
    let code = match &e {
        DispatchError::NoCapacity(_) | DispatchError::NotReady(_) => ErrorCode::NoCapacity,
        DispatchError::UnknownDeployment(_) | DispatchError::UnknownNode(_) => ErrorCode::NotFound,
        DispatchError::Full(_) | DispatchError::RegistryFull => ErrorCode::Busy,
        _ => ErrorCode::BadRequest,
    };
    err(code, e.to_string())
}

fn report(e: ReportError) -> WireError {
    let code = match &e {
        ReportError::Receipt(_) => ErrorCode::Unauthenticated,
        ReportError::NotAReplica { .. } => ErrorCode::NotFound,
        ReportError::OverCap(_) => ErrorCode::Busy,
        _ => ErrorCode::BadRequest,
    };
    err(code, e.to_string())
}

fn budget(id: DeploymentId, e: BudgetError) -> WireError {
    match e {
        BudgetError::AllowanceSpent => err(
            ErrorCode::InsufficientCredits,
            format!("the allowance of {id} is spent"),
        ),
        BudgetError::ReservationEnded { .. } => err(
            ErrorCode::KeyExpired,
            format!("the reservation of {id} ended"),
        ),
        _ => err(ErrorCode::BadRequest, format!("{id}: {e}")),
    }
}

fn key(e: KeyError) -> WireError {
    let code = match &e {
        KeyError::WrongSecret => ErrorCode::Unauthenticated,
        KeyError::Revoked(_) => ErrorCode::KeyRevoked,
        KeyError::Expired(_) => ErrorCode::KeyExpired,
        _ => ErrorCode::Unauthenticated,
    };
    err(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crat_core::id::{KeyId, NodeId};

    #[test]
    fn each_refusal_maps_to_its_code() {
        let d = DeploymentId::from_bytes([1; 16]);
        let code = |r: Refusal| WireError::from(r).code;
        assert_eq!(
            code(Refusal::Report(ReportError::OverCap(d))),
            ErrorCode::Busy
        );
        assert_eq!(
            code(Refusal::Report(ReportError::NotAReplica {
                node: NodeId::from_bytes([2; 32]),
                deployment: d
            })),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(Refusal::Report(ReportError::BadMajority)),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(Refusal::Budget(d, BudgetError::AllowanceSpent)),
            ErrorCode::InsufficientCredits
        );
        assert_eq!(
            code(Refusal::Budget(
                d,
                BudgetError::ReservationEnded { ended_at_s: 5 }
            )),
            ErrorCode::KeyExpired
        );
        let k = KeyId::from_bytes([3; 16]);
        assert_eq!(
            code(Refusal::Key(KeyError::Revoked(k))),
            ErrorCode::KeyRevoked
        );
        assert_eq!(
            code(Refusal::Key(KeyError::Expired(k))),
            ErrorCode::KeyExpired
        );
        assert_eq!(
            code(Refusal::Key(KeyError::WrongSecret)),
            ErrorCode::Unauthenticated
        );
        assert_eq!(
            code(Refusal::Dispatch(DispatchError::Full("nodes"))),
            ErrorCode::Busy
        );
        assert_eq!(code(Refusal::Internal("x".into())), ErrorCode::Internal);
        assert_eq!(code(Refusal::Gate(GateError::Busy(2))), ErrorCode::Busy);
        assert_eq!(
            code(Refusal::Gate(GateError::Read("gone".into()))),
            ErrorCode::Internal
        );
        let over = super::super::gate::OverMemory {
            estimate_bytes: 3 << 30,
            max: 1 << 30,
            detail: "weights".into(),
        };
        let e = WireError::from(Refusal::Gate(GateError::OverMemory(over)));
        assert_eq!(e.code, ErrorCode::ModelRejected);
        assert!(e.message.contains("3.0 GiB"), "{}", e.message);
        assert_eq!(
            code(Refusal::Unverifiable(d, Unverifiable::RandomOperator)),
            ErrorCode::BadRequest
        );
    }
}
