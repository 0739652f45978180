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


def test_pm_projection_source_is_unsupported():
    src = samples.cr()
    result = samples.result_for([src])
    with pytest.raises(UnsupportedSource):
        write_parametric_map(result, result.findings[0], [src])
