"""What a pipeline analyses and what it skips, with reasons: no pixels, wrong modality, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from daemon.config import PipelineSettings
from dicom_io.synthetic_study import ct_series, radiograph
from inference.model import load_model
from worker.analysis import NothingToAnalyse, analyse
from worker.selection import select_images

MODELS = Path(__file__).resolve().parents[2] / "models"


def _save(ds, folder: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _no_pixels(study_uid: str, seed: int):  # type: ignore[no-untyped-def]
    ds = radiograph(size=64, study_uid=study_uid, seed=seed)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.PixelData
    return ds


def _not_an_image(study_uid: str):  # type: ignore[no-untyped-def]
    """A Key Object Selection-like object: no Rows, Columns or Pixel Data."""
    ds = _no_pixels(study_uid, 4)
    del ds.Rows, ds.Columns
    ds.Modality = "KO"
    return ds


def test_non_images_other_modalities_and_garbage_are_skipped_with_reasons(tmp_path: Path) -> None:
    good = radiograph(size=128, seed=1)
    uid = good.StudyInstanceUID
    paths = [
        _save(good, tmp_path, "a.dcm"),
        _save(_not_an_image(uid), tmp_path, "b.dcm"),
        _save(next(iter(ct_series(1, 32, study_uid=uid))), tmp_path, "c.dcm"),
    ]
    garbage = tmp_path / "d.dcm"
    garbage.write_bytes(b"not DICOM at all" * 8)  # e.g. a damaged spool file
    paths.append(garbage)
    selection = select_images(paths, ["DX", "CR", "KO"])
    assert [c.sop_instance_uid for c in selection.images] == [good.SOPInstanceUID]
    reasons = sorted(reason.split(":")[0] for _uid, reason in selection.skipped)
    assert reasons == ["modality CT is not one the model is meant for", "no pixel data (not an image)",
                       "unreadable"]


def test_an_image_without_pixel_data_is_skipped_and_the_rest_analysed(tmp_path: Path) -> None:
    model = load_model(MODELS / "chest-cxr-anomaly", backend="onnxruntime")
    good = radiograph(size=128, seed=1)
    uid = good.StudyInstanceUID
    broken = _no_pixels(uid, 3)
    paths = [_save(good, tmp_path, "a.dcm"), _save(broken, tmp_path, "b.dcm")]
    pipeline = PipelineSettings(name="anomaly", model="chest-cxr-anomaly")
    analysis = analyse(model, paths, pipeline=pipeline.name, modalities=pipeline.modalities,
                       top_k=pipeline.top_k, study_uid=uid, version=1)
    assert [c.sop_instance_uid for c in analysis.candidates] == [good.SOPInstanceUID]
    assert analysis.timings.images == 1
    assert [(s.sop_instance_uid, s.reason) for s in analysis.result.skipped] == [
        (broken.SOPInstanceUID, "cannot decode: dataset has no Pixel Data")]


def test_a_study_whose_only_image_lacks_pixel_data_says_why(tmp_path: Path) -> None:
    """worker.tasks turns this into a failed job: "no image could be decoded: ..."."""
    model = load_model(MODELS / "chest-cxr-anomaly", backend="onnxruntime")
    uid = generate_uid()
    paths = [_save(_no_pixels(uid, 3), tmp_path, "a.dcm")]
    pipeline = PipelineSettings(name="anomaly", model="chest-cxr-anomaly")
    with pytest.raises(NothingToAnalyse, match="cannot decode: dataset has no Pixel Data"):
        analyse(model, paths, pipeline=pipeline.name, modalities=pipeline.modalities,
                       top_k=pipeline.top_k, study_uid=uid, version=1)
