"""Heatmaps as RGB Secondary Capture images (every viewer's fallback), built with highdicom."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io import charset, uids
from dicom_io.coding import SOURCE_FOR_PROCESSING
from dicom_io.equipment import algorithm_equipment
from dicom_io.evidence import header_only
from dicom_io.results import AnalysisResult, Finding, ImageEvidence
from dicom_io.sc.render import SCOptions, banner_lines, display_frame, render, select_top_k

logger = logging.getLogger(__name__)

# Modalities whose pixels often carry burned-in identity when the source does not say.
_BURNS_IN = {"US", "ES", "XC", "OT", "SC", "XA", "RF", "GM", "SM", "DOC"}
_ORIENT = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "H", (2, -1): "F"}

FrameKey = tuple[str, "int | None"]


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """Row/column directions from PatientOrientation or ImageOrientationPatient."""
    po = ds.get("PatientOrientation")
    if po and len(po) == 2 and all(str(v) in "APRLHF" and str(v) for v in po):
        return str(po[0]), str(po[1])
    iop = ds.get("ImageOrientationPatient")
    if iop and len(iop) == 6:
        out = []
        for vec in (iop[:3], iop[3:]):
            axis = int(np.argmax(np.abs(vec)))
            out.append(_ORIENT[(axis, 1 if vec[axis] >= 0 else -1)])
        return out[0], out[1]
    return None


def burned_in_annotation(ds: Dataset) -> str:
    """``YES`` when the source's pixels may identify the patient.

    Our banner carries no identity, so the answer is the source's own value;
    when absent, modalities that habitually burn in identity count as YES.
    """
    value = str(ds.get("BurnedInAnnotation", "")).upper()
    if value in ("YES", "NO"):
        return value
    return "YES" if ds.get("Modality") in _BURNS_IN else "NO"


def series_description(result: AnalysisResult, options: SCOptions) -> str:
    if options.series_description:
        return options.series_description[:64]
    return f"{result.algorithm.name} heatmap - {options.disclaimer}"[:64]


def write_heatmap_sc(
    result: AnalysisResult,
    finding: Finding,
    image: ImageEvidence,
    source: Dataset,
    *,
    finding_index: int = 1,
    instance_number: int = 1,
    display: np.ndarray | None = None,
    options: SCOptions = SCOptions(),
) -> hd.sc.SCImage:
    """One RGB secondary capture for one analysed image (or frame).

    ``display`` is the source frame as float [0, 1] (already windowed); when
    None it is decoded from ``source`` (which then needs its pixel data).
    """
    if display is None:
        display = display_frame(source, image.frame_number)
    lines = banner_lines(result, finding, image, options.disclaimer)
    pixels = render(display, image.heatmap, lines, options)
    ref = header_only(source)
    orientation = patient_orientation(ref)
    algo = result.algorithm
    key = f"{finding_index}:{image.sop_instance_uid}:{image.frame_number or 0}"
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.for_result(result, "sc-series"),
        series_number=options.series_number,
        sop_instance_uid=uids.for_result(result, "sc", key),
        instance_number=instance_number,
        manufacturer=algo.manufacturer,
        patient_orientation=orientation or ("L", "P"),
        laterality=ref.get("Laterality") or None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[algorithm_equipment(result)],
        series_description=series_description(result, options),
        manufacturer_model_name=algo.manufacturer_model_name[:64],
        software_versions=algo.software_versions,
        specific_character_set=charset.CONSTRUCTION_CHARACTER_SET,
    )
    if orientation is None:
        sc.PatientOrientation = ""  # Type 2: unknown
    for keyword in ("BodyPartExamined",):
        if keyword in ref:
            setattr(sc, keyword, ref[keyword].value)
    if "Laterality" not in sc:
        # Type 2C, required for paired body parts: the image's laterality when
        # known; absent when the body part is named (we cannot tell paired-ness
        # better than the source did); empty (= unknown) when nothing is known.
        image_laterality = str(ref.get("ImageLaterality", ""))
        if image_laterality in ("L", "R"):
            sc.Laterality = image_laterality
        elif not ref.get("BodyPartExamined"):
            sc.Laterality = ""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    # WSD: rendered by a processing workstation from our own data, not captured
    # from another device's video/digital interface (DI) nor purely synthetic.
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = burned_in_annotation(ref)
    if "RecognizableVisualFeatures" in ref:
        sc.RecognizableVisualFeatures = ref.RecognizableVisualFeatures
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    if image.frame_number:
        item.ReferencedFrameNumber = image.frame_number
    item.PurposeOfReferenceCodeSequence = [SOURCE_FOR_PROCESSING]
    sc.SourceImageSequence = [item]
    sc.DerivationDescription = (
        f"Source image windowed for display, {finding.label.meaning} heatmap of "
        f"{algo.name} {algo.version} blended with colour map {options.colormap} "
        f"(max opacity {options.opacity:.2f}), colour bar 0-1, banner burned in. "
        f"{options.disclaimer}"
    )[:1024]
    sc.ImageComments = options.disclaimer[:10240]
    if result.analysed_at is not None:
        sc.DateOfSecondaryCapture = result.analysed_at.strftime("%Y%m%d")
        sc.TimeOfSecondaryCapture = result.analysed_at.strftime("%H%M%S")
    return charset.apply_output_character_set(sc, ref)


def _cached_display(cache: dict[FrameKey, np.ndarray], source: Dataset,
                    frame_number: int | None) -> np.ndarray:
    key = (str(source.SOPInstanceUID), frame_number)
    if key not in cache:
        cache[key] = display_frame(source, frame_number)
    return cache[key]


def write_heatmap_scs(
    result: AnalysisResult,
    sources: Sequence[Dataset],
    options: SCOptions = SCOptions(),
    displays: Mapping[FrameKey, np.ndarray] | None = None,
) -> list[hd.sc.SCImage]:
    """Secondary captures for every finding's heatmap images (top-k per finding).

    ``displays`` maps (SOP Instance UID, frame number or None) to pre-windowed
    float frames; images missing there are decoded from ``sources``. Images
    without a heatmap or without a matching source are skipped.
    """
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    displays = dict(displays or {})  # filled as we go: each source frame is decoded once
    out: list[hd.sc.SCImage] = []
    for finding_index, finding in enumerate(result.findings, start=1):
        candidates = [img for img in finding.images if img.heatmap is not None]
        for image in select_top_k(candidates, options.top_k):
            source = by_uid.get(image.sop_instance_uid)
            if source is None:
                logger.warning("no source for heatmap of %s", image.sop_instance_uid)
                continue
            out.append(
                write_heatmap_sc(
                    result, finding, image, source,
                    finding_index=finding_index,
                    instance_number=len(out) + 1,
                    display=_cached_display(displays, source, image.frame_number),
                    options=options,
                )
            )
    logger.info("wrote %d heatmap SC(s) for study version %s", len(out), result.study_version)
    return out
