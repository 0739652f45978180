"""Heatmaps on the shipped demo models, backend parity and backend selection."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from inference import InferenceSettings, default_models_dir, load_model
from inference.synthetic import make_anomaly_split, make_dataset

CLASSIFIER = default_models_dir() / "chest-cxr-classifier"
ANOMALY = default_models_dir() / "chest-cxr-anomaly"
pytestmark = pytest.mark.skipif(
    not (CLASSIFIER / "model.onnx").is_file() or not (ANOMALY / "model.onnx").is_file(),
    reason="shipped demo models missing: run python -m inference.training.make_default_models",
)

# Stated tolerances (fp32 on CPU): probabilities/scores 1e-4 absolute, maps 1e-3 absolute.
PROB_ATOL, MAP_ATOL = 1e-4, 1e-3


def _lesion_contrast(heatmaps: list[np.ndarray], masks: np.ndarray) -> np.ndarray:
    """Per image: mean heatmap on the lesion minus mean off it."""
    return np.array([h[m].mean() - h[~m].mean() for h, m in zip(heatmaps, masks)])


@pytest.fixture(scope="module")
def classifier():
    return load_model(CLASSIFIER, backend="onnxruntime")


@pytest.fixture(scope="module")
def anomaly():
    return load_model(ANOMALY, backend="onnxruntime")


def test_cam_has_input_shape_and_highlights_planted_lesion(classifier):
    # the effusion label is the demo classifier's reliable one (see docs/models.md)
    data = make_dataset(12, 777, p_effusion=1.0)
    results = classifier.predict(data.images)
    cams = [r.heatmaps["effusion"] for r in results]
    assert all(c.shape == data.images.shape[2:] and c.dtype == np.float32 for c in cams)
    assert all(0.0 <= c.min() and c.max() <= 1.0 for c in cams)
    contrast = _lesion_contrast(cams, data.masks[:, 1])
    assert (contrast > 0).mean() >= 0.75, contrast
    assert contrast.mean() > 0.1


def test_anomaly_map_has_input_shape_and_highlights_planted_lesion(anomaly):
    data = make_anomaly_split(0, 12, 778)
    results = anomaly.predict(data.images)
    maps = [r.heatmap for r in results]
    assert all(m.shape == data.images.shape[2:] for m in maps)
    contrast = _lesion_contrast(maps, data.masks.any(axis=1))
    assert (contrast > 0).mean() >= 0.75, contrast
    normal = make_dataset(12, 779)
    s_abn = np.array([r.scores["abnormal"] for r in results])
    s_norm = np.array([r.scores["abnormal"] for r in anomaly.predict(normal.images)])
    assert s_abn.mean() > s_norm.mean()


@pytest.mark.parametrize("folder", [CLASSIFIER, ANOMALY], ids=["classifier", "anomaly"])
def test_onnxruntime_matches_pytorch(folder):
    x = make_anomaly_split(2, 3, 780).images
    ort_raw = load_model(folder, backend="onnxruntime").run_raw(x)
    pt_raw = load_model(folder, backend="torch").run_raw(x)
    for role, ref in pt_raw.items():
        atol = PROB_ATOL if role in ("probabilities", "score") else MAP_ATOL
        np.testing.assert_allclose(ort_raw[role], ref, atol=atol, err_msg=role)


def test_auto_selection_and_logging(caplog):
    caplog.set_level(logging.INFO, logger="inference")
    import inference.select as select

    select._logged.clear()
    model = load_model(CLASSIFIER)
    if not torch.cuda.is_available():
        assert model.backend == "onnxruntime"
        assert "tensorrt not usable: no CUDA GPU" in caplog.text
    load_model(CLASSIFIER)
    assert caplog.text.count("inference backend for chest-cxr-classifier") == 1  # logged once
    forced = load_model(CLASSIFIER, settings=InferenceSettings(backend="torch"))
    assert forced.backend == "torch"


def test_batches_larger_than_engine_max_are_split():
    model = load_model(CLASSIFIER, settings=InferenceSettings(max_batch=2))
    x = make_dataset(5, 781).images
    assert len(model.predict(x)) == 5


# -- GPU checks (run on a CUDA machine; skipped with the reason elsewhere) -----------------

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: CUDA/TensorRT parity not run")


@requires_cuda
@pytest.mark.parametrize("folder", [CLASSIFIER, ANOMALY], ids=["classifier", "anomaly"])
def test_cuda_backends_match_cpu(folder):
    x = make_anomaly_split(2, 2, 782).images
    ref = load_model(folder, backend="torch", settings=InferenceSettings(device="cpu")).run_raw(x)
    cuda = load_model(folder, backend="torch", settings=InferenceSettings(device="cuda")).run_raw(x)
    half = load_model(folder, backend="torch", settings=InferenceSettings(device="cuda", precision="fp16")).run_raw(x)
    for role in ref:
        np.testing.assert_allclose(cuda[role], ref[role], atol=1e-3, err_msg=role)
        np.testing.assert_allclose(half[role], ref[role], atol=3e-2, err_msg=f"fp16 {role}")
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        got = load_model(folder, backend="onnxruntime", settings=InferenceSettings(device="cuda")).run_raw(x)
        for role in ref:
            np.testing.assert_allclose(got[role], ref[role], atol=1e-3, err_msg=f"ort-cuda {role}")


@requires_cuda
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("fp16", 3e-2)])
def test_tensorrt_matches_pytorch(tmp_path, precision, atol):
    pytest.importorskip("tensorrt", reason="tensorrt not installed: TensorRT parity not run")
    x = make_anomaly_split(2, 2, 783).images
    settings = InferenceSettings(backend="tensorrt", precision=precision, engine_cache_dir=tmp_path, max_batch=4, opt_batch=2)
    from inference.engines.tensorrt_engine import TensorRTEngine

    for folder in (CLASSIFIER, ANOMALY):
        ref = load_model(folder, backend="torch", settings=InferenceSettings(device="cpu")).run_raw(x)
        trt_model = load_model(folder, settings=settings)
        got = trt_model.run_raw(x)
        for role in ref:
            np.testing.assert_allclose(got[role], ref[role], atol=atol, err_msg=f"{folder.name} {role}")
        # The cache must be reused: a second engine for the same key may not build again.
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(TensorRTEngine, "_build", lambda *a, **k: pytest.fail("cached TensorRT plan was rebuilt"))
            again = load_model(folder, settings=settings)
        assert again.engine.plan_path == trt_model.engine.plan_path
        for role in ref:
            np.testing.assert_allclose(again.run_raw(x)[role], got[role], atol=1e-6, err_msg=f"cached {folder.name} {role}")
