"""The official Triton gRPC client (`tritonclient.grpc`) against `crat gateway --local`'s gRPC
service (KServe v2 `inference.GRPCInferenceService`): health, readiness, metadata, and
inference with raw tensors equal to ONNX Runtime's on the same model and inputs; the status
codes of the refusals as the client sees them."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import images, reference


@pytest.fixture()
def client(gateway):
    c = grpcclient.InferenceServerClient(gateway.grpc)
    yield c
    c.close()


def auth(key: str) -> dict:
    # gRPC metadata keys are lower case.
    return {"authorization": f"Bearer {key}"}


def test_server_and_model_are_live_and_ready(gateway, client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata().name == "crat-gateway"
    headers = auth(gateway.info["key"])
    assert client.is_model_ready("tiny", headers=headers)
    assert client.is_model_ready(
        "tiny", model_version=gateway.info["version"], headers=headers
    )
    assert client.is_model_ready(gateway.info["deployment"], headers=headers)
    # As Triton answers: another version, or an unknown model, is not ready (no error).
    assert not client.is_model_ready("tiny", model_version="0" * 64, headers=headers)
    assert not client.is_model_ready("no-such-model", headers=headers)


def test_model_metadata(gateway, client):
    meta = client.get_model_metadata("tiny", headers=auth(gateway.info["key"]))
    assert meta.name == "tiny"
    assert list(meta.versions) == [gateway.info["version"]]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 1, 28, 28])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probs", "FP32", [-1, 10])
    ]


@pytest.mark.parametrize("batch", [1, 3])
def test_infer_equals_onnxruntime(gateway, client, batch):
    x = images(batch, seed=batch * 10 + 7)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = grpcclient.InferRequestedOutput("probs")
    result = client.infer(
        "tiny",
        [inp],
        outputs=[out],
        request_id="req-7",
        headers=auth(gateway.info["key"]),
    )
    got = result.as_numpy("probs")
    assert got.shape == (batch, 10)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference(x), rtol=1e-4, atol=1e-6)
    response = result.get_response()
    assert response.id == "req-7"
    assert response.model_name == "tiny"
    # Raw bytes back, as tritonclient sends and reads them.
    assert len(response.raw_output_contents) == 1


def test_infer_without_named_outputs_and_with_a_version(gateway, client):
    x = images(1, seed=5)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        "tiny",
        [inp],
        model_version=gateway.info["version"],
        headers=auth(gateway.info["key"]),
    )
    np.testing.assert_allclose(
        result.as_numpy("probs"), reference(x), rtol=1e-4, atol=1e-6
    )
    assert result.get_response().model_version == gateway.info["version"]


def refusal(client, model, key, x=None, version=""):
    x = images(1, seed=1) if x is None else x
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        client.infer(
            model, [inp], model_version=version, headers=auth(key) if key else None
        )
    return e.value


def test_refusals_reach_the_client_with_their_status(gateway, client):
    key = gateway.info["key"]
    info = gateway.info
    cases = [
        (refusal(client, "tiny", None), "UNAUTHENTICATED"),
        (refusal(client, "tiny", "sk_nope"), "UNAUTHENTICATED"),
        (refusal(client, "tiny", info["revoked_key"]), "PERMISSION_DENIED"),
        (refusal(client, "tiny", info["expired_key"]), "PERMISSION_DENIED"),
        (refusal(client, info["spent_model"], key), "FAILED_PRECONDITION"),
        (refusal(client, "no-such-model", key), "NOT_FOUND"),
        (refusal(client, "tiny", key, version="0" * 64), "NOT_FOUND"),
    ]
    for e, code in cases:
        assert e.status() == f"StatusCode.{code}", (e.status(), e.message())
        assert e.message()
    wrong = np.zeros((1, 1, 27, 28), dtype=np.float32)
    e = refusal(client, "tiny", key, wrong)
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input" in e.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("tiny", headers=auth(info["revoked_key"]))
    assert e.value.status() == "StatusCode.PERMISSION_DENIED"
