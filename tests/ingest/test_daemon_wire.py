"""The structural check of received data sets (truncation, garbage, encapsulation)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.uid import JPEG2000Lossless

from dicom_io.synthetic_study import ct_series
from dicom_io.wire import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MalformedDataset,
    inspect_dataset,
)


def _encode(ds: Dataset, implicit: bool = False) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, implicit_vr=implicit, little_endian=True)
    return buf.getvalue()


@pytest.fixture
def ct() -> Dataset:
    ds = next(ct_series(1, 64))
    del ds.file_meta
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Chest"
    ds.AnatomicRegionSequence = [item]
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_valid_dataset_yields_uids(ct: Dataset, implicit: bool) -> None:
    h = inspect_dataset(_encode(ct, implicit), IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE)
    assert h.sop_instance_uid == ct.SOPInstanceUID
    assert h.study_instance_uid == ct.StudyInstanceUID
    assert h.series_instance_uid == ct.SeriesInstanceUID
    assert h.modality == "CT" and h.has_pixel_data


def test_deflated(ct: Dataset) -> None:
    raw = _encode(ct)
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = co.compress(raw) + co.flush()
    assert inspect_dataset(deflated, DEFLATED_EXPLICIT_VR_LE).sop_instance_uid == ct.SOPInstanceUID
    with pytest.raises(MalformedDataset, match="inflate"):
        inspect_dataset(b"not deflate data", DEFLATED_EXPLICIT_VR_LE)


def test_encapsulated_pixel_data(ct: Dataset) -> None:
    ct.PixelData = encapsulate([b"\x01" * 100, b"\x02" * 50])
    ct["PixelData"].VR = "OB"
    ct["PixelData"].is_undefined_length = True
    raw = _encode(ct)
    assert inspect_dataset(raw, JPEG2000Lossless).has_pixel_data
    with pytest.raises(MalformedDataset, match="encapsulated"):
        inspect_dataset(raw[:-20], JPEG2000Lossless)


@pytest.mark.parametrize("cut", [1, 100, 4000, 8000])
def test_truncated_is_refused(ct: Dataset, cut: int) -> None:
    raw = _encode(ct)
    with pytest.raises(MalformedDataset):
        inspect_dataset(raw[:-cut], EXPLICIT_VR_LE)


def test_garbage_and_missing_uids(ct: Dataset) -> None:
    with pytest.raises(MalformedDataset):
        inspect_dataset(np.random.default_rng(1).bytes(3000), EXPLICIT_VR_LE)
    with pytest.raises(MalformedDataset, match="empty"):
        inspect_dataset(b"", EXPLICIT_VR_LE)
    del ct.StudyInstanceUID
    with pytest.raises(MalformedDataset, match="study_instance_uid"):
        inspect_dataset(_encode(ct), EXPLICIT_VR_LE)
