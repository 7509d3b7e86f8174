"""The exceptions of ``cryptorat``: one class per error code of the network, one per local
failure, all subclasses of :class:`CratError`.

``CratError.code`` is the network's error code (``"insufficient_credits"``, ...) for errors
that a dispatcher or node returned (or their local equivalents: a timeout, a request too
large to send), and ``None`` for local failures. A failed local file read raises the
built-in ``OSError`` (``FileNotFoundError``, ...), and a bad argument ``TypeError`` or
``ValueError``.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "CratError",
    "BadRequestError",
    "UnauthenticatedError",
    "KeyExpiredError",
    "KeyRevokedError",
    "InsufficientCreditsError",
    "ModelRejectedError",
    "TooLargeError",
    "NotFoundError",
    "NoCapacityError",
    "InvalidInputError",
    "TicketRejectedError",
    "BusyError",
    "CratTimeoutError",
    "InternalError",
    "RateLimitedError",
    "BudgetExhaustedError",
    "QuotaExceededError",
    "UpdateTooFrequentError",
    "RemoteError",
    "NoReplicaError",
    "StoppedError",
    "TransportError",
    "ProtocolError",
    "TensorError",
    "NoSuchTensorError",
    "InvalidReceiptError",
    "ValidationError",
    "ERROR_CODES",
]


class CratError(Exception):
    """Base class of every error the network or the SDK reports."""

    #: The network's error code, or ``None`` for a local failure.
    code: Optional[str] = None


# One class per error code of the network (crat_core::wire::ErrorCode).


class BadRequestError(CratError):
    """The request was malformed or made no sense in the peer's state."""

    code = "bad_request"


class UnauthenticatedError(CratError):
    """The SDK key is unknown or its secret is wrong."""

    code = "unauthenticated"


class KeyExpiredError(CratError):
    """The SDK key has expired."""

    code = "key_expired"


class KeyRevokedError(CratError):
    """The SDK key was revoked."""

    code = "key_revoked"


class InsufficientCreditsError(CratError):
    """The balance or the deployment's allowance does not cover the cost."""

    code = "insufficient_credits"


class ModelRejectedError(CratError):
    """The model was refused (not ONNX, unsupported, or no node could load it)."""

    code = "model_rejected"


class TooLargeError(CratError):
    """Something exceeds a size cap (also detected locally, before sending)."""

    code = "too_large"


class NotFoundError(CratError):
    """The named model, deployment or upload does not exist (for this account)."""

    code = "not_found"


class NoCapacityError(CratError):
    """No node can take the work now."""

    code = "no_capacity"


class InvalidInputError(CratError, ValueError):
    """The inputs do not match the model: names, dtypes, shapes."""

    code = "invalid_input"


class TicketRejectedError(CratError):
    """A node refused the lease's ticket (the SDK renewed it and retried first)."""

    code = "ticket_rejected"


class BusyError(CratError):
    """The peer is over a rate or queue limit; retry later."""

    code = "busy"


class CratTimeoutError(CratError, TimeoutError):
    """The work did not finish in time (the peer's limit or the SDK's own); also a
    built-in ``TimeoutError``."""

    code = "timeout"


class InternalError(CratError):
    """The peer failed internally."""

    code = "internal"


class RateLimitedError(CratError):
    """Every replica of a per-instance deployment is at its share of the plan's rate."""

    code = "rate_limited"


class BudgetExhaustedError(CratError):
    """The lease's ticket cannot pay for the task (after one renewal)."""

    code = "budget_exhausted"


class QuotaExceededError(CratError):
    """The key or account holds its whole share of something the network shares."""

    code = "quota_exceeded"


class UpdateTooFrequentError(CratError):
    """The deployment's plan allows no model update now: its update frequency allows the next
    one later (the message says when), or none at all."""

    code = "update_too_frequent"


#: Every error code of the network and the class raised for it.
ERROR_CODES: dict[str, type[CratError]] = {
    cls.code: cls  # type: ignore[misc]
    for cls in (
        BadRequestError,
        UnauthenticatedError,
        KeyExpiredError,
        KeyRevokedError,
        InsufficientCreditsError,
        ModelRejectedError,
        TooLargeError,
        NotFoundError,
        NoCapacityError,
        InvalidInputError,
        TicketRejectedError,
        BusyError,
        CratTimeoutError,
        InternalError,
        RateLimitedError,
        BudgetExhaustedError,
        QuotaExceededError,
        UpdateTooFrequentError,
    )
}

# Failures without an error code of their own.


class RemoteError(CratError):
    """A peer answered with an error code this version does not know (``code`` names it)."""


class NoReplicaError(CratError):
    """Every attempt to run a task failed on a retryable error, or the lease named no
    replica. ``attempts`` is how many were made, ``last`` the last failure (also the
    exception's ``__cause__``)."""

    attempts: int = 0
    last: Optional[CratError] = None


class StoppedError(CratError):
    """The deployment is stopped (by its owner or for lack of credits)."""


class TransportError(CratError, ConnectionError):
    """Connecting or exchanging frames failed; also a built-in ``ConnectionError``."""


class ProtocolError(CratError):
    """The peer answered something the request cannot be answered with."""


class TensorError(CratError, ValueError):
    """An array cannot be sent (dtype the network does not carry, shape or size limits) or
    an output cannot be read."""


class NoSuchTensorError(CratError, KeyError):
    """No tensor of this name is among the outputs."""


class InvalidReceiptError(CratError):
    """A node answered without a valid receipt over the task (the answer was discarded)."""


class ValidationError(CratError):
    """A spot-checked task got answers that disagree and no majority decided."""
