"""RGB secondary-capture heatmaps: the source image, the heatmap blended over it,
a colour-bar legend and a burned-in banner (model, finding, score, disclaimer)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io import charset, pixels, uids
from dicom_io.results import DEFAULT_DISCLAIMER, AnalysisResult, Finding, ImageEvidence
from dicom_io.sr_writer import algorithm_equipment, header_only

logger = logging.getLogger(__name__)

# Purpose of reference of SourceImageSequence items (CID 7202).
SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
# Modalities whose pixels often carry burned-in identity when the source does not say.
_BURNS_IN = {"US", "ES", "XC", "OT", "SC", "XA", "RF", "GM", "SM", "DOC"}
_ORIENT = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "H", (2, -1): "F"}

FrameKey = tuple[str, "int | None"]


@dataclass(frozen=True)
class SCOptions:
    """Rendering and series choices for heatmap secondary captures."""

    disclaimer: str = DEFAULT_DISCLAIMER
    colormap: str = "jet"
    opacity: float = 0.45
    top_k: int | None = None
    series_number: int = 9902
    series_description: str | None = None
    min_size: int = 512
    max_size: int = 1536


def select_top_k(images: Sequence[ImageEvidence], k: int | None) -> list[ImageEvidence]:
    """The ``k`` images with the highest per-image score (all when ``k`` is None).

    Images without a score rank last; ties keep their input order.
    """
    ranked = sorted(
        enumerate(images),
        key=lambda p: (p[1].score is None, -(p[1].score or 0.0), p[0]),
    )
    chosen = [img for _, img in ranked]
    return chosen if k is None else chosen[: max(k, 0)]


def display_frame(ds: Dataset, frame_number: int | None = None) -> np.ndarray:
    """Float [0, 1] display image of one frame (1-based ``frame_number``):
    decoded, modality LUT, DICOM window / VOI LUT (else percentiles), MONOCHROME1
    inverted, colour reduced to luminance. Delegates to :mod:`dicom_io.pixels`."""
    index = (frame_number or 1) - 1
    stored = pixels.decode(ds)[index]
    out = pixels.display_frame(ds, stored, index)
    if out.ndim == 3:
        out = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return out


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float 2-D array to (rows, cols)."""
    img = Image.fromarray(arr.astype(np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _target_size(shape: tuple[int, int], options: SCOptions) -> tuple[int, int]:
    rows, cols = shape
    longest = max(rows, cols)
    scale = 1.0
    if longest < options.min_size:
        scale = options.min_size / longest
    elif longest > options.max_size:
        scale = options.max_size / longest
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Truncate ``text`` with an ellipsis to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def banner_lines(result: AnalysisResult, finding: Finding, image: ImageEvidence, disclaimer: str) -> list[str]:
    algo = result.algorithm
    verdict = "PRESENT" if finding.present else "absent"
    what = "probability" if finding.kind == "probability" else "anomaly score"
    lines = [
        disclaimer,
        f"{algo.manufacturer_model_name} {algo.version}",
        f"{finding.label.meaning}: {what} {finding.score:.2f} "
        f"(threshold {finding.threshold:.2f}) - {verdict}",
    ]
    if image.score is not None and image.score != finding.score:
        lines[-1] += f"; this image {image.score:.2f}"
    return lines


def render(
    display: np.ndarray,
    heatmap: np.ndarray | None,
    lines: Sequence[str],
    options: SCOptions = SCOptions(),
) -> np.ndarray:
    """Compose the RGB uint8 picture (banner on top, legend on the right)."""
    rows, cols = _target_size(display.shape, options)
    gray = _resize(np.clip(display, 0, 1), (rows, cols)) if (rows, cols) != display.shape else display
    rgb = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2)
    cmap = colormaps[options.colormap]
    if heatmap is not None:
        heat = np.clip(_resize(np.nan_to_num(heatmap.astype(np.float32)), (rows, cols)), 0, 1)
        alpha = (options.opacity * heat)[..., None]
        rgb = rgb * (1 - alpha) + cmap(heat)[..., :3] * alpha
    picture = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)

    font_size = max(12, cols // 36)
    font = _font(font_size)
    line_h = int(font_size * 1.35)
    banner_h = line_h * len(lines) + font_size // 2
    legend_w = max(48, font_size * 4)
    canvas = Image.new("RGB", (cols + legend_w, rows + banner_h), (0, 0, 0))
    canvas.paste(Image.fromarray(picture, "RGB"), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        colour = (255, 220, 0) if i == 0 else (255, 255, 255)
        draw.text((font_size // 3, font_size // 4 + i * line_h),
                  _fit(draw, text, font, cols + legend_w - font_size), font=font, fill=colour)

    # Colour bar: 1.0 at the top, 0.0 at the bottom, labelled.
    bar_top, bar_bottom = banner_h + line_h, banner_h + rows - line_h
    bar_x0, bar_x1 = cols + legend_w // 4, cols + legend_w // 4 + max(8, legend_w // 4)
    if bar_bottom - bar_top > 10:
        ramp = np.linspace(1.0, 0.0, bar_bottom - bar_top)
        bar = (cmap(ramp)[:, :3] * 255).astype(np.uint8)
        bar = np.repeat(bar[:, None, :], bar_x1 - bar_x0, axis=1)
        canvas.paste(Image.fromarray(bar, "RGB"), (bar_x0, bar_top))
        small = _font(max(10, font_size * 3 // 4))
        draw.text((bar_x0, bar_top - line_h), "1.0", font=small, fill=(255, 255, 255))
        draw.text((bar_x0, bar_bottom + 2), "0.0", font=small, fill=(255, 255, 255))
    return np.asarray(canvas)


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
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SOURCE_FOR_PROCESSING
    item.PurposeOfReferenceCodeSequence = [purpose]
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
