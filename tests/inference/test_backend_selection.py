"""Backend selection: device = "cpu" means CPU, and a TensorRT build that fails in any way falls
back to ONNX Runtime. ONNX Runtime and the shipped demo model run for real here; where TensorRT
has to be "present", a FAKE tensorrt module (``fake_tensorrt.py``) stands in for it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import fake_tensorrt
from inference import InferenceSettings, default_models_dir, load_model
from inference import select as select_mod
from inference.engines import onnxruntime_engine, tensorrt_engine
from inference.engines.base import EngineError
from inference.manifest import load_manifest

CLASSIFIER = default_models_dir() / "chest-cxr-classifier"
pytestmark = pytest.mark.skipif(not (CLASSIFIER / "model.onnx").is_file(), reason="shipped demo models missing")


def _batch() -> np.ndarray:
    return np.random.default_rng(5).random((2, 1, 256, 256), dtype=np.float32)


def test_device_cpu_never_picks_tensorrt_or_cuda(monkeypatch, tmp_path):
    """No fake: CUDA, TensorRT and ONNX Runtime's CUDA provider all claim to be there; with
    device = "cpu" and backend = "auto" none of them is tried and the engine is ONNX Runtime on
    the CPU provider only (a real session, run for real)."""
    tried: list[object] = []

    def no_trt(*args, **kwargs):  # noqa: ANN002, ANN003
        tried.append(args)
        raise AssertionError("TensorRT must not be tried with device=cpu")

    monkeypatch.setattr(select_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(tensorrt_engine, "available", lambda: (True, "pretend: GPU and tensorrt present"))
    monkeypatch.setattr(tensorrt_engine, "TensorRTEngine", no_trt)
    monkeypatch.setattr(onnxruntime_engine, "cuda_provider_available", lambda: True)
    settings = InferenceSettings(device="cpu", engine_cache_dir=tmp_path)

    assert [b for b, _ in select_mod.candidates(settings, load_manifest(CLASSIFIER))] == ["onnxruntime", "torch"]
    assert select_mod.resolve_device(settings) == "cpu"
    model = load_model(CLASSIFIER, settings=settings)
    assert tried == []
    assert model.backend == "onnxruntime" and model.engine.device == "cpu"
    assert model.engine.session.get_providers() == ["CPUExecutionProvider"]
    assert np.isfinite(model.run_raw(_batch())["probabilities"]).all()
    torch_model = load_model(CLASSIFIER, backend="torch", settings=settings)
    assert torch_model.engine.device == "cpu"


def test_tensorrt_with_device_cpu_is_refused():
    with pytest.raises(ValueError, match="cannot run with device"):
        InferenceSettings(backend="tensorrt", device="cpu")
    with pytest.raises(EngineError, match="tensorrt needs a CUDA GPU"):
        load_model(CLASSIFIER, backend="tensorrt", settings=InferenceSettings(device="cpu"))


@pytest.mark.parametrize("error", [RuntimeError("pybind11: std::bad_alloc"), AttributeError("'IBuilderConfig' has no attribute 'set_flag'"),
                                   TypeError("build_serialized_network(): incompatible function arguments"), ValueError("odd")],
                         ids=lambda e: type(e).__name__)
def test_any_tensorrt_build_error_falls_back_to_onnxruntime(monkeypatch, tmp_path, caplog, error):
    """Fake tensorrt whose build raises; ONNX Runtime is real and runs the real model."""
    fake = fake_tensorrt.install(monkeypatch)
    fake.build_error = error
    caplog.set_level(logging.WARNING, logger="inference.select")
    model = load_model(CLASSIFIER, settings=InferenceSettings(engine_cache_dir=tmp_path))
    assert model.backend == "onnxruntime" and model.engine.device == "cpu"  # the fake GPU has no ORT CUDA provider
    reference = load_model(CLASSIFIER, backend="onnxruntime", settings=InferenceSettings(device="cpu"))
    x = _batch()
    np.testing.assert_allclose(model.run_raw(x)["probabilities"], reference.run_raw(x)["probabilities"], atol=1e-6)
    warning = next(r for r in caplog.records if "backend tensorrt failed" in r.getMessage())
    assert type(error).__name__ in warning.getMessage()
    assert not list(tmp_path.glob("*.plan")), "no plan from a failed build"


def test_forced_tensorrt_build_error_is_an_engine_error(monkeypatch, tmp_path):
    """Fake tensorrt: with backend = "tensorrt" there is no fallback, but the error says why."""
    fake = fake_tensorrt.install(monkeypatch)
    fake.build_error = RuntimeError("out of memory while building")
    with pytest.raises(EngineError, match="backend tensorrt .* failed: RuntimeError: out of memory while building"):
        load_model(CLASSIFIER, settings=InferenceSettings(backend="tensorrt", engine_cache_dir=tmp_path))


def test_tensorrt_11_is_not_used_auto_falls_back(monkeypatch, tmp_path):
    """Fake tensorrt reporting 11.0: not built against (untested API), auto goes to ONNX Runtime."""
    fake = fake_tensorrt.install(monkeypatch, version="11.0.0")
    model = load_model(CLASSIFIER, settings=InferenceSettings(engine_cache_dir=tmp_path, precision="fp16"))
    assert model.backend == "onnxruntime"
    assert fake.builds == 0 and fake.network_flags == []


def test_auto_builds_tensorrt_when_it_works(monkeypatch, tmp_path):
    """Fake tensorrt that builds: auto picks it for the real model (its ONNX file parsed by the
    fake for tensor names and shapes); a second load reuses the plan."""
    fake = fake_tensorrt.install(monkeypatch)
    settings = InferenceSettings(engine_cache_dir=tmp_path, max_batch=4, opt_batch=2)
    model = load_model(CLASSIFIER, settings=settings)
    assert model.backend == "tensorrt" and fake.builds == 1
    assert set(model.engine.output_names) == {"probabilities", "cam"}
    load_model(CLASSIFIER, settings=settings)
    assert fake.builds == 1
