"""ONNX/TorchScript export round trips and site-model drop-in folders (no code changes)."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
import torch

from inference import EngineError, ManifestError, ModelCache, load_model
from inference.export import export_onnx, export_torchscript
from inference.models import AnomalyExport, CamClassifier, ClassifierExport, ConvAutoencoder

SIZE = 64


def _classifier() -> CamClassifier:
    torch.manual_seed(0)
    return CamClassifier(num_classes=2, widths=(8, 16, 16)).eval()


def _autoencoder() -> ConvAutoencoder:
    torch.manual_seed(0)
    return ConvAutoencoder().eval()


def test_onnx_round_trip_dynamic_batch(tmp_path):
    import onnxruntime as ort

    net = _classifier()
    path = export_onnx(net, tmp_path / "c.onnx", (1, SIZE, SIZE), ["probabilities", "cam"])
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = np.random.default_rng(batch).random((batch, 1, SIZE, SIZE), dtype=np.float32)
        probs, cam = sess.run(None, {"x": x})
        with torch.inference_mode():
            ref_p, ref_c = ClassifierExport(net)(torch.from_numpy(x))
        assert cam.shape == (batch, 2, SIZE, SIZE)
        np.testing.assert_allclose(probs, ref_p.numpy(), atol=1e-5)
        np.testing.assert_allclose(cam, ref_c.numpy(), atol=1e-4)
        assert cam.min() >= 0 and cam.max() <= 1 + 1e-6


def test_anomaly_onnx_and_torchscript_round_trip(tmp_path):
    import onnxruntime as ort

    net = _autoencoder()
    onnx_path = export_onnx(net, tmp_path / "a.onnx", (1, SIZE, SIZE), ["reconstruction", "anomaly_map", "score"])
    ts_path = export_torchscript(net, tmp_path / "a.ts", (1, SIZE, SIZE))
    x = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)
    with torch.inference_mode():
        ref = [t.numpy() for t in AnomalyExport(net)(torch.from_numpy(x))]
        ts = [t.numpy() for t in torch.jit.load(str(ts_path))(torch.from_numpy(x))]
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b, c in zip(got, ref, ts):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(c, b, atol=1e-6)
    assert got[2].shape == (3,) and got[1].shape == (3, 1, SIZE, SIZE)


CLASSIFIER_TOML = """
name = "site-chest"
version = "2024.1"
task = "classification"
intended_use = "site research model"
modalities = ["DX"]

[input]
height = {size}
width = {size}
channels = 1

[preprocessing]
window = "percentile"
percentiles = [1.0, 99.0]

[[labels]]
name = "nodule"
display = "Nodule"
code = {{ value = "27925004", scheme = "SCT", meaning = "Nodule" }}
threshold = 0.5

[[labels]]
name = "effusion"
display = "Pleural effusion"
code = {{ value = "RID34539", scheme = "RADLEX", meaning = "pleural effusion" }}
threshold = 0.7

[files]
{files}

[outputs]
probabilities = "{prob}"

[training]
data = "site archive"
"""

ANOMALY_TOML = """
name = "site-anomaly"
version = "1"
task = "anomaly"
intended_use = "site research model"
modalities = ["CR"]
input = {{ height = {size}, width = {size}, channels = 1 }}
labels = [{{ name = "abnormal", display = "Abnormal", code = {{ value = "263654008", scheme = "SCT", meaning = "Abnormal" }}, threshold = 0.05 }}]
files = {{ torchscript = "model.ts" }}
training = {{ data = "site normals" }}
"""


def test_site_onnx_model_drop_in(tmp_path):
    site = tmp_path / "site-models" / "site-chest"
    site.mkdir(parents=True)
    export_onnx(_classifier(), site / "net.onnx", (1, SIZE, SIZE), ["probs_out", "cam"])
    (site / "manifest.toml").write_text(CLASSIFIER_TOML.format(size=SIZE, files='onnx = "net.onnx"', prob="probs_out"))
    cache = ModelCache(roots=[tmp_path / "site-models"])
    assert cache.available() == ["site-chest"]
    models: list = []
    threads = [threading.Thread(target=lambda: models.append(cache.get("site-chest"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in models}) == 1  # loaded once, shared
    model = models[0]
    assert model.backend == "onnxruntime" and model.input_shape == (1, SIZE, SIZE)
    results = model.predict(np.random.default_rng(0).random((2, 1, SIZE, SIZE), dtype=np.float32))
    assert set(results[0].scores) == {"nodule", "effusion"}
    assert results[0].heatmap.shape == (SIZE, SIZE)
    with pytest.raises(ValueError, match=r"expected a batch \[B, 1, 64, 64\]"):
        model.predict(np.zeros((1, 1, 32, 32), np.float32))


def test_site_torchscript_model_drop_in(tmp_path):
    site = tmp_path / "site-anomaly"
    site.mkdir()
    export_torchscript(_autoencoder(), site / "model.ts", (1, SIZE, SIZE))
    (site / "manifest.toml").write_text(ANOMALY_TOML.format(size=SIZE))
    model = load_model(site)  # auto: no ONNX -> torch
    assert model.backend == "torch"
    (res,) = model.predict(np.random.default_rng(1).random((1, 1, SIZE, SIZE), dtype=np.float32))
    assert res.task == "anomaly" and res.heatmap.shape == (SIZE, SIZE)
    assert 0 <= res.heatmap.min() and res.heatmap.max() <= 1
    with pytest.raises(EngineError, match="onnxruntime needs files.onnx"):
        load_model(site, backend="onnxruntime")


def test_bad_site_folder_is_rejected_clearly(tmp_path):
    site = tmp_path / "broken"
    site.mkdir()
    (site / "manifest.toml").write_text(CLASSIFIER_TOML.format(size=SIZE, files='onnx = "missing.onnx"', prob="p"))
    with pytest.raises(ManifestError, match="files.onnx: file 'missing.onnx' not found"):
        load_model(site)
