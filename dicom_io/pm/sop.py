"""Heatmaps as a DICOM Parametric Map (IHE AIR's primitive for such maps).

Written for single-frame sources with a Frame of Reference (CT/MR/PT slices): the map
shares the source series' Frame of Reference UID and plane geometry, so a viewer can lay
it over its source.

Projection radiographs (CR, DX, MG) and other sources without a Frame of Reference
(multi-frame XA, US) get no Parametric Map: :class:`UnsupportedSource`, and the heatmap
goes out as secondary capture only (and as the SR's image region). Decided because:

* the Parametric Map IOD (PS3.3 A.75) makes the Frame of Reference module Mandatory
  (Frame of Reference UID Type 1; so does highdicom's copy of the module tables), and
  highdicom places the frames in that patient coordinate system (Plane Position and
  Plane Orientation (Patient)); dciodvfy reports a map without it as errors (tried:
  "Missing attribute Type 1 Required Element=<FrameOfReferenceUID>");
* a projection radiograph has no patient coordinate system. A map for it passes
  dciodvfy only with a Frame of Reference and an Image Position/Orientation (Patient)
  we would invent, which states a geometry that does not exist (DX Imager Pixel Spacing
  is at the detector, not in the patient) and that no source shares, so no viewer could
  register the map to its image by it anyway;
* highdicom 0.28.2 cannot build one either: for a source without Frame of Reference
  it checks the source's IOD instead of the map's and then fails with "Unexpected
  mismatch between dimension index values" while building the frame index.

Revisit if PS3.3 makes the module conditional for maps derived from projection images
(it is conditional for Segmentation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io import charset, pixels, uids
from dicom_io.equipment import algorithm_equipment
from dicom_io.evidence import header_only
from dicom_io.results import DEFAULT_DISCLAIMER, AnalysisResult, Finding

logger = logging.getLogger(__name__)


class UnsupportedSource(ValueError):
    """The finding's sources cannot carry a Parametric Map (see module doc)."""


@dataclass(frozen=True)
class PMOptions:
    series_number: int = 9903
    disclaimer: str = DEFAULT_DISCLAIMER


def write_parametric_map(
    result: AnalysisResult,
    finding: Finding,
    sources: Sequence[Dataset],
    *,
    finding_index: int = 1,
    options: PMOptions = PMOptions(),
) -> hd.pm.ParametricMap:
    """One float Parametric Map of ``finding``'s heatmaps over one source series.

    Uses the series with the most heatmaps; each heatmap is resized to its
    source image. Raises :class:`UnsupportedSource` when no usable source exists.
    """
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    per_series: dict[str, list[tuple[Dataset, np.ndarray]]] = {}
    for image in finding.images:
        src = by_uid.get(image.sop_instance_uid)
        if image.heatmap is None or src is None:
            continue
        if "FrameOfReferenceUID" not in src or int(src.get("NumberOfFrames", 1) or 1) > 1:
            continue
        per_series.setdefault(src.SeriesInstanceUID, []).append((src, image.heatmap))
    if not per_series:
        raise UnsupportedSource(
            "Parametric Map needs single-frame sources with a Frame of Reference "
            "(the IOD's Frame of Reference module is mandatory; projection images have none)"
        )
    series = max(per_series.values(), key=len)
    headers = [header_only(src) for src, _ in series]
    frames = np.stack([
        np.clip(pixels.resize(np.nan_to_num(h.astype(np.float32)), (int(s.Rows), int(s.Columns))), 0, 1)
        for s, (_, h) in zip(headers, series)
    ]).astype(np.float32)
    algo = result.algorithm
    what = "probability" if finding.kind == "probability" else "anomaly score"
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="HEATMAP",
        lut_explanation=f"{finding.label.meaning} {what} heatmap (relative)"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=headers,
        pixel_array=frames,
        series_instance_uid=uids.for_result(result, "pm-series", finding_index),
        series_number=options.series_number,
        sop_instance_uid=uids.for_result(result, "pm", finding_index),
        instance_number=1,
        manufacturer=algo.manufacturer,
        manufacturer_model_name=algo.manufacturer_model_name[:64],
        software_versions=algo.software_versions,
        device_serial_number=algo.device_uid[-16:],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_label="HEATMAP",
        content_description=f"{finding.label.meaning} - {options.disclaimer}"[:64],
        content_creator_name=None,
        contributing_equipment=[algorithm_equipment(result)],
        series_description=f"{algo.name} map - {options.disclaimer}"[:64],
        specific_character_set=charset.CONSTRUCTION_CHARACTER_SET,
    )
    if headers[0].get("BodyPartExamined"):  # General Series, as the SC carries it
        pm.BodyPartExamined = headers[0].BodyPartExamined
    if "Laterality" not in pm and not headers[0].get("BodyPartExamined"):
        pm.Laterality = ""  # Type 2C, unknown (as for the SC)
    charset.apply_output_character_set(pm, headers[0])
    logger.info("wrote parametric map %s (%d frames)", pm.SOPInstanceUID, len(frames))
    return pm
