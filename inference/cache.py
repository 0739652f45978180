"""Process-wide model cache: each model folder is loaded lazily, once, and kept warm."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from inference.manifest import ManifestError, find_manifest
from inference.model import Model, load_model
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def default_models_dir() -> Path:
    """``$PACSAI_MODELS_DIR`` or the repository's shipped ``models/`` folder."""
    env = os.environ.get("PACSAI_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


class ModelCache:
    """Thread-safe lazy cache of :class:`Model` objects.

    Models are looked up by folder name under ``roots`` (site folders first, then the shipped
    defaults) or by an explicit folder path. A model is loaded by the first caller; concurrent
    callers for the same model wait for that load instead of loading twice.
    """

    def __init__(self, roots: list[str | Path] | None = None, settings: InferenceSettings | None = None) -> None:
        self.roots = [Path(r) for r in (roots if roots is not None else [default_models_dir()])]
        self.settings = settings or InferenceSettings()
        self._models: dict[Path, Model] = {}
        self._locks: dict[Path, threading.Lock] = {}
        self._lock = threading.Lock()

    def resolve(self, name_or_dir: str | Path) -> Path:
        p = Path(name_or_dir)
        if p.is_dir():
            return p.resolve()
        for root in self.roots:
            if (root / str(name_or_dir)).is_dir():
                return (root / str(name_or_dir)).resolve()
        raise ManifestError(f"model {name_or_dir!r} not found under {[str(r) for r in self.roots]}")

    def available(self) -> list[str]:
        """Names of model folders (with a manifest) under the roots; first root wins."""
        seen: dict[str, None] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for d in sorted(root.iterdir()):
                try:
                    find_manifest(d)
                except ManifestError:
                    continue
                seen.setdefault(d.name, None)
        return list(seen)

    def get(self, name_or_dir: str | Path) -> Model:
        """The loaded model (loading it on first use)."""
        key = self.resolve(name_or_dir)
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            model = self._models.get(key)
            if model is None:
                model = load_model(key, settings=self.settings)
                self._models[key] = model
                log.info("model loaded: %r from %s", model, key)
        return model

    def clear(self) -> None:
        with self._lock:
            for m in self._models.values():
                m.close()
            self._models.clear()
