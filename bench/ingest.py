"""Ingest benchmark: pacsai listener vs DCMTK storescp, same study, same run.

Sends one generated 300 x 512² 16-bit CT study (about 157 MB) with DCMTK storescu
over 1 and 4 parallel associations to

* DCMTK ``storescp`` (the reference; ``--fork`` for parallel associations), and
* ``pacsai listener`` (fsync policy as configured, default "always"),

and prints the median seconds of several runs and the throughput ratio
pacsai/storescp. TCP_NODELAY=1 is set for the DCMTK tools (see shared notes:
without it Nagle's algorithm dominates).

Usage: python bench/ingest.py [--slices 300] [--runs 3] [--fsync always|never]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_io.synthetic_study import ct_series, write_series  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_echo(port: int, aec: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["echoscu", "-aec", aec, "127.0.0.1", str(port)], env=ENV,
                           capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers C-ECHO on port {port}")


def send(port: int, aec: str, groups: list[list[Path]]) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, g)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for g in groups]
    for p in procs:
        _, errout = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {errout.decode()[-500:]}")
    return time.perf_counter() - start


def split(files: list[Path], n: int) -> list[list[Path]]:
    return [files[i::n] for i in range(n)]


def run_storescp(files: list[Path], n_assoc: int, work: Path) -> float:
    out = work / "storescp-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    args = ["storescp", "-aet", "STORESCP", "-od", str(out), "--fork" if n_assoc > 1 else "-v", str(port)]
    proc = subprocess.Popen([a for a in args if a != "-v"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_echo(port, "STORESCP")
        return send(port, "STORESCP", split(files, n_assoc))
    finally:
        proc.terminate()
        proc.wait(10)


def run_pacsai(files: list[Path], n_assoc: int, work: Path, fsync: str) -> float:
    data = work / "pacsai-data"
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    env = {**ENV, "PACSAI_STORAGE__DATA_DIR": str(data), "PACSAI_LISTENER__PORT": str(port),
           "PACSAI_LISTENER__HOST": "127.0.0.1", "PACSAI_STORAGE__MIN_FREE_BYTES": "0",
           "PACSAI_STORAGE__FSYNC": fsync, "PACSAI_STUDY__QUIET_SECONDS": "60",
           "PACSAI_LOGGING__LEVEL": "WARNING"}
    env.pop("PACSAI_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "listener"], env=env,
                            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_echo(port, "PACSAI")
        return send(port, "PACSAI", split(files, n_assoc))
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fsync", choices=["always", "never"], default="always")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacsai-bench-") as tmp:
        work = Path(tmp)
        files = write_series(ct_series(args.slices, args.size), work / "study")
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"study: {len(files)} instances, {mb:.0f} MB; fsync={args.fsync}; "
              f"{os.cpu_count()} CPUs; {args.runs} runs, median")
        print(f"{'associations':>12} {'storescp s':>11} {'pacsai s':>9} {'pacsai/storescp throughput':>27}")
        for n in (1, 4):
            ref = statistics.median(run_storescp(files, n, work) for _ in range(args.runs))
            ours = statistics.median(run_pacsai(files, n, work, args.fsync) for _ in range(args.runs))
            print(f"{n:>12} {ref:>11.2f} {ours:>9.2f} {ref / ours:>26.2f}x")


if __name__ == "__main__":
    main()
