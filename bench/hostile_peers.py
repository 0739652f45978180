"""Hostile peers benchmark: a valid PACS's service while attackers hold or fuzz the listener.

    python bench/hostile_peers.py [--idle 40] [--fuzz-seconds 90] [--workers 8] [--json out.json]

Runs ``pacsai listener`` (defaults, embedded store) and, as the reference in the same run,
DCMTK ``storescp --fork`` (a process per association), and prints

1. seconds for a valid C-ECHO (echoscu, from 127.0.0.1) with no attack, then while
   ``--idle`` connections from 127.0.0.2 are held open (half idle, half with half an
   A-ASSOCIATE-RQ) and reconnected whenever closed, and the ratio to the reference;
2. pacsai's resident memory and thread count before, at the peak of, and 10 s after a
   ``--fuzz-seconds`` fuzz run from ``--workers`` threads (random bytes, truncated PDUs,
   PDUs declaring 2³²-1 bytes, A-ASSOCIATE-RQs with garbage items, valid associations
   carrying bit-flipped or truncated data sets, connections dropped and A-ABORTs mid data
   set, SOP class and instance mismatches), the inputs sent, and the seconds until a valid
   C-ECHO is served after the attack ends.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pynetdicom import _config  # noqa: E402

from dicom_io.synthetic_study import ct_series, write_series  # noqa: E402
from pacsai_process import PacsaiProcess, free_port  # noqa: E402
from hostile import Fuzzer, association_request, held_connections  # noqa: E402

_config.LOG_HANDLER_LEVEL = "none"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def echo_seconds(port: int, aec: str, timeout: float = 30) -> float | None:
    t0 = time.monotonic()
    r = subprocess.run(["echoscu", "-aec", aec, "-to", str(int(timeout)), "127.0.0.1", str(port)],
                       env=ENV, capture_output=True, timeout=timeout + 30)
    return time.monotonic() - t0 if r.returncode == 0 else None


def first_echo_after(port: int, aec: str, limit: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if echo_seconds(port, aec, timeout=5) is not None:
            return time.monotonic() - t0
    return float("inf")


def proc_status(pid: int) -> tuple[float, int]:
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def storescp(port: int, out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(["storescp", "--fork", "-aet", "PACSAI", "-od", str(out), str(port)],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_echo_after(port, "PACSAI", 30)
    return p


def idle_phase(port: int, n: int) -> dict:
    quiet = echo_seconds(port, "PACSAI")
    half = association_request()[:40]
    with held_connections(port, n // 2), held_connections(port, n - n // 2, payload=half):
        time.sleep(8)  # past pacsai's request timeout: the attack is in its steady state
        held = [echo_seconds(port, "PACSAI", timeout=30) for _ in range(3)]
    worst = None if None in held else max(held)  # type: ignore[type-var]
    return {"quiet_s": quiet, "under_attack_max_s": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle", type=int, default=40)
    ap.add_argument("--fuzz-seconds", type=float, default=90)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacsai-hostile-"))
    files = write_series(ct_series(4, 256, seed=3), work / "ct")
    report: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores", "idle": args.idle}
    try:
        ref_port = free_port()
        ref = storescp(ref_port, work / "storescp")
        try:
            report["storescp"] = idle_phase(ref_port, args.idle)
        finally:
            ref.terminate()
            ref.wait(10)
            subprocess.run(["pkill", "-f", f"storescp --fork -aet PACSAI -od {work}"], check=False)
        with PacsaiProcess(work / "data", command="listener") as proc:
            assert proc.proc is not None
            pid = proc.proc.pid
            report["pacsai"] = idle_phase(proc.port, args.idle)
            time.sleep(6)
            before = proc_status(pid)
            fuzz = Fuzzer(proc.port, files, work, args.seed)
            peak = [before]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(0.5):
                    peak.append(proc_status(pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.monotonic()
            fuzz.run(args.fuzz_seconds, args.workers)
            sampling.set()
            sampler.join()
            served_after = first_echo_after(proc.port, "PACSAI")
            time.sleep(10)
            after = proc_status(pid)
            report["fuzz"] = {
                "seconds": round(time.monotonic() - t0 - served_after - 10, 1),
                "inputs": sum(fuzz.sent.values()), "by_kind": dict(fuzz.sent),
                "rss_mb": {"before": round(before[0]), "peak": round(max(p[0] for p in peak)),
                           "after": round(after[0])},
                "threads": {"before": before[1], "peak": max(p[1] for p in peak),
                            "after": after[1]},
                "valid_echo_after_s": round(served_after, 2),
                "listener_alive": proc.proc.poll() is None,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    s, p, f = report["storescp"], report["pacsai"], report["fuzz"]

    def fmt(x: float | None) -> str:
        return "refused/timeout" if x is None else f"{x:.2f}"

    print(f"machine: {report['machine']}")
    print(f"C-ECHO seconds        {'quiet':>8} {'with ' + str(args.idle) + ' held':>16}")
    print(f"  storescp --fork     {fmt(s['quiet_s']):>8} {fmt(s['under_attack_max_s']):>16}")
    print(f"  pacsai listener     {fmt(p['quiet_s']):>8} {fmt(p['under_attack_max_s']):>16}")
    if p["under_attack_max_s"] and s["under_attack_max_s"]:
        print(f"  pacsai/storescp under attack: {p['under_attack_max_s'] / s['under_attack_max_s']:.2f}")
    print(f"fuzz: {f['inputs']} inputs in {f['seconds']} s from {args.workers} threads")
    print(f"  RSS MB   before {f['rss_mb']['before']}  peak {f['rss_mb']['peak']}  "
          f"10 s after {f['rss_mb']['after']}  (growth {f['rss_mb']['after'] - f['rss_mb']['before']:+d})")
    print(f"  threads  before {f['threads']['before']}  peak {f['threads']['peak']}  "
          f"after {f['threads']['after']}")
    print(f"  valid C-ECHO served {f['valid_echo_after_s']} s after the attack; "
          f"listener alive: {f['listener_alive']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
