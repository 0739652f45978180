"""Plain descriptions of what the result writers put into DICOM.

These dataclasses are the contract between inference/worker code and the
``dicom_io`` writers; they import nothing from the rest of pacsai (codes come from
:mod:`dicom_io.coding`, UIDs from :mod:`dicom_io.uids`).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dicom_io import uids
from dicom_io.coding import ABSENT, PRESENT, PROBABILITY, SCORE, CodedConcept

__all__ = ["AlgorithmInfo", "AnalysisResult", "CodedConcept", "Finding", "ImageEvidence",
           "PreviousResult", "SkippedImage", "DEFAULT_DISCLAIMER"]

FindingKind = Literal["probability", "anomaly_score"]

DEFAULT_DISCLAIMER = "AI result, not for diagnostic use"


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that produced a result (IHE AIR Contributing Equipment).

    ``model_fingerprint`` (e.g. the hash of the weights) enters the device UID,
    so a retrained model under the same version string still gets a new one.
    """

    name: str
    version: str
    manufacturer: str = "pacsai"
    model_name: str | None = None
    software_version: str | None = None
    model_fingerprint: str = ""
    institution_name: str | None = None

    @property
    def manufacturer_model_name(self) -> str:
        return self.model_name or self.name

    @property
    def software_versions(self) -> list[str]:
        versions = [self.version]
        if self.software_version:
            versions.append(self.software_version)
        return versions

    @property
    def device_uid(self) -> str:
        return uids.device_uid(self)


@dataclass
class ImageEvidence:
    """One analysed source image (or one frame of a multi-frame image).

    ``heatmap`` is a 2-D float array in [0, 1] at any resolution (it is resized
    to the image); ``score`` is the per-image score used to pick top-k slices.
    """

    sop_instance_uid: str
    frame_number: int | None = None
    score: float | None = None
    heatmap: np.ndarray | None = None


@dataclass
class Finding:
    """One labelled output of a model for a study."""

    label: CodedConcept
    score: float
    threshold: float
    present: bool
    kind: FindingKind = "probability"
    images: list[ImageEvidence] = field(default_factory=list)
    present_value: CodedConcept = PRESENT
    absent_value: CodedConcept = ABSENT
    measurement_name: CodedConcept | None = None
    finding_site: CodedConcept | None = None

    @property
    def num_name(self) -> CodedConcept:
        if self.measurement_name is not None:
            return self.measurement_name
        return PROBABILITY if self.kind == "probability" else SCORE


@dataclass(frozen=True)
class SkippedImage:
    """A source image the pipeline did not analyse, and why."""

    sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class PreviousResult:
    """A result object of an earlier study version that a new one supersedes."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass
class AnalysisResult:
    """Everything a pipeline concluded about one version of one study."""

    study_instance_uid: str
    study_version: int
    pipeline: str
    algorithm: AlgorithmInfo
    findings: list[Finding]
    analysed_sop_instance_uids: Sequence[str] = ()
    skipped: Sequence[SkippedImage] = ()
    procedure: CodedConcept | None = None
    analysed_at: datetime.datetime | None = None
    supersedes: Sequence[PreviousResult] = ()
    #: Which life of the study this is (the receiver's record of it, e.g. when it was first
    #: received): study versions count again from 1 once retention has forgotten a study,
    #: so result UIDs key on this too and are never reused for different content.
    study_incarnation: str = ""
