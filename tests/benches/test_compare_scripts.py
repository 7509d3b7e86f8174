"""The Python scripts of issue 19's comparison, on this machine's CPU: the FastAPI +
onnxruntime anchor (`benches/compare/fastapi_server.py`) answers the official Triton HTTP client
as onnxruntime does and refuses a GPU it cannot use, and `scripts/onnxruntime-gpu-libs.py`
finds onnxruntime's library and the CUDA libraries' folders. scripts/test.sh runs these with
the gateway tests' virtual environment (tests/gateway/requirements.txt)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import tritonclient.http as httpclient

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "benches" / "compare" / "fastapi_server.py"
GPU_LIBS = REPO / "scripts" / "onnxruntime-gpu-libs.py"
TINY_CNN = REPO / "crates" / "backend" / "models" / "tiny_cnn.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fastapi_anchor_answers_the_triton_client_as_onnxruntime_does():
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), str(TINY_CNN), "--name", "tiny", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"the server exited: {server.stderr.read()}"
            try:
                if client.is_server_ready():
                    break
            except Exception:  # not listening yet
                pass
            assert time.monotonic() < deadline, "the server was not ready within 60 s"
            time.sleep(0.2)
        x = np.random.default_rng(7).random((3, 1, 28, 28), dtype=np.float32)
        for binary in (True, False):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("probs", binary_data=binary)
            got = client.infer("tiny", [inp], outputs=[out]).as_numpy("probs")
            want = onnxruntime.InferenceSession(
                str(TINY_CNN), providers=["CPUExecutionProvider"]
            ).run(["probs"], {"input": x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_fastapi_anchor_refuses_cuda_without_it():
    # This machine's onnxruntime is the CPU build: asked for CUDA, the server stops at once
    # with the reason instead of serving on the CPU under a GPU's name.
    result = subprocess.run(
        [sys.executable, str(SERVER), str(TINY_CNN), "--provider", "cuda", "--port", "9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result
    assert "has no CUDAExecutionProvider" in result.stderr, result.stderr


def test_gpu_libs_names_the_library_and_every_nvidia_folder(tmp_path):
    site = tmp_path / "site"
    for lib in ["nvidia/cu13/lib/libcublas.so.13", "nvidia/cudnn/lib/libcudnn.so.9"]:
        (site / lib).parent.mkdir(parents=True)
        (site / lib).write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run(
        [sys.executable, str(GPU_LIBS)], capture_output=True, text=True, env=env, check=True
    )
    library, folders = result.stdout.split()
    capi = Path(onnxruntime.__file__).parent / "capi"
    assert Path(library).parent == capi
    assert Path(library).name.startswith("libonnxruntime.so.")
    assert Path(library).is_file()
    folders = folders.split(":")
    assert str(site / "nvidia/cu13/lib") in folders
    assert str(site / "nvidia/cudnn/lib") in folders
    assert folders[-1] == str(capi)


def test_gpu_libs_without_onnxruntime_says_so():
    # -I -S: no site packages, so no onnxruntime.
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(GPU_LIBS)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "no onnxruntime package" in result.stderr, result.stderr
