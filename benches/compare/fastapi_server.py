"""One ONNX model behind FastAPI + onnxruntime, speaking the KServe v2 inference protocol with
Triton's binary tensor extension: what a data scientist would deploy instead of the CryptoRAT
gateway. benches/benches/gateway.rs starts it (CRAT_COMPARE_PYTHON) and drives it with the
same request bytes as the gateway.

    python benches/compare/fastapi_server.py crates/backend/models/tiny_cnn.onnx \
        --name tiny --port 8000 [--workers 2] [--intra-op-threads 0] [--provider cpu]

Serves `GET /v2/health/ready` and `POST /v2/models/{name}/infer`. An infer body is a JSON
header (`Inference-Header-Content-Length` bytes; all of the body without that header), then
the raw little-endian bytes of each input that has `parameters.binary_data_size`, in input
order. Outputs asked for with `parameters.binary_data` (or the request's
`parameters.binary_data_output`) come back the same way, the JSON header written as compact
as the gateway writes it; others come back as JSON `data`. Every answer names the worker
process that gave it (`X-Worker: <pid>`).

What is set, and why:
- uvicorn with 2 worker processes (`--workers`), uvloop and httptools (uvicorn[standard]),
  access log off and log level "warning" (no per-request logging, as the gateway does none).
- onnxruntime: the CPU execution provider and default session options: graph optimisation
  ORT_ENABLE_ALL, sequential execution, intra_op_num_threads 0 (onnxruntime's choice: one
  thread per physical core, in each worker). `--intra-op-threads N` sets it.
- `--provider cuda`: the CUDA execution provider alone, with its default options (device 0),
  from the onnxruntime-gpu package. onnxruntime silently runs a session on the CPU when the
  CUDA provider cannot load (a missing CUDA or cuDNN library, no GPU), so the launcher first
  opens the model itself and exits with the reason unless the session's providers start with
  CUDAExecutionProvider; each worker checks the same.
- `ORT_DISABLE_TELEMETRY=1` (and newer versions' `ORT_TELEMETRY_DISABLED=1`) unless already
  set: onnxruntime's PyPI build otherwise starts a telemetry uploader; the nodes run with it
  off too.
- The model runs inside the async handler: for a model this small a hop to a thread pool
  costs more than the run, and each worker has its own event loop.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from contextlib import asynccontextmanager

# onnxruntime's PyPI build uploads telemetry unless this is set before it loads; the nodes
# run with it off too (crat_backend::ort's docs), so both sides do the same work.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")  # newer versions' name

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

# uvicorn's workers are new processes that import this module: the launcher passes its
# arguments through the environment.
MODEL_ENV = "CRAT_COMPARE_MODEL"
NAME_ENV = "CRAT_COMPARE_MODEL_NAME"
THREADS_ENV = "CRAT_COMPARE_INTRA_OP_THREADS"
PROVIDER_ENV = "CRAT_COMPARE_PROVIDER"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

DTYPES = {
    "FP32": "<f4",
    "FP16": "<f2",
    "FP64": "<f8",
    "INT64": "<i8",
    "INT32": "<i4",
    "INT8": "i1",
    "UINT8": "u1",
    "BOOL": "?",
}
KSERVE_NAMES = {np.dtype(d).newbyteorder("="): name for name, d in DTYPES.items()}

model: dict = {}


def open_session(path: str, threads: int, provider: str) -> ort.InferenceSession:
    """The model's session on `provider` (a key of PROVIDERS); SystemExit with the reason
    when onnxruntime runs it on anything else."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    wanted = PROVIDERS[provider]
    if provider == "cuda" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu's own way to load the CUDA and cuDNN libraries of the `nvidia-*`
        # wheels in this python's packages (it does not find them otherwise, unless
        # LD_LIBRARY_PATH names their folders).
        ort.preload_dlls()
    if wanted not in ort.get_available_providers():
        raise SystemExit(
            f"fastapi_server: onnxruntime {ort.__version__} ({ort.__file__}) has no {wanted}: "
            f"it offers {ort.get_available_providers()}"
            + (" (install onnxruntime-gpu for --provider cuda)" if provider == "cuda" else "")
        )
    session = ort.InferenceSession(path, options, providers=[wanted])
    if session.get_providers()[:1] != [wanted]:
        raise SystemExit(
            f"fastapi_server: onnxruntime runs {path} with {session.get_providers()}, not "
            f"{wanted} (its log above says why the provider did not load)"
        )
    return session


@asynccontextmanager
async def lifespan(_app: FastAPI):
    model["name"] = os.environ[NAME_ENV]
    model["session"] = open_session(
        os.environ[MODEL_ENV],
        int(os.environ.get(THREADS_ENV, "0")),
        os.environ.get(PROVIDER_ENV, "cpu"),
    )
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/v2/health/ready")
async def ready() -> dict:
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    if name != model["name"]:
        return JSONResponse({"error": f"unknown model {name!r}"}, status_code=404)
    body = await request.body()
    try:
        header_len = int(request.headers.get("inference-header-content-length", len(body)))
        header = json.loads(body[:header_len])
        feeds, offset = {}, header_len
        for i in header["inputs"]:
            dtype = np.dtype(DTYPES[i["datatype"]])
            size = i.get("parameters", {}).get("binary_data_size")
            if size is None:
                value = np.asarray(i["data"], dtype=dtype)
            else:
                value = np.frombuffer(body, dtype, size // dtype.itemsize, offset)
                offset += size
            feeds[i["name"]] = value.reshape(i["shape"])
        if offset != len(body):
            raise ValueError(f"{len(body) - offset} bytes after the JSON header belong to no input")
        binary_default = header.get("parameters", {}).get("binary_data_output", False)
        session = model["session"]
        asked = header.get("outputs") or [{"name": o.name} for o in session.get_outputs()]
        results = session.run([o["name"] for o in asked], feeds)
    except Exception as e:  # a malformed request, or onnxruntime refusing the inputs
        return JSONResponse({"error": str(e)}, status_code=400)

    metas, binary = [], []
    for o, value in zip(asked, results):
        meta = {
            "name": o["name"],
            "datatype": KSERVE_NAMES[value.dtype],
            "shape": list(value.shape),
        }
        if o.get("parameters", {}).get("binary_data", binary_default):
            data = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
            meta["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        else:
            meta["data"] = value.ravel().tolist()
        metas.append(meta)
    answer = {"model_name": name}  # in the gateway's order: model_name, id, outputs
    if "id" in header:
        answer["id"] = header["id"]
    answer["outputs"] = metas
    json_part = json.dumps(answer, separators=(",", ":")).encode()
    # Which worker answered: the bench spreads its connections evenly over the workers, as a
    # load balancer in front of them would (the kernel alone may give one worker them all).
    worker = {"X-Worker": str(os.getpid())}
    if not binary:
        return Response(json_part, media_type="application/json", headers=worker)
    return Response(
        json_part + b"".join(binary),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(json_part)), **worker},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=pathlib.Path, help="the .onnx file")
    parser.add_argument("--name", help="the model's name in URLs (default: the file's stem)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--intra-op-threads", type=int, default=0, help="0: onnxruntime's choice")
    parser.add_argument(
        "--provider", choices=sorted(PROVIDERS), default="cpu", help="onnxruntime's provider"
    )
    args = parser.parse_args()

    os.environ[MODEL_ENV] = str(args.model.resolve())
    os.environ[NAME_ENV] = args.name or args.model.stem
    os.environ[THREADS_ENV] = str(args.intra_op_threads)
    os.environ[PROVIDER_ENV] = args.provider
    if args.provider != "cpu":
        # Checked once here, so a server that cannot run on the GPU stops at once with the
        # reason instead of each worker failing its start-up. (The CPU provider always loads.)
        session = open_session(os.environ[MODEL_ENV], args.intra_op_threads, args.provider)
        print(
            f"fastapi_server: {os.environ[NAME_ENV]} runs with {session.get_providers()}",
            flush=True,
        )
        del session
    uvicorn.run(
        "fastapi_server:app",
        app_dir=str(pathlib.Path(__file__).resolve().parent),
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
