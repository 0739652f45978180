"""Inference settings: the one class for engine tunables.

The daemon's ``[inference]`` configuration section *is* this class (``daemon.config.InferenceConfig``
subclasses it and only adds the keys the daemon alone uses), so a key added here is a TOML key,
an environment override (``PACSAI_INFERENCE__<KEY>``) and a field the engines read, with no
mapping by hand in between.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Backend = Literal["auto", "tensorrt", "onnxruntime", "torch"]


def _default_engine_cache() -> Path:
    """Library default (no daemon): ``$PACSAI_ENGINE_CACHE`` or the XDG cache folder.

    The daemon replaces it with ``<storage.data_dir>/engines`` unless ``engine_cache_dir`` is set.
    """
    base = os.environ.get("PACSAI_ENGINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pacsai", "engines"
    )
    return Path(base)


class InferenceSettings(BaseModel):
    """Tunables for engines and the model cache."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field(
        "auto", description="auto: tensorrt (CUDA GPU + tensorrt 10) > onnxruntime > torch")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="cpu: never TensorRT or CUDA, even where a GPU is present")
    precision: Literal["fp32", "fp16"] = "fp32"
    intra_op_threads: int = Field(0, ge=0, description="0: all cores this process may use")
    inter_op_threads: int = Field(1, ge=0)
    max_batch: int = Field(16, ge=1, description="Largest engine batch; larger inputs are split.")
    opt_batch: int = Field(
        8, ge=1, description="TensorRT: batch the plan is tuned for (capped at max_batch).")
    engine_cache_dir: Path = Field(
        default_factory=_default_engine_cache,
        description="TensorRT plans and timing caches; the daemon's default is <data_dir>/engines.")
    trt_workspace_mb: int = Field(
        1024, ge=64, description="TensorRT builder workspace (MiB of GPU memory while building).")

    @model_validator(mode="after")
    def _consistent(self) -> InferenceSettings:
        if self.backend == "tensorrt" and self.device == "cpu":
            raise ValueError("backend = \"tensorrt\" needs a CUDA GPU: it cannot run with device = \"cpu\"")
        return self
