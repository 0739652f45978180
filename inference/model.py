"""A loaded model: manifest + engine, turning batches into per-image results."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.engines.base import Engine
from inference.manifest import Code, Manifest, load_manifest
from inference.select import select_engine
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """A label present at its decision threshold (or any label, in ``ImageResult.scores``)."""

    label: str
    display: str
    code: Code
    value: float  # probability (classification) or anomaly score
    threshold: float
    kind: str  # "probability" | "anomaly_score"


@dataclass
class ImageResult:
    """Result for one image of a batch.

    ``scores``: label -> probability (classification) or anomaly score (anomaly).
    ``findings``: labels at or above their threshold. ``heatmap``: H x W float32 in [0,1]
    (the CAM of the top finding, else of the most probable label; or the scaled anomaly map).
    ``heatmaps``: per-label maps (classification) / {"anomaly_map": map}.
    """

    task: str
    scores: dict[str, float]
    findings: list[Finding]
    heatmap: np.ndarray
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def positive(self) -> bool:
        return bool(self.findings)


class Model:
    """Inference on one model folder. ``predict`` is thread-safe (engines are)."""

    def __init__(self, model_dir: Path, manifest: Manifest, engine: Engine) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.engine = engine

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) the model expects."""
        i = self.manifest.input
        return (i.channels, i.height, i.width)

    def _check(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name}: expected a batch [B, {', '.join(map(str, self.input_shape))}], got {batch.shape}")
        if not np.issubdtype(batch.dtype, np.floating):
            raise ValueError(f"{self.name}: expected float input, got {batch.dtype}")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def run_raw(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Engine outputs by role (``probabilities``/``cam`` or ``reconstruction``/``anomaly_map``/``score``),
        splitting batches larger than the engine's maximum."""
        batch = self._check(batch)
        limit = self.engine.max_batch or len(batch) or 1
        parts = [self.engine.run(batch[i : i + limit]) for i in range(0, len(batch), limit)]
        from inference.manifest import TASK_OUTPUTS

        out = {}
        for role in TASK_OUTPUTS[self.task]:
            name = self.manifest.output_name(role)
            out[role] = np.concatenate([p[name] for p in parts]) if parts else np.empty((0,))
        return out

    def predict(self, batch: np.ndarray) -> list[ImageResult]:
        """Per-image results for a float32 batch ``[B, C, H, W]`` (see ``dicom_io.pixels``)."""
        raw = self.run_raw(batch)
        if self.task == "classification":
            return [self._classification(raw["probabilities"][i], raw["cam"][i]) for i in range(len(batch))]
        return [self._anomaly(float(raw["score"][i]), raw["anomaly_map"][i, 0]) for i in range(len(batch))]

    def _classification(self, probs: np.ndarray, cams: np.ndarray) -> ImageResult:
        scores, findings, maps = {}, [], {}
        for j, lab in enumerate(self.manifest.labels):
            p = float(probs[j])
            scores[lab.name] = p
            maps[lab.name] = np.clip(cams[j], 0, 1).astype(np.float32)
            if p >= lab.threshold:
                findings.append(Finding(lab.name, lab.display, lab.code, p, lab.threshold, "probability"))
        if findings:
            top = max(findings, key=lambda f: f.value).label
        else:
            top = max(scores, key=scores.get)
        return ImageResult("classification", scores, findings, maps[top], maps)

    def _anomaly(self, score: float, amap: np.ndarray) -> ImageResult:
        lab = self.manifest.labels[0]
        scale = self.manifest.heatmap.scale or float(amap.max()) or 1.0
        heat = np.clip(amap / scale, 0, 1).astype(np.float32)
        findings = []
        if score >= lab.threshold:
            findings.append(Finding(lab.name, lab.display, lab.code, score, lab.threshold, "anomaly_score"))
        return ImageResult("anomaly", {lab.name: score}, findings, heat, {"anomaly_map": amap.astype(np.float32)})

    def close(self) -> None:
        self.engine.close()

    def __repr__(self) -> str:
        return f"Model({self.name} {self.version}, {self.task}, {self.engine.describe()})"


def load_model(model_dir: str | Path, backend: str | None = None, settings: InferenceSettings | None = None) -> Model:
    """Load a model folder (manifest + weights) on the chosen backend.

    ``backend`` overrides ``settings.backend`` ("auto", "tensorrt", "onnxruntime", "torch").
    Raises ``ManifestError`` for a bad manifest, ``EngineError`` when no backend can run it.
    """
    settings = settings or InferenceSettings()
    if backend is not None:
        settings = settings.model_copy(update={"backend": backend})
    manifest = load_manifest(model_dir)
    engine = select_engine(model_dir, manifest, settings)
    return Model(Path(model_dir), manifest, engine)
