"""numpy in and out, for every dtype the network carries."""

from __future__ import annotations

import numpy as np
import pytest

import cryptorat
from conftest import ONNX_TYPES, every_dtype_model, image, per_request


@pytest.fixture(scope="module")
def every_dtype(client: cryptorat.Client) -> cryptorat.Deployment:
    model = client.upload_model(every_dtype_model())
    deployment = client.deploy(model, per_request())
    info = deployment.wait_ready(timeout=60)
    assert info.inputs is not None
    assert {(t.name, t.dtype) for t in info.inputs} == {
        (f"{p}_{d}", d) for d in ONNX_TYPES for p in ("x", "e")
    }
    return deployment


def values(dtype: str, seed: int) -> np.ndarray:
    """Values whose `x + x` does not overflow (tract checks overflow in debug builds)."""
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random((2, 3)) < 0.5
    if dtype.startswith("float"):
        return (rng.standard_normal((2, 3)) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min // 2, info.max // 2, size=(2, 3), dtype=dtype, endpoint=True)


def extremes(dtype: str) -> np.ndarray:
    """The smallest and largest values of the type, and special values."""
    if dtype == "bool":
        return np.array([[True, False, True], [False, True, False]])
    if dtype.startswith("float"):
        info = np.finfo(dtype)
        return np.array([[info.min, info.max, info.tiny], [-0.0, np.inf, -np.inf]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0], [-1 if info.min else 1, info.min + 1, info.max - 1]], dtype=dtype)


def inputs(seed: int) -> dict[str, np.ndarray]:
    x = {f"x_{d}": values(d, seed) for d in ONNX_TYPES}
    x.update({f"e_{d}": extremes(d) for d in ONNX_TYPES})
    return x


def expected(x: np.ndarray) -> np.ndarray:
    return np.logical_not(x) if x.dtype == np.bool_ else x + x


def test_the_network_carries_these_dtypes() -> None:
    assert sorted(cryptorat.DTYPES) == sorted(ONNX_TYPES)


@pytest.mark.parametrize("dtype", list(ONNX_TYPES))
def test_numpy_in_and_out(every_dtype: cryptorat.Deployment, dtype: str) -> None:
    x = inputs(seed=len(dtype))
    out = every_dtype.infer(x)
    assert set(out) == {f"y_{d}" for d in ONNX_TYPES} | {f"e_{d}_out" for d in ONNX_TYPES}
    y, e = out[f"y_{dtype}"], out[f"e_{dtype}_out"]
    assert y.dtype == e.dtype == np.dtype(dtype)
    assert y.shape == e.shape == (2, 3)
    np.testing.assert_array_equal(y, expected(x[f"x_{dtype}"]))
    # Bit for bit (-0.0 and the infinities included).
    assert e.tobytes() == x[f"e_{dtype}"].tobytes()


def test_strided_and_non_native_containers_convert(every_dtype: cryptorat.Deployment) -> None:
    x = inputs(seed=7)
    # Fortran order, a strided view, and a read-only array.
    x["x_float32"] = np.asfortranarray(x["x_float32"])
    assert not x["x_float32"].flags.c_contiguous
    x["x_int32"] = np.arange(12, dtype=np.int32).reshape(2, 6)[:, ::2]
    assert not x["x_int32"].flags.c_contiguous and not x["x_int32"].flags.f_contiguous
    x["x_int64"].setflags(write=False)
    out = every_dtype.infer(x)
    np.testing.assert_array_equal(out["y_float32"], x["x_float32"] * 2)
    np.testing.assert_array_equal(out["y_int64"], x["x_int64"] * 2)
    np.testing.assert_array_equal(out["y_int32"], x["x_int32"] * 2)


def test_nested_lists_go_through_numpy_asarray(every_dtype: cryptorat.Deployment) -> None:
    x = inputs(seed=8)
    x["x_float64"] = x["x_float64"].tolist()  # asarray makes float64 of it
    out = every_dtype.infer(x)
    np.testing.assert_array_equal(out["y_float64"], np.asarray(x["x_float64"]) * 2)


@pytest.mark.parametrize("dtype", ["uint16", "complex64", "float32_big_endian", "object"])
def test_a_dtype_the_network_does_not_carry_is_a_tensor_error(
    tiny: cryptorat.Deployment, dtype: str
) -> None:
    if dtype == "float32_big_endian":
        x = image(0).astype(">f4")
    elif dtype == "object":
        x = np.array([[object()]], dtype=object)
    else:
        x = image(0).astype(dtype)
    with pytest.raises(cryptorat.TensorError, match="does not carry") as caught:
        tiny.infer({"input": x})
    assert isinstance(caught.value, ValueError)
    assert caught.value.code is None


def test_inputs_must_be_a_mapping(tiny: cryptorat.Deployment) -> None:
    with pytest.raises(TypeError, match="mapping"):
        tiny.infer([image(0)])  # type: ignore[arg-type]
