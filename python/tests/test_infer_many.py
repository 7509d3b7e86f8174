"""infer_many: results in input order, bounded look-ahead, failures in their place."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

import cryptorat
from conftest import image


@pytest.mark.parametrize("concurrency", [1, 3, 16])
def test_results_come_in_input_order(tiny: cryptorat.Deployment, concurrency: int) -> None:
    seeds = list(range(100, 140))
    singly = [tiny.infer({"input": image(s)})["probs"] for s in seeds]
    many = list(tiny.infer_many(({"input": image(s)} for s in seeds), concurrency))
    assert len(many) == len(seeds)
    # Nodes batch tasks, so the same input may come back a few ulps apart; distinct inputs
    # give outputs far apart, so each result's nearest single run must be its own.
    stacked = np.concatenate(singly)
    for i, got in enumerate(many):
        np.testing.assert_allclose(got["probs"][0], singly[i][0], rtol=1e-5, atol=1e-7)
        assert int(np.abs(stacked - got["probs"]).sum(axis=1).argmin()) == i


def test_inputs_are_read_only_as_far_as_the_window(tiny: cryptorat.Deployment) -> None:
    pulled = []

    def inputs() -> Iterator[dict[str, np.ndarray]]:
        for s in range(50):
            pulled.append(s)
            yield {"input": image(s)}

    it = tiny.infer_many(inputs(), concurrency=4)
    assert pulled == []  # nothing starts before the first next()
    next(it)
    assert len(pulled) <= 1 + 4
    assert it.in_flight <= 4
    next(it)
    assert len(pulled) <= 2 + 4
    it.close()
    assert it.in_flight == 0
    with pytest.raises(StopIteration):
        next(it)


def test_a_failure_is_raised_in_its_place_and_ends_the_iteration(
    tiny: cryptorat.Deployment,
) -> None:
    inputs = [{"input": image(s)} for s in range(6)]
    inputs[3] = {"input": np.zeros((2, 2), np.float32)}  # wrong shape: refused by the node
    it = tiny.infer_many(inputs, concurrency=4)
    got = [next(it) for _ in range(3)]
    assert len(got) == 3
    with pytest.raises(cryptorat.InvalidInputError):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_an_input_that_cannot_convert_fails_in_its_place(tiny: cryptorat.Deployment) -> None:
    inputs = [{"input": image(0)}, {"input": image(1).astype(np.uint16)}, {"input": image(2)}]
    it = tiny.infer_many(inputs, concurrency=8)
    assert next(it)["probs"].shape == (1, 10)
    with pytest.raises(cryptorat.TensorError):
        next(it)


def test_an_exception_from_the_input_iterator_is_raised_in_its_place(
    tiny: cryptorat.Deployment,
) -> None:
    def inputs() -> Iterator[dict[str, np.ndarray]]:
        yield {"input": image(0)}
        raise KeyError("from the caller's generator")

    it = tiny.infer_many(inputs(), concurrency=2)
    next(it)
    with pytest.raises(KeyError, match="caller's generator"):
        next(it)


def test_concurrency_is_bounded(tiny: cryptorat.Deployment) -> None:
    for bad in (0, 1_025):
        with pytest.raises(ValueError, match="concurrency"):
            tiny.infer_many([], concurrency=bad)
    assert list(tiny.infer_many([], concurrency=1)) == []


def test_the_rust_baseline_runs_the_same_tasks(tiny: cryptorat.Deployment) -> None:
    from cryptorat.testing import rust_infer_many_seconds

    before = tiny.stats()["completed"]
    seconds = rust_infer_many_seconds(tiny, {"input": image(0)}, 20, 4)
    assert seconds > 0
    assert tiny.stats()["completed"] == before + 20
    with pytest.raises(cryptorat.InvalidInputError):
        rust_infer_many_seconds(tiny, {"input": image(0)[0]}, 2, 1)
    with pytest.raises(ValueError, match="concurrency"):
        rust_infer_many_seconds(tiny, {"input": image(0)}, 2, 0)
