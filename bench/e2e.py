"""End-to-end latency: Orthanc sends a study to ``pacsai serve``; how soon is the SR in Orthanc?

For a single-image DX study and a 300-slice CT study (512², 16-bit), each run:
upload the study into Orthanc (not timed), ``POST /modalities/pacsai/store`` (synchronous:
returns when Orthanc's association is released), then poll Orthanc until every SR of the
study's pipelines is stored. Prints the median and the parts from pacsai's timeline:
quiet period (last instance → complete), queue wait (complete → started), decode,
inference, writing, delivery (finished → delivered), and the rest (polling, Orthanc).

Embedded pacsai on this machine's CPU (ONNX Runtime), both demo pipelines, CT allowed for
the benchmark (the demo models are meant for CR/DX; CT slices go through them here only to
measure the pipeline).

Usage: python bench/e2e.py [--runs-cr 5] [--runs-ct 3] [--quiet 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "dicom_io")]

from sqlalchemy import select  # noqa: E402

from daemon.store.db import Database  # noqa: E402
from daemon.store.models import Delivery, Event, Study  # noqa: E402
from dicom_io.synthetic_study import ct_series, radiograph  # noqa: E402
from orthanc import OrthancServer  # noqa: E402
from pacsai_process import PacsaiProcess, free_port, wait_until  # noqa: E402

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"}
PIPELINES = [
    {"name": "cxr-classifier", "model": "chest-cxr-classifier", "modalities": ["CR", "DX", "CT"]},
    {"name": "cxr-anomaly", "model": "chest-cxr-anomaly", "modalities": ["CR", "DX", "CT"]},
]


def upload(orthanc: OrthancServer, datasets: list, work: Path) -> str:
    import io

    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        orthanc.post("/instances", buf.getvalue())
    return orthanc.study_id(datasets[0].StudyInstanceUID)


def srs_in(orthanc: OrthancServer, study_id: str) -> int:
    n = 0
    for series in orthanc.get(f"/studies/{study_id}/series"):
        if series["MainDicomTags"].get("Modality") == "SR":
            n += len(series["Instances"])
    return n


def _all_delivered(db: Database, study_uid: str) -> bool:
    with db.read() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        states = s.scalars(select(Delivery.state).where(Delivery.study_id == study.id)).all()
    return bool(states) and set(states) == {"sent"}


def parts(db: Database, study_uid: str) -> dict[str, float]:
    with db.read() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        events = s.scalars(select(Event).where(Event.study_id == study.id).order_by(Event.at)).all()
        last_rx = study.last_received_at
    first = lambda kind: min(e.at for e in events if e.kind == kind)  # noqa: E731
    last = lambda kind: max(e.at for e in events if e.kind == kind)  # noqa: E731
    finished = [e for e in events if e.kind == "finished"]
    decode = sum(e.detail.get("decode_s", 0) for e in finished)
    infer = sum(e.detail.get("inference_s", 0) for e in finished)
    processing = (last("finished") - first("started")).total_seconds()
    return {
        "quiet": (first("complete") - last_rx).total_seconds(),
        "queue_wait": (first("started") - first("complete")).total_seconds(),
        "decode": decode,
        "inference": infer,
        "writing": max(processing - decode - infer, 0.0),
        "delivery": max((last("delivered") - last("finished")).total_seconds(), 0.0),
    }


def one_run(orthanc: OrthancServer, db: Database, datasets: list, work: Path) -> tuple[float, dict]:
    study_id = upload(orthanc, datasets, work)
    t0 = time.perf_counter()
    orthanc.post("/modalities/pacsai/store", study_id)  # returns after association release
    sent = time.perf_counter()
    wait_until(lambda: srs_in(orthanc, study_id) >= len(PIPELINES), 600, 0.02)
    total = time.perf_counter() - sent
    wait_until(lambda: _all_delivered(db, datasets[0].StudyInstanceUID), 60, 0.05)
    p = parts(db, datasets[0].StudyInstanceUID)
    p["send"] = sent - t0
    return total, p


def report(name: str, runs: list[tuple[float, dict]]) -> None:
    totals = [t for t, _ in runs]
    med = statistics.median(totals)
    keys = ["quiet", "queue_wait", "decode", "inference", "writing", "delivery"]
    parts_med = {k: statistics.median(p[k] for _, p in runs) for k in keys}
    rest = med - sum(parts_med.values())
    print(f"{name}: median {med:.2f} s over {len(runs)} runs (all: {', '.join(f'{t:.2f}' for t in totals)}); "
          f"Orthanc's own send took {statistics.median(p['send'] for _, p in runs):.2f} s (not counted)")
    print("   " + ", ".join(f"{k} {v:.2f}" for k, v in parts_med.items()) + f", other {rest:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-cr", type=int, default=5)
    ap.add_argument("--runs-ct", type=int, default=3)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--quiet", type=float, default=0.5, help="study.quiet_seconds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacsai-e2e-") as tmp:
        work = Path(tmp)
        port = free_port()
        orthanc = OrthancServer(work / "orthanc", modalities={"pacsai": ("PACSAI", "127.0.0.1", port)})
        with orthanc:
            dest = [{"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1",
                     "port": orthanc.dicom_port}]
            config = {
                "PACSAI_DESTINATIONS": json.dumps(dest),
                "PACSAI_PIPELINES": json.dumps(PIPELINES),
                "PACSAI_STUDY__QUIET_SECONDS": str(args.quiet),
                "PACSAI_STUDY__POLL_SECONDS": "0.05",
                "PACSAI_LOGGING__LEVEL": "WARNING",
            }
            with PacsaiProcess(work / "data", port=port, config=config) as proc:
                db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
                print(f"pacsai serve (embedded, CPU), quiet_seconds={args.quiet}, "
                      f"pipelines: {', '.join(p['name'] for p in PIPELINES)}")
                one_run(orthanc, db, [radiograph(size=1024, seed=99)], work)  # warm-up: model load
                cr = [one_run(orthanc, db, [radiograph(size=2048, seed=i)], work)
                      for i in range(args.runs_cr)]
                report("DX 2048² single image", cr)
                ct = [one_run(orthanc, db, list(ct_series(args.slices, 512, seed=100 + i)), work)
                      for i in range(args.runs_ct)]
                report(f"CT {args.slices} × 512²", ct)


if __name__ == "__main__":
    main()
