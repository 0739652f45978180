"""ONNX Runtime engine: CPU by default (all graph optimisations), CUDA provider when asked/present."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from inference.engines.base import Engine, EngineError
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def physical_cores() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def session_options(settings: InferenceSettings):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = settings.intra_op_threads or physical_cores()
    so.inter_op_num_threads = settings.inter_op_threads or 1
    so.log_severity_level = 3
    return so


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, onnx_path: str | Path, settings: InferenceSettings, device: str = "cpu") -> None:
        import onnxruntime as ort

        providers: list = ["CPUExecutionProvider"]
        if device == "cuda":
            if not cuda_provider_available():
                raise EngineError("onnxruntime: CUDAExecutionProvider not available in this build")
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), session_options(settings), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineError(f"onnxruntime cannot load {onnx_path}: {e}") from e
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EngineError(f"{onnx_path}: expected one graph input, found {[i.name for i in inputs]}")
        super().__init__(inputs[0].name, [o.name for o in self.session.get_outputs()])
        self.device = device
        log.debug("onnxruntime session for %s with providers %s", onnx_path, self.session.get_providers())

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return {name: np.asarray(o, dtype=np.float32) for name, o in zip(self.output_names, outs)}
