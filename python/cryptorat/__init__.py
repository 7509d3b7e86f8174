"""``cryptorat``: the Python client of the CryptoRAT inference network.

A thin layer over the Rust SDK (``crat-sdk``): upload an ONNX model, get a price, deploy it,
and run tasks with numpy arrays in and out, straight on the nodes that serve the model::

    import numpy as np
    import cryptorat

    client = cryptorat.connect("203.0.113.7:7400", dispatcher_id, "sk_...")
    model = client.upload_model("model.onnx", progress=lambda p: print(p.acked_bytes))
    plan = cryptorat.PerRequest(max_input_bytes=1 << 20, credit_allowance=10_000)
    print(client.quote(model, plan))
    deployment = client.deploy(model, plan)
    deployment.wait_ready(timeout=60)
    outputs = deployment.infer({"input": np.zeros((1, 1, 28, 28), np.float32)})
    for out in deployment.infer_many(({"input": x} for x in images), concurrency=8):
        ...

Every call that waits on the network releases the GIL while it waits. Errors are the
typed exceptions of :mod:`cryptorat.errors` (re-exported here). :mod:`cryptorat.testing`
starts a whole network in this process, to try all of this offline.
"""

from __future__ import annotations

from . import errors
from ._cryptorat import (
    DTYPES,
    Client,
    Deployment,
    DeploymentInfo,
    InferMany,
    KeyInfo,
    PerInstance,
    PerRequest,
    Quote,
    TensorSpec,
    UploadProgress,
    connect,
    error_codes,
    exception_for_code,
)
from .errors import *  # noqa: F401,F403  (the exception classes)
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = [
    "DTYPES",
    "Client",
    "Deployment",
    "DeploymentInfo",
    "InferMany",
    "KeyInfo",
    "PerInstance",
    "PerRequest",
    "Quote",
    "TensorSpec",
    "UploadProgress",
    "connect",
    "error_codes",
    "exception_for_code",
    "errors",
    *_errors_all,
]
