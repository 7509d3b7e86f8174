"""One ONNX model timed through onnxruntime's Python binding alone, at each batch size: the
figure the comparison's README sets against a node's run of the same model (what the model
itself costs on this machine, with no server around it).

    python benches/compare/ort_alone.py MODEL --dims 3 48 192 [--batch 1 2 4 8] [--reps 30]
        [--intra-op-threads 1]

The first input gets shape [batch, *dims] (every other input is refused: both OCR models and
the tiny CNN have one), filled with values uniform in [0, 1) from a fixed seed; each batch
size is run `--reps` times after one warm-up run. Prints, per batch size, the median CPU time
of this process per item (`time.process_time`: the run's threads, which a preempted run does
not inflate) and the median wall time per item, in ms. Session options as the FastAPI server
sets them (benches/compare/fastapi_server.py): the CPU execution provider, default options
but the intra-op thread count (1, as FastAPI i1 and each node run it; 0 lets onnxruntime
choose).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# onnxruntime's PyPI build uploads telemetry unless this is set before it loads; the nodes
# run with it off too (crat_backend::ort's docs), so both sides do the same work.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")  # newer versions' name

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--dims", type=int, nargs="+", required=True, help="input shape after the batch dimension")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    args = parser.parse_args()
    if args.reps < 1 or any(b < 1 for b in args.batch) or any(d < 1 for d in args.dims):
        parser.error("--reps, --batch and --dims take positive numbers")

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.intra_op_threads
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        parser.error(f"the model has {len(inputs)} inputs; this script feeds one")
    name = inputs[0].name
    rng = np.random.default_rng(19)

    print(f"{args.model}: onnxruntime {ort.__version__}, intra-op threads {args.intra_op_threads}")
    print("batch  cpu ms/item (median)  wall ms/item (median)")
    for batch in args.batch:
        x = rng.random((batch, *args.dims), dtype=np.float32)
        session.run(None, {name: x})  # warm-up: first-run allocations
        cpu, wall = [], []
        for _ in range(args.reps):
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            session.run(None, {name: x})
            cpu.append((time.process_time_ns() - c0) / batch / 1e6)
            wall.append((time.perf_counter_ns() - w0) / batch / 1e6)
        print(f"{batch:5}  {statistics.median(cpu):20.3f}  {statistics.median(wall):21.3f}")


if __name__ == "__main__":
    main()
