"""Delivery from the outbox: C-STORE due objects, retry with backoff, dead-letter.

A batch is claimed by pushing its rows' ``next_attempt_at`` forward by a lease in
one conditional UPDATE, so two workers never send the same row at once; a worker
that dies mid-send leaves the lease to expire and the batch is tried again
(deterministic UIDs make a repeated C-STORE harmless at the PACS).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select, update

from daemon.store import timeline
from daemon.config import DeliverySettings, DestinationSettings, Settings
from daemon.store.db import Database
from daemon.store.models import Delivery, DeliveryState, Study, utcnow
from dicom_io.sender import Destination, TLSParams, send

log = logging.getLogger(__name__)


@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    dead: int = 0


def backoff_seconds(attempts: int, policy: DeliverySettings, rng: random.Random | None = None) -> float:
    """Exponential backoff (first, doubling, capped) with ±20 % jitter."""
    base = min(policy.max_retry_seconds, policy.first_retry_seconds * 2 ** max(attempts - 1, 0))
    return base * (rng or random).uniform(0.8, 1.2)


def destination_of(d: DestinationSettings, calling_ae: str) -> Destination:
    tls = None
    if d.tls.enabled or d.tls.ca_file:
        tls = TLSParams(ca_file=str(d.tls.ca_file) if d.tls.ca_file else None,
                        cert_file=str(d.tls.cert_file) if d.tls.cert_file else None,
                        key_file=str(d.tls.key_file) if d.tls.key_file else None,
                        server_hostname=d.host)
    return Destination(d.ae_title, d.host, d.port, d.calling_ae_title or calling_ae, tls)


def _claim(db: Database, destination: str, policy: DeliverySettings, now: dt.datetime) -> list[Delivery]:
    lease = now + dt.timedelta(seconds=policy.lease_seconds)
    with db.session() as session:
        ids = session.scalars(
            select(Delivery.id)
            .where(Delivery.destination == destination, Delivery.state == DeliveryState.PENDING,
                   Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at, Delivery.id).limit(policy.batch_size)
            .with_for_update(skip_locked=True)  # PostgreSQL: concurrent claimers skip; SQLite: serialized
        ).all()
        if not ids:
            return []
        claimed = session.scalars(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.state == DeliveryState.PENDING,
                   Delivery.next_attempt_at <= now)
            .values(next_attempt_at=lease)
            .returning(Delivery.id)
        ).all()
        return list(session.scalars(select(Delivery).where(Delivery.id.in_(claimed))
                                    .order_by(Delivery.id)))


def deliver_due(db: Database, settings: Settings, destination: str) -> DeliveryReport:
    """Send everything due for ``destination``; record each outcome."""
    policy = settings.delivery
    now = utcnow()
    report = DeliveryReport()
    dest = next((d for d in settings.destinations if d.name == destination), None)
    rows = _claim(db, destination, policy, now)
    if not rows:
        return report
    if dest is None:
        outcomes = {r.sop_instance_uid: (None, f"destination {destination!r} is no longer configured")
                    for r in rows}
    else:
        sent = send([settings.data_dir / r.file_path for r in rows],
                    destination_of(dest, settings.listener.ae_title), timeout=policy.timeout_seconds)
        outcomes = {o.sop_instance_uid: (o.status, None if o.category != "failure" else
                                         (o.error or f"status 0x{(o.status or 0):04X}"))
                    for o in sent}
    done = utcnow()
    per_study: dict[tuple[int, int], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    with db.session() as session:
        for row in rows:
            row = session.merge(row)
            status, error = outcomes.get(row.sop_instance_uid, (None, "no outcome (file unreadable?)"))
            row.attempts += 1
            row.last_status = status
            key = (row.study_id, row.version)
            if error is None:
                row.state = DeliveryState.SENT
                row.sent_at = done
                row.last_error = None
                report.sent += 1
                per_study[key]["sent"].append(row.sop_instance_uid)
            elif done - row.created_at >= dt.timedelta(seconds=policy.give_up_after_seconds):
                row.state = DeliveryState.DEAD
                row.last_error = error
                report.dead += 1
                per_study[key]["dead"].append(error)
            else:
                row.last_error = error
                row.next_attempt_at = done + dt.timedelta(seconds=backoff_seconds(row.attempts, policy))
                report.failed += 1
                per_study[key]["failed"].append(error)
        for (study_id, version), kinds in per_study.items():
            study = session.get(Study, study_id)
            if study is None:
                continue
            if kinds["sent"]:
                timeline.record(session, study, "delivered", version=version,
                                destination=destination, objects=len(kinds["sent"]))
            if kinds["failed"]:
                timeline.record(session, study, "delivery_failed", version=version,
                                destination=destination, objects=len(kinds["failed"]),
                                reason=kinds["failed"][0])
            if kinds["dead"]:
                timeline.record(session, study, "dead_letter", version=version,
                                destination=destination, objects=len(kinds["dead"]),
                                reason=kinds["dead"][0])
    if report.failed or report.dead:
        log.warning("delivery to %s: %d sent, %d to retry, %d dead", destination, report.sent,
                    report.failed, report.dead)
    else:
        log.info("delivery to %s: %d sent", destination, report.sent)
    return report
