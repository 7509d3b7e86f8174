"""The official Triton HTTP client (`tritonclient.http`) against `crat gateway --local`: health,
metadata, readiness, configuration, and inference with JSON and with binary tensor data; the
outputs equal ONNX Runtime's on the same model and inputs."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import images, reference


@pytest.fixture()
def client(gateway):
    c = httpclient.InferenceServerClient(gateway.host_port)
    yield c
    c.close()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_server_and_model_are_live_and_ready(gateway, client):
    assert client.is_server_live()
    assert client.is_server_ready()
    headers = auth(gateway.info["key"])
    assert client.is_model_ready("tiny", headers=headers)
    assert client.is_model_ready(
        "tiny", model_version=gateway.info["version"], headers=headers
    )
    assert client.is_model_ready(gateway.info["deployment"], headers=headers)
    assert not client.is_model_ready("tiny", model_version="0" * 64, headers=headers)
    assert client.get_server_metadata()["name"] == "crat-gateway"


def test_model_metadata_and_config(gateway, client):
    headers = auth(gateway.info["key"])
    meta = client.get_model_metadata("tiny", headers=headers)
    assert meta["name"] == "tiny"
    assert meta["versions"] == [gateway.info["version"]]
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    ]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}]
    config = client.get_model_config("tiny", headers=headers)
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["output"][0]["name"] == "probs"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("batch", [1, 3])
def test_infer_equals_onnxruntime(gateway, client, binary, batch):
    x = images(batch, seed=batch * 10 + binary)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probs", binary_data=binary)
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
    assert response["id"] == "req-7"
    assert ("parameters" in response["outputs"][0]) == binary


def test_infer_without_named_outputs_and_with_a_version(gateway, client):
    x = images(1, seed=5)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(
        "tiny",
        [inp],
        model_version=gateway.info["version"],
        headers=auth(gateway.info["key"]),
    )
    np.testing.assert_allclose(
        result.as_numpy("probs"), reference(x), rtol=1e-4, atol=1e-6
    )


def refusal(client, model, key, x=None):
    x = images(1, seed=1) if x is None else x
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, [inp], headers=auth(key) if key else None)
    return e.value


def test_refusals_reach_the_client_with_their_status(gateway, client):
    key = gateway.info["key"]
    assert refusal(client, "tiny", None).status() == "401"
    assert refusal(client, "tiny", gateway.info["revoked_key"]).status() == "403"
    assert refusal(client, "tiny", gateway.info["expired_key"]).status() == "403"
    assert refusal(client, gateway.info["spent_model"], key).status() == "402"
    assert refusal(client, "no-such-model", key).status() == "404"
    wrong = np.zeros((1, 1, 27, 28), dtype=np.float32)
    e = refusal(client, "tiny", key, wrong)
    assert e.status() == "400"
    assert "input" in e.message()
