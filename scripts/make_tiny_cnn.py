#!/usr/bin/env python3
"""Generates crates/backend/models/tiny_cnn.onnx, the small test CNN of crat-backend.

    pip install onnx numpy
    python3 scripts/make_tiny_cnn.py            # writes crates/backend/models/tiny_cnn.onnx
    python3 scripts/make_tiny_cnn.py crates/backend/models/tiny_cnn_v2.onnx --seed 20261205

The second is the same network with other weights (same inputs and outputs): the model a
deployment is updated to in the model-update tests.

The model is MNIST-shaped and untrained; its weights come from a fixed numpy seed, so running the
script again writes the same bytes (with the same onnx/numpy versions):

    input  "input" float32 [N, 1, 28, 28]
    Conv 1->4 (3x3, pad 1) -> Relu -> MaxPool 2x2      [N, 4, 14, 14]
    Conv 4->8 (3x3, pad 1) -> Relu -> MaxPool 2x2      [N, 8, 7, 7]
    Flatten -> Gemm 392->10 -> Softmax(axis 1)
    output "probs" float32 [N, 10]

Opset 13, IR version 7, batch dimension symbolic ("N"). The tests never need Python: the
generated file is committed next to this script's output path.
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240613
OPSET = 13
IR_VERSION = 7


def build(seed: int = SEED) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def weights(name, shape, fan_in):
        # He-style scale keeps activations in a reasonable range through the untrained net.
        w = rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        return numpy_helper.from_array(w, name)

    def bias(name, n):
        return numpy_helper.from_array(
            (rng.standard_normal(n) * 0.1).astype(np.float32), name
        )

    inits = [
        weights("conv1.w", (4, 1, 3, 3), 9),
        bias("conv1.b", 4),
        weights("conv2.w", (8, 4, 3, 3), 36),
        bias("conv2.b", 8),
        weights("fc.w", (10, 392), 392),
        bias("fc.b", 10),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w", "conv1.b"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="cryptorat scripts/make_tiny_cnn.py",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = sys.argv[1:]
    seed = SEED
    if "--seed" in args:
        at = args.index("--seed")
        seed = int(args[at + 1])
        del args[at : at + 2]
    out = args[0] if args else os.path.join(
        root, "crates", "backend", "models", "tiny_cnn.onnx"
    )
    model = build(seed)
    with open(out, "wb") as f:
        f.write(model.SerializeToString())
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
