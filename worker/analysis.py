"""Analysis of one study version by one pipeline: select, decode, infer, aggregate.

Returns a :class:`dicom_io.results.AnalysisResult` (what the writers put into DICOM)
plus timings; no file is written and no row changed here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from dicom_io.pixels import load_model_input
from dicom_io.results import (
    AlgorithmInfo,
    AnalysisResult,
    CodedConcept,
    Finding,
    ImageEvidence,
    SkippedImage,
)
from inference import ImageResult, Model
from worker.selection import Candidate, select_images

log = logging.getLogger(__name__)


class NothingToAnalyse(Exception):
    """No image of the study suits the pipeline (the reasons are in ``skipped``)."""

    def __init__(self, skipped: list[SkippedImage]) -> None:
        reasons = sorted({s.reason for s in skipped}) or ["the study has no instances"]
        super().__init__("no image to analyse: " + "; ".join(reasons))
        self.skipped = skipped


@dataclass
class Timings:
    decode_s: float = 0.0
    inference_s: float = 0.0
    images: int = 0


@dataclass
class Analysis:
    result: AnalysisResult
    candidates: list[Candidate]
    timings: Timings = field(default_factory=Timings)


@lru_cache(maxsize=32)
def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over the model folder's files: a retrained model gets a new device UID."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        if path.suffix in {".png"}:
            continue
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def algorithm_info(model: Model) -> AlgorithmInfo:
    from importlib.metadata import version

    return AlgorithmInfo(
        name=model.name,
        version=model.version,
        manufacturer=model.manifest.manufacturer,
        model_name=model.name,
        software_version=f"pacsai {version('pacsai')}",
        model_fingerprint=model_fingerprint(model.model_dir),
    )


def analyse(
    model: Model,
    paths: list[Path],
    *,
    pipeline: str,
    modalities: Sequence[str] | None = None,
    top_k: int = 3,
    study_uid: str,
    version: int,
    batch_size: int = 16,
    predict: Callable[[np.ndarray], list[ImageResult]] | None = None,
) -> Analysis:
    """Run ``model`` over the suitable images among ``paths``.

    ``predict`` replaces ``model.predict`` (e.g. a dynamic batcher shared by the
    worker's threads). ``pipeline`` names the result; ``modalities`` (default: the model
    manifest's) says which images are for it; ``top_k`` heatmaps are kept per finding.
    """
    predict = predict or model.predict
    modalities = list(modalities) if modalities is not None else model.manifest.modalities
    selection = select_images(paths, modalities)
    skipped = [SkippedImage(uid, reason) for uid, reason in selection.skipped]
    timings = Timings()
    size = (model.manifest.input.height, model.manifest.input.width)
    channels = model.manifest.input.channels
    prep = model.manifest.preprocessing.model_dump()

    keys: list[tuple[str, int | None]] = []  # (SOP Instance UID, frame number)
    arrays: list[np.ndarray] = []
    used: list[Candidate] = []
    t0 = time.perf_counter()
    for cand in selection.images:
        try:
            batch = load_model_input(cand.path, size, channels, prep)
        except Exception as exc:  # noqa: BLE001 - one bad image does not sink the study
            skipped.append(SkippedImage(cand.sop_instance_uid, f"cannot decode: {exc}"))
            continue
        used.append(cand)
        multi = len(batch) > 1
        for i, frame in enumerate(batch):
            keys.append((cand.sop_instance_uid, i + 1 if multi else None))
            arrays.append(frame)
    timings.decode_s = time.perf_counter() - t0
    if not arrays:
        raise NothingToAnalyse(skipped)

    t0 = time.perf_counter()
    results = []
    for start in range(0, len(arrays), batch_size):
        results.extend(predict(np.stack(arrays[start:start + batch_size])))
    timings.inference_s = time.perf_counter() - t0
    timings.images = len(arrays)

    findings = []
    for label in model.manifest.labels:
        scores = np.array([r.scores[label.name] for r in results], dtype=np.float64)
        maps = [r.heatmaps.get(label.name, r.heatmap) for r in results]
        order = np.argsort(-scores, kind="stable")[: top_k]
        images = [
            ImageEvidence(keys[i][0], keys[i][1], float(scores[i]), _unit(maps[i]))
            for i in order
        ]
        top = float(scores.max())
        findings.append(Finding(
            label=CodedConcept(label.code.value, label.code.scheme, label.code.meaning),
            score=top,
            threshold=float(label.threshold),
            present=top >= label.threshold,
            kind="probability" if model.task == "classification" else "anomaly_score",
            images=images,
        ))
    result = AnalysisResult(
        study_instance_uid=study_uid,
        study_version=version,
        pipeline=pipeline,
        algorithm=algorithm_info(model),
        findings=findings,
        analysed_sop_instance_uids=[c.sop_instance_uid for c in used],
        skipped=skipped,
        analysed_at=dt.datetime.now(dt.UTC),
    )
    return Analysis(result, used, timings)


def _unit(heatmap: np.ndarray) -> np.ndarray:
    """The heatmap as a 2-D float array in [0, 1]."""
    m = np.asarray(heatmap, dtype=np.float32)
    while m.ndim > 2:
        m = m[0]
    return np.clip(m, 0.0, 1.0)
