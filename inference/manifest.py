"""Model manifest: the contract between pacsai and a model folder (shipped or site-supplied).

A model folder holds the weights (ONNX and/or TorchScript, optionally a PyTorch state dict
for our own architectures) and ``manifest.toml`` or ``manifest.json``. :func:`load_manifest`
validates it and raises :class:`ManifestError` naming the file and every bad field.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MANIFEST_NAMES = ("manifest.toml", "manifest.json")
SCHEMA_VERSION = 1
CODING_SCHEMES = ("SCT", "RADLEX", "DCM", "99PACSAI", "LN")  # DICOM Coding Scheme Designators
TASK_OUTPUTS = {
    "classification": ("probabilities", "cam"),
    "anomaly": ("reconstruction", "anomaly_map", "score"),
}


class ManifestError(ValueError):
    """A model manifest is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    """A coded concept for the SR (e.g. SNOMED CT ``SCT``, RadLex ``RADLEX``)."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(description="DICOM coding scheme designator, e.g. SCT, RADLEX, DCM")
    meaning: str = Field(min_length=1, max_length=64)

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v not in CODING_SCHEMES:
            raise ValueError(f"unknown coding scheme designator {v!r}; use one of {CODING_SCHEMES}")
        return v


class Label(_Strict):
    """One output of the model: a finding with its code and decision threshold.

    ``threshold`` is a probability in (0, 1) for classification and an anomaly-score
    cut-off (> 0) for anomaly models.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", max_length=64)
    display: str = Field(min_length=1)
    code: Code
    threshold: float


class InputSpec(_Strict):
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = 1
    name: str = "x"


class Preprocessing(_Strict):
    """How DICOM pixels become model input; passed as plain keywords to dicom_io.pixels."""

    window: Literal["dicom", "minmax", "percentile", "fixed"] = "dicom"
    window_center: float | None = None
    window_width: float | None = Field(default=None, gt=0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    invert_monochrome1: bool = True
    resample: Literal["area", "bilinear", "bicubic"] = "area"
    keep_aspect: bool = False
    normalise: Literal["unit", "zscore"] = "unit"
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _fixed_window_complete(self) -> Preprocessing:
        if self.window == "fixed" and (self.window_center is None or self.window_width is None):
            raise ValueError("window = 'fixed' needs window_center and window_width")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
        return self


class Architecture(_Strict):
    """Our own network family + constructor parameters (for the PyTorch backend/fine-tuning)."""

    family: str
    params: dict[str, Any] = Field(default_factory=dict)


class Files(_Strict):
    """Weight files relative to the model folder; at least ``onnx`` or ``torchscript``."""

    onnx: str | None = None
    onnx_fp16: str | None = None
    torchscript: str | None = None
    weights: str | None = None
    architecture: Architecture | None = None

    @model_validator(mode="after")
    def _something_to_run(self) -> Files:
        if not (self.onnx or self.torchscript or (self.weights and self.architecture)):
            raise ValueError("give files.onnx or files.torchscript (or files.weights + files.architecture)")
        if self.weights and not self.architecture:
            raise ValueError("files.weights needs files.architecture")
        return self


class Heatmap(_Strict):
    """Scaling of raw anomaly maps to [0, 1]: value ``scale`` maps to 1 (None: per-image max)."""

    scale: float | None = Field(default=None, gt=0)


class TrainingInfo(_Strict):
    data: str = Field(min_length=1, description="what the model was trained on")
    n_train: int | None = Field(default=None, ge=0)
    n_validation: int | None = Field(default=None, ge=0)
    seed: int | None = None
    epochs: int | None = None
    created: str | None = None


class LabelMetrics(_Strict):
    auc: float | None = Field(default=None, ge=0, le=1)
    sensitivity: float | None = Field(default=None, ge=0, le=1)
    specificity: float | None = Field(default=None, ge=0, le=1)
    threshold: float | None = None
    n_positive: int | None = None
    n_negative: int | None = None
    dataset: str | None = None


class Manifest(_Strict):
    """Validated model manifest (schema version 1)."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.\-]*$", max_length=64)
    version: str = Field(min_length=1)
    task: Literal["classification", "anomaly"]
    description: str = ""
    intended_use: str = Field(min_length=1)
    modalities: list[str] = Field(min_length=1)
    manufacturer: str = "pacsai"
    input: InputSpec
    preprocessing: Preprocessing = Preprocessing()
    labels: list[Label] = Field(min_length=1)
    files: Files
    outputs: dict[str, str] = Field(default_factory=dict, description="role -> graph output name")
    heatmap: Heatmap = Heatmap()
    training: TrainingInfo
    metrics: dict[str, LabelMetrics] = Field(default_factory=dict)

    @field_validator("modalities")
    @classmethod
    def _modality_codes(cls, v: list[str]) -> list[str]:
        for m in v:
            if not re.fullmatch(r"[A-Z0-9]{2,16}", m):
                raise ValueError(f"{m!r} is not a DICOM modality code (e.g. CR, DX, CT)")
        return v

    @model_validator(mode="after")
    def _task_consistency(self) -> Manifest:
        names = [lab.name for lab in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"labels: duplicate label names in {names}")
        if self.task == "classification":
            for lab in self.labels:
                if not 0.0 < lab.threshold < 1.0:
                    raise ValueError(
                        f"labels[{lab.name}].threshold: classification thresholds are probabilities in (0, 1), got {lab.threshold}"
                    )
        else:
            if len(self.labels) != 1:
                raise ValueError("labels: an anomaly model has exactly one label (the abnormal finding)")
            if self.labels[0].threshold <= 0:
                raise ValueError("labels[0].threshold: anomaly score threshold must be > 0")
        roles = TASK_OUTPUTS[self.task]
        unknown = set(self.outputs) - set(roles)
        if unknown:
            raise ValueError(f"outputs: unknown roles {sorted(unknown)} for task {self.task}; roles are {roles}")
        unknown_metrics = set(self.metrics) - set(names)
        if unknown_metrics:
            raise ValueError(f"metrics: keys {sorted(unknown_metrics)} are not label names {names}")
        return self

    def output_name(self, role: str) -> str:
        """Graph output name for a role (defaults to the role name)."""
        return self.outputs.get(role, role)

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid model manifest {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  - {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_manifest(data: dict[str, Any], source: str = "<manifest>") -> Manifest:
    """Validate a manifest mapping; raise :class:`ManifestError` listing every bad field."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ManifestError(_format_errors(source, e)) from None


def find_manifest(model_dir: Path) -> Path:
    for name in MANIFEST_NAMES:
        p = Path(model_dir) / name
        if p.is_file():
            return p
    raise ManifestError(f"no manifest.toml or manifest.json in model folder {model_dir}")


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and validate the manifest of ``model_dir`` and check that its files exist."""
    model_dir = Path(model_dir)
    path = find_manifest(model_dir)
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot parse {path}: {e}") from None
    manifest = parse_manifest(data, str(path))
    for field in ("onnx", "onnx_fp16", "torchscript", "weights"):
        rel = getattr(manifest.files, field)
        if rel is not None:
            target = (model_dir / rel).resolve()
            if model_dir.resolve() not in target.parents:
                raise ManifestError(f"invalid model manifest {path}:\n  - files.{field}: {rel!r} points outside the model folder")
            if not target.is_file():
                raise ManifestError(f"invalid model manifest {path}:\n  - files.{field}: file {rel!r} not found in {model_dir}")
    return manifest


def write_manifest(manifest: Manifest, model_dir: str | Path) -> Path:
    """Write ``manifest.json`` (validated round trip) into ``model_dir``."""
    path = Path(model_dir) / "manifest.json"
    path.write_text(json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
    return path
