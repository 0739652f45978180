"""TensorRT engine (optional extra ``pacsai[tensorrt]``; needs a CUDA GPU and TensorRT 10).

* Written for the TensorRT 10 Python API only: ``create_network(0)`` (explicit batch is the only
  mode), ``OnnxParser``, ``BuilderConfig`` with a workspace limit (``trt_workspace_mb``) and
  ``BuilderFlag.FP16`` for ``precision = "fp16"``, one optimization profile for the dynamic
  batch axis (min 1, opt ``opt_batch`` capped at ``max_batch``, max ``max_batch``), a timing
  cache, ``build_serialized_network``; at run time ``set_input_shape``, ``set_tensor_address``
  and ``execute_async_v3``. Any other major version is reported unusable by :func:`available`
  (so ``backend = "auto"`` goes on to ONNX Runtime): TensorRT 11 removed the precision builder
  flags, and no machine of this project can run it, so there is no untested branch for it.
* Plans persist in ``engine_cache_dir``, keyed by ONNX sha256 + TensorRT version + CUDA version +
  GPU name and compute capability + precision + profile + workspace. A plan is reused only when
  its ``.json`` key matches; one that fails to deserialize is rebuilt. Plan, key and timing
  cache are written atomically (temporary file, fsync, rename) and a build holds an ``flock`` on
  the plan's ``.lock`` file, so two workers needing the same plan build it once
  (:mod:`inference.engines.plan_cache`).
* Runs on a CUDA stream with torch tensors as device memory, one execution context (and stream)
  per thread; the engine itself is shared. A shape the profile refuses, or an output shape that
  does not fit the batch, is an :class:`EngineError` naming the tensor, not wrong memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from inference.engines import plan_cache
from inference.engines.base import Engine, EngineError
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)

SUPPORTED_MAJOR = 10


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def available() -> tuple[bool, str]:
    """(usable, reason): TensorRT needs a CUDA device and the ``tensorrt`` 10 package."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False, "torch not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    try:
        import tensorrt
    except ImportError:
        return False, "tensorrt package not installed (pip install pacsai[tensorrt])"
    except Exception as e:  # noqa: BLE001 - a broken install (missing libnvinfer, ...) is "unusable"
        return False, f"tensorrt cannot be imported: {type(e).__name__}: {e}"
    version = str(getattr(tensorrt, "__version__", "?"))
    try:
        major = trt_major(tensorrt)
    except ValueError:
        return False, f"tensorrt version {version!r} not understood"
    if major != SUPPORTED_MAJOR:
        return False, f"tensorrt {version} is not supported (this engine is written for TensorRT {SUPPORTED_MAJOR})"
    return True, f"CUDA GPU and tensorrt {version} present"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gpu_identity() -> dict[str, str]:
    """CUDA version, GPU name and compute capability of the current device (part of the key)."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"cuda": str(torch.version.cuda), "gpu": str(props.name), "compute_capability": f"{props.major}.{props.minor}"}


def cache_key(onnx_path: str | Path, precision: str, profile: dict[str, list[int]], workspace_mb: int) -> dict[str, Any]:
    """Everything a plan depends on; the plan is reused only when all fields match."""
    import tensorrt as trt

    return {
        "onnx_sha256": file_sha256(onnx_path),
        "tensorrt": str(trt.__version__),
        **gpu_identity(),
        "precision": precision,
        "profile": profile,
        "workspace_mb": workspace_mb,
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
    try:
        return table[dt]
    except KeyError:
        raise EngineError(f"tensorrt: tensor data type {dt} is not supported") from None


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
        if precision not in ("fp32", "fp16"):
            raise EngineError(f"tensorrt: unknown precision {precision!r}")
        import tensorrt as trt
        import torch

        self.trt = trt
        self.torch = torch
        self.precision = precision
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.settings = settings
        c, h, w = input_shape
        self._chw = (c, h, w)
        self.profile = {
            "min": [1, c, h, w],
            "opt": [min(settings.opt_batch, settings.max_batch), c, h, w],
            "max": [settings.max_batch, c, h, w],
        }
        self._max_batch = settings.max_batch
        cache_dir = Path(settings.engine_cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = cache_key(onnx_path, precision, self.profile, settings.trt_workspace_mb)
        self.plan_path = cache_dir / f"{Path(onnx_path).stem}-{key_digest(key)}.plan"
        meta_path = self.plan_path.with_suffix(".json")
        lock_path = self.plan_path.with_suffix(".lock")
        timing_path = cache_dir / f"timing-trt{key['tensorrt']}-{key['gpu'].replace(' ', '_')}-sm{key['compute_capability']}.cache"

        self.runtime = trt.Runtime(self.logger)
        self.engine = self._load_cached(meta_path, key)
        if self.engine is None:
            with plan_cache.exclusive(lock_path, str(self.plan_path)):
                # Another worker may have built it while this one waited for the lock.
                self.engine = self._load_cached(meta_path, key)
                if self.engine is None:
                    plan_cache.remove_stale_temporaries(self.plan_path)
                    plan_cache.remove_stale_temporaries(meta_path)
                    plan = self._build(onnx_path, timing_path)
                    plan_cache.atomic_write(self.plan_path, plan)
                    plan_cache.atomic_write(meta_path, json.dumps(key, sort_keys=True, indent=1).encode())
                    self.engine = self.runtime.deserialize_cuda_engine(plan)
                    if self.engine is None:
                        raise EngineError(f"tensorrt: freshly built plan for {onnx_path} does not deserialize")
                    log.info("tensorrt plan written to %s", self.plan_path)

        eng = self.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise EngineError(f"tensorrt: expected one input tensor, found {inputs}")
        if not outputs:
            raise EngineError("tensorrt: the engine has no output tensor")
        in_static = tuple(int(d) for d in eng.get_tensor_shape(inputs[0]))
        if len(in_static) != 4 or any(s >= 0 and s != want for s, want in zip(in_static[1:], self._chw)):
            raise EngineError(f"tensorrt: input {inputs[0]} has shape {in_static}; the manifest says [B, {c}, {h}, {w}]")
        self._out_static = {n: tuple(int(d) for d in eng.get_tensor_shape(n)) for n in outputs}
        self._dtypes = {n: _torch_dtype(trt, eng.get_tensor_dtype(n)) for n in names}
        super().__init__(inputs[0], outputs)
        self._local = threading.local()

    # -- cache -----------------------------------------------------------------------------
    def _load_cached(self, meta_path: Path, key: dict[str, Any]):
        """The cached engine when plan and key file exist, the key matches and it deserializes."""
        plan_path = self.plan_path
        if not (plan_path.is_file() and meta_path.is_file()):
            return None
        try:
            stored = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            log.warning("tensorrt plan key %s unreadable (%s); rebuilding", meta_path, e)
            return None
        if stored != key:
            log.info("tensorrt plan %s has a different key; rebuilding", plan_path)
            return None
        try:
            engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        except Exception as e:  # noqa: BLE001 - a plan that cannot be loaded is rebuilt
            log.warning("tensorrt plan %s cannot be loaded (%s: %s); rebuilding", plan_path, type(e).__name__, e)
            return None
        if engine is None:
            log.warning("tensorrt plan %s failed to deserialize; rebuilding", plan_path)
            return None
        log.info("tensorrt plan loaded from cache %s", plan_path)
        return engine

    # -- build ---------------------------------------------------------------------------
    def _build(self, onnx_path: str | Path, timing_path: Path) -> bytes:
        trt = self.trt
        log.info("building tensorrt %s plan (%s) from %s; this takes a while", trt.__version__, self.precision, onnx_path)
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"tensorrt cannot parse {onnx_path}: {errors}")
        if network.num_inputs != 1:
            raise EngineError(f"tensorrt: {onnx_path} has {network.num_inputs} inputs, expected one")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.settings.trt_workspace_mb << 20)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        timing = self._timing_cache(config, timing_path)
        config.set_timing_cache(timing, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        profile.set_shape(name, tuple(self.profile["min"]), tuple(self.profile["opt"]), tuple(self.profile["max"]))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"tensorrt failed to build a plan for {onnx_path}")
        try:
            plan_cache.atomic_write(timing_path, memoryview(config.get_timing_cache().serialize()))
        except OSError as e:  # the plan is good; only the next build is slower
            log.warning("tensorrt timing cache %s not written: %s", timing_path, e)
        return bytes(memoryview(plan))

    def _timing_cache(self, config: Any, timing_path: Path):
        data = b""
        try:
            data = timing_path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("tensorrt timing cache %s unreadable (%s); starting an empty one", timing_path, e)
        if data:
            try:
                cache = config.create_timing_cache(data)
                if cache is not None:
                    return cache
            except Exception as e:  # noqa: BLE001 - a bad timing cache only costs build time
                log.warning("tensorrt timing cache %s rejected (%s: %s); starting an empty one", timing_path, type(e).__name__, e)
        return config.create_timing_cache(b"")

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
        return ctx

    def _stream(self):
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = self.torch.cuda.Stream()
        return stream

    def _shapes(self, ctx: Any, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Set the input shape on ``ctx`` and return the output shapes, checked against the batch."""
        if len(shape) != 4 or tuple(shape[1:]) != self._chw:
            raise EngineError(f"tensorrt: expected a batch [B, {', '.join(map(str, self._chw))}], got {list(shape)}")
        b = shape[0]
        if not 1 <= b <= self._max_batch:
            raise EngineError(f"tensorrt: batch {b} outside the profile (1 to {self._max_batch})")
        if not ctx.set_input_shape(self.input_name, tuple(shape)):
            raise EngineError(
                f"tensorrt: set_input_shape({self.input_name}, {list(shape)}) refused by the plan "
                f"(profile min {self.profile['min']}, max {self.profile['max']})")
        out: dict[str, tuple[int, ...]] = {}
        for name in self.output_names:
            got = tuple(int(d) for d in ctx.get_tensor_shape(name))
            static = self._out_static[name]
            ok = (len(got) == len(static) and len(got) >= 1 and got[0] == b and all(d >= 0 for d in got)
                  and all(s < 0 or s == g for s, g in zip(static[1:], got[1:])))
            if not ok:
                raise EngineError(
                    f"tensorrt: output {name} has shape {list(got)} for a batch of {b} "
                    f"(expected [{b}, ...] matching the plan's {list(static)})")
            out[name] = got
        return out

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        ctx = self._context()
        shapes = self._shapes(ctx, tuple(batch.shape))
        stream = self._stream()
        with torch.cuda.stream(stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to("cuda", non_blocking=True)
            x = x.to(self._dtypes[self.input_name]).contiguous()
            if not ctx.set_tensor_address(self.input_name, x.data_ptr()):
                raise EngineError(f"tensorrt: set_tensor_address({self.input_name}) failed")
            outs: dict[str, Any] = {}
            for name, shape in shapes.items():
                t = torch.empty(shape, dtype=self._dtypes[name], device="cuda")
                if not ctx.set_tensor_address(name, t.data_ptr()):
                    raise EngineError(f"tensorrt: set_tensor_address({name}) failed")
                outs[name] = t
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise EngineError("tensorrt: execute_async_v3 failed")
            host = {n: t.float().cpu() for n, t in outs.items()}
        stream.synchronize()
        return {n: t.numpy() for n, t in host.items()}

    def describe(self) -> str:
        return f"tensorrt {self.trt.__version__} on cuda ({self.precision})"
