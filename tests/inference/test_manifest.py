"""Manifest validation: good manifests load, bad ones fail naming the bad field."""

from __future__ import annotations

import copy
import json

import pytest

from inference.manifest import ManifestError, load_manifest, parse_manifest

GOOD = {
    "name": "site-cxr",
    "version": "1.2",
    "task": "classification",
    "intended_use": "research",
    "modalities": ["CR", "DX"],
    "input": {"height": 224, "width": 224, "channels": 1},
    "preprocessing": {"window": "dicom", "normalise": "zscore", "mean": 0.5, "std": 0.25},
    "labels": [
        {"name": "nodule", "display": "Lung nodule", "code": {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"}, "threshold": 0.4},
        {"name": "effusion", "display": "Pleural effusion", "code": {"value": "RID34539", "scheme": "RADLEX", "meaning": "pleural effusion"}, "threshold": 0.5},
    ],
    "files": {"onnx": "model.onnx"},
    "training": {"data": "site data 2024"},
    "metrics": {"nodule": {"auc": 0.91, "sensitivity": 0.9, "specificity": 0.8}},
}


def test_good_manifest_parses():
    m = parse_manifest(GOOD)
    assert m.task == "classification" and m.label_names == ["nodule", "effusion"]
    assert m.output_name("cam") == "cam"
    assert m.preprocessing.normalise == "zscore"


def _bad(mutate):
    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(ManifestError) as e:
        parse_manifest(data, "site/manifest.toml")
    return str(e.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("task"), "task: Field required"),
        (lambda d: d.update(task="segmentation"), "task: Input should be 'classification' or 'anomaly'"),
        (lambda d: d["labels"][0]["code"].update(scheme="SNOMED"), "labels.0.code.scheme"),
        (lambda d: d["labels"][1].update(threshold=1.5), "labels[effusion].threshold"),
        (lambda d: d["input"].update(channels=2), "input.channels"),
        (lambda d: d.update(modalities=["chest x-ray"]), "modalities"),
        (lambda d: d.update(files={}), "files"),
        (lambda d: d["labels"].append(copy.deepcopy(d["labels"][0])), "duplicate label names"),
        (lambda d: d.update(metrics={"mass": {"auc": 0.5}}), "metrics: keys ['mass']"),
        (lambda d: d.update(colour="red"), "colour: Extra inputs are not permitted"),
        (lambda d: d.update(preprocessing={"window": "fixed"}), "window_center"),
    ],
)
def test_bad_manifests_name_the_field(mutate, expected):
    msg = _bad(mutate)
    assert msg.startswith("invalid model manifest site/manifest.toml")
    assert expected in msg


def test_anomaly_manifest_needs_one_positive_threshold_label():
    def mutate(d):
        d["task"] = "anomaly"
        d["labels"][0]["threshold"] = 0.02

    assert "exactly one label" in _bad(mutate)
    data = copy.deepcopy(GOOD)
    data.update(task="anomaly", labels=[dict(GOOD["labels"][0], threshold=0.02)], metrics={})
    assert parse_manifest(data).labels[0].threshold == 0.02


def test_load_manifest_checks_files_and_syntax(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(GOOD))
    with pytest.raises(ManifestError, match=r"files.onnx: file 'model.onnx' not found"):
        load_manifest(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert load_manifest(tmp_path).name == "site-cxr"
    bad = dict(GOOD, files={"onnx": "../escape.onnx"})
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match="outside the model folder"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "manifest.toml").write_text("name = [unclosed")
    with pytest.raises(ManifestError, match="cannot parse"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(tmp_path / "nowhere")
