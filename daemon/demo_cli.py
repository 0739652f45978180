"""``pacsai demo``: a newcomer's first minute. Sends a synthetic chest radiograph (seeded, made
here: no patient) to the running daemon, waits for the analysis and prints what came back:
the findings, the result objects, a PNG of each heatmap, the dashboard address with its token."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from PIL import Image
from pydicom import dcmread
from rich.console import Console
from sqlalchemy import select

from daemon.cli_common import ConfigOpt, _settings, err
from daemon.ingest.spool import results_folder
from daemon.store.db import Database
from daemon.store.models import Finding, Job, Study, StudyState
from dicom_io.sender import Destination, send
from dicom_io.synthetic_study import radiograph

console = Console(soft_wrap=True)  # paths and the token stay on one line each
FINISHED = {StudyState.DONE, StudyState.FAILED, StudyState.NOT_ROUTED}
_KINDS = {
    "1.2.840.10008.5.1.4.1.1.88.34": "structured report (TID 1500, Comprehensive 3D SR)",
    "1.2.840.10008.5.1.4.1.1.88.33": "structured report (TID 1500, Comprehensive SR)",
    "1.2.840.10008.5.1.4.1.1.7": "heatmap (secondary capture)",
    "1.2.840.10008.5.1.4.1.1.30": "heatmap (parametric map)",
}


def _wait_for(db: Database, study_uid: str, timeout: float) -> Study | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.read() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
            if study is not None and study.state in FINISHED:
                session.expunge(study)
                return study
        time.sleep(0.25)
    return None


def _png(path: Path, out: Path) -> Path:
    ds = dcmread(path)
    pixels = np.asarray(ds.pixel_array)
    target = out / f"{path.stem}.png"
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(target)
    return target


def demo_command(
    config: ConfigOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Where the PNGs go (default: data_dir/demo).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results.")] = 120.0,
) -> None:
    """Send a synthetic chest study to the running daemon and show what came back."""
    settings = _settings(config)
    ds = radiograph(size=1024, seed=int(time.time()) % 10_000)
    study_uid = str(ds.StudyInstanceUID)
    destination = Destination(ae_title=settings.listener.ae_title, host="127.0.0.1",
                              port=settings.listener.port, calling_ae="PACSAIDEMO")
    started = time.monotonic()
    outcome = send([ds], destination)[0]
    if outcome.category == "failure":
        err.print(f"[red]the daemon did not take the study:[/red] {outcome.error} "
                  f"(is `pacsai serve` running on port {settings.listener.port}?)")
        raise typer.Exit(1)
    console.print(f"sent a synthetic chest radiograph (1 image) to {destination.ae_title}@"
                  f"127.0.0.1:{destination.port}; waiting for its analysis…")
    db = Database(settings.database_url)
    try:
        study = _wait_for(db, study_uid, timeout)
        if study is None:
            err.print(f"[red]no result within {timeout:g} s[/red]: `pacsai status` says why")
            raise typer.Exit(1)
        with db.read() as session:
            findings = session.scalars(select(Finding).where(Finding.study_id == study.id)).all()
            jobs = session.scalars(select(Job).where(Job.study_id == study.id)).all()
            rows = [(f.model_name, f.label, f.score, f.threshold, f.present) for f in findings]
            failures = [(j.pipeline, j.error) for j in jobs if j.error]
    finally:
        db.dispose()
    console.print(f"study {study.id}: {study.state} after {time.monotonic() - started:.1f} s")
    for model, label, score, threshold, present in rows:
        console.print(f"  {model}: {label} {score:.3f} (threshold {threshold:.3f}) -> "
                      f"{'PRESENT' if present else 'absent'}")
    for pipeline, error in failures:
        console.print(f"  [red]{pipeline} failed[/red]: {error}")
    folder = results_folder(settings.results_dir, study_uid, study.first_received_at.isoformat())
    objects = sorted(folder.rglob("*.dcm")) if folder.exists() else []
    out = out or settings.data_dir / "demo"
    out.mkdir(parents=True, exist_ok=True)
    for path in objects:
        header = dcmread(path, stop_before_pixels=True)
        kind = _KINDS.get(str(header.SOPClassUID), str(header.SOPClassUID))
        line = f"  {kind}: {path}"
        if kind == "heatmap (secondary capture)":
            line += f"\n      as PNG: {_png(path, out)}"
        console.print(line)
    if not objects:
        console.print("  no result objects were written (see the job lines above)")
    from daemon.ops.admin.auth import admin_token

    token = admin_token(settings, create=False)
    if settings.admin.port:
        console.print(f"dashboard: http://{settings.admin.host}:{settings.admin.port}/"
                      + (f"#token={token}" if token else ""))
