"""The SR document: TID 1500 content in a Comprehensive 3D SR (or Comprehensive SR)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import highdicom as hd

from dicom_io import charset, uids
from dicom_io.coding import coded
from dicom_io.equipment import algorithm_equipment, device_observer
from dicom_io.evidence import header_only
from dicom_io.results import DEFAULT_DISCLAIMER, AnalysisResult
from dicom_io.sr import templates
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

SRKind = Literal["comprehensive3d", "comprehensive"]

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@dataclass(frozen=True)
class SROptions:
    """Per-destination choices for the SR."""

    kind: SRKind = "comprehensive3d"
    disclaimer: str = DEFAULT_DISCLAIMER
    series_number: int = 9901
    series_description: str | None = None
    complete: bool = True


def series_description(result: AnalysisResult, options: SROptions) -> str:
    if options.series_description:
        return options.series_description[:64]
    return f"{result.algorithm.name} SR - {options.disclaimer}"[:64]


def write_sr(result: AnalysisResult, sources: Sequence[Dataset],
             options: SROptions = SROptions()) -> hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR:
    """Build the TID 1500 SR for ``result``.

    ``sources`` are the analysed source images (headers suffice; pixel data is
    ignored), all from ``result.study_instance_uid``. UIDs are deterministic
    (see :mod:`dicom_io.uids`). Raises ``ValueError`` when there is no finding
    or no source.
    """
    if not result.findings:
        raise ValueError("an SR needs at least one finding")
    if not sources:
        raise ValueError("an SR needs at least one source image")
    headers = [header_only(ds) for ds in sources]
    sources_by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    algo = result.algorithm
    groups = [templates.measurement_group(result, i, f, sources_by_uid)
              for i, f in enumerate(result.findings, start=1)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(result)),
        procedure_reported=coded(templates.procedure_for(result, headers)),
        imaging_measurements=groups,
    )
    root = report[0].ContentSequence
    # TID 1500 row order: ... procedure reported, image library, measurements.
    root.insert(len(root) - 1, templates.image_library(headers))
    root.append(templates.disclaimer(result, options.disclaimer))

    cls = hd.sr.ComprehensiveSR if options.kind == "comprehensive" else hd.sr.Comprehensive3DSR
    role = "sr" if options.kind == "comprehensive3d" else "sr-88.33"
    previous = [templates.predecessor(p) for p in result.supersedes] or None
    when = {}
    if result.analysed_at is not None:
        when = {"content_date": result.analysed_at.date(), "content_time": result.analysed_at.time()}
    sr = cls(
        evidence=headers,
        content=report[0],
        series_instance_uid=uids.for_result(result, f"{role}-series"),
        series_number=options.series_number,
        sop_instance_uid=uids.for_result(result, role),
        instance_number=1,
        manufacturer=algo.manufacturer,
        is_complete=options.complete,
        is_final=False,
        is_verified=False,
        institution_name=algo.institution_name,
        previous_versions=previous,
        contributing_equipment=[algorithm_equipment(result)],
        series_description=series_description(result, options),
        manufacturer_model_name=algo.manufacturer_model_name[:64],
        software_versions=algo.software_versions,
        specific_character_set=charset.CONSTRUCTION_CHARACTER_SET,
        **when,
    )
    charset.apply_output_character_set(sr, headers[0])
    logger.info("wrote SR %s for study version %s (%d findings, %d sources)",
                sr.SOPInstanceUID, result.study_version, len(result.findings), len(headers))
    return sr
