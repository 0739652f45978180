"""TensorRT cache key logic that runs without a GPU (no fake); the engine's control flow against a
fake tensorrt is test_tensorrt_engine.py, numerics on real TensorRT test_maps_parity.py."""

from __future__ import annotations

import pytest

from inference.engines import tensorrt_engine


def test_availability_reports_a_reason():
    ok, why = tensorrt_engine.available()
    assert isinstance(ok, bool) and why
    if not ok:
        print(f"TensorRT engine not testable here: {why}")


def test_key_digest_changes_with_every_field():
    base = {"onnx_sha256": "a", "tensorrt": "10.3.0", "cuda": "12.4", "gpu": "H100", "compute_capability": "9.0",
            "precision": "fp16", "profile": {"min": [1, 1, 256, 256], "opt": [8, 1, 256, 256], "max": [16, 1, 256, 256]},
            "workspace_mb": 1024}
    d0 = tensorrt_engine.key_digest(base)
    for field, value in [("onnx_sha256", "b"), ("tensorrt", "11.0.0"), ("cuda", "13.0"), ("gpu", "H200"),
                         ("compute_capability", "8.9"), ("precision", "fp32"), ("profile", {"max": [32, 1, 256, 256]}),
                         ("workspace_mb", 2048)]:
        assert tensorrt_engine.key_digest({**base, field: value}) != d0, field
    assert tensorrt_engine.key_digest(dict(reversed(list(base.items())))) == d0


def test_engine_refuses_cleanly_without_gpu(tmp_path):
    ok, why = tensorrt_engine.available()
    if ok:
        pytest.skip("GPU + tensorrt present: covered by test_tensorrt_matches_pytorch")
    assert why, "the reason TensorRT is not usable must be given (it is logged at start-up)"
    from inference import InferenceSettings
    from inference.engines.base import EngineError

    with pytest.raises(EngineError, match="tensorrt unavailable"):
        tensorrt_engine.TensorRTEngine(tmp_path / "x.onnx", InferenceSettings(engine_cache_dir=tmp_path), (1, 8, 8))
