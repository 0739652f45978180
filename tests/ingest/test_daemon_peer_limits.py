"""Peers we refuse: a huge declared PDU or data set aborts that association only; an unsupported
transfer syntax is refused at negotiation, and the log says which and why."""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_io.synthetic_study import ct_series
from pacsai_process import PacsaiProcess, echo, wait_until


def _spooled(proc: PacsaiProcess) -> list[Path]:
    spool = proc.data_dir / "spool"
    return [p for p in spool.rglob("*.dcm")] if spool.exists() else []


def test_a_pdu_longer_than_advertised_aborts_the_association(tmp_path: Path) -> None:
    with PacsaiProcess(tmp_path / "data", command="listener") as proc:
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 4 << 20  # what we advertise
        raw = assoc.dul.socket.socket
        raw.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFF_FFF0) + b"\x00" * 65536)  # "4 GiB follow"
        wait_until(lambda: assoc.is_aborted, 10)  # the peer hears an A-ABORT at once
        wait_until(lambda: "declared a 4294967280-byte PDU, above the" in proc.log(), 5)
        assert echo(proc.port)  # everyone else carries on


def test_a_data_set_over_the_limit_aborts_and_stores_nothing(tmp_path: Path) -> None:
    cfg = {"PACSAI_LISTENER__MAX_DATASET_BYTES": "1000000",
           "PACSAI_LISTENER__MAX_PDU_SIZE": "65536"}  # many PDUs per data set
    small, = ct_series(1, 512, seed=1)  # 0.5 MB: fits
    large, = ct_series(1, 1024, seed=2)  # 2 MB: does not
    with PacsaiProcess(tmp_path / "data", command="listener", config=cfg) as proc:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        assert assoc.is_established
        assert assoc.send_c_store(small).Status == 0
        status = assoc.send_c_store(large)
        assert not status  # no response: the association was aborted mid-data-set
        wait_until(lambda: assoc.is_aborted, 10)
        wait_until(lambda: "above the 1000000-byte maximum (listener.max_dataset_bytes)" in proc.log(), 5)
        assert len(_spooled(proc)) == 1  # only the small one

        again = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")  # the listener is fine
        assert again.is_established
        small.SOPInstanceUID = generate_uid()
        assert again.send_c_store(small).Status == 0
        again.release()
        assert len(_spooled(proc)) == 2


def test_an_unsupported_transfer_syntax_is_refused_with_a_clear_log_line(tmp_path: Path) -> None:
    mpeg4 = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264: not one we store
    with PacsaiProcess(tmp_path / "data", command="listener") as proc:
        ae = AE(ae_title="VIDEOSCU")
        ae.add_requested_context(CTImageStorage, [mpeg4])
        assoc = ae.associate("127.0.0.1", proc.port, ae_title="PACSAI")
        assert not assoc.is_established  # nothing acceptable: the peer gives up
        assert [(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts] == [
            (CTImageStorage, 0x04)]  # transfer syntaxes not supported
        wait_until(lambda: "association from VIDEOSCU: refused presentation context CT Image Storage: "
                           "none of its transfer syntaxes is supported (proposed: MPEG-4 AVC/H.264"
                   in proc.log(), 5)
        assert echo(proc.port)
        assert _spooled(proc) == []
