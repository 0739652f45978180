"""Retention never removes an instance acknowledged while it runs (a PACS re-sending a prior)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

import daemon.ops.retention as retention
from daemon.config import Settings
from daemon.store.db import Database
from daemon.store.models import Instance, Study, utcnow
from dicom_io.synthetic_study import radiograph
from pacsai_process import PacsaiProcess, wait_until
from peers import send_datasets

NOT_ROUTED = json.dumps([{"name": "ct only", "match": {"modality": ["CT"]},
                          "action": {"pipelines": ["cxr-anomaly"]}}])


def test_instance_resent_while_the_purge_runs_is_kept(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ds = radiograph(size=64, seed=11)
    with PacsaiProcess(tmp_path / "data", command="listener",
                       config={"PACSAI_ROUTES": NOT_ROUTED}) as proc:
        send_datasets(proc.port, [ds])
        db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")

        def state() -> str | None:
            with db.read() as s:
                return s.scalar(select(Study.state))
        wait_until(lambda: state() == "not_routed", 30)

        settings = Settings(storage={"data_dir": proc.data_dir},
                            retention={"spool_days": 7, "rows_days": 30})
        remove = retention._remove_files
        sender: list[threading.Thread] = []

        def remove_while_a_resend_arrives(*args, **kwargs):  # type: ignore[no-untyped-def]
            # The purge has decided; the PACS re-sends the instance right now.
            t = threading.Thread(target=send_datasets, args=(proc.port, [ds]))
            t.start()
            sender.append(t)
            time.sleep(1.5)  # long enough for the C-STORE to be answered if nothing stops it
            return remove(*args, **kwargs)

        monkeypatch.setattr(retention, "_remove_files", remove_while_a_resend_arrives)
        report = retention.purge(settings, db, now=utcnow() + dt.timedelta(days=8))
        assert report.spool_studies  # it did purge the settled study
        sender[0].join(30)
        assert not sender[0].is_alive()

        # The re-sent instance was acknowledged: its file must be there, and its row must
        # say where; the study is receiving again (a new version), so it is analysed.
        with db.read() as s:
            inst = s.scalars(select(Instance)).one()
            study = s.scalars(select(Study)).one()
        assert (proc.data_dir / "spool" / inst.file_path).is_file()
        assert study.version == 2
        db.dispose()
