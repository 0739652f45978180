"""Inference benchmark: images/s and latency at batch 1 and 16, every available backend
against PyTorch eager in the same run, for both shipped models.

    python bench/inference.py [--repeats N] [--threads T] [--json out.json]

CPU section always; GPU section when CUDA is present (PyTorch fp32 eager as the reference,
then fp16, CUDA graphs, ONNX Runtime CUDA, TensorRT fp16 where installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import InferenceSettings, default_models_dir, load_model  # noqa: E402
from inference.engines.onnxruntime_engine import physical_cores  # noqa: E402

MODELS = ("chest-cxr-classifier", "chest-cxr-anomaly")


def timeit(fn, batch: np.ndarray, repeats: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": len(batch), "latency_ms": med * 1e3, "images_per_s": len(batch) / med}


def cpu_section(repeats: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for name in MODELS:
        folder = default_models_dir() / name
        engines = {
            "torch-eager": load_model(folder, backend="torch", settings=InferenceSettings(device="cpu")),
            "onnxruntime": load_model(folder, backend="onnxruntime", settings=InferenceSettings(device="cpu", intra_op_threads=threads)),
        }
        for bs in (1, 16):
            x = np.random.default_rng(bs).random((bs, 1, 256, 256), dtype=np.float32)
            ref = None
            for backend, model in engines.items():
                r = timeit(model.run_raw, x, repeats if bs == 16 else repeats * 3)
                ref = ref or r["images_per_s"]
                rows.append({"model": name, "device": "cpu", "backend": backend, **r, "speedup_vs_eager": r["images_per_s"] / ref})
    return rows


def gpu_section(repeats: int) -> list[dict]:
    rows = []
    for name in MODELS:
        folder = default_models_dir() / name
        eager = load_model(folder, backend="torch", settings=InferenceSettings(device="cuda"))
        variants: dict = {"torch-eager-fp32": eager.run_raw}
        half = load_model(folder, backend="torch", settings=InferenceSettings(device="cuda", precision="fp16"))
        variants["torch-eager-fp16"] = half.run_raw
        variants["torch-cudagraph-fp16"] = cuda_graph_runner(half.engine.module)
        try:
            variants["onnxruntime-cuda"] = load_model(folder, backend="onnxruntime", settings=InferenceSettings(device="cuda")).run_raw
        except Exception as e:  # noqa: BLE001 - report what could not run
            print(f"  onnxruntime-cuda unavailable: {e}")
        try:
            import tensorrt  # noqa: F401

            variants["tensorrt-fp16"] = load_model(folder, settings=InferenceSettings(backend="tensorrt", precision="fp16")).run_raw
        except Exception as e:  # noqa: BLE001
            print(f"  tensorrt unavailable: {e}")
        for bs in (1, 16):
            x = np.random.default_rng(bs).random((bs, 1, 256, 256), dtype=np.float32)
            ref = None
            for backend, fn in variants.items():
                r = timeit(fn, x, repeats * 3)
                ref = ref or r["images_per_s"]
                rows.append({"model": name, "device": "cuda", "backend": backend, **r, "speedup_vs_eager": r["images_per_s"] / ref})
    return rows


def cuda_graph_runner(module):
    """Capture the fp16 module in a CUDA graph per batch size (host copies included in timing)."""
    graphs: dict = {}

    def run(batch: np.ndarray):
        bs = len(batch)
        if bs not in graphs:
            static_x = torch.zeros((bs, 1, 256, 256), device="cuda", dtype=torch.half)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s), torch.inference_mode():
                for _ in range(3):
                    module(static_x)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g), torch.inference_mode():
                static_out = module(static_x)
            graphs[bs] = (g, static_x, static_out)
        g, static_x, static_out = graphs[bs]
        static_x.copy_(torch.from_numpy(batch).to("cuda", non_blocking=True).half())
        g.replay()
        return [o.float().cpu().numpy() for o in static_out]

    return run


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {physical_cores()} cores usable, {gpu}; torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import onnxruntime

    print(f"machine: {machine()}; onnxruntime {onnxruntime.__version__}; threads {args.threads}")
    rows = cpu_section(args.repeats, args.threads)
    if torch.cuda.is_available():
        rows += gpu_section(args.repeats)
    else:
        print("GPU section skipped: no CUDA GPU")
    print(f"{'model':22} {'dev':4} {'backend':22} {'batch':>5} {'latency ms':>11} {'img/s':>8} {'x eager':>8}")
    for r in rows:
        print(f"{r['model']:22} {r['device']:4} {r['backend']:22} {r['batch']:5d} {r['latency_ms']:11.1f} {r['images_per_s']:8.1f} {r['speedup_vs_eager']:8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(physical_cores()))
    main()
