"""TensorRT engine (optional extra ``pacsai[tensorrt]``; needs a CUDA GPU).

* Builds a serialized plan from the ONNX file with an optimization profile for the dynamic
  batch axis (min 1, opt ``settings.opt_batch``, max ``settings.max_batch``).
* Precision: TensorRT 10 builds FP16 with ``BuilderConfig.set_flag(BuilderFlag.FP16)`` from
  the fp32 ONNX. TensorRT 11 removed the precision flags (networks are strongly typed), so the
  FP16 variant must come from the ONNX itself: the caller passes the fp16 ONNX
  (``files.onnx_fp16``, or one exported from our PyTorch weights) and the network is parsed
  strongly typed.
* Plans and the timing cache persist in ``settings.engine_cache_dir``, keyed by ONNX sha256 +
  TensorRT version + CUDA version + GPU name and compute capability + precision + profile.
  A plan whose key differs is never loaded; a plan that fails to deserialize is rebuilt.
* Runs with ``execute_async_v3`` on a CUDA stream, using torch tensors as device memory, with
  one execution context (and stream) per thread; the engine itself is shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from inference.engines.base import Engine, EngineError
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def available() -> tuple[bool, str]:
    """(usable, reason): TensorRT needs the ``tensorrt`` package and a CUDA device."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False, "torch not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "tensorrt package not installed (pip install pacsai[tensorrt])"
    return True, "CUDA GPU and tensorrt present"


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(onnx_path: str | Path, precision: str, profile: dict[str, list[int]]) -> dict[str, Any]:
    """Everything a plan depends on; the plan is reused only when all fields match."""
    import tensorrt as trt
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "onnx_sha256": file_sha256(onnx_path),
        "tensorrt": str(trt.__version__),
        "cuda": str(torch.version.cuda),
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "precision": precision,
        "profile": profile,
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _torch_dtype(trt: Any, dt: Any):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dt]


class TensorRTEngine(Engine):
    backend = "tensorrt"
    device = "cuda"

    def __init__(
        self,
        onnx_path: str | Path,
        settings: InferenceSettings,
        input_shape: tuple[int, int, int],
        precision: str = "fp32",
    ) -> None:
        ok, why = available()
        if not ok:
            raise EngineError(f"tensorrt unavailable: {why}")
        import tensorrt as trt
        import torch

        self.trt = trt
        self.torch = torch
        self.precision = precision
        self.major = trt_major(trt)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.settings = settings
        c, h, w = input_shape
        self.profile = {
            "min": [1, c, h, w],
            "opt": [min(settings.opt_batch, settings.max_batch), c, h, w],
            "max": [settings.max_batch, c, h, w],
        }
        self._max_batch = settings.max_batch
        cache_dir = Path(settings.engine_cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = cache_key(onnx_path, precision, self.profile)
        digest = key_digest(key)
        plan_path = cache_dir / f"{Path(onnx_path).stem}-{digest}.plan"
        meta_path = plan_path.with_suffix(".json")
        timing_path = cache_dir / f"timing-trt{key['tensorrt']}-{key['gpu'].replace(' ', '_')}-sm{key['compute_capability']}.cache"

        self.runtime = trt.Runtime(self.logger)
        self.engine = None
        if plan_path.is_file() and meta_path.is_file():
            try:
                meta_ok = json.loads(meta_path.read_text()) == key
            except (OSError, json.JSONDecodeError):
                meta_ok = False
            if meta_ok:
                self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
                if self.engine is None:
                    log.warning("tensorrt plan %s failed to deserialize; rebuilding", plan_path)
                else:
                    log.info("tensorrt plan loaded from cache %s", plan_path)
            else:
                log.info("tensorrt plan %s has a different key; rebuilding", plan_path)
        if self.engine is None:
            plan = self._build(onnx_path, timing_path)
            plan_path.write_bytes(plan)
            meta_path.write_text(json.dumps(key, sort_keys=True, indent=1))
            self.engine = self.runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise EngineError(f"tensorrt: freshly built plan for {onnx_path} does not deserialize")

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise EngineError(f"tensorrt: expected one input tensor, found {inputs}")
        super().__init__(inputs[0], outputs)
        self._local = threading.local()

    # -- build ---------------------------------------------------------------------------
    def _network_flags(self) -> int:
        """TensorRT 10: ``create_network(0)`` (explicit batch is the only mode). TensorRT 11:
        strongly typed; request it explicitly while the flag still exists."""
        trt = self.trt
        if self.major >= 11:
            flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
            return 0 if flag is None else 1 << int(flag)
        return 0

    def _build(self, onnx_path: str | Path, timing_path: Path) -> bytes:
        trt = self.trt
        log.info("building tensorrt %s plan (%s) from %s; this takes a while", trt.__version__, self.precision, onnx_path)
        builder = trt.Builder(self.logger)
        network = builder.create_network(self._network_flags())
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"tensorrt cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.settings.trt_workspace_mb << 20)
        if self.precision == "fp16" and self.major < 11:
            config.set_flag(trt.BuilderFlag.FP16)
        # TensorRT >= 11: precision comes from the (fp16) ONNX the caller passed in.
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        profile.set_shape(name, tuple(self.profile["min"]), tuple(self.profile["opt"]), tuple(self.profile["max"]))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"tensorrt failed to build a plan for {onnx_path}")
        timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        return bytes(memoryview(plan))

    # -- run -----------------------------------------------------------------------------
    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def _context(self):
        ctx = getattr(self._local, "context", None)
        if ctx is None:
            ctx = self.engine.create_execution_context()
            if ctx is None:
                raise EngineError("tensorrt: cannot create an execution context")
            self._local.context = ctx
            self._local.stream = self.torch.cuda.Stream()
        return ctx, self._local.stream

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch, trt = self.torch, self.trt
        if batch.shape[0] > self._max_batch:
            raise EngineError(f"tensorrt: batch {batch.shape[0]} exceeds profile max {self._max_batch}")
        ctx, stream = self._context()
        in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        with torch.cuda.stream(stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to("cuda", non_blocking=True).to(in_dtype).contiguous()
            ctx.set_input_shape(self.input_name, tuple(x.shape))
            ctx.set_tensor_address(self.input_name, x.data_ptr())
            outs: dict[str, Any] = {}
            for name in self.output_names:
                shape = tuple(ctx.get_tensor_shape(name))
                t = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)), device="cuda")
                ctx.set_tensor_address(name, t.data_ptr())
                outs[name] = t
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise EngineError("tensorrt: execute_async_v3 failed")
            host = {n: t.float().cpu() for n, t in outs.items()}
        stream.synchronize()
        return {n: t.numpy() for n, t in host.items()}

    def describe(self) -> str:
        return f"tensorrt {self.trt.__version__} on cuda ({self.precision})"
