"""The SR as OHIF reads it: OHIF's own SR code (from the prebuilt @ohif/app) run in node.

``ohif_sr_harness.js`` cuts the measurement parsing of OHIF's DICOM SR extension out of
the shipped bundle and runs it on the SR naturalized as dcmjs does for OHIF's DICOMweb
data source, with the source series as the display set it hydrates onto. This checks the
structure OHIF 3.13 needs without a browser; drawing in a real viewer is the browser
test's business.

Needs node and the viewer's dist folder: ``PACSAI_OHIF_DIST`` (e.g. ``package/dist`` of
``npm pack @ohif/app@3.13.2``), ``tests/viewer/node_modules/@ohif/app/dist`` (``make install``),
``node_modules/@ohif/app/dist`` or
``.cache/ohif/package/dist`` in the repository; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import dicomio_samples as samples
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_dicom_sr_regions import EFFUSION, drawn_scoord, groups, points

from dicom_io.coding import CodedConcept
from dicom_io.results import Finding, ImageEvidence
from dicom_io.sr import SROptions, write_sr

HARNESS = Path(__file__).with_name("ohif_sr_harness.js")
REPO = Path(__file__).resolve().parents[2]


def _ohif_dist() -> Path | None:
    candidates = [os.environ.get("PACSAI_OHIF_DIST"),
                  REPO / "tests/viewer/node_modules/@ohif/app/dist",  # what make install puts there
                  REPO / "node_modules/@ohif/app/dist", REPO / ".cache/ohif/package/dist"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "index.html").is_file():
            return Path(candidate)
    return None


DIST = _ohif_dist()
pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node missing"),
    pytest.mark.skipif(DIST is None, reason="no prebuilt OHIF viewer (set PACSAI_OHIF_DIST)"),
]


def _keywords(ds: Dataset, out: dict[str, str]) -> dict[str, str]:
    for elem in ds:
        out[f"{elem.tag:08X}"] = keyword_for_tag(elem.tag) or f"{elem.tag:08X}"
        if elem.VR == "SQ":
            for item in elem.value:
                _keywords(item, out)
    return out


def ohif_reads(sr: Dataset, sources: list[Dataset], tmp_path: Path) -> dict:
    """What OHIF's SR code makes of ``sr`` with ``sources`` as the loaded series."""
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    stored = dcmread(tmp_path / "sr.dcm")  # as a PACS would serve it (DICOM JSON from the file)
    (tmp_path / "sr.json").write_text(json.dumps(
        {"dataset": stored.to_json_dict(), "keywords": _keywords(stored, {})}))
    (tmp_path / "images.json").write_text(json.dumps([
        {"sop_instance_uid": ds.SOPInstanceUID, "sop_class_uid": ds.SOPClassUID,
         "frames": int(ds.NumberOfFrames) if "NumberOfFrames" in ds else None,
         "frame_of_reference_uid": ds.get("FrameOfReferenceUID")}
        for ds in sources]))
    out = subprocess.run(["node", str(HARNESS), str(DIST), str(tmp_path / "sr.json"),
                          str(tmp_path / "images.json")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("kind", ["comprehensive3d", "comprehensive"])
def test_ohif_draws_the_region_on_the_cr(tmp_path, kind):
    src = samples.cr()
    sr = write_sr(samples.result_for([src]), [src], SROptions(kind=kind))
    read = ohif_reads(sr, [src], tmp_path)
    assert "error" not in read, read
    (m,) = read["measurements"]
    assert m["loaded"] is True
    assert m["imageId"] == src.SOPInstanceUID and m["frameNumber"] == 1
    assert m["TrackingIdentifier"] == "Pneumothorax"
    assert {"label": "Probability", "value": "0.87 1"} in m["labels"]
    (coord,) = m["coords"]
    assert (coord["ValueType"], coord["GraphicType"]) == ("SCOORD", "POLYLINE")
    assert coord["GraphicData"] == pytest.approx(points(drawn_scoord(groups(sr)[0])).ravel())
    (annotation,) = read["annotations"]
    assert annotation["lines"] == ["Probability: 0.87 1"]
    assert read["referencedImages"] == [
        {"ReferencedSOPClassUID": src.SOPClassUID, "ReferencedSOPInstanceUID": src.SOPInstanceUID}]


def test_ohif_puts_the_region_on_its_frame(tmp_path):
    src = samples.multiframe_xa(frames=4)
    result = samples.result_for([src])
    result.findings[0].images = [
        ImageEvidence(src.SOPInstanceUID, f, s, samples.heatmap(12, 12))
        for f, s in zip((1, 2, 3, 4), (0.2, 0.4, 0.95, 0.1))]
    read = ohif_reads(write_sr(result, [src]), [src], tmp_path)
    (m,) = read["measurements"]
    assert m["loaded"] and m["imageId"] == f"{src.SOPInstanceUID}:3" and m["frameNumber"] == 3


def test_ohif_loads_every_finding_located_or_not(tmp_path):
    sources = samples.ct_series(3)
    result = samples.result_for(sources, kind="anomaly_score", score=3.5)
    result.findings.append(Finding(label=EFFUSION, score=0.12, threshold=0.5, present=False,
                                   images=[ImageEvidence(sources[2].SOPInstanceUID, None, 0.12)]))
    result.findings.append(Finding(label=CodedConcept("233604007", "SCT", "Pneumonia"),
                                   score=0.6, threshold=0.5, present=True, images=[]))
    read = ohif_reads(write_sr(result, sources), sources, tmp_path)
    assert "error" not in read, read
    found = {m["TrackingIdentifier"]: m for m in read["measurements"]}
    assert list(found) == ["Pneumothorax", "Pleural effusion", "Pneumonia"]
    assert all(m["loaded"] for m in found.values())
    assert found["Pneumothorax"]["imageId"] == sources[0].SOPInstanceUID
    assert {"label": "Score", "value": "3.50 1"} in found["Pneumothorax"]["labels"]
    assert found["Pleural effusion"]["imageId"] == sources[2].SOPInstanceUID
    border = [0, 0, 64, 0, 64, 64, 0, 64, 0, 0]
    assert found["Pleural effusion"]["coords"][0]["GraphicData"] == border
    assert {"label": "Probability", "value": "0.12 1"} in found["Pleural effusion"]["labels"]
    assert found["Pneumonia"]["imageId"] == sources[0].SOPInstanceUID
    assert len(read["annotations"]) == 3


def test_harness_reproduces_the_crash_of_a_group_without_scoord(tmp_path):
    """Issue 13's error: what OHIF does with the TID 1501 groups pacsai wrote before."""
    src = samples.cr()
    result = samples.result_for([src])
    result.findings[0].images[0].heatmap = None
    sr = write_sr(result, [src])
    (group,) = groups(sr)
    num = next(i for i in group.ContentSequence if i.ValueType == "NUM")
    num.ContentSequence = Sequence([i for i in num.ContentSequence if i.ValueType != "SCOORD"])
    read = ohif_reads(sr, [src], tmp_path)
    assert read == {"error": "TypeError: Cannot read properties of undefined "
                             "(reading 'ReferencedSOPSequence')"}
