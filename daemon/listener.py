"""The DICOM listener: a pynetdicom C-STORE / C-ECHO SCP in front of the spool.

The C-STORE handler stays short: check the structure of the received bytes
(never decode pixels), write them to the spool as received, record the instance,
answer. Success is sent only after the file is durable and its row committed.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode_file_meta
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.presentation import AllStoragePresentationContexts
from daemon import metrics, redact
from daemon.association_gate import GateLimits, OffenderLog, gated_server_class
from daemon.config import ListenerSettings
from daemon.spool import Spool, SpoolFull, StoredFile
from daemon.study_tracker import Arrival, StudyTracker
from daemon.transport import InflightBudget, bounded_request_handler
from dicom_io.compat import check_versions, register_server
from dicom_io.wire import DatasetTooLarge, MalformedDataset, inspect_dataset

log = logging.getLogger(__name__)

#: Accepted as received and stored undecoded.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]

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


def tls_server_context(cert_file: str, key_file: str, ca_file: str | None) -> ssl.SSLContext:
    """Server-side TLS; with a CA bundle, peers must present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


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


class Listener:
    """Accepts associations and stores what they send (see module docstring)."""

    def __init__(self, settings: ListenerSettings, spool: Spool, tracker: StudyTracker) -> None:
        self.settings = settings
        self.spool = spool
        self.tracker = tracker
        self._server: Any = None
        self.stats_lock = threading.Lock()
        self.stats = {"instances": 0, "bytes": 0, "failures": 0, "associations": 0}
        # refusals are logged once per peer and reason a minute, with a count: a hostile
        # or broken peer cannot flood the log
        self.offenders = OffenderLog()
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.max_pdu_size
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        if s.allowed_calling_aets:
            ae.require_calling_aet = list(s.allowed_calling_aets)
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        return ae

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        check_versions()  # warns when pynetdicom or highdicom is not what dicom_io.compat expects
        ctx = None
        if s.tls.enabled:
            ctx = tls_server_context(str(s.tls.cert_file), str(s.tls.key_file),
                                     str(s.tls.ca_file) if s.tls.ca_file else None)
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        handler = bounded_request_handler(max_pdu_length=s.max_pdu_size,
                                          max_dataset_bytes=s.max_dataset_bytes,
                                          budget=InflightBudget(s.max_inflight_dataset_bytes))
        limits = GateLimits(request_timeout=s.association_request_timeout,
                            per_address=s.max_connections_per_address,
                            max_pending=s.max_pending_connections,
                            network_timeout=s.network_timeout)
        self._server = self.ae.make_server(
            (s.host, s.port), evt_handlers=handlers, ssl_context=ctx,
            server_class=gated_server_class(limits, self.offenders), request_handler=handler,
        )
        register_server(self.ae, self._server)  # as start_server() does; shutdown() expects it
        threading.Thread(target=self._server.serve_forever, name="dicom-listener",
                         daemon=True).start()
        log.info("listening as %s on %s:%d%s", s.ae_title, s.host, self.port,
                 " with TLS" if ctx else "")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- handlers ----------------------------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_accepted(self, event: evt.Event) -> None:
        a = event.assoc
        with self.stats_lock:
            self.stats["associations"] += 1
        metrics.association_opened(id(a))
        log.info("association accepted from %s (%s:%s)", a.requestor.ae_title,
                 a.requestor.address, a.requestor.port)
        refused = rejected_context_lines(a)
        if refused:  # one line per association, however many contexts
            log.warning("association from %s: %s", a.requestor.ae_title, "; ".join(refused))

    def _on_rejected(self, event: evt.Event) -> None:
        a = event.assoc
        reason = self._reject_reason(a.requestor.ae_title)
        metrics.association_rejected(reason)
        why = {metrics.REJECT_CALLING_AET: "calling AE not recognized (listener.allowed_calling_aets)",
               metrics.REJECT_LIMIT: "too many associations (listener.max_associations = "
                                     f"{self.settings.max_associations})"}.get(reason, "refused")
        self.offenders.note(str(a.requestor.address), f"rejected-{reason}",
                            f"association rejected from {a.requestor.ae_title} "
                            f"({a.requestor.address}): {why}")

    def _reject_reason(self, calling_aet: str) -> str:
        allowed = self.settings.allowed_calling_aets
        if allowed and calling_aet.strip() not in allowed:
            return metrics.REJECT_CALLING_AET
        active = [a for a in self.ae.active_associations if a.is_acceptor]
        if len(active) > self.ae.maximum_associations:
            return metrics.REJECT_LIMIT
        return metrics.REJECT_OTHER

    def _on_aborted(self, event: evt.Event) -> None:
        a = event.assoc
        if a.dul.idle_timer_expired():  # pynetdicom's network timeout: it aborts the association
            log.warning("association from %s (%s) went silent for %.0f s (listener.network_timeout):"
                        " aborted; the instances it sent are kept and its study completes as usual",
                        a.requestor.ae_title, a.requestor.address, self.settings.network_timeout)
        else:
            log.warning("association from %s (%s) aborted; the instances it sent are kept",
                        a.requestor.ae_title, a.requestor.address)
        self._on_closed(event)

    def _on_closed(self, event: evt.Event) -> None:
        metrics.association_closed(id(event.assoc))
        self.tracker.association_released(id(event.assoc))

    def _on_store(self, event: evt.Event) -> int | Dataset:
        req = event.request
        assoc = event.assoc
        ts = str(event.context.transfer_syntax)
        stream = req.DataSet.getbuffer()  # type: ignore[union-attr]
        try:
            header = inspect_dataset(stream, ts, max_inflated_bytes=self.settings.max_dataset_bytes)
        except DatasetTooLarge as exc:  # a deflated data set past the cap (never inflated whole)
            self._refused(assoc, metrics.REFUSE_TOO_LARGE, f"refused a data set from {{ae}}: {exc}")
            return _status(OUT_OF_RESOURCES, f"out of resources: {exc}")
        except MalformedDataset as exc:
            self._refused(assoc, metrics.REFUSE_MALFORMED,
                          f"refused a malformed data set from {{ae}}: {exc}")
            return _status(CANNOT_UNDERSTAND, f"malformed data set: {exc}")
        if header.sop_instance_uid != req.AffectedSOPInstanceUID:
            self._refused(assoc, metrics.REFUSE_MISMATCH, "refused an instance from {ae} whose "
                          "SOP Instance UID differs from the command's")
            return _status(DATASET_MISMATCH, "SOP Instance UID differs from the C-STORE command")
        if header.sop_class_uid != req.AffectedSOPClassUID:  # PS3.4 C.4.2.1.4: 0xA900 too
            self._refused(assoc, metrics.REFUSE_MISMATCH,
                          f"refused an instance from {{ae}} whose SOP Class UID "
                          f"{header.sop_class_uid} differs from the command's "
                          f"{req.AffectedSOPClassUID}")
            return _status(DATASET_MISMATCH, "SOP Class UID differs from the C-STORE command")
        # Shared study lock from the spool write until the row is committed: retention
        # never removes a file that was acknowledged after it decided (daemon.spool).
        with self.spool.study_lock(header.study_instance_uid):
            stored = self._store_and_record(event, header, ts, stream)
        if not isinstance(stored, StoredFile):
            return stored
        with self.stats_lock:
            self.stats["instances"] += 1
            self.stats["bytes"] += stored.size
        metrics.instance_received(stored.size)
        log.debug("stored %s (%s)", stored.relative_path, stored.outcome.value)
        return SUCCESS

    def _store_and_record(self, event: evt.Event, header: Any, ts: str,
                          stream: Any) -> StoredFile | Dataset:
        """Spool the instance and commit its row: the file, or the failure status to answer."""
        assoc = event.assoc
        try:
            stored = self.spool.store(
                header.study_instance_uid,
                header.sop_instance_uid,
                [_PREAMBLE, encode_file_meta(_file_meta(event)), stream],
            )
        except SpoolFull as exc:
            self._count_failure(metrics.REFUSE_DISK_FULL)
            log.error("out of disk space, refusing instances: %s", exc.strerror)
            return _status(OUT_OF_RESOURCES, "out of resources: spool disk full")
        except OSError as exc:
            self._count_failure(metrics.REFUSE_WRITE)
            log.error("could not write an instance to the spool: %s", redact.reason(exc))
            return _status(OUT_OF_RESOURCES, "out of resources: spool write failed")
        try:
            self.tracker.record(Arrival(
                header=header,
                stored=stored,
                transfer_syntax=ts,
                calling_aet=assoc.requestor.ae_title,
                called_aet=assoc.acceptor.ae_title,
                assoc_id=id(assoc),
            ))
        except Exception as exc:  # noqa: BLE001 - the peer must hear of it
            self._count_failure(metrics.REFUSE_DATABASE)
            log.error("could not record an instance in the database: %s", redact.reason(exc))
            return _status(PROCESSING_FAILURE, "processing failure: database unavailable")
        return stored

    def _refused(self, assoc: Any, reason: str, text: str) -> None:
        """Count a refused instance; log it once per peer and reason a minute (then a count)."""
        self._count_failure(reason)
        ae = str(assoc.requestor.ae_title)
        self.offenders.note(f"{ae}@{assoc.requestor.address}", f"refused-{reason}",
                            text.replace("{ae}", ae))

    def _count_failure(self, reason: str) -> None:
        metrics.instance_refused(reason)
        with self.stats_lock:
            self.stats["failures"] += 1
