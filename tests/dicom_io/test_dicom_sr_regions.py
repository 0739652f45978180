"""Findings drawn on their source image: TID 1410 regions from heatmaps, TID 1501 without.

What OHIF 3.13.2's DICOM SR extension needs (see dicom_io/sr/templates.py): every
measurement group carries a SCOORD (the group's own for TID 1410, a NUM's INFERRED FROM
one for TID 1501) whose only child is a SELECTED FROM IMAGE with one Referenced SOP
Sequence item naming the source image and, for a multi-frame image, its frame.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from pydicom.multival import MultiValue
from conftest import dciodvfy, requires_dciodvfy
import dicomio_samples as samples
from test_dicom_sr import _expected_warnings

from dicom_io.coding import CodedConcept
from dicom_io.results import Finding, ImageEvidence
from dicom_io.sr import SROptions, write_sr
from dicom_io.sr.content import heatmap_outline, image_outline

IMAGING_MEASUREMENTS, MEASUREMENT_GROUP = "126010", "125007"
EFFUSION = CodedConcept("60046008", "SCT", "Pleural effusion")


# -- helpers -----------------------------------------------------------------------------------

def _code(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue


def groups(sr) -> list:
    container = next(i for i in sr.ContentSequence if _code(i) == IMAGING_MEASUREMENTS)
    return [g for g in container.ContentSequence if _code(g) == MEASUREMENT_GROUP]


def template(group) -> str:
    return group.ContentTemplateSequence[0].TemplateIdentifier


def drawn_scoord(group):
    """The SCOORD OHIF draws for ``group``: the group's own, else the first a NUM names."""
    own = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    if own:
        return own[0]
    for num in (i for i in group.ContentSequence if i.ValueType == "NUM"):
        inner = [i for i in getattr(num, "ContentSequence", []) if i.ValueType == "SCOORD"]
        if inner:
            return inner[0]
    return None


def referenced(scoord) -> tuple[str, str, list[int] | None]:
    """(SOP class, SOP instance, frames) of the SCOORD's image, checked as OHIF reads it."""
    assert len(scoord.ContentSequence) == 1  # OHIF reads ContentSequence.ReferencedSOPSequence
    image = scoord.ContentSequence[0]
    assert (image.ValueType, image.RelationshipType) == ("IMAGE", "SELECTED FROM")
    assert len(image.ReferencedSOPSequence) == 1
    ref = image.ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber")
    if frames is not None:
        frames = [int(f) for f in (frames if isinstance(frames, MultiValue) else [frames])]
    return ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID, frames


def points(scoord) -> np.ndarray:
    return np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)


def inside(polygon: np.ndarray, x: float, y: float) -> bool:
    """Ray casting; ``polygon`` closed (first == last)."""
    hit = False
    for (x0, y0), (x1, y1) in zip(polygon[:-1], polygon[1:]):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            hit = not hit
    return hit


def peak_on_image(heatmap: np.ndarray, rows: int, columns: int) -> tuple[float, float]:
    """(column, row) of the centre of the heatmap's hottest cell, stretched over the image."""
    i, j = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return (j + 0.5) * columns / heatmap.shape[1], (i + 0.5) * rows / heatmap.shape[0]


def nums(group) -> list:
    return [i for i in group.ContentSequence if i.ValueType == "NUM"]


def save_and_check(sr, tmp_path, name: str) -> None:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    if shutil.which("dciodvfy"):
        errors, warnings = dciodvfy(path)
        assert errors == []
        assert set(warnings) == _expected_warnings(name)


# -- the outline of a heatmap --------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(32, 32), (7, 11), (96, 80), (300, 200)])
def test_outline_inside_image_closed_and_around_the_peak(shape):
    rows, columns = 96, 80
    heat = samples.heatmap(*shape, cy=0.3, cx=0.7)
    outline, peak = heatmap_outline(heat, rows, columns)
    assert outline.dtype == np.float32 and outline.shape[1] == 2 and len(outline) >= 5
    assert np.array_equal(outline[0], outline[-1])
    assert (outline[:, 0] >= 0).all() and (outline[:, 0] <= columns).all()
    assert (outline[:, 1] >= 0).all() and (outline[:, 1] <= rows).all()
    expected = peak_on_image(heat, rows, columns)
    cell = max(columns / shape[1], rows / shape[0], 1.0)
    assert abs(peak[0] - expected[0]) <= 1.5 * cell and abs(peak[1] - expected[1]) <= 1.5 * cell
    assert inside(outline.astype(np.float64), *peak)
    # half maximum of a Gaussian with 2*sigma^2 = 0.02 (image fractions): radius ~0.118
    width = outline[:, 0].max() - outline[:, 0].min()
    assert 0.15 * columns < width < 0.35 * columns


def test_outline_follows_the_dicom_pixel_convention():
    """One hot pixel at (row 10, column 20): its square is (20, 10)-(21, 11), centre 20.5, 10.5."""
    heat = np.zeros((96, 80), dtype=np.float32)
    heat[10, 20] = 1.0
    outline, peak = heatmap_outline(heat, 96, 80)
    assert peak == (20.5, 10.5)
    assert {tuple(p) for p in outline.tolist()} == {(20, 10), (21, 10), (21, 11), (20, 11)}


def test_outline_is_the_part_that_holds_the_maximum():
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[5:30, 5:30] = 0.6   # large, above half maximum, but not where the maximum is
    heat[45:50, 45:50] = 1.0
    outline, peak = heatmap_outline(heat, 64, 64)
    assert outline[:, 0].min() >= 45 and outline[:, 1].min() >= 45
    assert outline[:, 0].max() <= 50 and outline[:, 1].max() <= 50
    assert inside(outline.astype(np.float64), *peak)


@pytest.mark.parametrize("heat", [
    np.zeros((8, 8)), np.full((8, 8), 0.7), np.full((8, 8), np.nan), np.zeros((0, 4)),
    -np.ones((4, 4)),
])
def test_heatmaps_that_locate_nothing(heat):
    assert heatmap_outline(heat, 96, 80) is None


def test_image_outline_is_the_border():
    assert image_outline(96, 80).tolist() == [[0, 0], [80, 0], [80, 96], [0, 96], [0, 0]]


# -- the SR ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["comprehensive3d", "comprehensive"])
def test_cr_finding_is_a_tid1410_region_on_its_image(tmp_path, kind):
    src = samples.cr()
    result = samples.result_for([src])
    heat = result.findings[0].images[0].heatmap
    sr = write_sr(result, [src], SROptions(kind=kind))
    save_and_check(sr, tmp_path, "cr")
    (group,) = groups(sr)
    assert template(group) == "1410"
    items = {(_code(i), i.ValueType): i for i in group.ContentSequence}
    assert items[("112039", "TEXT")].TextValue == "Pneumothorax"
    assert items[("112040", "UIDREF")].UID
    assert items[("121071", "CODE")].ConceptCodeSequence[0].CodeValue == "36118008"
    evaluation = items[("36118008", "CODE")].ConceptCodeSequence[0]
    assert (evaluation.CodeValue, evaluation.CodeMeaning) == ("52101004", "Present")
    (num,) = nums(group)
    assert _code(num) == "122157"
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.87)
    scoord = items[("111030", "SCOORD")]
    assert scoord.RelationshipType == "CONTAINS" and scoord.GraphicType == "POLYLINE"
    assert drawn_scoord(group) is scoord
    assert referenced(scoord) == (src.SOPClassUID, src.SOPInstanceUID, None)
    outline = points(scoord)
    assert np.array_equal(outline[0], outline[-1])
    assert (outline >= 0).all() and (outline[:, 0] <= 80).all() and (outline[:, 1] <= 96).all()
    assert inside(outline, *peak_on_image(heat, 96, 80))


def test_region_is_on_the_highest_scoring_image(tmp_path):
    sources = samples.ct_series(4)
    scores = [0.3, 0.9, 0.5, 0.7]
    spots = [(0.2, 0.2), (0.7, 0.25), (0.5, 0.5), (0.2, 0.8)]
    images = [ImageEvidence(ds.SOPInstanceUID, None, s, samples.heatmap(16, 16, cy, cx))
              for ds, s, (cy, cx) in zip(sources, scores, spots)]
    result = samples.result_for(sources)
    result.findings[0].images = images
    sr = write_sr(result, sources)
    save_and_check(sr, tmp_path, "ct-series")
    (group,) = groups(sr)
    scoord = drawn_scoord(group)
    assert referenced(scoord)[1] == sources[1].SOPInstanceUID
    assert inside(points(scoord), *peak_on_image(images[1].heatmap, 64, 64))
    assert not inside(points(scoord), *peak_on_image(images[3].heatmap, 64, 64))


def test_multiframe_region_names_its_frame(tmp_path):
    src = samples.multiframe_xa(frames=4)
    images = [ImageEvidence(src.SOPInstanceUID, f, s, samples.heatmap(12, 12, 0.3 + 0.1 * f, 0.5))
              for f, s in zip((1, 2, 3, 4), (0.2, 0.4, 0.95, 0.1))]
    result = samples.result_for([src])
    result.findings[0].images = images
    sr = write_sr(result, [src])
    save_and_check(sr, tmp_path, "xa-multiframe")
    (group,) = groups(sr)
    assert template(group) == "1410"
    scoord = drawn_scoord(group)
    assert referenced(scoord) == (src.SOPClassUID, src.SOPInstanceUID, [3])
    assert inside(points(scoord), *peak_on_image(images[2].heatmap, 48, 48))


def test_multiframe_without_frame_numbers_is_not_located_on_a_guessed_frame(tmp_path):
    src = samples.multiframe_xa(frames=4)
    result = samples.result_for([src], frames=False)  # one heatmap for the whole cine
    sr = write_sr(result, [src])
    save_and_check(sr, tmp_path, "xa-multiframe")
    (group,) = groups(sr)
    assert template(group) == "1501"
    assert referenced(drawn_scoord(group)) == (src.SOPClassUID, src.SOPInstanceUID, [1, 2, 3, 4])


@pytest.mark.parametrize("kind", ["comprehensive3d", "comprehensive"])
def test_finding_without_heatmap_is_tid1501_inferred_from_the_whole_image(tmp_path, kind):
    sources = samples.ct_series(3)
    result = samples.result_for(sources)
    for image in result.findings[0].images:
        image.heatmap = None
    sr = write_sr(result, sources, SROptions(kind=kind))
    save_and_check(sr, tmp_path, "ct-series")
    (group,) = groups(sr)
    assert template(group) == "1501"
    assert not [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    (num,) = nums(group)
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.87)
    scoord = drawn_scoord(group)
    assert scoord.RelationshipType == "INFERRED FROM" and _code(scoord) == "121112"
    assert scoord.GraphicType == "POLYLINE"
    assert points(scoord).tolist() == [[0, 0], [64, 0], [64, 64], [0, 64], [0, 0]]
    # the score is the top image's (result_for scores image i as 0.87 - 0.1 i)
    assert referenced(scoord) == (sources[0].SOPClassUID, sources[0].SOPInstanceUID, None)
    source_images = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    assert len(source_images) == 3


def test_finding_naming_no_image_is_inferred_from_every_analysed_image(tmp_path):
    sources = samples.ct_series(3)
    result = samples.result_for(sources)
    result.findings[0].images = []
    sr = write_sr(result, sources)
    save_and_check(sr, tmp_path, "ct-series")
    (group,) = groups(sr)
    (num,) = nums(group)
    inferred = [i for i in num.ContentSequence if i.ValueType == "SCOORD"]
    assert [referenced(s)[1] for s in inferred] == [ds.SOPInstanceUID for ds in sources]


def test_flat_heatmap_locates_nothing(tmp_path):
    src = samples.cr()
    result = samples.result_for([src])
    result.findings[0].images[0].heatmap = np.full((16, 16), 0.4)
    (group,) = groups(write_sr(result, [src]))
    assert template(group) == "1501"


def test_every_group_has_what_ohif_reads(tmp_path):
    """Mixed findings: each group has a SCOORD with the image, a tracking identifier and UID."""
    sources = samples.ct_series(3)
    result = samples.result_for(sources, kind="anomaly_score", score=3.5)
    result.findings.append(Finding(label=EFFUSION, score=0.12, threshold=0.5, present=False,
                                   images=[ImageEvidence(sources[2].SOPInstanceUID, None, 0.12)]))
    result.findings.append(Finding(label=CodedConcept("233604007", "SCT", "Pneumonia"),
                                   score=0.6, threshold=0.5, present=True, images=[]))
    sr = write_sr(result, sources)
    save_and_check(sr, tmp_path, "ct-series")
    found = groups(sr)
    assert [template(g) for g in found] == ["1410", "1501", "1501"]
    uids = set()
    for group in found:
        codes_ = [_code(i) for i in group.ContentSequence]
        assert "112039" in codes_ and "112040" in codes_
        uids.add(next(i.UID for i in group.ContentSequence if i.ValueType == "UIDREF"))
        scoord = drawn_scoord(group)
        assert scoord is not None, template(group)
        assert referenced(scoord)[1] in {ds.SOPInstanceUID for ds in sources}
        assert [n.MeasuredValueSequence[0].NumericValue for n in nums(group)]
    assert len(uids) == 3
    assert referenced(drawn_scoord(found[1]))[1] == sources[2].SOPInstanceUID


def test_regions_are_deterministic():
    sources = samples.ct_series(3)
    a = write_sr(samples.result_for(sources), sources)
    b = write_sr(samples.result_for(sources), sources)
    first, again = (points(drawn_scoord(groups(sr)[0])).tolist() for sr in (a, b))
    assert first == again


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK missing")
@pytest.mark.parametrize("located", [True, False])
def test_dsrdump_shows_the_region_and_its_image(tmp_path, located):
    src = samples.multiframe_xa(frames=4)
    result = samples.result_for([src], frames=True)
    if not located:
        for image in result.findings[0].images:
            image.heatmap = None
    sr = write_sr(result, [src])
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dsrdump", "-v", "+Pt", "+Pl", "+Pu", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr and "Error" not in out.stderr, out.stderr
    text = out.stdout
    scoord = drawn_scoord(groups(sr)[0])
    coordinates = ",".join(f"{x:g}/{y:g}" for x, y in points(scoord))
    if located:
        assert "# TID 1410" in text
        assert f'<contains SCOORD:(,,"Image Region")=(POLYLINE,{coordinates})>' in text
        parent = "contains SCOORD"
    else:
        assert "# TID 1501" in text
        assert (f'<inferred from SCOORD:(,,"Source of Measurement")=(POLYLINE,{coordinates})>'
                in text)
        parent = "inferred from SCOORD"
    after = text[text.index(parent):]
    assert after.splitlines()[1].strip() == (
        f'<selected from IMAGE:(,,"Source")=(XA image,"{src.SOPInstanceUID}",1)>')
