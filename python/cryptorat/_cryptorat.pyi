"""Type stubs of the native module (``python/src/*.rs``)."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np
import numpy.typing as npt

#: The numpy dtypes the network carries.
DTYPES: list[str]

Inputs = Mapping[str, npt.ArrayLike]
Outputs = dict[str, np.ndarray]

def connect(addr: str, dispatcher_id: str, key: str) -> Client:
    """Connects to the dispatcher at ``addr`` ("host:port") that proves the identity
    ``dispatcher_id`` (64 hex digits), with the SDK key ``key`` ("sk_...")."""

def error_codes() -> list[str]:
    """The names of every error code the network has (``CratError.code`` values)."""

def exception_for_code(code: str, message: str) -> BaseException:
    """The exception raised when a dispatcher or node refuses with ``code``."""

class PerRequest:
    """Pay per request from a credit allowance set aside at deploy time."""

    max_input_bytes: int
    credit_allowance: int
    def __init__(self, *, max_input_bytes: int, credit_allowance: int) -> None: ...

class PerInstance:
    """Pay per instance: capacity reserved for the deployment key's lifetime."""

    guaranteed_rps: int
    max_input_bytes: int
    key_lifetime_s: int
    update_frequency: str
    def __init__(
        self,
        *,
        guaranteed_rps: int,
        max_input_bytes: int,
        key_lifetime_s: int,
        update_frequency: str = "never",
    ) -> None: ...

Plan = Union[PerRequest, PerInstance]

class Quote:
    """What a deployment would cost, in credits."""

    upfront: int
    per_request_max: int
    capacity: int
    updates: int
    credit_price_usd_micro: int

class UploadProgress:
    """How far an upload has come."""

    model: str
    acked_bytes: int
    total_bytes: int
    resumed_from_bytes: int
    already_stored: bool

class KeyInfo:
    """An SDK key as the dispatcher describes it."""

    id: str
    status: str  # "active", "expired" or "revoked"
    created_at_s: int
    expires_at_s: Optional[int]

class TensorSpec:
    """One declared input or output of a model."""

    name: str
    dtype: str
    shape: Optional[list[Optional[int]]]

class DeploymentInfo:
    """A deployment as the dispatcher describes it."""

    id: str
    model: str
    state: str  # "pending", "ready", "degraded", "stopped" or "failed"
    replicas_ready: int
    replicas_wanted: int
    replicas_on_model: int
    updates: int
    next_update_at_s: Optional[int]
    upfront: int
    allowance_left: int
    verifiable: bool
    failure: Optional[str]
    # Why fewer replicas than replicas_wanted are placed (a small or busy network): served
    # by those it has, topped up as nodes join; None when all are placed.
    shortfall: Optional[str]
    inputs: Optional[list[TensorSpec]]
    outputs: Optional[list[TensorSpec]]

class Client:
    """A connection to the network through one dispatcher."""

    @property
    def key_id(self) -> str: ...
    def upload_model(
        self,
        model: Union[bytes, bytearray, str, os.PathLike[str]],
        progress: Optional[Callable[[UploadProgress], Any]] = None,
    ) -> str:
        """Uploads ONNX bytes or a file; returns the model id (64 hex digits)."""
    def quote(self, model: str, plan: Plan) -> Quote: ...
    def deploy(self, model: str, plan: Plan) -> Deployment: ...
    def deployment(self, id: str) -> Deployment: ...
    def set_model_public(self, model: str, public: bool) -> None: ...
    def balance(self) -> int:
        """Credits left on the account."""
    def key_status(self) -> KeyInfo: ...
    def stats(self) -> dict[str, int]: ...

class Deployment:
    """A deployed model; tasks go straight to the nodes serving it."""

    @property
    def id(self) -> str: ...
    def info(self) -> DeploymentInfo: ...
    def wait_ready(self, timeout: float = 120.0) -> DeploymentInfo: ...
    def update_model(self, model: str) -> DeploymentInfo:
        """Replaces the deployment's model by a compatible stored model; each replica
        switches once the new model is warm. Raises ``UpdateTooFrequentError`` beyond the
        plan's update frequency."""
    def wait_updated(self, timeout: float = 120.0) -> DeploymentInfo:
        """Waits until every ready replica serves the deployment's current model."""
    def infer(self, inputs: Inputs) -> Outputs:
        """Runs one task: input names to arrays in, output names to arrays out."""
    def infer_many(self, inputs: Iterable[Inputs], concurrency: int = 8) -> InferMany:
        """Runs a task per element of ``inputs``, at most ``concurrency`` at once; yields
        outputs in input order."""
    def undeploy(self) -> None: ...
    def stats(self) -> dict[str, int]: ...

class InferMany(Iterator[Outputs]):
    """The ordered iterator of ``Deployment.infer_many``."""

    @property
    def in_flight(self) -> int: ...
    def __iter__(self) -> InferMany: ...
    def __next__(self) -> Outputs: ...
    def close(self) -> None: ...

class LocalNetwork:
    """A dispatcher and tract nodes on loopback, in this process (``cryptorat.testing``)."""

    def __init__(self, nodes: int = 2, credits: int = 1_000_000) -> None: ...
    @property
    def addr(self) -> str: ...
    @property
    def dispatcher_id(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def nodes(self) -> int: ...
    @property
    def credits(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def online_nodes(self) -> int: ...
    def grant(self, credits: int) -> int: ...
    def create_key(self, lifetime_s: Optional[int] = None) -> str: ...
    def revoke_key(self, key: str) -> None: ...
    def connect(self) -> Client: ...
    def close(self) -> None: ...
    def __enter__(self) -> LocalNetwork: ...
    def __exit__(self, *exc: object) -> bool: ...

def rust_infer_many_seconds(
    deployment: Deployment, inputs: Inputs, count: int, concurrency: int
) -> float:
    """Benchmark support (``cryptorat.testing``): seconds the Rust SDK's own ``infer_many``
    takes to run ``count`` tasks of ``inputs`` on ``deployment``."""
