"""Typed exceptions: one class per error code, raised where the network refuses."""

from __future__ import annotations

import time

import numpy as np
import pytest

import cryptorat
from conftest import TINY_CNN, image, per_request
from cryptorat.testing import LocalNetwork


def test_every_error_code_has_its_class() -> None:
    codes = cryptorat.error_codes()
    assert len(codes) == 18
    assert sorted(codes) == sorted(cryptorat.errors.ERROR_CODES)
    classes = set()
    for code in codes:
        exc = cryptorat.exception_for_code(code, "why")
        cls = cryptorat.errors.ERROR_CODES[code]
        assert type(exc) is cls, code
        assert isinstance(exc, cryptorat.CratError)
        assert exc.code == code
        assert "why" in str(exc)
        classes.add(cls)
    assert len(classes) == 18
    assert isinstance(cryptorat.exception_for_code("timeout", ""), TimeoutError)
    assert isinstance(cryptorat.exception_for_code("invalid_input", ""), ValueError)
    with pytest.raises(ValueError):
        cryptorat.exception_for_code("no_such_code", "")


def test_a_wrong_secret_is_unauthenticated(net: LocalNetwork) -> None:
    key = net.key
    wrong = key[:-1] + ("0" if key[-1] != "0" else "1")
    client = cryptorat.connect(net.addr, net.dispatcher_id, wrong)
    with pytest.raises(cryptorat.UnauthenticatedError) as caught:
        client.balance()
    assert caught.value.code == "unauthenticated"
    assert wrong not in str(caught.value)


def test_a_revoked_key_and_an_expired_key(net: LocalNetwork) -> None:
    revoked = net.create_key()
    client = cryptorat.connect(net.addr, net.dispatcher_id, revoked)
    assert client.key_status().status == "active"
    net.revoke_key(revoked)
    with pytest.raises(cryptorat.KeyRevokedError):
        client.balance()

    expiring = net.create_key(lifetime_s=1)
    client = cryptorat.connect(net.addr, net.dispatcher_id, expiring)
    time.sleep(2.1)
    with pytest.raises(cryptorat.KeyExpiredError):
        client.balance()


def test_malformed_arguments_are_value_errors(net: LocalNetwork) -> None:
    with pytest.raises(ValueError, match="dispatcher_id"):
        cryptorat.connect(net.addr, "zz", net.key)
    with pytest.raises(ValueError, match="key") as caught:
        cryptorat.connect(net.addr, net.dispatcher_id, "sk_secret_but_malformed")
    assert "secret_but_malformed" not in str(caught.value)
    with pytest.raises(ValueError, match="addr"):
        cryptorat.connect("not an address", net.dispatcher_id, net.key)


def test_refusals_have_their_classes(net: LocalNetwork, client: cryptorat.Client) -> None:
    with pytest.raises(cryptorat.ModelRejectedError):
        client.upload_model(b"these bytes are not an ONNX model")
    with pytest.raises(cryptorat.NotFoundError):
        client.quote("00" * 32, per_request())
    with pytest.raises(cryptorat.NotFoundError):
        client.deployment("dep_" + "00" * 16).info()
    model = client.upload_model(TINY_CNN)
    with pytest.raises(cryptorat.InsufficientCreditsError) as caught:
        client.deploy(model, per_request(allowance=client.balance() + 1))
    assert caught.value.code == "insufficient_credits"
    with pytest.raises(FileNotFoundError):
        client.upload_model("/nonexistent/model.onnx")
    with pytest.raises(TypeError):
        client.upload_model(12345)  # type: ignore[arg-type]


def test_inputs_the_model_does_not_take_are_invalid_input(tiny: cryptorat.Deployment) -> None:
    with pytest.raises(cryptorat.InvalidInputError):
        tiny.infer({"not_the_input": image(0)})
    with pytest.raises(cryptorat.InvalidInputError):
        tiny.infer({"input": np.zeros((1, 1, 27, 28), np.float32)})
    with pytest.raises(cryptorat.InvalidInputError):
        tiny.infer({"input": image(0).astype(np.float64)})
