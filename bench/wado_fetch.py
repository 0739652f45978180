"""WADO-RS fetch benchmark: what a remote worker pays to get a study (issue 12).

Sends one generated 300 x 512² CT (about 158 MB) to a ``pacsai listener`` (SQLite, embedded
broker, /dicomweb on the admin port), then fetches it as a remote worker does
(``worker.remote.ReceivingNode.fetch_study``: WADO-RS multipart parsed as it arrives, each
instance streamed to its file) over loopback, ``--runs`` times. The reference in the same run
is reading the spool files themselves (what a worker on the receiving host does instead).
Also sampled: the listener's and this process's resident memory during a fetch, to show the
study is never held whole.

Usage: python bench/wado_fetch.py [--slices 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sqlalchemy import select  # noqa: E402

from daemon.config import load_settings  # noqa: E402
from daemon.store.db import Database  # noqa: E402
from daemon.store.models import Instance, Study  # noqa: E402
from dicom_io.synthetic_study import ct_series, write_series  # noqa: E402
from pacsai_process import PacsaiProcess, free_port, wait_until  # noqa: E402
from worker.remote import ReceivingNode  # noqa: E402

TOKEN = "bench-dicomweb-token"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacsai-wado-"))
    try:
        files = write_series(ct_series(args.slices, 512), work / "ct")
        admin = free_port()
        with PacsaiProcess(work / "receiver", command="listener", config={
                "PACSAI_ADMIN__PORT": str(admin), "PACSAI_DICOMWEB__TOKEN": TOKEN,
                "PACSAI_STUDY__QUIET_SECONDS": "0.3"}) as proc:
            subprocess.run(["storescu", "-aec", "PACSAI", "127.0.0.1", str(proc.port),
                            *map(str, files)], check=True, capture_output=True,
                           env={**os.environ, "TCP_NODELAY": "1"}, timeout=300)
            db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
            with db.read() as s:
                study = s.scalar(select(Study))
                expected = dict(s.execute(select(Instance.sop_instance_uid, Instance.file_path)
                                          .where(Instance.study_id == study.id)).all())
                uid = study.study_instance_uid
            wait_until(lambda: len(expected) == args.slices, 5)
            settings = load_settings(storage={"data_dir": work / "worker-host"}, worker={
                "listener_url": f"http://127.0.0.1:{admin}/dicomweb", "listener_token": TOKEN},
                broker={"url": "redis://unused"}, database={"url": "postgresql://unused"})
            node = ReceivingNode(settings)
            size = sum((proc.data_dir / "spool" / rel).stat().st_size for rel in expected.values())
            fetch_s, read_s, peaks = [], [], []
            for run in range(args.runs):
                t = time.perf_counter()
                for rel in expected.values():  # the reference: the spool files read directly
                    with (proc.data_dir / "spool" / rel).open("rb") as fh:
                        while fh.read(1 << 20):
                            pass
                read_s.append(time.perf_counter() - t)
                root = work / f"copy-{run}"
                base = rss_mb(proc.proc.pid)
                peak = [base]
                done = threading.Event()

                def sample() -> None:
                    while not done.wait(0.02):
                        peak.append(rss_mb(proc.proc.pid))

                sampler = threading.Thread(target=sample)
                sampler.start()
                t = time.perf_counter()
                report = node.fetch_study(uid, 1, expected, root)
                fetch_s.append(time.perf_counter() - t)
                done.set()
                sampler.join()
                peaks.append(max(peak) - base)
                assert report.instances == args.slices and report.bytes == size
                shutil.rmtree(root)
            mb = size / 1e6
            f, r = statistics.median(fetch_s), statistics.median(read_s)
            print(f"study: {args.slices} instances, {mb:.1f} MB; runs: {args.runs}")
            print(f"WADO-RS fetch over loopback: {f:.2f} s ({mb / f:.0f} MB/s), runs "
                  + ", ".join(f"{x:.2f}" for x in fetch_s))
            print(f"reading the spool files (reference): {r:.2f} s ({mb / r:.0f} MB/s)")
            print(f"listener RSS growth during a fetch: {max(peaks):.0f} MB at most; "
                  f"this process's peak RSS: "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
            db.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
