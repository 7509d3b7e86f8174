"""Shared fixtures: one local network for the whole session, and ONNX models built here."""

from __future__ import annotations

import pathlib
from typing import Iterator

import numpy as np
import pytest

import cryptorat
from cryptorat.testing import LocalNetwork

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_CNN = REPO / "crates" / "backend" / "models" / "tiny_cnn.onnx"
#: The same network with other weights (same inputs and outputs): what a model update swaps in.
TINY_CNN_V2 = REPO / "crates" / "backend" / "models" / "tiny_cnn_v2.onnx"

#: numpy dtype name -> ONNX TensorProto element type.
ONNX_TYPES = {
    "float32": 1,
    "uint8": 2,
    "int8": 3,
    "int32": 6,
    "int64": 7,
    "bool": 9,
    "float16": 10,
    "float64": 11,
}

CREDITS = 100_000_000


@pytest.fixture(scope="session")
def net() -> Iterator[LocalNetwork]:
    with LocalNetwork(nodes=2, credits=CREDITS) as network:
        yield network


@pytest.fixture(scope="session")
def client(net: LocalNetwork) -> cryptorat.Client:
    return cryptorat.connect(net.addr, net.dispatcher_id, net.key)


def per_request(allowance: int = 1_000_000) -> cryptorat.PerRequest:
    return cryptorat.PerRequest(max_input_bytes=1 << 16, credit_allowance=allowance)


@pytest.fixture(scope="session")
def tiny(client: cryptorat.Client) -> cryptorat.Deployment:
    """The tiny CNN, deployed and ready."""
    model = client.upload_model(TINY_CNN)
    deployment = client.deploy(model, per_request())
    deployment.wait_ready(timeout=60)
    return deployment


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 1, 28, 28), dtype=np.float32)


def onnx_model(nodes, inputs, outputs, initializers=(), doc: str = "") -> bytes:
    """An ONNX model (opset 13) from onnx.helper parts, as bytes."""
    from onnx import checker, helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7, doc_string=doc
    )
    checker.check_model(model)
    return model.SerializeToString()


def every_dtype_model() -> bytes:
    """Per dtype the network carries, inputs `x_<dtype>` and `e_<dtype>` [2, 3] and outputs
    `y_<dtype>` (`x + x` for numbers, `not x` for bool) and `e_<dtype>_out` (`e` as it is,
    for the extremes of each type)."""
    from onnx import helper

    nodes, inputs, outputs = [], [], []
    for name, elem in ONNX_TYPES.items():
        x, y, e = f"x_{name}", f"y_{name}", f"e_{name}"
        inputs += [helper.make_tensor_value_info(n, elem, [2, 3]) for n in (x, e)]
        outputs += [helper.make_tensor_value_info(n, elem, [2, 3]) for n in (y, e + "_out")]
        if name == "bool":
            nodes.append(helper.make_node("Not", [x], [y]))
        else:
            nodes.append(helper.make_node("Add", [x, x], [y]))
        nodes.append(helper.make_node("Identity", [e], [e + "_out"]))
    return onnx_model(nodes, inputs, outputs)


def large_model(values: int, doc: str) -> bytes:
    """`y = x + w` with `w` a float32 constant of `values` elements (a model of several
    upload chunks)."""
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.arange(values, dtype=np.float32), name="w")
    return onnx_model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", 1, [values])],
        [helper.make_tensor_value_info("y", 1, [values])],
        [w],
        doc=doc,
    )
