"""The listener's pynetdicom server: every connection passes the association gate first.

Refused at accept time past the per-address and pending limits (one log line per
offender a minute); handed to pynetdicom only with a whole A-ASSOCIATE-RQ, which the
association's socket then reads first (:mod:`daemon.ingest.transport`).
"""

from __future__ import annotations

import collections
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from daemon.ingest import metrics
from daemon.ingest.association_gate import AssociationGate, GateLimits
from daemon.ingest.offenders import OffenderLog


def gated_server_class(limits: GateLimits,
                       offenders: OffenderLog | None = None) -> type[ThreadedAssociationServer]:
    """A pynetdicom server class whose connections pass the gate first (see module docstring)."""

    class GatedAssociationServer(ThreadedAssociationServer):
        daemon_threads = True
        gate_limits = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.offenders = offenders or OffenderLog()
            self._prefixes: dict[int, bytes] = {}
            self._handing: collections.Counter[str] = collections.Counter()
            self._count_lock = threading.Lock()
            self.gate = AssociationGate(self.gate_limits, self._hand_over, self.offenders,
                                        lambda: len(self.active_associations))
            super().__init__(*args, **kwargs)
            self.gate.start()

        # socketserver hooks, on the accept thread
        def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
            assert self.socket is not None
            client, address = self.socket.accept()
            if self.ssl_context:  # the handshake runs in the gate, never in the accept loop
                client = self.ssl_context.wrap_socket(client, server_side=True,
                                                      do_handshake_on_connect=False)
            return client, address

        def verify_request(self, request: Any, client_address: Any) -> bool:
            host = str(client_address[0])
            limits = self.gate_limits
            held = self.connections_from(host)
            if held >= limits.per_address:
                metrics.connection_refused("per_address")
                self.offenders.note(host, "per_address",
                                    f"refused a connection from {host}: it holds {held} "
                                    f"(listener.max_connections_per_address = {limits.per_address})")
                return False
            pending = self.gate.pending()
            if pending >= limits.max_pending:
                metrics.connection_refused("pending")
                self.offenders.note(host, "pending",
                                    f"refused a connection from {host}: {pending} connections "
                                    "are still to send their A-ASSOCIATE-RQ "
                                    f"(listener.max_pending_connections = {limits.max_pending})")
                return False
            return True

        def process_request(self, request: Any, client_address: Any) -> None:
            self.gate.admit(request, client_address)

        def connections_from(self, host: str) -> int:
            """Connections from ``host``: waiting at the gate, being handed over, associated."""
            with self._count_lock:
                handing = self._handing[host]
            live = sum(1 for a in self.active_associations
                       if getattr(a.requestor, "address", None) == host and a.is_alive())
            return self.gate.pending(host) + handing + live

        # from the gate to pynetdicom
        def _hand_over(self, sock: socket.socket, address: Any, prefix: bytes) -> None:
            host = str(address[0])
            with self._count_lock:
                self._prefixes[id(sock)] = prefix
                self._handing[host] += 1
            try:
                ThreadingMixIn.process_request(self, sock, address)
            except Exception:
                self.handed_over(sock, address)
                raise

        def take_prefix(self, sock: Any) -> bytes:
            with self._count_lock:
                return self._prefixes.pop(id(sock), b"")

        def handed_over(self, sock: Any, address: Any) -> None:
            """The association's own thread is running (or never will): stop counting it here."""
            host = str(address[0])
            with self._count_lock:
                self._prefixes.pop(id(sock), None)
                self._handing[host] -= 1
                if self._handing[host] <= 0:
                    del self._handing[host]

        def server_close(self) -> None:
            super().server_close()
            self.gate.stop()

    return GatedAssociationServer
