"""pacsai inference: numpy arrays in, results out (no DICOM, no queue, no database here).

Public API::

    from inference import load_model, ModelCache, InferenceSettings
    model = load_model("models/chest-cxr-classifier")           # backend="auto"
    results = model.predict(batch)                               # batch: float32 [B, C, H, W]
    results[0].scores, results[0].findings, results[0].heatmap   # heatmap: H x W in [0, 1]

The names are imported on first use, so ``import inference.settings`` (the daemon's
configuration does) does not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ModelCache": "inference.cache",
    "default_models_dir": "inference.cache",
    "Engine": "inference.engines.base",
    "EngineError": "inference.engines.base",
    "Manifest": "inference.manifest",
    "ManifestError": "inference.manifest",
    "load_manifest": "inference.manifest",
    "parse_manifest": "inference.manifest",
    "Finding": "inference.model",
    "ImageResult": "inference.model",
    "Model": "inference.model",
    "load_model": "inference.model",
    "InferenceSettings": "inference.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from inference.cache import ModelCache, default_models_dir
    from inference.engines.base import Engine, EngineError
    from inference.manifest import Manifest, ManifestError, load_manifest, parse_manifest
    from inference.model import Finding, ImageResult, Model, load_model
    from inference.settings import InferenceSettings
