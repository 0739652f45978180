"""Every Specific Character Set end to end: DCMTK storescu -> pacsai serve (listener,
routing on non-ASCII descriptions, worker) -> SR and SC -> DCMTK storescp (the PACS),
each object dciodvfy-clean with the patient's name as sent.

One pacsai process, one study per defined term (tests/dicom_io/test_charsets_corpus.py).
Each study is routed only by a rule that matches its own non-ASCII study and series
description exactly: a description decoded with the wrong set is not routed, and its
study gets no result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dicom_checks import assert_valid_dicom
from pydicom import dcmread
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom_io"))

from daemon.store.db import Database  # noqa: E402
from daemon.store.models import Delivery, Job, Study  # noqa: E402
from dicom_io.synthetic_study import radiograph  # noqa: E402
from pacsai_process import PacsaiProcess, free_port, wait_until  # noqa: E402
from test_charsets_corpus import CORPUS, apply, encode, expected_output_set  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SR_3D, SC = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
PIPELINE = {"name": "anomaly", "model": "chest-cxr-anomaly", "outputs": ["sr", "sc"]}


def _storescp(out: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(out), "-uf", str(port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


@pytest.mark.skipif(not all(map(shutil.which, ("storescu", "storescp", "dciodvfy"))),
                    reason="DCMTK or dicom3tools missing")
def test_every_character_set_end_to_end(tmp_path: Path) -> None:
    studies: dict[str, tuple[object, str]] = {}  # study UID -> (case, description as sent)
    files, routes = [], []
    for i, case in enumerate(CORPUS):
        marker = f" #{i}"
        ds = apply(case, radiograph(size=128, seed=i), marker)
        path = tmp_path / "in" / f"{i}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode(ds))
        files.append(path)
        description = case.description + marker
        studies[ds.StudyInstanceUID] = (case, description)
        exact = f"^{re.escape(description)}$"
        routes.append({"name": f"charset {i}", "match": {"study_description": exact,
                                                          "series_description": exact},
                       "action": {"pipelines": ["anomaly"]}})

    received = tmp_path / "pacs"
    received.mkdir()
    scp, scp_port = _storescp(received)
    config = {
        "PACSAI_PIPELINES": json.dumps([PIPELINE]),
        "PACSAI_ROUTES": json.dumps(routes),
        "PACSAI_DESTINATIONS": json.dumps([{"name": "pacs", "ae_title": "PACS",
                                            "host": "127.0.0.1", "port": scp_port}]),
        "PACSAI_DELIVERY__FIRST_RETRY_SECONDS": "1",
        "PACSAI_WORKER__RECONCILE_SECONDS": "0.5",
    }
    try:
        with PacsaiProcess(tmp_path / "data", config=config) as proc:
            sent = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1",
                                   str(proc.port), *map(str, files)],
                                  env=DCMTK_ENV, capture_output=True, text=True, timeout=120)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")

            def settled() -> bool:
                with db.read() as s:
                    rows = s.scalars(select(Study)).all()
                    states = s.scalars(select(Delivery.state)).all()
                    return (len(rows) == len(CORPUS)
                            and all(r.state in ("done", "failed", "not_routed") for r in rows)
                            and set(states) <= {"sent", "dead"}
                            and len(states) >= 2 * sum(r.state == "done" for r in rows))

            started = time.monotonic()
            wait_until(settled, 300, 0.5)
            elapsed = time.monotonic() - started
            with db.read() as s:
                rows = {r.study_instance_uid: r for r in s.scalars(select(Study))}
                routed = {r.study_instance_uid: r.state for r in s.scalars(select(Study))
                          if s.scalar(select(Job.id).where(Job.study_id == r.id).limit(1))}
            log = proc.log()
    finally:
        scp.terminate()
        scp.wait(10)

    problems = []
    by_study: dict[str, list[Path]] = {}
    for path in sorted(received.iterdir()):
        by_study.setdefault(dcmread(path, stop_before_pixels=True).StudyInstanceUID, []).append(path)
    for uid, (case, description) in studies.items():
        row = rows[uid]
        if row.study_description != description:
            problems.append(f"{case.id}: description {row.study_description!r}")
        if uid not in routed:
            problems.append(f"{case.id}: not routed ({row.state})")
            continue
        if row.patient_name != case.name:
            problems.append(f"{case.id}: indexed name {row.patient_name!r}")
        outputs = by_study.get(uid, [])
        classes = sorted(str(dcmread(p).SOPClassUID) for p in outputs)
        if SR_3D not in classes or SC not in classes:
            problems.append(f"{case.id}: received {classes} ({row.state})")
            continue
        assert_valid_dicom(outputs)
        for path in outputs:
            back = dcmread(path)
            if str(back.PatientName) != case.name:
                problems.append(f"{case.id}: {back.SOPClassUID.name} name {str(back.PatientName)!r}")
            if back.get("SpecificCharacterSet") != expected_output_set(case):
                problems.append(f"{case.id}: written as {back.get('SpecificCharacterSet')!r}")
    assert problems == [], "\n".join(problems)
    leaked = [part for c in CORPUS for part in re.split(r"[\^=]", c.name)
              if not part.isascii() and part in log]
    assert leaked == [], "patient names reached the log"
    print(f"{len(CORPUS)} studies received, analysed and delivered in {elapsed:.1f} s")
