"""The STOW-RS fence between parts: once the job's attempt stops holding the job, no later
part of the same request is placed (checked before each rename, not only at the start)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from daemon.dicomweb.stow import PROCESSING_FAILURE, ResultWriter
from dicom_io.multipart import PartReader, new_boundary
from dicom_io.synthetic_study import radiograph

FOLDER = "ab" * 20


def _part(study_uid: str, seed: int) -> tuple[str, bytes]:
    ds = radiograph(size=16, study_uid=study_uid, seed=seed)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    name = hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()[:40] + ".dcm"
    return f"{FOLDER}/v1/cxr-anomaly/{name}", buf.getvalue()


def test_a_part_after_the_attempt_lost_its_job_is_not_placed(tmp_path: Path) -> None:
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    parts = [_part(study_uid, seed) for seed in (1, 2, 3)]
    answers = iter([True, False])  # the job is handed on while the second part comes in
    writer = ResultWriter(tmp_path, study_uid, {FOLDER}, fsync=False,
                          holds=lambda: next(answers, False))
    boundary = new_boundary()
    reader = PartReader(boundary, writer)
    for loc, data in parts:
        reader.feed(f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Location: "
                    f"{loc}\r\n\r\n".encode() + data + b"\r\n")
    reader.feed(f"--{boundary}--\r\n".encode())
    reader.close()
    assert writer.stale
    assert [o.reason for o in writer.outcomes] == [None, PROCESSING_FAILURE, PROCESSING_FAILURE]
    assert (tmp_path / parts[0][0]).read_bytes() == parts[0][1]
    assert not (tmp_path / parts[1][0]).exists() and not (tmp_path / parts[2][0]).exists()
    assert not list((tmp_path / ".stow").iterdir())  # the refused parts' temporary files too
