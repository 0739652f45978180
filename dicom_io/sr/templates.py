"""TID 1500 Imaging Measurement Report content: the rows highdicom does not build as we need.

* TID 1501 Measurement and Qualitative Evaluation Group, one per finding
  (:func:`measurement_group`);
* TID 1600 Image Library, tolerant of sources without geometry (:func:`image_library`);
* the root "Qualitative Evaluations" container with the disclaimer (:func:`disclaimer`);
* the procedure reported (:func:`procedure_for`) and predecessor references.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_io import uids
from dicom_io.coding import (IMAGING, PROCEDURE_BY_MODALITY, QUALITATIVE_EVALUATIONS, SOURCE,
                             CodedConcept, coded)
from dicom_io.compat import TolerantImageLibraryEntryDescriptors
from dicom_io.results import AnalysisResult, Finding, PreviousResult

CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def procedure_for(result: AnalysisResult, sources: Sequence[Dataset]) -> CodedConcept:
    """The imaging procedure reported (not the algorithm)."""
    if result.procedure is not None:
        return result.procedure
    modality = str(sources[0].get("Modality", "")) if sources else ""
    return PROCEDURE_BY_MODALITY.get(modality, IMAGING)


def _frames_by_instance(finding: Finding, known: dict[str, Dataset]) -> dict[str, list[int] | None]:
    """Referenced frames per source instance (None: the whole instance)."""
    frames: dict[str, list[int] | None] = {}
    for image in finding.images:
        if image.sop_instance_uid not in known:
            continue
        numbers = frames.setdefault(image.sop_instance_uid, [])
        if image.frame_number is None or numbers is None:
            frames[image.sop_instance_uid] = None
        elif image.frame_number not in numbers:
            numbers.append(image.frame_number)
    return frames


def measurement_group(result: AnalysisResult, index: int, finding: Finding,
                      sources_by_uid: dict[str, Dataset]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one finding: its score (NUM), its verdict (CODE), its source images."""
    algo_id = hd.sr.AlgorithmIdentification(name=result.algorithm.name,
                                            version=result.algorithm.version)
    refs = [
        hd.sr.SourceImageForMeasurementGroup(
            sources_by_uid[uid].SOPClassUID, uid, referenced_frame_numbers=numbers or None)
        for uid, numbers in _frames_by_instance(finding, sources_by_uid).items()
    ]
    sites = None
    if finding.finding_site is not None:
        sites = [hd.sr.FindingSite(anatomic_location=coded(finding.finding_site))]
    measurement = hd.sr.Measurement(name=coded(finding.num_name), value=float(finding.score),
                                    unit=codes.UCUM.NoUnits, algorithm_id=algo_id)
    evaluation = hd.sr.QualitativeEvaluation(
        name=coded(finding.label),
        value=coded(finding.present_value if finding.present else finding.absent_value))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.for_result(result, "tracking", index),
            identifier=finding.label.meaning[:64]),
        finding_type=coded(finding.label),
        algorithm_id=algo_id,
        finding_sites=sites,
        measurements=[measurement],
        qualitative_evaluations=[evaluation],
        source_images=refs or None,
    )


def disclaimer(result: AnalysisResult, text: str) -> hd.sr.ContainerContentItem:
    """Root-level TID 1500 "Qualitative Evaluations" with the disclaimer and thresholds."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=CONTAINS)
    thresholds = "; ".join(
        f"{f.label.meaning}: {f.kind} {f.score:.3g} (threshold {f.threshold:.3g}, "
        f"{'present' if f.present else 'absent'})"
        for f in result.findings)
    value = f"{text}. {result.algorithm.name} {result.algorithm.version}: {thresholds}"
    if result.skipped:
        value += f". {len(result.skipped)} image(s) not analysed"
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=value[:10240],
                              relationship_type=CONTAINS)])
    return container


def image_library(headers: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library, one group per frame of reference.

    Like ``hd.sr.ImageLibrary`` but tolerant of sources lacking geometry (e.g. a CR
    without PatientOrientation): those rows are left out, the image stays.
    """
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=CONTAINS)
    groups: dict[str, list[hd.sr.ImageContentItem]] = {}
    for ds in headers:
        item = hd.sr.ImageContentItem(name=SOURCE, referenced_sop_class_uid=ds.SOPClassUID,
                                      referenced_sop_instance_uid=ds.SOPInstanceUID,
                                      relationship_type=CONTAINS)
        item.ContentSequence = hd.sr.ContentSequence(TolerantImageLibraryEntryDescriptors(ds))
        groups.setdefault(str(ds.get("FrameOfReferenceUID", "")), []).append(item)
    items = []
    for frame_of_reference, images in groups.items():
        group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup,
                                           relationship_type=CONTAINS)
        content: list[hd.sr.ContentItem] = []
        if frame_of_reference:
            content.append(hd.sr.UIDRefContentItem(
                name=codes.DCM.FrameOfReferenceUID, value=frame_of_reference,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT))
        group.ContentSequence = hd.sr.ContentSequence(content + images)
        items.append(group)
    library.ContentSequence = hd.sr.ContentSequence(items)
    return library


def predecessor(previous: PreviousResult) -> Dataset:
    """A reference to the result object this one supersedes (Predecessor Documents)."""
    ds = Dataset()
    ds.StudyInstanceUID = previous.study_instance_uid
    ds.SeriesInstanceUID = previous.series_instance_uid
    ds.SOPInstanceUID = previous.sop_instance_uid
    ds.SOPClassUID = previous.sop_class_uid
    return ds
