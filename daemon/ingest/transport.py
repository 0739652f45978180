"""The listener's end of the DICOM upper layer: pynetdicom's socket with limits, and a faster read.

pynetdicom reads whatever PDU length a peer declares, 4 KiB at a time, and keeps
every fragment of a data set in memory until its last one arrives: one hostile or
broken peer could exhaust the daemon's memory for everyone. Each association
gets a :class:`BoundedAssociationSocket` instead, which

* aborts the association (A-ABORT, provider, "invalid PDU parameter value") when a
  PDU is longer than we advertised, or when one data set grows past
  ``max_dataset_bytes`` (the peer hears it at once, the log says why, nothing is
  spooled, other associations carry on);
* reads each PDU into one buffer of its declared size with ``recv_into`` in
  large steps (safe now that the size is bounded);
* closes the connection when a PDU stops half-way for ``network_timeout`` seconds
  (pynetdicom's own idle timer is never consulted while a read blocks);
* counts the unfinished data sets of all associations together against one budget
  (``max_inflight_dataset_bytes``) and aborts the association that would pass it, so
  memory stays bounded however many peers send at once;
* starts from the A-ASSOCIATE-RQ that :mod:`daemon.ingest.association_gate` has already read.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

from typing import Any

from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicom_io.compat import AcceptorRequestHandler, swap_socket_class

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
#: Association requests carry no P-DATA and are not bound by the advertised maximum.
MIN_PDU_LIMIT = 1 << 20
#: How much one ``recv_into`` asks for.
READ_STEP = 1 << 20
INVALID_PDU_PARAMETER = 0x06


class PeerLimitExceeded(OSError):
    """The peer broke a limit; the association is aborted."""


class InflightBudget:
    """Bytes of data sets still being received, all associations together (0 = no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.limit and self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class BoundedAssociationSocket(AssociationSocket):
    """An :class:`AssociationSocket` that enforces PDU and data-set size limits."""

    @classmethod
    def adopt(cls, sock: AssociationSocket, *, max_pdu_length: int, max_dataset_bytes: int,
              budget: InflightBudget | None = None) -> "BoundedAssociationSocket":
        """Give the socket pynetdicom has just made for an association these limits.

        (Making a second socket instead would queue a second transport-connection
        event in the association's state machine.)
        """
        bounded: BoundedAssociationSocket = swap_socket_class(sock, cls)
        bounded._set_limits(max_pdu_length, max_dataset_bytes, budget)
        return bounded

    def _set_limits(self, max_pdu_length: int, max_dataset_bytes: int,
                    budget: InflightBudget | None) -> None:
        self.max_pdu_length = max(max_pdu_length, MIN_PDU_LIMIT) if max_pdu_length else 0
        self.max_dataset_bytes = max_dataset_bytes
        self.budget = budget
        self._pdu_type: int | None = None
        self._dataset_bytes = 0
        self._held = 0  # of the budget
        self._prefix = memoryview(b"")

    def feed(self, prefix: bytes) -> None:
        """Bytes already read from the peer (its A-ASSOCIATE-RQ): served before the socket."""
        self._prefix = memoryview(prefix)

    @property
    def ready(self) -> bool:  # type: ignore[override]
        return bool(self._prefix) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes == 6 and self._pdu_type is None:  # a PDU header: type, reserved, length
            data = self._read(6)
            self._pdu_type = data[0] if len(data) == 6 else None
            if self._pdu_type != P_DATA_TF:  # gone, releasing or aborting: no data set follows
                self._dataset_bytes = 0
                self._release()
            if self._pdu_type is not None:
                length = struct.unpack(">L", data[2:6])[0]
                if self.max_pdu_length and length > self.max_pdu_length:
                    self._pdu_type = None
                    self._refuse(f"the peer declared a {length}-byte PDU, above the "
                                 f"{self.max_pdu_length}-byte maximum")
            return data
        pdu_type, self._pdu_type = self._pdu_type, None
        data = self._read(nr_bytes)
        if pdu_type == P_DATA_TF and (self.max_dataset_bytes or self.budget):
            self._count_dataset_bytes(data)
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        """Read exactly ``nr_bytes`` unless the connection closes first (then what came)."""
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        done = min(len(self._prefix), nr_bytes)
        if done:
            view[:done] = self._prefix[:done]
            self._prefix = self._prefix[done:]
        while done < nr_bytes:
            try:
                got = sock.recv_into(view[done:], min(nr_bytes - done, READ_STEP))
            except OSError as exc:
                self._release()
                if not isinstance(exc, socket.timeout):
                    raise
                requestor = getattr(self.assoc, "requestor", None)
                log.warning("closing the connection from %s (%s): it stopped sending half-way "
                            "through a PDU (%d of %d bytes) for %s s (listener.network_timeout)",
                            getattr(requestor, "ae_title", "?"), getattr(requestor, "address", "?"),
                            done, nr_bytes, sock.gettimeout())
                raise
            if not got:  # the peer closed the connection
                self._release()
                del view
                return buffer[:done]
            done += got
        return buffer

    def _count_dataset_bytes(self, body: bytearray) -> None:
        """Sum the data-set fragments of the P-DATA-TF ``body``; reset at each last fragment."""
        offset, end = 0, len(body)
        while offset + 6 <= end:
            item_length = struct.unpack_from(">L", body, offset)[0]
            control = body[offset + 5]
            if not control & 0x01:  # a data-set fragment, not a command
                fragment = max(item_length - 2, 0)
                self._dataset_bytes += fragment
                if self.max_dataset_bytes and self._dataset_bytes > self.max_dataset_bytes:
                    size = self._dataset_bytes
                    self._dataset_bytes = 0
                    self._release()
                    self._refuse(f"a data set passed {size} bytes, above the "
                                 f"{self.max_dataset_bytes}-byte maximum (listener.max_dataset_bytes)")
                if self.budget is not None:
                    if not self.budget.take(fragment):
                        self._dataset_bytes = 0
                        self._release()
                        self._refuse(f"all associations together hold {self.budget.used} bytes of "
                                     "data sets still being received; this one's would pass the "
                                     f"{self.budget.limit}-byte budget "
                                     "(listener.max_inflight_dataset_bytes); the peer may retry")
                    self._held += fragment
                if control & 0x02:
                    self._dataset_bytes = 0
                    self._release()
            offset += 4 + item_length

    def _release(self) -> None:
        if self.budget is not None and self._held:
            self.budget.give(self._held)
        self._held = 0

    def close(self) -> None:
        self._release()
        super().close()

    def _refuse(self, reason: str) -> None:
        requestor = getattr(self.assoc, "requestor", None)
        log.error("aborting the association from %s (%s): %s",
                  getattr(requestor, "ae_title", "?"), getattr(requestor, "address", "?"), reason)
        abort = A_ABORT_RQ()
        abort.source = 0x02  # DICOM UL service provider
        abort.reason_diagnostic = INVALID_PDU_PARAMETER
        try:
            assert self.socket is not None
            self.socket.sendall(abort.encode())
        except OSError:
            pass
        raise PeerLimitExceeded(reason)


def bounded_request_handler(*, max_pdu_length: int, max_dataset_bytes: int,
                            budget: InflightBudget | None = None) -> type[RequestHandler]:
    """A pynetdicom request handler whose associations use :class:`BoundedAssociationSocket`."""

    class BoundedRequestHandler(AcceptorRequestHandler):
        def handle(self) -> None:
            try:
                super().handle()  # starts the association's own thread
            finally:
                handed_over = getattr(self.server, "handed_over", None)
                if handed_over is not None:
                    handed_over(self.request, self.client_address)

        def association_created(self, assoc: Any) -> None:
            sock = BoundedAssociationSocket.adopt(assoc.dul.socket, max_pdu_length=max_pdu_length,
                                                  max_dataset_bytes=max_dataset_bytes,
                                                  budget=budget)
            take_prefix = getattr(self.server, "take_prefix", None)
            if take_prefix is not None:
                sock.feed(take_prefix(self.request))

    return BoundedRequestHandler
