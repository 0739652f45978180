"""Dynamic batching: real demo models (ONNX Runtime on CPU) for results, batching and delay;
a tiny fake model only for ordering, failure and shutdown edge cases."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from inference import Model, load_model
from worker.batching import BatcherClosed, BatcherRegistry, DynamicBatcher

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def classifier() -> Model:
    return load_model(MODELS / "chest-cxr-classifier", backend="onnxruntime")


@pytest.fixture(scope="module")
def anomaly() -> Model:
    return load_model(MODELS / "chest-cxr-anomaly", backend="onnxruntime")


def images(model: Any, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *model.input_shape), dtype=np.float32)


def run_threads(fns: list[Callable[[], Any]]) -> list[Any]:
    """Run ``fns`` in threads released together; their return values (or exceptions)."""
    out: list[Any] = [None] * len(fns)
    start = threading.Barrier(len(fns))

    def call(i: int) -> None:
        start.wait()
        try:
            out[i] = fns[i]()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.scores.keys() == w.scores.keys()
        assert np.allclose(list(g.scores.values()), list(w.scores.values()), atol=1e-5)
        assert [f.label for f in g.findings] == [f.label for f in w.findings]
        assert np.allclose(g.heatmap, w.heatmap, atol=1e-5)


# -- real models ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["classifier", "anomaly"])
def test_results_match_direct_predict(which: str, request: pytest.FixtureRequest) -> None:
    model: Model = request.getfixturevalue(which)
    inputs = [images(model, 1 + i % 3, seed=i) for i in range(8)]
    with DynamicBatcher(model, max_batch=8, max_delay_ms=20) as batcher:
        got = run_threads([lambda x=x: batcher.submit(x) for x in inputs])
        stats = batcher.stats
    for x, results in zip(inputs, got):
        assert not isinstance(results, Exception), results
        assert_same(results, model.predict(x))
    assert stats.images == sum(len(x) for x in inputs) and stats.requests == 8
    assert stats.batches < 8  # images of different callers shared engine calls


def test_concurrent_callers_are_batched(classifier: Model) -> None:
    with DynamicBatcher(classifier, max_batch=16, max_delay_ms=50) as batcher:
        got = run_threads([lambda i=i: batcher.submit(images(classifier, 1, i)) for i in range(8)])
        stats = batcher.stats
    assert all(isinstance(r, list) and len(r) == 1 for r in got), got
    assert stats.requests == 8 and stats.images == 8
    assert stats.batches < 8
    assert max(stats.sizes) > 1
    assert stats.mean_batch_size > 1 and stats.mean_wait_s > 0


def test_single_caller_waits_at_most_max_delay(classifier: Model) -> None:
    x = images(classifier, 1, 0)
    t0 = time.perf_counter()
    classifier.predict(x)
    engine_s = time.perf_counter() - t0
    with DynamicBatcher(classifier, max_batch=16, max_delay_ms=30) as batcher:
        batcher.submit(x)  # warm the thread
        t0 = time.perf_counter()
        batcher.submit(x)
        elapsed = time.perf_counter() - t0
    assert elapsed < 0.030 + 3 * engine_s + 0.05, (elapsed, engine_s)


def test_full_batch_runs_without_waiting(classifier: Model) -> None:
    with DynamicBatcher(classifier, max_batch=4, max_delay_ms=5000) as batcher:
        t0 = time.perf_counter()
        assert len(batcher.submit(images(classifier, 4, 1))) == 4
        assert time.perf_counter() - t0 < 2.0


def test_oversize_request_is_split(anomaly: Model) -> None:
    x = images(anomaly, 10, 7)
    with DynamicBatcher(anomaly, max_batch=4, max_delay_ms=1) as batcher:
        results = batcher.submit(x)
        stats = batcher.stats
    assert stats.sizes == {4: 2, 2: 1}
    assert_same(results, anomaly.predict(x))


def test_wrong_input_fails_only_that_caller(classifier: Model) -> None:
    with DynamicBatcher(classifier, max_batch=4, max_delay_ms=1) as batcher:
        with pytest.raises(ValueError, match="expected images"):
            batcher.submit(np.zeros((1, 3, 8, 8), np.float32))
        with pytest.raises(ValueError, match="float"):
            batcher.submit(np.zeros((1, *classifier.input_shape), np.uint8))
        assert batcher.submit(np.zeros((0, *classifier.input_shape), np.float32)) == []
        assert len(batcher.submit(images(classifier, 1, 0))) == 1


def test_registry_one_batcher_per_model(classifier: Model, anomaly: Model) -> None:
    registry = BatcherRegistry()
    try:
        got = run_threads([lambda: registry.get(classifier, 8, 2) for _ in range(8)])
        assert len({id(b) for b in got}) == 1
        assert registry.get(anomaly, 8, 2) is not got[0]
        got[0].submit(images(classifier, 2, 0))
        assert registry.stats()[classifier.name].images == 2
    finally:
        registry.close_all()
    with pytest.raises(BatcherClosed):
        got[0].submit(images(classifier, 1, 0))


# -- edge cases with a fake model -------------------------------------------------------


class FakeModel:
    """Returns each image's first pixel; raises on a NaN image; can hold a batch at a gate."""

    name = "fake"
    input_shape = (1, 2, 2)
    engine = SimpleNamespace(max_batch=None)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def predict(self, batch: np.ndarray) -> list[float]:
        self.calls.append(len(batch))
        self.entered.set()
        self.gate.wait(10)
        if np.isnan(batch).any():
            raise ValueError("poisoned batch")
        return [float(v) for v in batch[:, 0, 0, 0]]


def tagged(values: list[float]) -> np.ndarray:
    return np.array(values, np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.005)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_results_routed_in_order_across_batches() -> None:
    model = FakeModel()
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 12, size=24)
    inputs = [[1000.0 * i + j for j in range(n)] for i, n in enumerate(sizes)]
    with DynamicBatcher(model, max_batch=5, max_delay_ms=2) as batcher:  # type: ignore[arg-type]
        got = run_threads([lambda v=v: batcher.submit(tagged(v)) for v in inputs])
    assert got == inputs
    assert max(model.calls) <= 5 and sum(model.calls) == sum(sizes)


def test_engine_error_fails_only_callers_in_that_batch() -> None:
    model = FakeModel()
    model.gate.clear()
    with DynamicBatcher(model, max_batch=2, max_delay_ms=0) as batcher:  # type: ignore[arg-type]
        a = in_thread(lambda: batcher.submit(tagged([1])))
        wait_for(model.entered.is_set)  # A's batch is running and held at the gate
        b = in_thread(lambda: batcher.submit(tagged([np.nan])))
        wait_for(lambda: batcher.pending == 1)
        c = in_thread(lambda: batcher.submit(tagged([3])))
        wait_for(lambda: batcher.pending == 2)
        d = in_thread(lambda: batcher.submit(tagged([4])))
        wait_for(lambda: batcher.pending == 3)
        model.gate.set()
        for t, _ in (a, b, c, d):
            t.join(5)
    assert model.calls == [1, 2, 1]
    assert a[1] == {"result": [1.0]}
    assert isinstance(b[1]["error"], ValueError) and isinstance(c[1]["error"], ValueError)
    assert d[1] == {"result": [4.0]}
    assert batcher.stats.failed_batches == 1


def test_error_in_one_part_of_a_split_request_fails_it_once() -> None:
    model = FakeModel()
    with DynamicBatcher(model, max_batch=2, max_delay_ms=0) as batcher:  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="poisoned"):
            batcher.submit(tagged([1, 2, np.nan, 4, 5, 6]))
        wait_for(lambda: batcher.pending == 0)
        assert batcher.submit(tagged([7])) == [7.0]


def test_close_fails_pending_callers() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = DynamicBatcher(model, max_batch=1, max_delay_ms=0)  # type: ignore[arg-type]
    a = in_thread(lambda: batcher.submit(tagged([1])))
    wait_for(model.entered.is_set)
    b = in_thread(lambda: batcher.submit(tagged([2])))
    wait_for(lambda: batcher.pending == 1)
    closer = in_thread(batcher.close)
    b[0].join(5)
    assert isinstance(b[1]["error"], BatcherClosed) and "closed" in str(b[1]["error"])
    model.gate.set()  # the batch in flight still completes
    a[0].join(5)
    closer[0].join(5)
    assert a[1] == {"result": [1.0]}
    assert not batcher._thread.is_alive()
    with pytest.raises(BatcherClosed):
        batcher.submit(tagged([3]))


def test_timeout_drops_images_not_yet_batched() -> None:
    model = FakeModel()
    model.gate.clear()
    with DynamicBatcher(model, max_batch=1, max_delay_ms=0) as batcher:  # type: ignore[arg-type]
        a = in_thread(lambda: batcher.submit(tagged([1])))
        wait_for(model.entered.is_set)
        with pytest.raises(TimeoutError):
            batcher.submit(tagged([2]), timeout=0.05)
        model.gate.set()
        a[0].join(5)
        assert batcher.submit(tagged([3])) == [3.0]
    assert model.calls == [1, 1]  # the timed-out image never reached the engine
