"""Dynamic batching benchmark: concurrent callers each submitting one image at a time.

    python bench/batching.py [--callers 16] [--rounds 8] [--repeats 3] [--delays 2,10]
                             [--backend onnxruntime] [--device cpu] [--json out.json]

For each shipped model: throughput (images/s) and per-request latency when every caller
thread runs ``model.predict`` itself ("direct") vs when all go through one
:class:`worker.batching.DynamicBatcher` (max batch 16, each max delay given), and the
ratio; each figure is the median of ``--repeats`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import InferenceSettings, Model, default_models_dir, load_model  # noqa: E402
from worker.batching import DynamicBatcher  # noqa: E402

MODELS = ("chest-cxr-classifier", "chest-cxr-anomaly")


def hammer(call: Callable[[np.ndarray], object], image: np.ndarray, callers: int,
           rounds: int) -> dict:
    """``callers`` threads each calling ``call`` ``rounds`` times with one image."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(callers + 1)

    def caller() -> None:
        own = []
        start.wait()
        for _ in range(rounds):
            t0 = time.perf_counter()
            call(image)
            own.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {"images_per_s": callers * rounds / wall, "latency_p50_ms": float(np.median(lat)),
            "latency_p95_ms": float(np.percentile(lat, 95))}


def median_run(call: Callable[[np.ndarray], object], image: np.ndarray, callers: int,
               rounds: int, repeats: int) -> dict:
    """Warm up, then the run with the median throughput of ``repeats``."""
    hammer(call, image, callers, 2)
    runs = sorted((hammer(call, image, callers, rounds) for _ in range(repeats)),
                  key=lambda r: r["images_per_s"])
    return runs[len(runs) // 2]


def bench_model(model: Model, callers: int, rounds: int, repeats: int,
                delays: list[float]) -> list[dict]:
    image = np.random.default_rng(0).random((1, *model.input_shape), dtype=np.float32)
    direct = median_run(model.predict, image, callers, rounds, repeats)
    rows = [{"model": model.name, "mode": "direct", **direct}]
    for delay in delays:
        with DynamicBatcher(model, max_batch=16, max_delay_ms=delay) as batcher:
            row = median_run(batcher.submit, image, callers, rounds, repeats)
            s = batcher.stats
        rows.append({"model": model.name, "mode": f"batched {delay:g} ms", **row,
                     "mean_batch": s.mean_batch_size,
                     "speedup": row["images_per_s"] / direct["images_per_s"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=8, help="images per caller")
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode (median reported)")
    ap.add_argument("--delays", default="2,10", help="max delays to try, ms, comma-separated")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    delays = [float(d) for d in args.delays.split(",") if d]
    settings = InferenceSettings(device=args.device)
    print(f"{platform.node()}: {args.callers} callers x {args.rounds} images, "
          f"{args.backend} on {args.device}")
    rows = []
    for name in MODELS:
        model = load_model(default_models_dir() / name, backend=args.backend, settings=settings)
        rows += bench_model(model, args.callers, args.rounds, args.repeats, delays)
    print(f"{'model':22} {'mode':16} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'batch':>6} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:22} {r['mode']:16} {r['images_per_s']:8.1f} "
              f"{r['latency_p50_ms']:8.1f} {r['latency_p95_ms']:8.1f} "
              f"{r.get('mean_batch', 1):6.1f} {r.get('speedup', 1):6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
