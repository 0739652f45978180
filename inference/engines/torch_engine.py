"""PyTorch engine: TorchScript file or our architecture + state dict; CPU or CUDA, fp32/fp16."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from inference.engines.base import Engine, EngineError

log = logging.getLogger(__name__)


class TorchEngine(Engine):
    """Runs an ``nn.Module`` (or ScriptModule) whose forward returns the graph outputs in order."""

    backend = "torch"

    def __init__(
        self,
        module: nn.Module,
        output_names: Sequence[str],
        device: str = "cpu",
        half: bool = False,
        input_name: str = "x",
    ) -> None:
        super().__init__(input_name, output_names)
        if half and device != "cuda":
            raise EngineError("torch: half precision needs device='cuda'")
        self.device = device
        self.half = half
        self.module = module.eval().to(device)
        if half:
            self.module = self.module.half()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.half:
            x = x.half()
        with torch.inference_mode():
            outs = self.module(x)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        if len(outs) != len(self.output_names):
            raise EngineError(f"torch: model returned {len(outs)} outputs, expected {self.output_names}")
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outs)}

    def describe(self) -> str:
        return f"torch on {self.device}{' fp16' if self.half else ''}"
