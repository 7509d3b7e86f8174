"""upload_model: bytes or paths, the progress callback, and a callback that raises."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import cryptorat
from conftest import TINY_CNN, large_model, per_request


def test_progress_reports_every_chunk_in_order(client: cryptorat.Client) -> None:
    model = large_model(600_000, doc="progress")  # ~2.4 MB: several chunks
    reports: list[cryptorat.UploadProgress] = []
    model_id = client.upload_model(model, progress=reports.append)
    assert len(reports) >= 3, reports
    assert reports[0].acked_bytes == 0 and not reports[0].already_stored
    acked = [r.acked_bytes for r in reports]
    assert acked == sorted(acked) and len(set(acked)) == len(acked)
    assert acked[-1] == len(model)
    assert all(r.total_bytes == len(model) and r.model == model_id for r in reports)

    # The same bytes again: stored already, one report, nothing sent.
    again: list[cryptorat.UploadProgress] = []
    assert client.upload_model(bytearray(model), progress=again.append) == model_id
    assert len(again) == 1 and again[0].already_stored
    assert again[0].acked_bytes == len(model)


def test_a_raising_callback_stops_the_upload(client: cryptorat.Client) -> None:
    model = large_model(600_000, doc="raising callback")
    calls = []

    def progress(p: cryptorat.UploadProgress) -> None:
        calls.append(p.acked_bytes)
        if p.acked_bytes > 0:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        client.upload_model(model, progress=progress)
    assert len(calls) == 2  # the first chunk's report raised; none after
    # The upload stopped there and was not finished; what the dispatcher received is kept:
    # the next upload resumes.
    reports: list[cryptorat.UploadProgress] = []
    client.upload_model(model, progress=reports.append)
    assert not reports[0].already_stored
    assert reports[-1].acked_bytes == len(model)


def test_a_callback_cannot_call_back_into_the_network(client: cryptorat.Client) -> None:
    model = large_model(1_000, doc="reentrant callback")

    def progress(p: cryptorat.UploadProgress) -> None:
        client.balance()

    with pytest.raises(RuntimeError, match="inside a callback"):
        client.upload_model(model, progress=progress)


def test_paths_and_bytes_name_the_same_model(client: cryptorat.Client, tmp_path) -> None:
    by_path = client.upload_model(TINY_CNN)
    by_str = client.upload_model(str(TINY_CNN))
    by_bytes = client.upload_model(TINY_CNN.read_bytes())
    assert by_path == by_str == by_bytes
    copy = pathlib.Path(tmp_path) / "copy.onnx"
    copy.write_bytes(TINY_CNN.read_bytes())
    assert client.upload_model(copy) == by_path


def test_a_large_model_deploys_and_computes(client: cryptorat.Client) -> None:
    model = client.upload_model(large_model(600_000, doc="progress"))
    deployment = client.deploy(model, cryptorat.PerRequest(max_input_bytes=1 << 22, credit_allowance=1_000_000))
    deployment.wait_ready(timeout=60)
    x = np.ones(600_000, np.float32)
    y = deployment.infer({"x": x})["y"]
    np.testing.assert_array_equal(y, x + np.arange(600_000, dtype=np.float32))
