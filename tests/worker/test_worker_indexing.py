"""Indexing reads headers with the instance's own character set, whatever else is imported."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

import dicom_io.charset  # noqa: F401 - this process writes the ISO_IR 203 file
from dicom_io.synthetic_study import radiograph

REPO = Path(__file__).resolve().parents[2]

NAME, DESCRIPTION = "Bœuf^Zoë", "Thorax œdème €"  # Latin-9 only: Œ, œ and € are not in Latin-1

# Run in a fresh interpreter: in this one something else may already have imported
# dicom_io.charset, which completes pydicom's tables (ISO_IR 203 is unknown to pydicom 3.0).
_INDEX = """
import json, sys
from pathlib import Path
from daemon.ingest.spool import Spool
from daemon.store.db import Database
from daemon.store.models import Instance, Study, utcnow
from worker.indexing import index_study

root, study_uid, sop_uid = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
db = Database(f"sqlite:///{root / 'pacsai.db'}")
db.upgrade()
spool = Spool(root / "spool", fsync=False)
spool.store(study_uid, sop_uid, [(root / "in.dcm").read_bytes()])
now = utcnow()
with db.session() as s:
    study = Study(study_instance_uid=study_uid, version=1, state="processing",
                  version_started_at=now, first_received_at=now, last_received_at=now)
    s.add(study)
    s.flush()
    s.add(Instance(study_id=study.id, sop_instance_uid=sop_uid, sop_class_uid="1.2",
                   transfer_syntax_uid="1.2.840.10008.1.2.1",
                   file_path=spool.relative_path(study_uid, sop_uid), size_bytes=1, version=1,
                   received_at=now))
    study_id = study.id
index_study(db, spool, study_id)
with db.read() as s:
    row = s.get(Study, study_id)
    print(json.dumps({"name": row.patient_name, "description": row.study_description}))
"""


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    if len(value) % 2:
        value += b" "
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def test_latin9_names_are_indexed_right_without_other_imports(tmp_path: Path) -> None:
    ds = radiograph(size=32, seed=1)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    ds = dcmread(io.BytesIO(buf.getvalue()))
    ds.SpecificCharacterSet = "ISO_IR 203"
    ds[0x00100010] = _raw(0x00100010, "PN", NAME.encode("iso8859_15"))
    ds[0x00081030] = _raw(0x00081030, "LO", DESCRIPTION.encode("iso8859_15"))
    ds.set_original_encoding(False, True, ds._character_set)
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    assert NAME.encode("iso8859_15") in (tmp_path / "in.dcm").read_bytes()
    out = subprocess.run([sys.executable, "-c", _INDEX, str(tmp_path), ds.StudyInstanceUID,
                          ds.SOPInstanceUID], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row == {"name": NAME, "description": DESCRIPTION.strip()}
