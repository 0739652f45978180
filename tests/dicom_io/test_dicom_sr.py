"""TID 1500 SR writer: dciodvfy-clean, dsrdump-readable, deterministic."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest
from conftest import dciodvfy, requires_dciodvfy
import dicomio_samples as samples

from dicom_io import uids
from dicom_io.results import PreviousResult
from dicom_io.sr import COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR, SROptions, write_sr

# dciodvfy warnings we accept (see docs/dicom-output.md):
ALLOWED_ALWAYS = {
    # IHE AIR requires Device UID in the Contributing Equipment item; the
    # dicom3tools dictionary does not know it there yet.
    "Warning - Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class",
}
# The source had no StudyDate/StudyTime/StudyID: Type 2, copied empty, never invented.
ALLOWED_MISSING_TYPE2 = {
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Date",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Time",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID",
}

SOURCES = {
    "cr": lambda: [samples.cr()],
    "cr-missing-type2": lambda: [samples.cr(full=False)],
    "dx-monochrome1": lambda: [samples.dx_monochrome1()],
    "ct-series": lambda: samples.ct_series(4),
    "ct-missing-type2": lambda: samples.ct_series(3, full=False),
    "xa-multiframe": lambda: [samples.multiframe_xa()],
    "cr-jpeg2000": lambda: [samples.j2k(samples.cr())],
}


def _expected_warnings(name: str) -> set[str]:
    return ALLOWED_ALWAYS | (ALLOWED_MISSING_TYPE2 if "missing" in name else set())


@requires_dciodvfy
@pytest.mark.parametrize("kind", ["comprehensive3d", "comprehensive"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_sr_is_valid(tmp_path, name, kind):
    sources = SOURCES[name]()
    result = samples.result_for(sources, frames=name.startswith("xa"))
    sr = write_sr(result, sources, SROptions(kind=kind))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert set(warnings) == _expected_warnings(name)
    assert sr.SOPClassUID == (COMPREHENSIVE_3D_SR if kind == "comprehensive3d" else COMPREHENSIVE_SR)


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK missing")
def test_dsrdump_shows_tid1500(tmp_path):
    sources = samples.ct_series(3)
    sr = write_sr(samples.result_for(sources), sources)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dsrdump", "-v", "+Pt", "+Pc", str(path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "TID 1500" in text and '"Imaging Measurement Report"' in text
    assert "TID 1410" in text  # each finding has its heatmap's region (test_dicom_sr_regions)
    assert 'NUM:(122157,DCM,"Probability")="0.87"' in text
    assert '(36118008,SCT,"Pneumothorax")=(52101004,SCT,"Present")' in text
    assert '"Image Library"' in text and '"Algorithm Name")="chestnet"' in text
    assert 'Procedure reported")=(77477000,SCT' in text
    assert "not for diagnostic use" in text
    assert "Preliminary Flag    : PRELIMINARY" in text
    assert "Verification Flag   : UNVERIFIED" in text


def test_sr_header_and_air_equipment():
    sources = [samples.cr()]
    result = samples.result_for(sources)
    sr = write_sr(result, sources, SROptions(disclaimer="KI-Ergebnis, nicht diagnostisch"))
    src = sources[0]
    for kw in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
               "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        assert sr[kw].value == src[kw].value, kw
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert "KI-Ergebnis" in sr.SeriesDescription
    assert (sr.PreliminaryFlag, sr.VerificationFlag, sr.CompletionFlag) == (
        "PRELIMINARY", "UNVERIFIED", "COMPLETE")
    air = next(item for item in sr.ContributingEquipmentSequence
               if item.PurposeOfReferenceCodeSequence[0].CodeValue == "1630")
    purpose = air.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "1630", "99IHE", "Processing Algorithm")
    assert air.Manufacturer == "pacsai"
    assert air.ManufacturerModelName == "ChestNet DenseNet121"
    assert list(air.SoftwareVersions) == ["1.2.0", "pacsai 0.1.0"]
    assert air.DeviceUID == result.algorithm.device_uid
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.StudyInstanceUID
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_missing_type2_filled_empty():
    src = samples.cr(full=False)
    sr = write_sr(samples.result_for([src]), [src])
    for kw in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
               "StudyTime", "ReferringPhysicianName"):
        assert kw in sr and not sr[kw].value, kw
    assert "PatientBirthDate" not in src  # the source is not modified


def test_deterministic_uids_and_predecessor():
    sources = samples.ct_series(3)
    a = write_sr(samples.result_for(sources), sources)
    b = write_sr(samples.result_for(sources), sources)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID.startswith("2.25.") and len(a.SOPInstanceUID) <= 64
    previous = PreviousResult(a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID,
                              a.SOPClassUID)
    c = write_sr(samples.result_for(sources, version=2, supersedes=[previous]), sources)
    assert c.SOPInstanceUID != a.SOPInstanceUID
    assert c.SeriesInstanceUID != a.SeriesInstanceUID
    pred = c.PredecessorDocumentsSequence[0]
    assert pred.StudyInstanceUID == a.StudyInstanceUID
    ref = pred.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == a.SeriesInstanceUID
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in a


def test_new_model_version_changes_device_and_uids():
    sources = [samples.cr()]
    a = samples.result_for(sources)
    b = samples.result_for(sources, algorithm=dataclasses.replace(samples.ALGO, version="1.3.0"))
    retrained = dataclasses.replace(samples.ALGO, model_fingerprint="sha256:def")
    assert len({a.algorithm.device_uid, b.algorithm.device_uid, retrained.device_uid}) == 3
    assert write_sr(a, sources).SOPInstanceUID != write_sr(b, sources).SOPInstanceUID
    assert uids.for_result(a, "sr") == uids.for_result(samples.result_for(sources), "sr")


def test_no_findings_is_an_error():
    sources = [samples.cr()]
    result = samples.result_for(sources)
    result.findings = []
    with pytest.raises(ValueError):
        write_sr(result, sources)


def test_anomaly_score_is_a_score_num(tmp_path):
    sources = [samples.cr()]
    sr = write_sr(samples.result_for(sources, kind="anomaly_score", score=3.5), sources)
    group = sr.ContentSequence[-2].ContentSequence[0]  # Imaging Measurements > group
    nums = [item for item in group.ContentSequence if item.ValueType == "NUM"]
    assert nums[0].ConceptNameCodeSequence[0].CodeValue == "246262008"
    assert float(nums[0].MeasuredValueSequence[0].NumericValue) == 3.5
