"""Heatmap Parametric Map (optional output)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dciodvfy, requires_dciodvfy
import dicomio_samples as samples
from test_dicom_sc import LATERALITY_UNKNOWN
from test_dicom_sr import _expected_warnings

from dicom_io.pm import UnsupportedSource, write_parametric_map

# dicom3tools does not know the (current) defined term QUANTITY for the
# Parametric Map's Image Type / Frame Type value 4 (Derived Pixel Contrast).
PM_WARNINGS = {
    "Warning - Unrecognized defined term <QUANTITY> for value 4 of attribute <Image Type>",
    "Warning - Unrecognized defined term <QUANTITY> for value 4 of attribute <Frame Type>",
}


@requires_dciodvfy
@pytest.mark.parametrize("full", [True, False])
def test_pm_for_ct_series(tmp_path, full):
    sources = samples.ct_series(3, full=full)
    result = samples.result_for(sources)
    pm = write_parametric_map(result, result.findings[0], sources)
    assert pm.NumberOfFrames == 3
    assert pm.pixel_array.dtype == np.float32 and pm.pixel_array.max() <= 1.0
    path = tmp_path / "pm.dcm"
    pm.save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == []
    name = "ct" if full else "ct-missing-type2"
    assert set(warnings) == PM_WARNINGS | LATERALITY_UNKNOWN | _expected_warnings(name)
    again = write_parametric_map(samples.result_for(sources), result.findings[0], sources)
    assert again.SOPInstanceUID == pm.SOPInstanceUID


# -- projection radiographs: no Parametric Map (the decision in dicom_io/pm/sop.py) -----------

@pytest.mark.parametrize("make", [samples.cr, samples.dx_monochrome1, samples.multiframe_xa])
def test_pm_sources_without_frame_of_reference_are_unsupported(make):
    src = make()
    result = samples.result_for([src], frames="NumberOfFrames" in src)
    with pytest.raises(UnsupportedSource, match="Frame of Reference"):
        write_parametric_map(result, result.findings[0], [src])


@requires_dciodvfy
def test_pm_without_frame_of_reference_is_invalid(tmp_path):
    """Why: the Parametric Map IOD's Frame of Reference module is mandatory."""
    sources = samples.ct_series(1)
    result = samples.result_for(sources)
    pm = write_parametric_map(result, result.findings[0], sources)
    del pm.FrameOfReferenceUID
    del pm.PositionReferenceIndicator
    path = tmp_path / "pm.dcm"
    pm.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert any("<FrameOfReferenceUID>" in e and "Type 1" in e for e in errors), errors


def test_highdicom_cannot_build_a_pm_for_a_projection_image():
    """Why (too): highdicom 0.28.2 fails on a source without Frame of Reference. If this
    starts to pass after an upgrade, the module is still mandatory: see pm/sop.py."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from dicom_io.evidence import header_only

    src = header_only(samples.cr())
    mapping = hd.pm.RealWorldValueMapping(lut_label="H", lut_explanation="heatmap",
                                          unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0),
                                          slope=1.0, intercept=0.0)
    with pytest.raises((RuntimeError, ValueError)):
        hd.pm.ParametricMap(
            source_images=[src], pixel_array=np.zeros((1, src.Rows, src.Columns), np.float32),
            series_instance_uid=hd.UID(), series_number=1, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="pacsai", manufacturer_model_name="m",
            software_versions="1", device_serial_number="1",
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)])
