"""pacsai inference: numpy arrays in, results out (no DICOM, no queue, no database here).

Public API::

    from inference import load_model, ModelCache, InferenceSettings
    model = load_model("models/chest-cxr-classifier")           # backend="auto"
    results = model.predict(batch)                               # batch: float32 [B, C, H, W]
    results[0].scores, results[0].findings, results[0].heatmap   # heatmap: H x W in [0, 1]
"""

from inference.cache import ModelCache, default_models_dir
from inference.engines.base import Engine, EngineError
from inference.manifest import Manifest, ManifestError, load_manifest, parse_manifest
from inference.model import Finding, ImageResult, Model, load_model
from inference.settings import InferenceSettings

__all__ = [
    "Engine",
    "EngineError",
    "Finding",
    "ImageResult",
    "InferenceSettings",
    "Manifest",
    "ManifestError",
    "Model",
    "ModelCache",
    "default_models_dir",
    "load_manifest",
    "load_model",
    "parse_manifest",
]
