"""Celery tasks. They carry ids only; the database holds everything else."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter
from pathlib import Path

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure, worker_process_init, worker_ready
from pydicom import dcmread
from sqlalchemy import select

from daemon import redact
from daemon.config import PipelineSettings
from daemon.dispatch.tasks import TASK_DELIVER, TASK_PROCESS_STUDY, send_delivery
from daemon.ingest.spool import Spool
from daemon.store.db import Database
from daemon.store.models import Instance, Job, Study
from inference import ModelCache, default_models_dir
from worker import jobs, remote
from worker.analysis import NothingToAnalyse, analyse
from worker.batching import get_batcher
from worker.celery_app import app, settings
from worker.delivery import deliver_due
from worker.indexing import index_study
from worker.outputs import (previous_results, record_outputs, recorded_previous_results,
                            write_objects)
from worker.watchdog import Watchdog

log = logging.getLogger(__name__)

_db: Database | None = None
_models: ModelCache | None = None


def database() -> Database:
    """One engine per worker process, created after the fork."""
    global _db
    if _db is None:
        _db = Database(settings.database_url)
    return _db


def models() -> ModelCache:
    """Models are loaded once per worker process and kept warm."""
    global _models
    if _models is None:
        inf = settings.inference  # an InferenceSettings: the engines read it as it is
        _models = ModelCache(roots=[*inf.models_dirs, default_models_dir()], settings=inf)
    return _models


def batching_enabled() -> bool:
    """Dynamic batching pays where tasks share a process: thread-pool (GPU) workers."""
    mode = settings.inference.dynamic_batching
    if mode == "auto":
        return os.environ.get("PACSAI_WORKER_POOL") in ("threads", "gevent", "eventlet")
    return mode == "on"


def spool() -> Spool:
    return Spool(settings.spool_dir, min_free_bytes=0, fsync=False)


def _study_files(db: Database, study_id: int, version: int,
                 sp: Spool | None = None) -> tuple[str, str, list[Path]]:
    """The study's UID, incarnation, and the files of its instances up to ``version`` (in
    ``sp``: the spool, or a remote worker's fetched copy laid out the same)."""
    sp = sp or spool()
    with db.read() as session:
        study = session.get(Study, study_id)
        assert study is not None
        rels = session.scalars(select(Instance.file_path).where(
            Instance.study_id == study_id, Instance.version <= version)).all()
        return (study.study_instance_uid, study.first_received_at.isoformat(),
                [sp.path(r) for r in rels])


def _phi_of(db: Database, study_id: int) -> list[str]:
    """This study's patient data, to keep out of failure reasons."""
    with db.read() as session:
        s = session.get(Study, study_id)
        if s is None:
            return []
        return redact.phi_values(s.patient_name, s.patient_id, s.patient_birth_date,
                                 s.accession_number, s.study_description)


def run_pipeline(db: Database, job: Job, owner: jobs.Owner,
                 lost: threading.Event | None = None) -> dict[str, object]:
    """Index, analyse, write results and fill the outbox for one job; return event details.

    The findings, the outbox rows and the job's final state are committed in one
    transaction fenced by ``owner``: a job cancelled or re-queued meanwhile records and
    delivers nothing (:class:`jobs.LostOwnership`).
    """
    pipeline = next((p for p in settings.pipelines if p.name == job.pipeline), None)
    if pipeline is None:
        raise LookupError(f"pipeline {job.pipeline} is not configured")
    if not remote.enabled(settings):  # on the receiving host: the spool itself, no copy
        return _run(db, job, owner, lost, pipeline, spool())
    with db.read() as session:
        study = session.get(Study, job.study_id)
        assert study is not None
        study_uid = study.study_instance_uid
    copy = remote.fetch(settings, db, job.study_id, study_uid, job.version, job.id)
    try:
        return _run(db, job, owner, lost, pipeline, copy.spool)
    finally:
        copy.remove()


def _run(db: Database, job: Job, owner: jobs.Owner, lost: threading.Event | None,
         pipeline: PipelineSettings, sp: Spool) -> dict[str, object]:
    far = remote.enabled(settings)
    # a remote worker has only this version's instances: index those (later ones are not here)
    index_study(db, sp, job.study_id, up_to_version=job.version if far else None)
    study_uid, incarnation, paths = _study_files(db, job.study_id, job.version, sp)
    model = models().get(pipeline.model)
    batcher = None
    if batching_enabled():
        batcher = get_batcher(model, settings.inference.max_batch, settings.inference.max_delay_ms)
    analysis = analyse(model, paths, pipeline=pipeline.name, modalities=pipeline.modalities,
                       top_k=pipeline.top_k, study_uid=study_uid, version=job.version,
                       batch_size=settings.inference.max_batch,
                       predict=batcher.submit if batcher else None)
    result = analysis.result
    result.study_incarnation = incarnation
    result.supersedes = (recorded_previous_results(db, job.study_id, job.version, pipeline.name)
                         if far else previous_results(settings, study_uid, job.version,
                                                      pipeline.name, incarnation))
    if lost is not None and lost.is_set():
        raise jobs.LostOwnership(owner)
    evidence = {img.sop_instance_uid for f in result.findings for img in f.images}
    sources = [dcmread(c.path) for c in analysis.candidates if c.sop_instance_uid in evidence]
    written = write_objects(settings, pipeline, result, sources)
    try:
        if far:  # the results must be on the receiving node before the outbox points at them
            if lost is not None and lost.is_set():
                raise jobs.LostOwnership(owner)
            try:
                remote.store(settings, study_uid, [w.path for w in written],
                             job_id=job.id, attempt=owner.attempt)
            except remote.StaleAttempt:
                raise jobs.LostOwnership(owner) from None
        t = analysis.timings
        reasons = Counter(s.reason for s in result.skipped)
        detail: dict[str, object] = {
            "images": t.images, "skipped": dict(reasons), "objects": len(written),
            "decode_s": round(t.decode_s, 3), "inference_s": round(t.inference_s, 3),
            "model": f"{model.name} {model.version}", "backend": model.backend,
            "positive": [f.label.meaning for f in result.findings if f.present],
            **({"batching": {"batches": batcher.stats.batches,
                             "mean_size": round(batcher.stats.mean_batch_size, 2)}}
               if batcher else {})}
        with jobs.outcome(db, owner, detail=detail) as (session, study):
            detail["deliveries"] = record_outputs(
                session, study, settings, version=job.version, job_id=job.id,
                model_name=model.name, model_version=model.version, backend=model.backend,
                result=result, written=written, inference_ms=t.inference_s * 1000,
                images=t.images, destinations=job.destinations,
            )
    finally:
        if far:
            remote.remove_local(settings, [w.path for w in written])
    return detail


_watchdog: Watchdog | None = None


def watchdog() -> Watchdog | None:
    """Time limits for pools that enforce none (threads: GPU workers); None under prefork."""
    global _watchdog
    if os.environ.get("PACSAI_WORKER_POOL") not in ("threads", "solo", "gevent", "eventlet"):
        return None
    if _watchdog is None:
        w = settings.worker
        _watchdog = Watchdog(w.task_soft_time_limit, w.task_time_limit)
    return _watchdog


def _limits(owner: jobs.Owner, label: str) -> contextlib.AbstractContextManager[None]:
    dog = watchdog()
    if dog is None:
        return contextlib.nullcontext()
    hard = settings.worker.task_time_limit
    return dog.watch(label, lambda: jobs.finish(
        database(), owner, error=f"hard time limit ({hard:g} s) exceeded: the model did not "
                                 "return; the worker process was replaced"))


@app.task(name=TASK_PROCESS_STUDY, bind=True)
def process_study(self: Task, job_id: int, study_id: int, version: int) -> None:
    """Run one study version through one pipeline, then ring for delivery."""
    db = database()
    claimed = jobs.claim(db, job_id, self.request.id or "", settings.worker.max_attempts,
                         worker=self.request.hostname or "")
    if claimed is None:
        log.info("job %d is not claimable (finished, held elsewhere, or re-sent as another "
                 "task); message dropped", job_id)
        return
    job, owner = claimed
    label = f"job {job_id} attempt {owner.attempt}"
    try:
        with jobs.heartbeat(db, owner, settings.worker.heartbeat_seconds) as lost, \
                _limits(owner, label):
            detail = run_pipeline(db, job, owner, lost)
    except jobs.LostOwnership:
        log.warning("%s: the job was cancelled or handed to another attempt meanwhile; "
                    "its results are discarded (nothing recorded or delivered)", label)
        return
    except NothingToAnalyse as exc:
        reasons = dict(Counter(s.reason for s in exc.skipped))
        undecodable = [r for r in reasons if r.startswith("cannot decode")]
        known = _phi_of(db, study_id)
        if undecodable:  # images were meant for the model but none could be read
            jobs.finish(db, owner, error=redact.scrub(
                f"no image could be decoded: {undecodable[0]}", known)[:2000],
                error_detail=undecodable[0][:4000],
                skipped={redact.scrub(k, known): v for k, v in reasons.items()})
        else:  # nothing here is for this model: recorded, not a failure
            jobs.finish(db, owner, images=0, note=redact.scrub(str(exc), known),
                        skipped={redact.scrub(k, known): v for k, v in reasons.items()})
        log.info("job %d: %s", job_id, redact.scrub(str(exc), known))
        return
    except SoftTimeLimitExceeded:
        jobs.finish(db, owner, error="soft time limit "
                    f"({settings.worker.task_soft_time_limit:g} s) exceeded")
        return
    except Exception as exc:  # noqa: BLE001 - becomes the job's failure reason
        why = redact.reason(exc, _phi_of(db, study_id), limit=2000)
        log.error("job %d failed: %s", job_id, why)
        log.debug("job %d failure", job_id, exc_info=True)
        jobs.finish(db, owner, error=why, error_detail=redact.detail(exc))
        return
    log.info("job %d: study %d v%d through %s: %s images, %s objects", job_id, study_id, version,
             job.pipeline, detail["images"], detail["objects"])
    if detail["deliveries"]:
        for dest in settings.destinations:
            if job.destinations is None or dest.name in job.destinations:
                send_delivery(app, dest.name)


def warm_models() -> None:
    """Load every configured pipeline's model now, not on the first study."""
    for pipeline in settings.pipelines:
        try:
            models().get(pipeline.model)
        except Exception:  # noqa: BLE001 - the job will fail with the reason; keep serving
            log.exception("pipeline %s: model %s cannot be loaded", pipeline.name, pipeline.model)


@worker_process_init.connect
def _warm_pool_process(**_: object) -> None:
    warm_models()


@worker_ready.connect
def _warm_threads_pool(sender: object = None, **_: object) -> None:
    if remote.enabled(settings):  # copies a killed worker of this host left behind
        remote.clear_stale(settings, older_than=2 * settings.worker.task_time_limit)
    pool = getattr(sender, "pool", None)
    if "prefork" not in type(pool).__module__:  # prefork children warm themselves
        warm_models()


@task_failure.connect
def _hard_time_limit(sender: Task | None = None, exception: BaseException | None = None,
                     task_id: str | None = None, kwargs: dict | None = None, **_: object) -> None:
    """The pool killed a task at its hard limit: the job fails with that reason.

    Runs in the worker's main process (which forks pool children), so it uses a
    short-lived engine of its own rather than a connection a child could inherit. Only
    the attempt of the killed task is failed (the job may have been handed on since).
    """
    if not isinstance(exception, TimeLimitExceeded) or sender is None \
            or sender.name != TASK_PROCESS_STUDY or not kwargs or not task_id:
        return
    db = Database(settings.database_url)
    try:
        jobs.fail_running(db, kwargs["job_id"], task_id,
                          f"hard time limit ({settings.worker.task_time_limit:g} s) exceeded: "
                          "the model did not return; the worker process was replaced")
    finally:
        db.dispose()


@app.task(name=TASK_DELIVER)
def deliver(destination: str) -> None:
    """Send what is due for one destination (batches until nothing is due).

    Delivery reads the result files under data_dir/results, so it runs on the receiving host
    only: a remote worker (``listener_url``) never consumes its queue (``pacsai worker`` drops
    ``cpu`` there and ``python -m worker`` refuses it); should one get the task anyway, it
    leaves the outbox alone for the receiving host's worker and the reconciler.
    """
    if remote.enabled(settings):
        log.error("a delivery task reached a worker with worker.listener_url set (it holds no "
                  "result files); left for the receiving host")
        return
    db = database()
    for _ in range(50):
        report = deliver_due(db, settings, destination)
        if report.sent + report.failed + report.dead == 0:
            return
