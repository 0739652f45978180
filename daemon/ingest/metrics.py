"""In-process Prometheus metrics the listener increments (the admin app adds DB-derived ones).

The listener calls the small functions below; they never raise and cost a lock
each. Everything computed from the database at scrape time lives in
``daemon.ops.admin.collector``.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

#: Process-local registry; the admin app exposes it next to its DB collector.
REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES = Counter("pacsai_instances_received", "Instances stored in the spool.",
                    registry=REGISTRY)
BYTES = Counter("pacsai_bytes_received", "Bytes of instances stored in the spool.",
                registry=REGISTRY)
REFUSED = Counter("pacsai_instances_refused", "C-STORE requests answered with a failure.",
                  ["reason"], registry=REGISTRY)
ASSOCIATIONS = Counter("pacsai_associations", "Associations accepted.", registry=REGISTRY)
ASSOCIATIONS_ACTIVE = Gauge("pacsai_associations_active", "Associations open now.",
                            registry=REGISTRY)
REJECTED = Counter("pacsai_associations_rejected", "Associations rejected, by reason.",
                   ["reason"], registry=REGISTRY)
CONNECTIONS_REFUSED = Counter(
    "pacsai_connections_refused",
    "TCP connections closed before association: refused at accept, or no valid "
    "A-ASSOCIATE-RQ in time (daemon.ingest.association_gate).", ["reason"], registry=REGISTRY)

_lock = threading.Lock()
_active: set[int] = set()

# Reasons, so dashboards see a fixed label set.
REJECT_CALLING_AET = "calling_aet_not_recognized"
REJECT_LIMIT = "too_many_associations"
REJECT_OTHER = "other"
REFUSE_DISK_FULL = "disk_full"
REFUSE_WRITE = "spool_write_failed"
REFUSE_MALFORMED = "malformed"
REFUSE_MISMATCH = "uid_mismatch"
REFUSE_DATABASE = "database"
REFUSE_TOO_LARGE = "too_large"  # a deflated data set inflating past listener.max_dataset_bytes

CONNECTION_REASONS = ("per_address", "pending", "request_timeout", "not_a_request",
                      "request_too_large", "tls", "connection_error")

for _r in (REJECT_CALLING_AET, REJECT_LIMIT, REJECT_OTHER):
    REJECTED.labels(_r)
for _r in CONNECTION_REASONS:
    CONNECTIONS_REFUSED.labels(_r)
for _r in (REFUSE_DISK_FULL, REFUSE_WRITE, REFUSE_MALFORMED, REFUSE_MISMATCH, REFUSE_DATABASE,
           REFUSE_TOO_LARGE):
    REFUSED.labels(_r)


def instance_received(size: int) -> None:
    INSTANCES.inc()
    BYTES.inc(size)


def instance_refused(reason: str) -> None:
    REFUSED.labels(reason).inc()


def connection_refused(reason: str) -> None:
    CONNECTIONS_REFUSED.labels(reason).inc()


def association_opened(assoc_id: int) -> None:
    with _lock:
        if assoc_id in _active:
            return
        _active.add(assoc_id)
        ASSOCIATIONS_ACTIVE.set(len(_active))
    ASSOCIATIONS.inc()


def association_closed(assoc_id: int) -> None:
    """Idempotent: pynetdicom fires released/aborted/closed for the same association."""
    with _lock:
        _active.discard(assoc_id)
        ASSOCIATIONS_ACTIVE.set(len(_active))


def association_rejected(reason: str) -> None:
    REJECTED.labels(reason).inc()
