//! SDK errors as Python exceptions: one class of `cryptorat.errors` per [`ErrorCode`], one per
//! local failure, all under `CratError` (the classes are written in Python, so that they can
//! also derive from the matching built-in exception and carry docstrings).

use crat_core::wire::{ErrorCode, WireError};
use crat_sdk::Error;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The Python module defining the exception classes.
const ERRORS_MODULE: &str = "cryptorat.errors";

/// The names of every error code the network has (`CratError.code` values).
#[pyfunction]
pub(crate) fn error_codes() -> Vec<String> {
    ErrorCode::ALL.iter().map(|&c| code_name(c)).collect()
}

/// The exception raised when a dispatcher or node refuses with `code` (for tests and
/// tools: every code has its class).
#[pyfunction]
pub(crate) fn exception_for_code(py: Python<'_>, code: &str, message: &str) -> PyResult<Py<PyAny>> {
    let code = ErrorCode::ALL
        .iter()
        .find(|&&c| code_name(c) == code)
        .ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!("no error code {code:?}"))
        })?;
    Ok(to_py(Error::from_wire(WireError::new(*code, message)))
        .into_value(py)
        .into_any())
}

/// The wire name of a code, as `CratError.code` gives it (`"insufficient_credits"`).
pub(crate) fn code_name(code: ErrorCode) -> String {
    match code {
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
        other => return format!("{other:?}"),
    }
    .to_owned()
}

/// The name of the `cryptorat.errors` class raised for `e`.
fn class_name(e: &Error) -> &'static str {
    match e {
        Error::BadRequest(_) => "BadRequestError",
        Error::Unauthenticated(_) => "UnauthenticatedError",
        Error::KeyExpired(_) => "KeyExpiredError",
        Error::KeyRevoked(_) => "KeyRevokedError",
        Error::InsufficientCredits(_) => "InsufficientCreditsError",
        Error::ModelRejected(_) => "ModelRejectedError",
        Error::TooLarge(_) => "TooLargeError",
        Error::NotFound(_) => "NotFoundError",
        Error::NoCapacity(_) => "NoCapacityError",
        Error::InvalidInput(_) => "InvalidInputError",
        Error::TicketRejected(_) => "TicketRejectedError",
        Error::Busy(_) => "BusyError",
        Error::Timeout(_) => "CratTimeoutError",
        Error::Internal(_) => "InternalError",
        Error::RateLimited(_) => "RateLimitedError",
        Error::BudgetExhausted(_) => "BudgetExhaustedError",
        Error::QuotaExceeded(_) => "QuotaExceededError",
        Error::UpdateTooFrequent(_) => "UpdateTooFrequentError",
        Error::Remote(_) => "RemoteError",
        Error::NoReplica { .. } => "NoReplicaError",
        Error::Stopped(_) => "StoppedError",
        Error::Transport(_) => "TransportError",
        Error::Protocol(_) => "ProtocolError",
        Error::Tensor(_) | Error::Shape(_) => "TensorError",
        Error::NoSuchTensor(_) => "NoSuchTensorError",
        Error::InvalidReceipt(_) => "InvalidReceiptError",
        Error::Validation(_) => "ValidationError",
        _ => "CratError",
    }
}

/// The exception for an SDK error. A local I/O failure is the matching `OSError`.
pub(crate) fn to_py(e: Error) -> PyErr {
    Python::attach(|py| build(py, e).unwrap_or_else(|failure| failure))
}

/// Raises `cryptorat.errors.<class>(message)`; used for errors found in this crate.
pub(crate) fn new_err(class: &str, message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| {
        let make = || -> PyResult<PyErr> {
            let exc = py
                .import(ERRORS_MODULE)?
                .getattr(class)?
                .call1((message.clone(),))?;
            Ok(PyErr::from_value(exc))
        };
        make().unwrap_or_else(|failure| failure)
    })
}

fn build(py: Python<'_>, e: Error) -> PyResult<PyErr> {
    let e = match e {
        Error::Io(io) => return Ok(io.into()),
        other => other,
    };
    let class = py.import(ERRORS_MODULE)?.getattr(class_name(&e))?;
    let exc = class.call1(PyTuple::new(py, [e.to_string()])?)?;
    if let Error::Remote(wire) = &e {
        exc.setattr("code", code_name(wire.code))?;
    }
    if let Error::NoReplica { attempts, last } = e {
        exc.setattr("attempts", attempts)?;
        match last {
            Some(last) => {
                let last = build(py, *last)?.into_value(py);
                exc.setattr("last", &last)?;
                exc.setattr("__cause__", last)?;
            }
            None => exc.setattr("last", py.None())?,
        }
    }
    Ok(PyErr::from_value(exc))
}
