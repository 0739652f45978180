"""A FAKE ``tensorrt`` module: the small part of the TensorRT 10 Python API our engine calls.

TensorRT is not installed on any machine this project can test on (see ``../shared/README.md``),
so the tests that import this module check **control flow only**: fallback to ONNX Runtime when
a build raises, plan-cache reuse and rebuilds, locking and atomic writes between processes,
refused input shapes and wrong output shapes. Nothing here builds or runs a network; a "plan" is
a JSON description of the ONNX file's tensors plus padding and a checksum, so a torn or foreign
file is detected the way TensorRT detects one (``deserialize_cuda_engine`` returns None).
Numerics on real TensorRT are ``test_maps_parity.test_tensorrt_matches_pytorch`` (GPU machines
with tensorrt only).

The API surface mirrors TensorRT 10: ``Logger``, ``Builder.create_network(0)``,
``OnnxParser.parse_from_file``, ``BuilderConfig.set_memory_pool_limit / set_flag /
create_timing_cache / set_timing_cache / add_optimization_profile / get_timing_cache``,
``Builder.build_serialized_network``, ``Runtime.deserialize_cuda_engine``, ``ICudaEngine``
(``num_io_tensors``, ``get_tensor_name/mode/dtype/shape``, ``create_execution_context``) and
``IExecutionContext`` (``set_input_shape`` returning bool, ``get_tensor_shape``,
``set_tensor_address``, ``execute_async_v3``).

Use :func:`install` (with pytest's ``monkeypatch``): it puts this module in ``sys.modules`` as
``tensorrt`` and makes ``torch.cuda`` report one fake GPU, so
``inference.engines.tensorrt_engine.available()`` is true. ``state`` holds the knobs tests turn
and the counters they read; counters are per process, ``state.builds_log`` (one line per build,
appended) counts across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__version__ = "10.3.0"

_MAGIC = b"FAKETRT10\n"
_TIMING_MAGIC = b"FAKETIMING\n"


class DataType:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


float32, float16, bfloat16, int32, int64, int8 = (DataType(n) for n in ("FLOAT", "HALF", "BF16", "INT32", "INT64", "INT8"))
_DTYPES = {"float32": float32, "float16": float16}


class Logger:
    VERBOSE, INFO, WARNING, ERROR = 0, 1, 2, 3

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class TensorIOMode:
    NONE, INPUT, OUTPUT = "NONE", "INPUT", "OUTPUT"


class MemoryPoolType:
    WORKSPACE = "WORKSPACE"


class BuilderFlag:
    FP16 = "FP16"


@dataclass
class State:
    """Knobs (set by tests) and counters (read by tests) of the fake."""

    build_error: BaseException | None = None  # raised by build_serialized_network
    build_delay: float = 0.0  # seconds a build takes
    builds_log: Path | None = None  # one line per build, across processes
    building_marker: Path | None = None  # touched when a build starts
    set_input_shape_ok: bool = True
    output_batch_offset: int = 0  # > 0: outputs claim a batch that is not the input's
    output_shape_override: dict[str, tuple[int, ...]] = field(default_factory=dict)
    plan_padding: int = 1 << 20  # bytes, so writing a plan takes measurable time
    builds: int = 0
    deserializations: int = 0
    network_flags: list[int] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    timing_caches_loaded: list[bytes] = field(default_factory=list)


state = State()


def reset() -> State:
    global state
    state = State()
    return state


# -- network and parser ------------------------------------------------------------------
class _Tensor:
    def __init__(self, name: str, shape: list[int], dtype: str = "float32") -> None:
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        self.source_sha256 = ""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]


def write_fake_onnx(path: Path, chw: tuple[int, int, int] = (1, 8, 8), outputs: dict[str, list[int]] | None = None,
                    input_name: str = "x", salt: str = "") -> Path:
    """A model file the fake parser reads: tensor names and shapes as JSON (batch axis -1)."""
    c, h, w = chw
    outputs = outputs or {"probabilities": [-1, 3], "cam": [-1, 3, h, w]}
    Path(path).write_text(json.dumps({"fake_onnx": 1, "input": [input_name, [-1, c, h, w]], "outputs": outputs, "salt": salt}))
    return Path(path)


def _describe_real_onnx(path: str) -> dict[str, Any]:
    import onnx

    model = onnx.load(path, load_external_data=False)

    def dims(v: Any) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]

    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    return {"input": [inputs[0].name, dims(inputs[0])], "outputs": {o.name: dims(o) for o in model.graph.output}}


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        data = Path(path).read_bytes()
        try:
            spec = json.loads(data)
            if not isinstance(spec, dict) or "fake_onnx" not in spec:
                raise ValueError("not a fake model")
        except ValueError:
            try:
                spec = _describe_real_onnx(path)
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"fake parser: {path} is neither a fake model nor ONNX: {e}")
                return False
        name, shape = spec["input"]
        self.network.inputs = [_Tensor(name, shape)]
        self.network.outputs = [_Tensor(n, s) for n, s in spec["outputs"].items()]
        self.network.source_sha256 = hashlib.sha256(data).hexdigest()
        return True


# -- builder -----------------------------------------------------------------------------
class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.entries = data

    def serialize(self) -> bytes:
        return _TIMING_MAGIC + self.entries.removeprefix(_TIMING_MAGIC) + b"+"


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, name: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002 - TRT names
        if not (len(min) == len(opt) == len(max)) or any(not a <= b <= c for a, b, c in zip(min, opt, max)):
            raise ValueError(f"fake: profile for {name} needs min <= opt <= max, got {min} {opt} {max}")
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class _BuilderConfig:
    def __init__(self) -> None:
        self.pool_limits: dict[str, int] = {}
        self.flags: set[str] = set()
        self.profiles: list[_Profile] = []
        self.timing_cache: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pool_limits[pool] = int(size)

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        data = bytes(data)
        if data and not data.startswith(_TIMING_MAGIC):
            raise RuntimeError("fake: invalid timing cache")
        state.timing_caches_loaded.append(data)
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:  # noqa: FBT001 - TRT signature
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        assert self.timing_cache is not None
        return self.timing_cache

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        state.network_flags.append(flags)
        return _Network(flags)

    def create_builder_config(self) -> _BuilderConfig:
        return _BuilderConfig()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _BuilderConfig) -> bytes | None:
        if state.building_marker is not None:
            state.building_marker.touch()
        if state.build_error is not None:
            raise state.build_error
        if len(config.profiles) != 1 or network.inputs[0].name not in config.profiles[0].shapes:
            return None  # TensorRT: a dynamic input without a profile does not build
        time.sleep(state.build_delay)
        state.builds += 1
        if state.builds_log is not None:
            with open(state.builds_log, "a") as f:
                f.write(f"{os.getpid()}\n")
        mn, opt, mx = config.profiles[0].shapes[network.inputs[0].name]
        spec = {
            "input": [network.inputs[0].name, list(network.inputs[0].shape)],
            "outputs": {t.name: list(t.shape) for t in network.outputs},
            "profile": [list(mn), list(opt), list(mx)],
            "fp16": BuilderFlag.FP16 in config.flags,
            "source": network.source_sha256,
        }
        state.configs.append({"flags": sorted(config.flags), "workspace": config.pool_limits.get(MemoryPoolType.WORKSPACE),
                              "profile": spec["profile"], "network_flags": network.flags})
        body = json.dumps(spec).encode() + b"\n" + bytes(state.plan_padding)
        return _MAGIC + body + hashlib.sha256(body).digest()


def plan_is_valid(data: bytes) -> bool:
    """What the fake runtime checks: magic, and the checksum of everything after it."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 32:
        return False
    body, digest = data[len(_MAGIC):-32], data[-32:]
    return hashlib.sha256(body).digest() == digest


# -- runtime -----------------------------------------------------------------------------
class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        state.deserializations += 1
        data = bytes(data)
        if not plan_is_valid(data):
            return None
        spec = json.loads(data[len(_MAGIC):-32].split(b"\n", 1)[0])
        return _Engine(spec)


class _Engine:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.input_name, input_shape = spec["input"]
        self.shapes = {self.input_name: tuple(input_shape), **{n: tuple(s) for n, s in spec["outputs"].items()}}
        self.names = list(self.shapes)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return TensorIOMode.INPUT if name == self.input_name else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return float32

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.input_shape: tuple[int, ...] | None = None

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        mn, _, mx = self.engine.spec["profile"]
        inside = name == self.engine.input_name and len(shape) == len(mn) and all(a <= s <= b for a, s, b in zip(mn, shape, mx))
        if not (state.set_input_shape_ok and inside):
            return False
        self.input_shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in state.output_shape_override:
            return state.output_shape_override[name]
        static = self.engine.shapes[name]
        if name == self.engine.input_name:
            return self.input_shape or static
        if self.input_shape is None:
            return static
        return (self.input_shape[0] + state.output_batch_offset, *static[1:])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        return self.input_shape is not None


globals()["bool"] = DataType("BOOL")  # tensorrt.bool; nothing in this module calls the builtin bool()


# -- installation ------------------------------------------------------------------------
def install(monkeypatch: Any, version: str = "10.3.0", gpu: str = "Fake GPU", capability: tuple[int, int] = (9, 0)) -> State:
    """Make ``import tensorrt`` give this fake and ``torch.cuda`` report one fake GPU."""
    import torch

    module = sys.modules[__name__]
    monkeypatch.setattr(module, "__version__", version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    props = SimpleNamespace(name=gpu, major=capability[0], minor=capability[1])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    return reset()
