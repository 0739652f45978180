"""``pacsai send``: a folder to a real listener, with a refused instance and a non-DICOM file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from dicom_io.synthetic_study import ct_series, write_series
from pacsai_process import REPO, PacsaiProcess


def test_send_a_folder_reports_each_refused_instance(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    files = write_series(ct_series(3, 64, seed=21), folder)
    mismatched = dcmread(files[0])
    mismatched.SOPInstanceUID = generate_uid()
    mismatched.file_meta.MediaStorageSOPInstanceUID = mismatched.SOPInstanceUID
    mismatched.SOPClassUID = MRImageStorage  # the data set says MR; the meta (the command) CT
    mismatched.save_as(folder / "zz-mismatch.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    with PacsaiProcess(tmp_path / "data", command="listener") as proc:
        out = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "send", str(folder), "--port", str(proc.port)],
            cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=120)
        spooled = list((proc.data_dir / "spool").rglob("*.dcm"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "3 stored, 0 with a warning, 2 not stored, of 5 file(s)" in out.stdout
    assert "notes.txt" in out.stderr and "cannot read" in out.stderr
    assert f"{mismatched.SOPInstanceUID}: status 0xA900" in out.stderr
    assert len(spooled) == 3
