"""Fixtures of the gateway tests: a real `crat gateway --local` (a dispatcher, two tract nodes
and the gateway, HTTP and gRPC, on loopback) per test session. CRAT_BIN names the `crat`
binary."""

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_CNN = REPO / "crates" / "backend" / "models" / "tiny_cnn.onnx"


def images(batch: int, seed: int) -> np.ndarray:
    """`batch` random 28 x 28 grey images, the tiny CNN's input."""
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's answer for the tiny CNN on `x`."""
    session = onnxruntime.InferenceSession(
        str(TINY_CNN), providers=["CPUExecutionProvider"]
    )
    return session.run(["probs"], {"input": x})[0]


def crat_bin() -> str:
    path = os.environ.get("CRAT_BIN")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            "CRAT_BIN must name the built `crat` binary (scripts/test.sh sets it)"
        )
    return path


class LocalGateway:
    """`crat gateway --local [--config FILE]`, its JSON line, and its stderr."""

    def __init__(self, config: Path | None = None):
        args = [crat_bin(), "gateway", "--local"]
        if config is not None:
            args += ["--config", str(config)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.proc.stdout.readline()), daemon=True
        )
        reader.start()
        reader.join(timeout=120)
        if not result or not result[0]:
            self.stop()
            raise RuntimeError(
                "crat gateway --local printed no JSON line within 120 s; stderr:\n"
                + "".join(self.stderr)
            )
        self.info = json.loads(result[0])
        self.url = self.info["url"]
        # tritonclient wants host:port without the scheme.
        self.host_port = self.url.removeprefix("http://")
        # The gRPC service's host:port (tritonclient.grpc takes it as it is).
        self.grpc = self.info["grpc"]

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def gateway():
    g = LocalGateway()
    yield g
    g.stop()
    assert g.proc.returncode == 0, "".join(g.stderr)
