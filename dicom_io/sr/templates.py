"""TID 1500 Imaging Measurement Report content: the rows highdicom does not build as we need.

* one measurement group per finding (:func:`measurement_group`): TID 1410 Planar ROI
  Measurements with the heatmap's region when the finding's heatmap locates it, else
  TID 1501 Measurement and Qualitative Evaluation Group whose score is inferred from the
  whole source image (see below);
* TID 1600 Image Library, tolerant of sources without geometry (:func:`image_library`);
* the root "Qualitative Evaluations" container with the disclaimer (:func:`disclaimer`);
* the procedure reported (:func:`procedure_for`) and predecessor references.

Every group carries a SCOORD whose one child, SELECTED FROM IMAGE, references the source
image (and frame). OHIF's DICOM SR extension (3.13.2, ``getSopClassHandlerModule``) makes
one measurement per Tracking Unique Identifier and, for each, reads
``coords[0].ReferencedSOPSequence``: a group without any SCOORD has no coords and stops the
whole SR from loading (``TypeError: Cannot read properties of undefined (reading
'ReferencedSOPSequence')``, the error of issue 13). For a TID 1410 group the coords are the
group's SCOORD (the image region); for a TID 1501 group the SCOORD a NUM is INFERRED FROM
(TID 300 / TID 320). It reads ``SCOORD.ContentSequence.ReferencedSOPSequence``, which dcmjs
resolves only for a one-item sequence, hence the single child. A finding with no region
keeps TID 1501 and its NUM is inferred from the whole image it was scored on (a closed
outline of the image border): true for an image-level score, and drawn by OHIF as a frame
around that image.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_io import uids
from dicom_io.coding import (IMAGING, PROCEDURE_BY_MODALITY, QUALITATIVE_EVALUATIONS, SOURCE,
                             SOURCE_OF_MEASUREMENT, CodedConcept, coded)
from dicom_io.compat import TolerantImageLibraryEntryDescriptors
from dicom_io.results import AnalysisResult, Finding, PreviousResult
from dicom_io.sr.content import Region, finding_region, whole_image_regions

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


def _source_image(region: Region) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        region.sop_class_uid, region.sop_instance_uid,
        referenced_frame_numbers=list(region.frame_numbers) if region.frame_numbers else None)


MeasurementGroup = (hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                    | hd.sr.MeasurementsAndQualitativeEvaluations)


def measurement_group(result: AnalysisResult, index: int, finding: Finding,
                      sources_by_uid: dict[str, Dataset]) -> MeasurementGroup:
    """The group of one finding: its score (NUM), its verdict (CODE) and where it is.

    TID 1410 with the heatmap's outline as image region when the finding's heatmap locates
    it (:func:`dicom_io.sr.content.finding_region`), else TID 1501 with its source images
    and the NUM inferred from the whole image (:func:`dicom_io.sr.content.whole_image_regions`).
    """
    algo_id = hd.sr.AlgorithmIdentification(name=result.algorithm.name,
                                            version=result.algorithm.version)
    sites = None
    if finding.finding_site is not None:
        sites = [hd.sr.FindingSite(anatomic_location=coded(finding.finding_site))]
    evaluation = hd.sr.QualitativeEvaluation(
        name=coded(finding.label),
        value=coded(finding.present_value if finding.present else finding.absent_value))
    common = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.for_result(result, "tracking", index),
            identifier=finding.label.meaning[:64]),
        finding_type=coded(finding.label),
        algorithm_id=algo_id,
        finding_sites=sites,
        qualitative_evaluations=[evaluation],
    )

    def score(inferred_from: list[Region] | None = None) -> hd.sr.Measurement:
        coordinates = [
            hd.sr.CoordinatesForMeasurement(hd.sr.GraphicTypeValues.POLYLINE, r.outline,
                                            _source_image(r), purpose=SOURCE_OF_MEASUREMENT)
            for r in inferred_from or ()
        ]
        return hd.sr.Measurement(name=coded(finding.num_name), value=float(finding.score),
                                 unit=codes.UCUM.NoUnits, algorithm_id=algo_id,
                                 referenced_coordinates=coordinates or None)

    region = finding_region(finding, sources_by_uid)
    if region is not None:
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POLYLINE,
                                                region.outline, _source_image(region)),
            measurements=[score()],
            **common,
        )
    refs = [
        hd.sr.SourceImageForMeasurementGroup(
            sources_by_uid[uid].SOPClassUID, uid, referenced_frame_numbers=numbers or None)
        for uid, numbers in _frames_by_instance(finding, sources_by_uid).items()
    ]
    whole = whole_image_regions(finding, sources_by_uid, sources_by_uid.values())
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        measurements=[score(whole)],
        source_images=refs or None,
        **common,
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
