"""Training end to end on tiny synthetic sets: library loops and ``pacsai train`` (DICOM in)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from inference_dicom_files import radiograph, write
from typer.testing import CliRunner

from inference import load_model
from inference.synthetic import make_anomaly_split, make_dataset
from inference.training import (
    SYNTHETIC_LABEL_CODES,
    calibrate_anomaly,
    calibrate_classifier,
    train_autoencoder,
    train_classifier,
    write_model_folder,
)

SIZE = 64


def _tiny_classifier(folder, seed=0):
    data = make_dataset(24, seed, size=SIZE, p_nodule=0.5, p_effusion=0.5)
    net = train_classifier(data.images, data.labels, epochs=1, seed=seed, progress=False)
    thr, metrics, curves = calibrate_classifier(net, data.images, data.labels, data.label_names, 0.9, "tiny")
    labels = [{"name": n, **SYNTHETIC_LABEL_CODES[n], "threshold": thr[n]} for n in data.label_names]
    return write_model_folder(
        folder, net, task="classification", name="tiny-cls", version="0", labels=labels,
        training={"data": "synthetic", "image_size": SIZE, "seed": seed}, metrics=metrics, roc_curves=curves,
    )


def test_classifier_training_end_to_end(tmp_path):
    manifest = _tiny_classifier(tmp_path / "cls")
    for f in ("model.onnx", "weights.pt", "manifest.json", "metrics.json", "roc.png"):
        assert (tmp_path / "cls" / f).is_file(), f
    assert "nodule" in json.loads((tmp_path / "cls" / "metrics.json").read_text())["labels"]
    assert manifest.training.seed == 0
    model = load_model(tmp_path / "cls")
    res = model.predict(make_dataset(3, 99, size=SIZE).images)
    assert len(res) == 3 and res[0].heatmap.shape == (SIZE, SIZE)


def test_training_is_reproducible():
    data = make_dataset(8, 3, size=SIZE, p_nodule=0.5)
    a = train_classifier(data.images, data.labels, epochs=1, seed=5, progress=False)
    b = train_classifier(data.images, data.labels, epochs=1, seed=5, progress=False)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert np.array_equal(va.numpy(), vb.numpy()), ka


def test_epoch_monitor_does_not_change_training():
    """The per-epoch validation monitor (make_default_models logs validation AUC) is read-only."""
    data = make_dataset(8, 3, size=SIZE, p_nodule=0.5)
    seen = []

    def monitor(net, epoch):
        assert not net.training
        net(torch.from_numpy(data.images[:4]))
        seen.append(epoch)

    a = train_classifier(data.images, data.labels, epochs=2, seed=5, progress=False)
    b = train_classifier(data.images, data.labels, epochs=2, seed=5, progress=False, on_epoch=monitor)
    assert seen == [1, 2]
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert np.array_equal(va.numpy(), vb.numpy()), ka


def test_anomaly_training_end_to_end(tmp_path):
    normal = make_dataset(16, 1, size=SIZE)
    net = train_autoencoder(normal.images, epochs=1, seed=0, progress=False)
    val = make_anomaly_split(6, 6, 2, size=SIZE)
    ab = val.abnormal.astype(bool)
    thr, scale, metrics, curve = calibrate_anomaly(net, val.images[~ab], val.images[ab], 0.9, "tiny")
    assert thr > 0 and scale > 0 and metrics["n_positive"] == 6
    write_model_folder(
        tmp_path / "ae", net, task="anomaly", name="tiny-ae", version="0",
        labels=[{"name": "abnormal", "display": "Abnormal", "code": {"value": "263654008", "scheme": "SCT", "meaning": "Abnormal"}, "threshold": thr}],
        training={"data": "synthetic", "image_size": SIZE}, metrics={"abnormal": metrics}, roc_curves={"abnormal": curve},
        heatmap_scale=scale,
    )
    (res,) = load_model(tmp_path / "ae").predict(val.images[:1])
    assert res.task == "anomaly" and res.heatmap.shape == (SIZE, SIZE)


def _write_dicom_folder(folder, images, start=0):
    """Write phantoms as DICOM; vary photometric interpretation and compression."""
    variants = [dict(), dict(monochrome1=True), dict(compression="rle"), dict(compression="j2k")]
    paths = []
    for i, img in enumerate(images):
        v = dict(variants[(i + start) % len(variants)])
        compression = v.pop("compression", None)
        paths.append(write(radiograph(img[0], **v), folder / f"img{i:03d}.dcm", compression))
    return paths


@pytest.fixture
def dicom_dirs(tmp_path):
    normal = make_dataset(12, 11, size=SIZE)
    val = make_anomaly_split(4, 4, 12, size=SIZE)
    ab = val.abnormal.astype(bool)
    _write_dicom_folder(tmp_path / "normal", normal.images)
    _write_dicom_folder(tmp_path / "val_normal", val.images[~ab], 1)
    _write_dicom_folder(tmp_path / "val_abnormal", val.images[ab], 2)
    (tmp_path / "normal" / "notes.txt").write_text("not DICOM")  # skipped with a warning
    return tmp_path


def test_cli_train_anomaly_from_dicom(dicom_dirs):
    from daemon.train_cli import app

    out = dicom_dirs / "model"
    result = CliRunner().invoke(app, [
        "anomaly", "--normal", str(dicom_dirs / "normal"), "--validation-normal", str(dicom_dirs / "val_normal"),
        "--validation-abnormal", str(dicom_dirs / "val_abnormal"), "--out", str(out), "--epochs", "1",
        "--seed", "3", "--sensitivity", "0.75", "--size", str(SIZE),
    ])
    assert result.exit_code == 0, result.output
    model = load_model(out)
    assert model.task == "anomaly" and model.manifest.modalities == ["CR"]
    assert model.manifest.metrics["abnormal"].auc is not None
    assert (out / "roc.png").is_file()


def test_cli_train_classifier_transfer_learning(tmp_path, dicom_dirs):
    from daemon.train_cli import app

    _tiny_classifier(tmp_path / "base")
    data = make_dataset(12, 21, size=SIZE, p_nodule=0.5)
    paths = _write_dicom_folder(tmp_path / "labelled", data.images)
    rows = ["path,nodule,mass"] + [f"{p.relative_to(tmp_path)},{int(y[0])},{i % 2}" for i, (p, y) in enumerate(zip(paths, data.labels))]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["classifier", "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "site"),
            "--base-model", str(tmp_path / "base"), "--epochs", "1", "--seed", "1"]
    missing = CliRunner().invoke(app, args)
    assert missing.exit_code != 0 and "no code for labels ['mass']" in missing.output
    result = CliRunner().invoke(app, args + ["--code", "mass=SCT:4147007:Mass"])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "site")
    assert model.manifest.label_names == ["nodule", "mass"]
    assert model.manifest.labels[1].code.value == "4147007"
    assert "transfer learning from tiny-cls" in model.manifest.training.data


def test_lse_pooling_classifier_packages_and_loads(tmp_path):
    """pool="lse": logits pool each class map (mean <= LSE <= max); the ONNX graph matches
    PyTorch, the manifest records the pooling and both backends rebuild the same network."""
    from inference.models import CamClassifier, build_module

    torch.manual_seed(0)
    net = CamClassifier(num_classes=2, widths=(8, 16, 16), pool="lse", lse_r=10.0).eval()
    x = torch.from_numpy(make_dataset(2, 7, size=SIZE).images)
    with torch.inference_mode():
        feats = net.features(x)
        cam = net.class_maps(feats).flatten(2)
        bias = net.head.bias
        lse = net(x)
        assert torch.all(lse >= cam.mean(2) + bias - 1e-5) and torch.all(lse <= cam.amax(2) + bias + 1e-5)
    data = make_dataset(16, 8, size=SIZE, p_nodule=0.5, p_effusion=0.5)
    net = train_classifier(data.images, data.labels, epochs=1, seed=3, net=net, progress=False)
    thr, metrics, curves = calibrate_classifier(net, data.images, data.labels, data.label_names, 0.9, "tiny")
    labels = [{"name": n, **SYNTHETIC_LABEL_CODES[n], "threshold": thr[n]} for n in data.label_names]
    manifest = write_model_folder(  # raises if ONNX and PyTorch disagree
        tmp_path / "lse", net, task="classification", name="tiny-lse", version="0", labels=labels,
        training={"data": "synthetic", "image_size": SIZE}, metrics=metrics, roc_curves=curves,
    )
    params = manifest.files.architecture.params
    assert params["pool"] == "lse" and params["lse_r"] == 10.0
    rebuilt = build_module(manifest.files.architecture.family, params)
    rebuilt.load_state_dict(torch.load(tmp_path / "lse" / "weights.pt", weights_only=True))
    images = make_dataset(3, 9, size=SIZE).images
    with torch.inference_mode():
        assert torch.allclose(rebuilt.eval()(torch.from_numpy(images)), net(torch.from_numpy(images)))
    onnx_scores = np.array([[r.scores[n] for n in data.label_names] for r in load_model(tmp_path / "lse").predict(images)])
    with torch.inference_mode():
        ref = torch.sigmoid(net(torch.from_numpy(images))).numpy()
    assert np.allclose(onnx_scores, ref, atol=1e-4)
