"""Deterministic UIDs for result objects.

A result UID is ``2.25.<decimal of a name-based UUID>`` (PS3.5 B.2) computed
from (study instance UID, the study's incarnation, study version, pipeline,
model version, role, index), so a retried or re-run task re-creates identical
objects, and a new study version, model version or a study received again after
retention forgot it (its versions count from 1 again) yields new ones.
"""

from __future__ import annotations

import uuid
from typing import Protocol


class AlgorithmLike(Protocol):
    """What a device UID is made of (:class:`dicom_io.results.AlgorithmInfo` has it)."""

    name: str
    version: str
    manufacturer: str
    model_fingerprint: str

    @property
    def manufacturer_model_name(self) -> str: ...


class ResultLike(Protocol):
    """What a result UID is made of (:class:`dicom_io.results.AnalysisResult` has it)."""

    study_instance_uid: str
    study_version: int
    pipeline: str
    algorithm: AlgorithmLike
    study_incarnation: str

# Fixed namespace for every pacsai UID; never change it (UIDs would change).
NAMESPACE = uuid.UUID("8a1f3c2e-5d0b-5b7e-9c41-6f2d7e0a9b13")


def uid_from_key(*parts: object) -> str:
    """``2.25`` UID derived from ``parts`` (stable across runs and hosts)."""
    key = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(NAMESPACE, key).int}"


def result_uid(
    study_instance_uid: str,
    study_version: int,
    pipeline: str,
    model_version: str,
    role: str,
    index: int | str = 0,
    incarnation: str = "",
) -> str:
    """UID of a result object; ``role`` e.g. ``sr-series``, ``sc``, ``pm``."""
    version: object = f"{incarnation}/{study_version}" if incarnation else study_version
    return uid_from_key(
        "result", study_instance_uid, version, pipeline, model_version, role, index
    )


def for_result(result: ResultLike, role: str, index: int | str = 0) -> str:
    """:func:`result_uid` for an :class:`~dicom_io.results.AnalysisResult`."""
    return result_uid(
        result.study_instance_uid,
        result.study_version,
        result.pipeline,
        model_key(result.algorithm),
        role,
        index,
        result.study_incarnation,
    )


def model_key(algorithm: AlgorithmLike) -> str:
    """Model identity: version plus weights fingerprint."""
    return f"{algorithm.name}/{algorithm.version}/{algorithm.model_fingerprint}"


def device_uid(algorithm: AlgorithmLike) -> str:
    """Device UID of the algorithm; changes when the model changes."""
    return uid_from_key(
        "device",
        algorithm.manufacturer,
        algorithm.manufacturer_model_name,
        model_key(algorithm),
    )
