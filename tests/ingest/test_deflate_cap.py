"""A deflated data set is capped like any other: a deflate bomb (megabytes of zeros in a
few kilobytes) is refused with 0xA700 and a reason, without inflating it whole; the
association goes on."""

from __future__ import annotations

import io
import os
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from daemon.store.db import Database
from daemon.store.models import Study
from dicom_io.synthetic_study import ct_series
from dicom_io.wire import (
    DEFLATED_EXPLICIT_VR_LE,
    DatasetTooLarge,
    MalformedDataset,
    inspect_dataset,
)
from pacsai_process import PacsaiProcess, wait_until

CAP = 1 << 20  # listener.max_dataset_bytes for these tests: 1 MiB
OUT_OF_RESOURCES = 0xA700


def _deflate(raw: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return co.compress(raw) + co.flush()


def _bomb_stream(inflated_mib: int) -> bytes:
    """A raw deflate stream of ``inflated_mib`` MiB of zeros, built without holding them."""
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join(co.compress(chunk) for _ in range(inflated_mib)) + co.flush()


def _dataset_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def _ct(seed: int) -> Dataset:
    ds = next(ct_series(1, 32, seed=seed))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


def _bomb(seed: int, mib: int = 10) -> Dataset:
    ds = _ct(seed)
    ds.add_new(0x00091010, "LO", "PACSAI TEST")  # private creator
    ds.add_new(0x00091000 | 0x1001, "OB", bytes(mib << 20))  # zeros: deflate to ~10 KB
    return ds


def test_inflating_stops_at_the_cap_without_allocating_the_whole() -> None:
    bomb = _bomb_stream(200)  # 200 MiB inflated, about 200 KB deflated
    assert len(bomb) < 400_000
    tracemalloc.start()
    try:
        with pytest.raises(DatasetTooLarge, match="listener.max_dataset_bytes"):
            inspect_dataset(bomb, DEFLATED_EXPLICIT_VR_LE, max_inflated_bytes=CAP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * CAP, f"inflating allocated {peak} bytes for a {CAP}-byte cap"


def test_a_data_set_within_the_cap_still_inflates() -> None:
    ds = _ct(1)
    del ds.file_meta
    raw = _dataset_bytes(ds)
    deflated = _deflate(raw)
    assert inspect_dataset(deflated, DEFLATED_EXPLICIT_VR_LE,
                           max_inflated_bytes=len(raw)).sop_instance_uid == ds.SOPInstanceUID
    with pytest.raises(DatasetTooLarge):  # one byte over
        inspect_dataset(deflated, DEFLATED_EXPLICIT_VR_LE, max_inflated_bytes=len(raw) - 1)
    # the pad byte of an odd-length deflated stream (PS3.5 A.5) is ignored; no cap = none
    assert inspect_dataset(deflated + b"\x00", DEFLATED_EXPLICIT_VR_LE).has_pixel_data
    with pytest.raises(MalformedDataset, match="inflate") as err:
        inspect_dataset(deflated[: len(deflated) // 2], DEFLATED_EXPLICIT_VR_LE,
                        max_inflated_bytes=CAP)
    assert not isinstance(err.value, DatasetTooLarge)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("deflate")
    with PacsaiProcess(root / "data", config={
            "PACSAI_LISTENER__MAX_DATASET_BYTES": str(CAP),
            "PACSAI_PIPELINES": '[{"name": "anomaly", "model": "chest-cxr-anomaly"}]'}) as proc:
        yield proc


def _study(proc: PacsaiProcess, uid: str) -> Study | None:
    db = Database(f"sqlite:///{proc.data_dir / 'pacsai.db'}")
    with db.read() as s:
        return s.scalar(select(Study).where(Study.study_instance_uid == uid))


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_pynetdicom_peer_sending_a_deflate_bomb_hears_0xa700(capped: PacsaiProcess,
                                                             tmp_path: Path) -> None:
    bomb = _write(_bomb(2), tmp_path / "bomb.dcm")
    assert bomb.stat().st_size < 64 * 1024  # far below the cap as sent
    good = _ct(3)
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes as they are
    try:
        ae = AE(ae_title="BOMBER")
        ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", capped.port, ae_title="PACSAI")
        assert assoc.is_established
        refused = assoc.send_c_store(bomb)
        accepted = assoc.send_c_store(_write(good, tmp_path / "good.dcm"))
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert refused.Status == OUT_OF_RESOURCES
    assert refused.ErrorComment == "out of resources: deflated data set inflates past 1048576 bytes"
    assert accepted.Status == 0x0000  # the association went on
    bomb_uid = dcmread(bomb, stop_before_pixels=True).StudyInstanceUID
    assert _study(capped, bomb_uid) is None  # nothing of it spooled or recorded
    assert wait_until(lambda: _study(capped, good.StudyInstanceUID), 10)
    assert ("refused a data set from BOMBER: deflated data set inflates past 1048576 bytes "
            "(the maximum, listener.max_dataset_bytes;") in capped.log()
    assert not any((capped.data_dir / "spool" / "tmp").iterdir())


def test_dcmtk_storescu_sending_a_deflate_bomb_is_refused(capped: PacsaiProcess,
                                                          tmp_path: Path) -> None:
    bomb = _write(_bomb(4, mib=20), tmp_path / "bomb.dcm")
    good = _ct(5)
    proc = subprocess.run(
        ["storescu", "-v", "--no-halt", "-aet", "STORESCU", "-aec", "PACSAI", "-R",
         "--propose-deflated",
         "127.0.0.1", str(capped.port), str(bomb), str(_write(good, tmp_path / "good.dcm"))],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert "Received Store Response (Refused: OutOfResources)" in out, out
    assert "Received Store Response (Success)" in out, out  # the next file, same association
    assert _study(capped, dcmread(bomb, stop_before_pixels=True).StudyInstanceUID) is None
    assert wait_until(lambda: _study(capped, good.StudyInstanceUID), 10)


def test_the_too_large_refusal_is_a_label_dashboards_see_from_the_start() -> None:
    """Like every refusal reason, "too_large" is exported (at 0) before the first refusal."""
    from prometheus_client import generate_latest

    from daemon.ingest import metrics

    assert metrics.REFUSE_TOO_LARGE == "too_large"
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'pacsai_instances_refused_total{reason="too_large"}' in text
