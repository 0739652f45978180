"""The listener's event handlers: plain functions over the spool and the tracker.

pynetdicom binds each to its event with a :class:`Reception` as the extra argument
(``(evt.EVT_C_STORE, on_store, [reception])``). The C-STORE handler stays short: check
the structure of the received bytes (never decode pixels), write them to the spool as
received, record the instance, answer. Success is sent only after the file is durable
and its row committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dsutils import encode_file_meta

from daemon import redact
from daemon.config import ListenerSettings
from daemon.ingest import metrics
from daemon.ingest.arrival import Arrival
from daemon.ingest.offenders import OffenderLog
from daemon.ingest.spool import Spool, SpoolFull, StoredFile
from daemon.ingest.tracker import StudyTracker
from dicom_io.wire import DatasetTooLarge, MalformedDataset, inspect_dataset

log = logging.getLogger(__name__)


@dataclass
class Reception:
    """What the handlers work with."""

    settings: ListenerSettings
    spool: Spool
    tracker: StudyTracker
    #: refusals are logged once per peer and reason a minute, with a count: a hostile or
    #: broken peer cannot flood the log
    offenders: OffenderLog


# C-STORE statuses (PS3.4 B.2.3 and Annex C.4.2.1.5)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

_PREAMBLE = b"\x00" * 128 + b"DICM"


def _ae_title(value: object) -> str:
    """An AE title as a file meta value: printable ASCII, no backslash, at most 16 characters."""
    text = "".join(c for c in str(value or "") if " " <= c <= "~" and c != "\\")
    return text.strip()[:16]


def _file_meta(event: evt.Event) -> Any:
    """pynetdicom's file meta, plus who sent the instance to whom (PS3.10 7.1): recovery
    after a crash routes on the calling AE as the listener did."""
    meta = event.file_meta
    calling = _ae_title(event.assoc.requestor.ae_title)
    called = _ae_title(event.assoc.acceptor.ae_title)
    if calling:
        meta.SourceApplicationEntityTitle = calling
        meta.SendingApplicationEntityTitle = calling
    if called:
        meta.ReceivingApplicationEntityTitle = called
    return meta


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


_CONTEXT_REJECTIONS = {
    0x03: "SOP class not supported",
    0x04: "none of its transfer syntaxes is supported",
}


def rejected_context_lines(assoc: Any) -> list[str]:
    """Say which proposed presentation contexts were refused and why (what the peer asked for)."""
    proposed = {cx.context_id: cx for cx in assoc.requestor.requested_contexts}
    lines = []
    for cx in assoc.rejected_contexts:
        asked = proposed.get(cx.context_id, cx)
        reason = _CONTEXT_REJECTIONS.get(cx.result, f"rejected (result {cx.result})")
        syntaxes = ", ".join(getattr(ts, "name", str(ts)) for ts in asked.transfer_syntax)
        lines.append(f"refused presentation context {getattr(asked.abstract_syntax, 'name', asked.abstract_syntax)}: "
                     f"{reason} (proposed: {syntaxes or 'none'})")
    return lines


def on_echo(event: evt.Event) -> int:
    """C-ECHO: we are here."""
    return SUCCESS

def on_accepted(event: evt.Event, r: Reception) -> None:
    a = event.assoc
    metrics.association_opened(id(a))
    log.info("association accepted from %s (%s:%s)", a.requestor.ae_title,
             a.requestor.address, a.requestor.port)
    refused = rejected_context_lines(a)
    if refused:  # one line per association, however many contexts
        log.warning("association from %s: %s", a.requestor.ae_title, "; ".join(refused))

def on_rejected(event: evt.Event, r: Reception) -> None:
    a = event.assoc
    reason = _reject_reason(r, event.assoc.ae, a.requestor.ae_title)
    metrics.association_rejected(reason)
    why = {metrics.REJECT_CALLING_AET: "calling AE not recognized (listener.allowed_calling_aets)",
           metrics.REJECT_LIMIT: "too many associations (listener.max_associations = "
                                 f"{r.settings.max_associations})"}.get(reason, "refused")
    r.offenders.note(str(a.requestor.address), f"rejected-{reason}",
                        f"association rejected from {a.requestor.ae_title} "
                        f"({a.requestor.address}): {why}")

def _reject_reason(r: Reception, ae: Any, calling_aet: str) -> str:
    allowed = r.settings.allowed_calling_aets
    if allowed and calling_aet.strip() not in allowed:
        return metrics.REJECT_CALLING_AET
    active = [a for a in ae.active_associations if a.is_acceptor]
    if len(active) > ae.maximum_associations:
        return metrics.REJECT_LIMIT
    return metrics.REJECT_OTHER

def on_aborted(event: evt.Event, r: Reception) -> None:
    a = event.assoc
    if a.dul.idle_timer_expired():  # pynetdicom's network timeout: it aborts the association
        log.warning("association from %s (%s) went silent for %.0f s (listener.network_timeout):"
                    " aborted; the instances it sent are kept and its study completes as usual",
                    a.requestor.ae_title, a.requestor.address, r.settings.network_timeout)
    else:
        log.warning("association from %s (%s) aborted; the instances it sent are kept",
                    a.requestor.ae_title, a.requestor.address)
    on_closed(event, r)

def on_closed(event: evt.Event, r: Reception) -> None:
    metrics.association_closed(id(event.assoc))
    r.tracker.association_released(id(event.assoc))

def on_store(event: evt.Event, r: Reception) -> int | Dataset:
    """C-STORE: check the structure, spool as received, record, answer (module docstring)."""
    req = event.request
    assoc = event.assoc
    ts = str(event.context.transfer_syntax)
    stream = req.DataSet.getbuffer()  # type: ignore[union-attr]
    try:
        header = inspect_dataset(stream, ts, max_inflated_bytes=r.settings.max_dataset_bytes)
    except DatasetTooLarge as exc:  # a deflated data set past the cap (never inflated whole)
        _refused(r, assoc, metrics.REFUSE_TOO_LARGE, f"refused a data set from {{ae}}: {exc}")
        return _status(OUT_OF_RESOURCES, f"out of resources: {exc}")
    except MalformedDataset as exc:
        _refused(r, assoc, metrics.REFUSE_MALFORMED,
                      f"refused a malformed data set from {{ae}}: {exc}")
        return _status(CANNOT_UNDERSTAND, f"malformed data set: {exc}")
    if header.sop_instance_uid != req.AffectedSOPInstanceUID:
        _refused(r, assoc, metrics.REFUSE_MISMATCH, "refused an instance from {ae} whose "
                      "SOP Instance UID differs from the command's")
        return _status(DATASET_MISMATCH, "SOP Instance UID differs from the C-STORE command")
    if header.sop_class_uid != req.AffectedSOPClassUID:  # PS3.4 C.4.2.1.4: 0xA900 too
        _refused(r, assoc, metrics.REFUSE_MISMATCH,
                      f"refused an instance from {{ae}} whose SOP Class UID "
                      f"{header.sop_class_uid} differs from the command's "
                      f"{req.AffectedSOPClassUID}")
        return _status(DATASET_MISMATCH, "SOP Class UID differs from the C-STORE command")
    # Shared study lock from the spool write until the row is committed: retention
    # never removes a file that was acknowledged after it decided (daemon.ingest.spool).
    with r.spool.study_lock(header.study_instance_uid):
        stored = _store_and_record(r, event, header, ts, stream)
    if not isinstance(stored, StoredFile):
        return stored
    metrics.instance_received(stored.size)
    log.debug("stored %s (%s)", stored.relative_path, stored.outcome.value)
    return SUCCESS

def _store_and_record(r: Reception, event: evt.Event, header: Any, ts: str,
                      stream: Any) -> StoredFile | Dataset:
    """Spool the instance and commit its row: the file, or the failure status to answer."""
    assoc = event.assoc
    try:
        stored = r.spool.store(
            header.study_instance_uid,
            header.sop_instance_uid,
            [_PREAMBLE, encode_file_meta(_file_meta(event)), stream],
        )
    except SpoolFull as exc:
        _count_failure(metrics.REFUSE_DISK_FULL)
        log.error("out of disk space, refusing instances: %s", exc.strerror)
        return _status(OUT_OF_RESOURCES, "out of resources: spool disk full")
    except OSError as exc:
        _count_failure(metrics.REFUSE_WRITE)
        log.error("could not write an instance to the spool: %s", redact.reason(exc))
        return _status(OUT_OF_RESOURCES, "out of resources: spool write failed")
    try:
        r.tracker.record(Arrival(
            header=header,
            stored=stored,
            transfer_syntax=ts,
            calling_aet=assoc.requestor.ae_title,
            called_aet=assoc.acceptor.ae_title,
            assoc_id=id(assoc),
        ))
    except Exception as exc:  # noqa: BLE001 - the peer must hear of it
        _count_failure(metrics.REFUSE_DATABASE)
        log.error("could not record an instance in the database: %s", redact.reason(exc))
        return _status(PROCESSING_FAILURE, "processing failure: database unavailable")
    return stored

def _refused(r: Reception, assoc: Any, reason: str, text: str) -> None:
    """Count a refused instance; log it once per peer and reason a minute (then a count)."""
    _count_failure(reason)
    ae = str(assoc.requestor.ae_title)
    r.offenders.note(f"{ae}@{assoc.requestor.address}", f"refused-{reason}",
                        text.replace("{ae}", ae))

def _count_failure(reason: str) -> None:
    metrics.instance_refused(reason)
