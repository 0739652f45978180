"""Heatmap secondary captures: dciodvfy-clean, correct derivation attributes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import dciodvfy, requires_dciodvfy
import dicomio_samples as samples
from test_dicom_sr import SOURCES, _expected_warnings

from dicom_io.results import ImageEvidence
from dicom_io.sc import (
    SCOptions,
    burned_in_annotation,
    display_frame,
    select_top_k,
    write_heatmap_scs,
)

SMALL = SCOptions(min_size=128, max_size=256)
# Source without BodyPartExamined or laterality: the SC's Laterality (Type 2C,
# paired body parts) is sent empty = unknown, which is the truth.
LATERALITY_UNKNOWN = {
    "Warning - is only permitted to be empty when actually unknown; should be absent (not "
    "empty) if an unpaired body part, and have a value if a paired body part - attribute "
    "<Laterality>",
}


@requires_dciodvfy
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_sc_is_valid(tmp_path, name):
    sources = SOURCES[name]()
    result = samples.result_for(sources, frames=name.startswith("xa"))
    scs = write_heatmap_scs(result, sources, SCOptions(top_k=2, min_size=128, max_size=256))
    assert 1 <= len(scs) <= 2
    for i, sc in enumerate(scs):
        path = tmp_path / f"sc{i}.dcm"
        sc.save_as(path, enforce_file_format=True)
        errors, warnings = dciodvfy(path)
        assert errors == []
        expected = _expected_warnings(name)
        if "BodyPartExamined" not in sources[0]:
            expected |= LATERALITY_UNKNOWN
        assert set(warnings) == expected


def test_sc_attributes():
    sources = samples.ct_series(4)
    result = samples.result_for(sources)
    scs = write_heatmap_scs(result, sources, SCOptions(top_k=2, min_size=128, max_size=256))
    src_by_uid = {s.SOPInstanceUID: s for s in sources}
    # top-2 by per-image score: the first two slices (scores 0.87, 0.77)
    refs = [sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in scs]
    assert refs == [sources[0].SOPInstanceUID, sources[1].SOPInstanceUID]
    assert len({sc.SeriesInstanceUID for sc in scs}) == 1
    for n, sc in enumerate(scs, start=1):
        src = src_by_uid[sc.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert sc.InstanceNumber == n
        assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
        assert sc.ConversionType == "WSD"
        assert sc.BurnedInAnnotation == "NO"
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
        assert "heatmap" in sc.DerivationDescription and "not for diagnostic use" in sc.DerivationDescription
        assert "not for diagnostic use" in sc.SeriesDescription
        assert sc.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        for kw in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyID"):
            assert sc[kw].value == src[kw].value
        assert sc.SeriesInstanceUID != src.SeriesInstanceUID
        assert list(sc.PatientOrientation) == ["L", "P"]  # from ImageOrientationPatient
        pixels = sc.pixel_array
        # colour from the heatmap/legend: some pixels are not grey
        assert (np.ptp(pixels.astype(int), axis=2) > 30).any()


def test_sc_multiframe_references_frame():
    src = samples.multiframe_xa(3)
    scs = write_heatmap_scs(samples.result_for([src], frames=True), [src], SMALL)
    assert [sc.SourceImageSequence[0].ReferencedFrameNumber for sc in scs] == [1, 2, 3]
    assert len({sc.SOPInstanceUID for sc in scs}) == 3


def test_sc_uses_given_display_and_is_deterministic():
    src = samples.cr()
    result = samples.result_for([src])
    display = {(src.SOPInstanceUID, None): np.full((96, 80), 0.5)}
    a = write_heatmap_scs(result, [src], SMALL, displays=display)[0]
    b = write_heatmap_scs(samples.result_for([src]), [src], SMALL, displays=display)[0]
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert np.array_equal(a.pixel_array, b.pixel_array)
    c = write_heatmap_scs(samples.result_for([src], version=2), [src], SMALL, displays=display)[0]
    assert c.SOPInstanceUID != a.SOPInstanceUID and c.SeriesInstanceUID != a.SeriesInstanceUID


def test_monochrome1_is_inverted():
    mono1 = samples.dx_monochrome1()
    mono2 = copy.deepcopy(mono1)
    mono2.PhotometricInterpretation = "MONOCHROME2"
    assert np.allclose(display_frame(mono1), 1.0 - display_frame(mono2))


def test_jpeg2000_decodes_like_uncompressed():
    src = samples.cr()
    assert np.allclose(display_frame(samples.j2k(src)), display_frame(src))


def test_select_top_k():
    images = [ImageEvidence("a", score=0.2), ImageEvidence("b", score=None),
              ImageEvidence("c", score=0.9), ImageEvidence("d", score=0.2)]
    assert [i.sop_instance_uid for i in select_top_k(images, 3)] == ["c", "a", "d"]
    assert [i.sop_instance_uid for i in select_top_k(images, None)] == ["c", "a", "d", "b"]
    assert select_top_k(images, 0) == []


def test_burned_in_annotation_semantics():
    src = samples.cr()
    assert burned_in_annotation(src) == "NO"  # CR without the attribute: our banner has no identity
    src.BurnedInAnnotation = "YES"
    assert burned_in_annotation(src) == "YES"  # the source pixels may identify the patient
    us = samples.cr()
    us.Modality = "US"
    assert burned_in_annotation(us) == "YES"


def test_images_without_heatmap_are_skipped():
    src = samples.cr()
    result = samples.result_for([src])
    result.findings[0].images[0].heatmap = None
    assert write_heatmap_scs(result, [src], SMALL) == []
