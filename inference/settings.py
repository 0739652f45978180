"""Inference settings: one object, plain values (the daemon maps its own config onto it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["auto", "tensorrt", "onnxruntime", "torch"]


def _default_engine_cache() -> Path:
    base = os.environ.get("PACSAI_ENGINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pacsai", "engines"
    )
    return Path(base)


class InferenceSettings(BaseModel):
    """Tunables for engines and the model cache."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "fp16"] = "fp32"
    intra_op_threads: int = Field(default=0, ge=0, description="0: all physical cores")
    inter_op_threads: int = Field(default=1, ge=0)
    max_batch: int = Field(default=16, ge=1, description="largest engine batch; larger inputs are split")
    opt_batch: int = Field(default=8, ge=1)
    engine_cache_dir: Path = Field(default_factory=_default_engine_cache)
    trt_workspace_mb: int = Field(default=1024, ge=64)
