"""Backend selection: ``auto`` -> TensorRT (GPU + tensorrt 10) -> ONNX Runtime -> PyTorch.

``device = "cpu"`` rules out TensorRT and every CUDA provider whatever the machine has. With
``backend = "auto"`` any exception while building one backend's engine falls through to the
next; a forced backend turns it into an :class:`EngineError` naming the backend and the cause.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from inference.engines import onnxruntime_engine, tensorrt_engine
from inference.engines.base import Engine, EngineError
from inference.manifest import TASK_OUTPUTS, Manifest
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)
_logged: set[str] = set()
_log_lock = threading.Lock()


def log_once(msg: str, *args: object) -> None:
    """Log a backend decision once per process."""
    text = msg % args if args else msg
    with _log_lock:
        if text in _logged:
            return
        _logged.add(text)
    log.info(text)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(settings: InferenceSettings) -> str:
    if settings.device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if settings.device == "cuda" and not cuda_available():
        raise EngineError("device='cuda' requested but no CUDA GPU is visible to PyTorch")
    return settings.device


def candidates(settings: InferenceSettings, manifest: Manifest) -> list[tuple[str, str]]:
    """Ordered (backend, reason) pairs to try."""
    files = manifest.files
    has_onnx = files.onnx is not None
    has_torch = files.torchscript is not None or files.weights is not None
    if settings.backend != "auto":
        return [(settings.backend, f"forced by setting backend={settings.backend}")]
    out: list[tuple[str, str]] = []
    if settings.device == "cpu":  # never TensorRT (or any CUDA path) when the CPU is asked for
        trt_ok, trt_why = False, "device=cpu"
    else:
        trt_ok, trt_why = tensorrt_engine.available()
    if has_onnx and trt_ok:
        out.append(("tensorrt", f"auto: {trt_why}"))
    ort_ok = onnxruntime_engine.available()
    if has_onnx and ort_ok:
        out.append(("onnxruntime", "auto: " + ("tensorrt not usable: " + trt_why if not trt_ok else "fallback after tensorrt")))
    if has_torch:
        why = "no ONNX file in the model folder" if not has_onnx else "onnxruntime not installed" if not ort_ok else "fallback"
        out.append(("torch", f"auto: {why}"))
    return out


def _torch_module(model_dir: Path, manifest: Manifest, device: str):
    from inference.models import build_module, export_wrapper

    files = manifest.files
    if files.torchscript:
        try:
            return torch.jit.load(str(model_dir / files.torchscript), map_location=device)
        except Exception as e:  # torch raises RuntimeError and friends
            raise EngineError(f"torch cannot load TorchScript {files.torchscript}: {e}") from e
    assert files.weights and files.architecture
    net = build_module(files.architecture.family, files.architecture.params)
    state = torch.load(model_dir / files.weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return export_wrapper(net)


def output_names(manifest: Manifest) -> list[str]:
    return [manifest.output_name(r) for r in TASK_OUTPUTS[manifest.task]]


def build(backend: str, model_dir: Path, manifest: Manifest, settings: InferenceSettings) -> Engine:
    """Build one engine for ``backend``; raises :class:`EngineError` if it cannot."""
    files = manifest.files
    inp = manifest.input
    if backend == "tensorrt":
        if not files.onnx:
            raise EngineError("tensorrt needs files.onnx")
        if settings.device == "cpu":
            raise EngineError("tensorrt needs a CUDA GPU; device = 'cpu' is set")
        return tensorrt_engine.TensorRTEngine(model_dir / files.onnx, settings, (inp.channels, inp.height, inp.width), settings.precision)
    if backend == "onnxruntime":
        if not files.onnx:
            raise EngineError("onnxruntime needs files.onnx")
        device = resolve_device(settings)
        if device == "cuda" and not onnxruntime_engine.cuda_provider_available():
            log_once("onnxruntime has no CUDA provider; %s runs on CPU", manifest.name)
            device = "cpu"
        return onnxruntime_engine.OnnxRuntimeEngine(model_dir / files.onnx, settings, device)
    if backend == "torch":
        from inference.engines.torch_engine import TorchEngine

        if not (files.torchscript or files.weights):
            raise EngineError("torch needs files.torchscript or files.weights + files.architecture")
        device = resolve_device(settings)
        half = settings.precision == "fp16" and device == "cuda"
        try:
            module = _torch_module(model_dir, manifest, device)
        except Exception as e:  # torch load errors vary
            raise EngineError(f"torch cannot load {manifest.name}: {e}") from e
        return TorchEngine(module, output_names(manifest), device=device, half=half, input_name=inp.name)
    raise EngineError(f"unknown backend {backend!r}")


def select_engine(model_dir: str | Path, manifest: Manifest, settings: InferenceSettings) -> Engine:
    """Pick and build the engine for a model; logs the choice and why once."""
    model_dir = Path(model_dir)
    options = candidates(settings, manifest)
    if not options:
        raise EngineError(f"{manifest.name}: no backend can run this model folder (files: {manifest.files})")
    errors = []
    for backend, reason in options:
        try:
            engine = build(backend, model_dir, manifest, settings)
        except Exception as e:  # noqa: BLE001 - any build failure means: try the next backend
            # EngineError, ImportError and OSError are the expected ways to fail; anything else
            # (a RuntimeError from TensorRT's bindings, an AttributeError from an API that
            # changed, ...) is logged with its traceback but must not take the worker down.
            expected = isinstance(e, (EngineError, ImportError, OSError))
            why = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
            if settings.backend != "auto":
                raise EngineError(f"{manifest.name}: backend {backend} ({reason}) failed: {why}") from e
            log.warning("%s: backend %s failed (%s); trying the next one", manifest.name, backend, why,
                        exc_info=not expected)
            errors.append(f"{backend}: {why}")
            continue
        log_once("inference backend for %s: %s (%s)", manifest.name, engine.describe(), reason)
        return engine
    raise EngineError(f"{manifest.name}: every backend failed: {'; '.join(errors)}")
