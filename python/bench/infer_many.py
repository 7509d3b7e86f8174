"""Python `Deployment.infer_many` against the Rust SDK's `Deployment::infer_many`, on the same
local network, deployment, input and concurrency, in one run: tasks per second of each.

    python python/bench/infer_many.py [--tasks 2000] [--concurrency 32] [--nodes 2] [--rounds 3]

Run from the repository root after `scripts/test-python.sh` (or `maturin develop`) built the
package. Rounds alternate Rust and Python; the best round of each is reported, with all rounds.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import numpy as np

from cryptorat.testing import LocalNetwork, rust_infer_many_seconds

TINY_CNN = pathlib.Path(__file__).resolve().parents[2] / "crates/backend/models/tiny_cnn.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with LocalNetwork(nodes=args.nodes, credits=10**12) as net:
        client = net.connect()
        model = client.upload_model(TINY_CNN)
        import cryptorat

        plan = cryptorat.PerRequest(max_input_bytes=1 << 16, credit_allowance=10**11)
        deployment = client.deploy(model, plan)
        deployment.wait_ready(timeout=60)
        image = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
        inputs = {"input": image}
        # Warm-up: leases, connections, the nodes' loaded models.
        rust_infer_many_seconds(deployment, inputs, 200, args.concurrency)

        rust, python = [], []
        for _ in range(args.rounds):
            rust.append(args.tasks / rust_infer_many_seconds(deployment, inputs, args.tasks, args.concurrency))
            start = time.perf_counter()
            count = sum(1 for _ in deployment.infer_many((inputs for _ in range(args.tasks)), args.concurrency))
            python.append(count / (time.perf_counter() - start))
            assert count == args.tasks

        print(f"tiny_cnn, {args.nodes} tract nodes on loopback, {args.tasks} tasks per round, "
              f"concurrency {args.concurrency}, {os.cpu_count()} CPUs")
        print(f"rust   infer_many: best {max(rust):8.0f} tasks/s  rounds {[round(x) for x in rust]}")
        print(f"python infer_many: best {max(python):8.0f} tasks/s  rounds {[round(x) for x in python]}")
        print(f"python / rust: {max(python) / max(rust):.2f}")


if __name__ == "__main__":
    main()
