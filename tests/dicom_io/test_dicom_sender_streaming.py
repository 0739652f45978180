"""The sender streams a batch from its files, and a clean delivery logs nothing alarming.

Against a real DCMTK storescp: memory is measured in process with tracemalloc (which
sees every Python and numpy allocation, the association's reactor thread included).
"""

from __future__ import annotations

import copy
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_dcmtk
import dicomio_samples as samples
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.sender import Destination, send

FILES = 12
ROWS, COLS = 1024, 2048  # 16-bit: 4 MiB of pixel data per file, 48 MiB per batch


def _large_files(folder: Path) -> list[Path]:
    template = samples.ct_series(1)[0]
    paths = []
    for n in range(FILES):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["streaming", str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        ds.Rows, ds.Columns = ROWS, COLS
        ds.PixelData = np.full((ROWS, COLS), n, dtype=np.uint16).tobytes()
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@requires_dcmtk
@pytest.mark.parametrize("scp_args", [(), ("+xi",)], ids=["sent-as-stored", "converted"])
def test_a_batch_is_streamed_from_its_files(storescp, tmp_path: Path, scp_args) -> None:
    """48 MiB in one batch; the sender's memory grows by a fraction of it. ``+xi``: the
    peer takes implicit VR only, so each (explicit VR) file is converted, one at a time."""
    folder = tmp_path / "outbox"
    folder.mkdir()
    paths = _large_files(folder)
    total = sum(p.stat().st_size for p in paths)
    largest = max(p.stat().st_size for p in paths)
    aet, port, outdir = storescp(*scp_args)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        outcomes = send(paths, Destination(aet, "127.0.0.1", port), timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [o.category for o in outcomes] == ["success"] * FILES, outcomes
    # Loading the batch first costs at least its size; streaming at most about one file
    # (sent as stored: its PDUs queued for the network thread) or one file and its
    # re-encoding (converted).
    assert peak < min(total / 3, 4 * largest), (peak, total, largest)
    received = {ds.SOPInstanceUID: ds for ds in (dcmread(p) for p in outdir.iterdir())}
    for path in paths:
        source = dcmread(path)
        got = received[source.SOPInstanceUID]
        assert got.PixelData == source.PixelData
        expected_ts = "1.2.840.10008.1.2" if scp_args else source.file_meta.TransferSyntaxUID
        assert got.file_meta.TransferSyntaxUID == expected_ts


@requires_dcmtk
def test_a_successful_delivery_logs_no_warning_or_error(storescp, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Releasing the association used to log an AttributeError from our ACSE handler."""
    sources = samples.ct_series(2)
    result = samples.result_for(sources)
    from dicom_io.sr import write_sr

    sr = write_sr(result, sources)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    aet, port, outdir = storescp()
    caplog.set_level(logging.DEBUG)
    outcomes = send([path, *sources], Destination(aet, "127.0.0.1", port), timeout=10)
    assert {o.category for o in outcomes} == {"success"}
    assert len(list(outdir.iterdir())) == 3
    loud = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.WARNING]
    assert loud == []
