"""The whole integrator flow on a LocalNetwork: connect, key, balance, upload with progress,
quote, deploy, wait_ready, infer, infer_many, undeploy."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import cryptorat
from conftest import CREDITS, TINY_CNN, TINY_CNN_V2, image, per_request
from cryptorat.testing import LocalNetwork


def test_the_whole_flow_on_a_fresh_network() -> None:
    with LocalNetwork(nodes=2, credits=5_000_000) as net:
        assert net.online_nodes() == 2
        assert net.addr.startswith("127.0.0.1:")
        client = cryptorat.connect(net.addr, net.dispatcher_id, net.key)

        key = client.key_status()
        assert key.status == "active"
        assert key.id == client.key_id
        assert net.key.startswith("sk_") and key.id.startswith("key_")
        assert key.expires_at_s is None
        assert client.balance() == 5_000_000

        reports: list[cryptorat.UploadProgress] = []
        model = client.upload_model(str(TINY_CNN), progress=reports.append)
        assert len(model) == 64
        assert reports[-1].acked_bytes == reports[-1].total_bytes == TINY_CNN.stat().st_size
        assert all(r.model == model for r in reports)

        plan = per_request(allowance=200_000)
        quote = client.quote(model, plan)
        assert quote.upfront == 200_000
        assert quote.per_request_max > 0

        deployment = client.deploy(model, plan)
        info = deployment.wait_ready(timeout=60)
        assert info.state == "ready"
        assert info.id == deployment.id
        assert info.model == model
        assert info.replicas_ready >= 1
        assert client.balance() == 5_000_000 - quote.upfront
        assert info.inputs is not None and info.outputs is not None
        (inp,) = info.inputs
        assert (inp.name, inp.dtype, inp.shape) == ("input", "float32", [None, 1, 28, 28])
        assert [o.name for o in info.outputs] == ["probs"]

        out = deployment.infer({"input": image(1)})
        assert list(out) == ["probs"]
        probs = out["probs"]
        assert probs.dtype == np.float32 and probs.shape == (1, 10)
        assert probs.flags.c_contiguous and probs.flags.writeable

        results = list(deployment.infer_many(({"input": image(s)} for s in range(16)), 4))
        assert len(results) == 16
        assert deployment.stats()["completed"] == 17
        assert client.stats()["completed"] == 17

        deployment.undeploy()
        assert deployment.info().state == "stopped"
        with pytest.raises(cryptorat.StoppedError):
            deployment.wait_ready(timeout=5)
    assert net.closed
    with pytest.raises(RuntimeError, match="closed"):
        net.connect()


def test_a_client_from_the_network_uses_its_key(net: LocalNetwork) -> None:
    client = net.connect()
    assert client.key_status().status == "active"
    assert client.balance() <= CREDITS
    assert repr(net).startswith("LocalNetwork(addr=")


def test_a_deployment_handle_by_id(client: cryptorat.Client, tiny: cryptorat.Deployment) -> None:
    again = client.deployment(tiny.id)
    assert again.info().state == "ready"
    out = again.infer({"input": image(3)})
    np.testing.assert_allclose(out["probs"], tiny.infer({"input": image(3)})["probs"], rtol=1e-5)


def test_per_instance_plans_are_quoted(client: cryptorat.Client) -> None:
    model = client.upload_model(TINY_CNN.read_bytes())
    plan = cryptorat.PerInstance(guaranteed_rps=5, max_input_bytes=1 << 16, key_lifetime_s=3_600)
    quote = client.quote(model, plan)
    assert quote.upfront > 0 and quote.capacity > 0 and quote.per_request_max == 0
    with pytest.raises(ValueError, match="update_frequency"):
        cryptorat.PerInstance(
            guaranteed_rps=5, max_input_bytes=1, key_lifetime_s=1, update_frequency="often"
        )
    with pytest.raises(TypeError, match="plan must be"):
        client.quote(model, {"per_request": 1})  # type: ignore[arg-type]


def test_the_gil_is_released_while_waiting(tiny: cryptorat.Deployment) -> None:
    """With a switch interval of an hour, the interpreter never takes the GIL from a thread:
    the main thread runs while a worker waits only if the worker released it."""
    import sys

    done = threading.Event()
    # Made beforehand: numpy's random generators release the GIL themselves.
    inputs = [{"input": image(s)} for s in range(400)]

    def work() -> None:
        for _ in tiny.infer_many(inputs, concurrency=1):
            pass
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(3_600)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        time.sleep(0.05)  # releases the GIL: the worker starts its tasks
        ran_while_waiting = not done.is_set()
    finally:
        sys.setswitchinterval(interval)
    worker.join(timeout=120)
    assert done.is_set()
    assert ran_while_waiting, "the main thread ran only once the worker had finished"


def test_a_model_update_switches_the_answers_and_is_bounded(client: cryptorat.Client) -> None:
    old = client.upload_model(TINY_CNN)
    new = client.upload_model(TINY_CNN_V2)
    deployment = client.deploy(old, per_request())
    deployment.wait_ready(timeout=60)
    before = deployment.infer({"input": image(7)})["probs"]
    info = deployment.update_model(new)
    assert (info.model, info.updates) == (new, 1)
    # The same model again changes nothing (a retry is safe).
    assert deployment.update_model(new).updates == 1
    done = deployment.wait_updated(timeout=60)
    assert done.replicas_on_model == done.replicas_ready >= 1
    after = deployment.infer({"input": image(7)})["probs"]
    assert after.shape == before.shape and not np.allclose(after, before)
    # A per-request deployment may update once a minute.
    with pytest.raises(cryptorat.UpdateTooFrequentError) as caught:
        deployment.update_model(old)
    assert caught.value.code == "update_too_frequent"
    assert done.next_update_at_s is not None and str(done.next_update_at_s) in str(caught.value)
    deployment.undeploy()
