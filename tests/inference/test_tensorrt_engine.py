"""TensorRT engine control flow against a FAKE tensorrt module (``fake_tensorrt.py``).

TensorRT is not installed on any machine this project tests on, so every test here injects the
fake via ``sys.modules`` and makes ``torch.cuda`` report a fake GPU. They check what the engine
*does* around TensorRT (which API calls with which settings, plan-cache reuse and rebuilds,
locking and atomic writes between processes, refused shapes), never numerics: those are
``test_maps_parity.test_tensorrt_matches_pytorch`` on a GPU machine with tensorrt.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import fake_tensorrt
from inference.engines import plan_cache, tensorrt_engine
from inference.engines.base import EngineError
from inference.settings import InferenceSettings

CHW = (1, 8, 8)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> fake_tensorrt.State:
    return fake_tensorrt.install(monkeypatch)


@pytest.fixture
def onnx(tmp_path: Path) -> Path:
    return fake_tensorrt.write_fake_onnx(tmp_path / "model.onnx", CHW)


def _settings(cache: Path, **kw) -> InferenceSettings:
    return InferenceSettings(engine_cache_dir=cache, max_batch=4, opt_batch=2, **kw)


def _only_plan(cache: Path) -> Path:
    plans = list(cache.glob("*.plan"))
    assert len(plans) == 1, plans
    return plans[0]


def _engine(onnx: Path, cache: Path, precision: str = "fp32", **kw) -> tensorrt_engine.TensorRTEngine:
    return tensorrt_engine.TensorRTEngine(onnx, _settings(cache, **kw), CHW, precision)


def test_builds_with_the_tensorrt_10_calls_and_the_configured_profile_and_workspace(fake, onnx, tmp_path):
    """Fake tensorrt: create_network(0), FP16 flag only for fp16, opt_batch/max_batch and
    trt_workspace_mb from the settings reach the builder."""
    tensorrt_engine.TensorRTEngine(onnx, InferenceSettings(engine_cache_dir=tmp_path / "c", max_batch=6, opt_batch=3,
                                                           trt_workspace_mb=256), CHW, "fp16")
    tensorrt_engine.TensorRTEngine(onnx, InferenceSettings(engine_cache_dir=tmp_path / "c", max_batch=4, opt_batch=8), CHW, "fp32")
    fp16, fp32 = fake.configs
    assert fake.network_flags == [0, 0]
    assert fp16["flags"] == ["FP16"] and fp32["flags"] == []
    assert fp16["workspace"] == 256 << 20 and fp32["workspace"] == 1024 << 20
    assert fp16["profile"] == [[1, *CHW], [3, *CHW], [6, *CHW]]
    assert fp32["profile"] == [[1, *CHW], [4, *CHW], [4, *CHW]]  # opt_batch is capped at max_batch


def test_second_engine_reuses_the_cached_plan(fake, onnx, tmp_path):
    """Fake tensorrt. Fails if the cache is not reused: the second engine must not build."""
    cache = tmp_path / "cache"
    _engine(onnx, cache)
    assert fake.builds == 1
    plan = _only_plan(cache)
    assert fake_tensorrt.plan_is_valid(plan.read_bytes())
    meta = json.loads(plan.with_suffix(".json").read_text())
    assert meta["precision"] == "fp32" and meta["profile"]["max"] == [4, *CHW] and meta["tensorrt"] == "10.3.0"
    stat = plan.stat()

    deserialized = fake.deserializations
    _engine(onnx, cache)
    assert fake.builds == 1, "the second engine rebuilt instead of loading the cached plan"
    assert fake.deserializations == deserialized + 1
    assert _only_plan(cache) == plan
    assert plan.stat().st_mtime_ns == stat.st_mtime_ns and plan.stat().st_ino == stat.st_ino
    assert fake.timing_caches_loaded == [b""], "the first build starts an empty timing cache"


@pytest.mark.parametrize("change", ["precision", "max_batch", "opt_batch", "workspace", "onnx", "tensorrt", "gpu"])
def test_a_changed_key_rebuilds(fake, onnx, tmp_path, monkeypatch, change):
    """Fake tensorrt. Precision, profile, workspace, ONNX bytes, TensorRT version and GPU are in
    the key: changing one must build a new plan (and keep the old one)."""
    cache = tmp_path / "cache"
    _engine(onnx, cache)
    assert fake.builds == 1
    precision, kw = "fp32", {}
    if change == "precision":
        precision = "fp16"
    elif change == "max_batch":
        kw = {"max_batch": 8}
    elif change == "opt_batch":
        kw = {"opt_batch": 1}
    elif change == "workspace":
        kw = {"trt_workspace_mb": 2048}
    elif change == "onnx":
        fake_tensorrt.write_fake_onnx(onnx, CHW, salt="retrained")
    elif change == "tensorrt":
        monkeypatch.setattr(fake_tensorrt, "__version__", "10.4.1")
    elif change == "gpu":
        import torch
        from types import SimpleNamespace

        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: SimpleNamespace(name="Other GPU", major=8, minor=9))
    settings = InferenceSettings(engine_cache_dir=cache, **{"max_batch": 4, "opt_batch": 2, **kw})
    tensorrt_engine.TensorRTEngine(onnx, settings, CHW, precision)
    assert fake.builds == 2, f"changing {change} did not rebuild"
    assert len(list(cache.glob("*.plan"))) == 2
    if change in ("max_batch", "opt_batch", "workspace", "precision", "onnx"):
        assert fake.timing_caches_loaded[-1].startswith(b"FAKETIMING"), "the timing cache of the first build is reused"


@pytest.mark.parametrize("damage", ["torn plan", "foreign key", "unreadable key"])
def test_a_damaged_cache_entry_is_rebuilt(fake, onnx, tmp_path, damage):
    """Fake tensorrt: a plan that does not deserialize, or whose key file differs, is rebuilt."""
    cache = tmp_path / "cache"
    _engine(onnx, cache)
    plan = _only_plan(cache)
    meta = plan.with_suffix(".json")
    if damage == "torn plan":
        plan.write_bytes(plan.read_bytes()[:1000])
    elif damage == "foreign key":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "gpu": "someone else's"}))
    else:
        meta.write_text("{not json")
    _engine(onnx, cache)
    assert fake.builds == 2
    assert fake_tensorrt.plan_is_valid(plan.read_bytes())
    assert json.loads(meta.read_text())["gpu"] == "Fake GPU"


def test_refused_input_shape_is_a_clear_error(fake, onnx, tmp_path):
    """Fake tensorrt: set_input_shape returning False must raise, not run with a stale shape."""
    engine = _engine(onnx, tmp_path / "cache")
    fake.set_input_shape_ok = False
    with pytest.raises(EngineError, match=r"set_input_shape\(x, \[2, 1, 8, 8\]\) refused"):
        engine.run(np.zeros((2, *CHW), np.float32))


@pytest.mark.parametrize("override", [{"batch": 1}, {"cam": (2, 3, 4, 4)}, {"probabilities": (2, -1)}],
                         ids=["wrong batch", "wrong map size", "unresolved dimension"])
def test_output_shape_that_does_not_fit_is_a_clear_error(fake, onnx, tmp_path, override):
    """Fake tensorrt: an output shape that does not match the batch (or the plan's static dims)
    raises before any device memory is allocated."""
    engine = _engine(onnx, tmp_path / "cache")
    if "batch" in override:
        fake.output_batch_offset = override["batch"]
    else:
        fake.output_shape_override = override
    with pytest.raises(EngineError, match=r"tensorrt: output \w+ has shape"):
        engine.run(np.zeros((2, *CHW), np.float32))


def test_batch_outside_the_profile_or_of_the_wrong_image_size_is_refused(fake, onnx, tmp_path):
    """Fake tensorrt."""
    engine = _engine(onnx, tmp_path / "cache")
    with pytest.raises(EngineError, match="outside the profile"):
        engine.run(np.zeros((5, *CHW), np.float32))
    with pytest.raises(EngineError, match="expected a batch"):
        engine.run(np.zeros((2, 1, 8, 9), np.float32))


def test_plan_whose_input_does_not_match_the_manifest_is_refused(fake, tmp_path):
    """Fake tensorrt: an ONNX file for 16x16 images under a manifest saying 8x8."""
    onnx = fake_tensorrt.write_fake_onnx(tmp_path / "model.onnx", (1, 16, 16))
    with pytest.raises(EngineError, match=r"input x has shape \(-1, 1, 16, 16\)"):
        _engine(onnx, tmp_path / "cache")


@pytest.mark.parametrize("version", ["11.0.0", "9.2.0"])
def test_only_tensorrt_10_is_used(monkeypatch, onnx, tmp_path, version):
    """Fake tensorrt with another major version: reported unusable, nothing is built."""
    fake = fake_tensorrt.install(monkeypatch, version=version)
    ok, why = tensorrt_engine.available()
    assert not ok and f"tensorrt {version} is not supported" in why
    with pytest.raises(EngineError, match="not supported"):
        _engine(onnx, tmp_path / "cache")
    assert fake.builds == 0


# -- several processes -------------------------------------------------------------------------
def _build_in_child(onnx: str, cache: str, start, result: str) -> None:  # noqa: ANN001 - mp objects
    start.wait()
    tensorrt_engine.TensorRTEngine(Path(onnx), _settings(Path(cache)), CHW)
    Path(result).write_text(json.dumps({"pid": os.getpid(), "built": fake_tensorrt.state.builds}))


def _watch_plans(cache: str, stop, result: str) -> None:  # noqa: ANN001 - mp objects
    """Read every plan file as often as possible; count any that is not whole."""
    seen = torn = 0
    while not stop.is_set():
        for p in Path(cache).glob("*.plan"):
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                continue
            seen += 1
            torn += not fake_tensorrt.plan_is_valid(data)
    Path(result).write_text(json.dumps({"seen": seen, "torn": torn}))


def test_two_processes_building_the_same_plan_build_it_once(fake, onnx, tmp_path):
    """Fake tensorrt, real processes (fork), real files and flock: two workers needing the same
    plan at the same moment produce one build (the other waits and loads it), one valid plan
    file, no temporary left over; a third process reading the plan meanwhile never sees a torn
    file."""
    cache = tmp_path / "cache"
    cache.mkdir()
    fake.build_delay = 1.0
    fake.plan_padding = 8 << 20
    fake.builds_log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    start, stop = ctx.Barrier(2), ctx.Event()
    watcher = ctx.Process(target=_watch_plans, args=(str(cache), stop, str(tmp_path / "watch.json")))
    watcher.start()
    builders = [ctx.Process(target=_build_in_child, args=(str(onnx), str(cache), start, str(tmp_path / f"r{i}.json")))
                for i in range(2)]
    for p in builders:
        p.start()
    for p in builders:
        p.join(60)
    time.sleep(0.2)
    stop.set()
    watcher.join(30)
    assert [p.exitcode for p in builders] == [0, 0]
    results = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    assert sorted(r["built"] for r in results) == [0, 1], results
    assert fake.builds_log.read_text().count("\n") == 1
    assert fake_tensorrt.plan_is_valid(_only_plan(cache).read_bytes())
    assert not list(cache.glob(".*.tmp")), "temporary files left behind"
    watch = json.loads((tmp_path / "watch.json").read_text())
    assert watch["torn"] == 0, watch
    _engine(onnx, cache)  # and this process loads it too
    assert fake.builds == 0


def _build_slowly(onnx: str, cache: str) -> None:
    fake_tensorrt.state.build_delay = 60
    tensorrt_engine.TensorRTEngine(Path(onnx), _settings(Path(cache)), CHW)


def test_a_builder_killed_mid_build_leaves_no_stale_lock(fake, onnx, tmp_path):
    """Fake tensorrt, real processes: SIGKILL a worker while it holds the build lock; the next
    one gets the lock at once (flock dies with its holder) and builds a valid plan."""
    cache = tmp_path / "cache"
    cache.mkdir()
    fake.building_marker = tmp_path / "building"
    ctx = multiprocessing.get_context("fork")
    victim = ctx.Process(target=_build_slowly, args=(str(onnx), str(cache)))
    victim.start()
    deadline = time.monotonic() + 30
    while not fake.building_marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.building_marker.exists(), "the child never started building"
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    fake.building_marker = None
    start = time.monotonic()
    _engine(onnx, cache)
    assert time.monotonic() - start < 10
    assert fake.builds == 1 and fake_tensorrt.plan_is_valid(_only_plan(cache).read_bytes())


# -- the file helpers --------------------------------------------------------------------------
def test_atomic_write_leaves_the_old_file_when_it_fails(tmp_path, monkeypatch):
    """No fake: a failure before the rename keeps the previous content and no temporary file."""
    target = tmp_path / "x.plan"
    target.write_bytes(b"old")

    def broken_replace(src, dst):  # noqa: ANN001
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        plan_cache.atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.plan"]
    monkeypatch.undo()
    plan_cache.atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["x.plan"]
