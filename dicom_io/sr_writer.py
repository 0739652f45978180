"""TID 1500 Imaging Measurement Report (IHE AI Results) built with highdicom."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_io import charset, uids
from dicom_io.results import (
    DEFAULT_DISCLAIMER,
    AnalysisResult,
    CodedConcept,
    Finding,
)

logger = logging.getLogger(__name__)

SRKind = Literal["comprehensive3d", "comprehensive"]

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

# IHE AIR: Purpose of Reference of the algorithm's Contributing Equipment item.
PROCESSING_ALGORITHM = hd.sr.CodedConcept("1630", "99IHE", "Processing Algorithm")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

# Procedure reported by modality when the pipeline gives none (SNOMED CT).
_PROCEDURE_BY_MODALITY = {
    "CR": CodedConcept("363680008", "SCT", "Radiographic imaging procedure"),
    "DX": CodedConcept("363680008", "SCT", "Radiographic imaging procedure"),
    "MG": CodedConcept("71651007", "SCT", "Mammography"),
    "CT": CodedConcept("77477000", "SCT", "Computerized axial tomography"),
    "MR": CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
    "US": CodedConcept("16310003", "SCT", "Ultrasonography"),
    "PT": CodedConcept("82918005", "SCT", "Positron emission tomography"),
}
_IMAGING = CodedConcept("363679005", "SCT", "Imaging")

# Type 2 Patient/Study attributes highdicom copies from evidence[0]; real PACS
# data often lacks them.
_TYPE2_DEFAULTS = {
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "StudyID": "",
    "StudyDate": "",
    "StudyTime": "",
    "ReferringPhysicianName": "",
}
_PATIENT_SEX = {"M", "F", "O"}


@dataclass(frozen=True)
class SROptions:
    """Per-destination choices for the SR."""

    kind: SRKind = "comprehensive3d"
    disclaimer: str = DEFAULT_DISCLAIMER
    series_number: int = 9901
    series_description: str | None = None
    complete: bool = True


def coded(concept: CodedConcept) -> hd.sr.CodedConcept:
    """highdicom coded concept from our plain one."""
    return hd.sr.CodedConcept(
        concept.value, concept.scheme, concept.meaning, concept.scheme_version
    )


def header_only(ds: Dataset) -> Dataset:
    """Copy of ``ds`` without pixel data and with missing Type 2 filled empty.

    Also blanks invalid PatientSex values (highdicom rejects them) and copies the
    file meta so the SOP Class is always available.
    """
    out = Dataset()
    for elem in ds:
        if elem.tag.group == 0x7FE0 or 0x6000 <= elem.tag.group <= 0x60FF:  # pixels, overlays
            continue
        out.add(copy.deepcopy(elem))
    for keyword, empty in _TYPE2_DEFAULTS.items():
        if keyword not in out or out[keyword].value is None:
            setattr(out, keyword, empty)
    if str(out.PatientSex).upper() not in _PATIENT_SEX:
        out.PatientSex = ""
    if "SOPClassUID" not in out and hasattr(ds, "file_meta"):
        out.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    return out


def procedure_for(result: AnalysisResult, sources: Sequence[Dataset]) -> CodedConcept:
    """The imaging procedure reported (not the algorithm)."""
    if result.procedure is not None:
        return result.procedure
    modality = str(sources[0].get("Modality", "")) if sources else ""
    return _PROCEDURE_BY_MODALITY.get(modality, _IMAGING)


def algorithm_equipment(result: AnalysisResult) -> hd.ContributingEquipment:
    """IHE AIR Contributing Equipment item describing the algorithm."""
    algo = result.algorithm
    item = hd.ContributingEquipment(
        manufacturer=algo.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algo.manufacturer_model_name,
        software_versions=algo.software_versions,
        institution_name=algo.institution_name,
        contribution_datetime=result.analysed_at,
        contribution_description=f"{algo.name} {algo.version} ({result.pipeline})"[:64],
    )
    # highdicom only accepts DCM purposes; IHE AIR asks for (1630, 99IHE).
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.DeviceUID = algo.device_uid
    return item


def _measurement_group(
    result: AnalysisResult,
    index: int,
    finding: Finding,
    sources_by_uid: dict[str, Dataset],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algo_id = hd.sr.AlgorithmIdentification(
        name=result.algorithm.name, version=result.algorithm.version
    )
    frames: dict[str, list[int] | None] = {}
    for image in finding.images:
        if image.sop_instance_uid not in sources_by_uid:
            continue
        known = frames.setdefault(image.sop_instance_uid, [])
        if image.frame_number is None or known is None:
            frames[image.sop_instance_uid] = None  # the whole instance
        elif image.frame_number not in known:
            known.append(image.frame_number)
    refs = [
        hd.sr.SourceImageForMeasurementGroup(
            sources_by_uid[uid].SOPClassUID, uid, referenced_frame_numbers=numbers or None
        )
        for uid, numbers in frames.items()
    ]
    sites = None
    if finding.finding_site is not None:
        sites = [hd.sr.FindingSite(anatomic_location=coded(finding.finding_site))]
    measurement = hd.sr.Measurement(
        name=coded(finding.num_name),
        value=float(finding.score),
        unit=codes.UCUM.NoUnits,
        algorithm_id=algo_id,
    )
    evaluation = hd.sr.QualitativeEvaluation(
        name=coded(finding.label),
        value=coded(finding.present_value if finding.present else finding.absent_value),
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.for_result(result, "tracking", index),
            identifier=finding.label.meaning[:64],
        ),
        finding_type=coded(finding.label),
        algorithm_id=algo_id,
        finding_sites=sites,
        measurements=[measurement],
        qualitative_evaluations=[evaluation],
        source_images=refs or None,
    )


def _disclaimer_container(result: AnalysisResult, options: SROptions) -> hd.sr.ContainerContentItem:
    """Root-level TID 1500 "Qualitative Evaluations" with the disclaimer TEXT."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    threshold_text = "; ".join(
        f"{f.label.meaning}: {f.kind} {f.score:.3g} (threshold {f.threshold:.3g}, "
        f"{'present' if f.present else 'absent'})"
        for f in result.findings
    )
    text = f"{options.disclaimer}. {result.algorithm.name} {result.algorithm.version}: {threshold_text}"
    if result.skipped:
        text += f". {len(result.skipped)} image(s) not analysed"
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Comment,
                value=text[:10240],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return container


def series_description(result: AnalysisResult, options: SROptions) -> str:
    if options.series_description:
        return options.series_description[:64]
    return f"{result.algorithm.name} SR - {options.disclaimer}"[:64]


def write_sr(
    result: AnalysisResult,
    sources: Sequence[Dataset],
    options: SROptions = SROptions(),
) -> hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR:
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

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algo.device_uid,
            name=algo.name[:64],
            manufacturer_name=algo.manufacturer[:64],
            model_name=algo.manufacturer_model_name[:64],
        ),
    )
    groups = [
        _measurement_group(result, i, f, sources_by_uid)
        for i, f in enumerate(result.findings, start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=coded(procedure_for(result, headers)),
        imaging_measurements=groups,
    )
    root = report[0].ContentSequence
    # TID 1500 row order: ... procedure reported, image library, measurements.
    root.insert(len(root) - 1, _image_library(headers))
    root.append(_disclaimer_container(result, options))

    cls = hd.sr.ComprehensiveSR if options.kind == "comprehensive" else hd.sr.Comprehensive3DSR
    role = "sr" if options.kind == "comprehensive3d" else "sr-88.33"
    previous = [_predecessor(p) for p in result.supersedes] or None
    kwargs = {}
    if result.analysed_at is not None:
        kwargs["content_date"] = result.analysed_at.date()
        kwargs["content_time"] = result.analysed_at.time()
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
        **kwargs,
    )
    charset.apply_output_character_set(sr, headers[0])
    logger.info(
        "wrote SR %s for study version %s (%d findings, %d sources)",
        sr.SOPInstanceUID, result.study_version, len(result.findings), len(headers),
    )
    return sr


class _LibraryEntryDescriptors(hd.sr.ImageLibraryEntryDescriptors):
    """TID 1602 descriptors that omit TID 1603/1604 rows the source cannot fill."""

    def _generate_projection_radiography_descriptors(self, dataset):
        try:
            return super()._generate_projection_radiography_descriptors(dataset)
        except (AttributeError, IndexError, TypeError, ValueError):
            return []

    def _generate_cross_sectional_descriptors(self, dataset):
        try:
            return super()._generate_cross_sectional_descriptors(dataset)
        except (AttributeError, IndexError, TypeError, ValueError):
            return []


def _image_library(headers: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library, one group per (modality, frame of reference).

    Like ``hd.sr.ImageLibrary`` but tolerant of sources lacking geometry (e.g.
    a CR without PatientOrientation): those rows are left out, the image stays.
    """
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    groups: dict[tuple[str, ...], list[hd.sr.ImageContentItem]] = {}
    for ds in headers:
        item = hd.sr.ImageContentItem(
            name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        item.ContentSequence = hd.sr.ContentSequence(_LibraryEntryDescriptors(ds))
        key = (str(ds.get("FrameOfReferenceUID", "")),)
        groups.setdefault(key, []).append(item)
    items = []
    for (frame_of_reference,), images in groups.items():
        group = hd.sr.ContainerContentItem(
            name=codes.DCM.ImageLibraryGroup,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        content = []
        if frame_of_reference:
            content.append(
                hd.sr.UIDRefContentItem(
                    name=codes.DCM.FrameOfReferenceUID,
                    value=frame_of_reference,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
                )
            )
        group.ContentSequence = hd.sr.ContentSequence(content + images)
        items.append(group)
    library.ContentSequence = hd.sr.ContentSequence(items)
    return library


def _predecessor(previous) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = previous.study_instance_uid
    ds.SeriesInstanceUID = previous.series_instance_uid
    ds.SOPInstanceUID = previous.sop_instance_uid
    ds.SOPClassUID = previous.sop_class_uid
    return ds
