"""The operator's commands: ``pacsai status``, ``studies``, ``retry``, ``reroute``, ``cancel``,
``resend``, ``purge`` (registered on the main app by :mod:`daemon.cli`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from daemon.cli_common import ConfigOpt, _settings, console, err
from daemon.config import Settings


def register(app: typer.Typer, studies_app: typer.Typer) -> None:
    """Add these commands to the ``pacsai`` app."""
    app.command()(status)
    studies_app.command("list")(studies_list)
    studies_app.command("show")(studies_show)
    app.command()(retry)
    app.command()(reroute)
    app.command()(cancel)
    app.command()(resend)
    app.command()(purge)


def status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Health checks, queues, workers and recent failures (no patient data).

    Exit status: 0 healthy, 1 degraded (a check fails), 2 bad configuration,
    3 the database cannot be read.
    """
    from daemon.ops.status import DatabaseUnreadable, collect

    settings = _settings(config)
    try:
        report = collect(settings)
    except DatabaseUnreadable as exc:
        if as_json:
            print(json.dumps({"healthy": False, "error": f"cannot read the database: {exc}"}))
        else:
            err.print(f"[red]error:[/red] cannot read the database: {exc}")
        raise typer.Exit(3) from None
    if as_json:
        print(json.dumps(report, default=str))
    else:
        _print_status(report)
    raise typer.Exit(0 if report["healthy"] else 1)


def _print_status(report: dict) -> None:  # type: ignore[type-arg]
    health = Table(title="Health " + ("[green]ok[/green]" if report["healthy"]
                                      else "[red]degraded[/red]"))
    for col in ("check", "ok", "detail"):
        health.add_column(col)
    for c in report["checks"]:
        health.add_row(c["name"], "[green]yes[/green]" if c["ok"] else "[red]NO[/red]",
                       c["detail"])
    console.print(health)
    queues = Table(title="Queues")
    for col in ("queue", "queued", "running", "broker", "workers"):
        queues.add_column(col, justify="left" if col == "queue" else "right")
    for q in report["queues"]:
        queues.add_row(q["queue"], str(q["queued"]), str(q["running"]),
                       "?" if q["broker_messages"] is None else str(q["broker_messages"]),
                       str(q["workers"]))
    console.print(queues)
    states = Table(title="Studies by state")
    states.add_column("state")
    states.add_column("studies", justify="right")
    for state, n in sorted(report["studies_by_state"].items()):
        states.add_row(state, str(n))
    console.print(states)
    if report["workers"]:
        workers = Table(title="Workers")
        for col in ("worker", "queues", "active", "gpu"):
            workers.add_column(col)
        for w in report["workers"]:
            workers.add_row(w["name"], ",".join(w["queues"]), str(w["active"]),
                            str(w["gpu"].get("device") or "-"))
        console.print(workers)
    else:
        console.print("workers: none answered")
    if report["recent_failures"] or report["dead_deliveries"]:
        fails = Table(title="Recent failures")
        for col in ("item", "study", "error"):
            fails.add_column(col)
        for f in report["recent_failures"]:
            fails.add_row(f"job {f['job']}", str(f["study"]), (f["error"] or "")[:100])
        for d in report["dead_deliveries"]:
            fails.add_row(f"delivery {d['delivery']} -> {d['destination']}", str(d["study"]),
                          (d["error"] or "")[:100])
        console.print(fails)
    last = report["last_received"]
    if last:
        console.print(
            f"last received: study {last['id']} ({last['modalities'] or '?'}, "
            f"{last['num_instances']} instances) at {last['last_received_at']} "
            f"from {last['calling_aet'] or '?'}, state {last['state']}"
        )
    else:
        console.print("no study received yet")


def _db(settings: Settings, *, write: bool = False):  # type: ignore[no-untyped-def]
    """The database, never migrated here (only the services' start and ``pacsai db
    upgrade`` migrate). A schema that is behind is a warning for reads and refuses
    actions (exit 3); an unreachable database is exit 3."""
    from daemon.store.db import Database

    db = Database(settings.database_url)
    try:
        db.ping()
        problem = db.schema_problem()
    except Exception as exc:  # noqa: BLE001
        db.dispose()
        err.print(f"[red]error:[/red] cannot read the database: {str(exc).splitlines()[0]}")
        raise typer.Exit(3) from None
    if problem and write:
        db.dispose()
        err.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(3)
    if problem:
        err.print(f"[yellow]warning:[/yellow] {problem}")
    db.pacsai_schema_problem = problem
    return db


def _read(db, fn):  # type: ignore[no-untyped-def]
    """``fn()`` on ``db``; a failure is exit 3 (naming a schema behind, if it is)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        problem = getattr(db, "pacsai_schema_problem", None)
        err.print(f"[red]error:[/red] cannot read the database: {str(exc).splitlines()[0]}"
                  + (f" ({problem})" if problem else ""))
        raise typer.Exit(3) from None
    finally:
        db.dispose()


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no passwd entry (containers)
        return f"cli:uid{os.getuid()}"


def studies_list(
    config: ConfigOpt = None,
    state: Annotated[Optional[str], typer.Option(help="Only studies in this state.")] = None,
    hours: Annotated[Optional[float], typer.Option(help="Received in the last N hours.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Latest studies with their state (no patient data)."""
    import datetime as dt

    from daemon.ops import reports

    settings = _settings(config)
    db = _db(settings)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours) if hours else None
    rows = _read(db, lambda: reports.list_studies(db, state=state, since=since, limit=limit))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="Studies")
    for col in ("id", "state", "v", "modalities", "instances", "from", "last received"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), r["state"], str(r["version"]), r["modalities"] or "",
                      str(r["num_instances"]), r["calling_aet"], r["last_received_at"] or "")
    console.print(table)


def studies_show(
    study_id: Annotated[int, typer.Argument(help="Study id (from 'studies list').")],
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One study: its timeline, jobs and deliveries (no patient data)."""
    from daemon.ops import reports

    settings = _settings(config)
    db = _db(settings)
    detail = _read(db, lambda: reports.study_detail(db, study_id))
    if detail is None:
        err.print(f"[red]error:[/red] study {study_id} does not exist")
        raise typer.Exit(4)
    if as_json:
        print(json.dumps(detail))
        return
    console.print(f"study {detail['id']}: {detail['state']}, version {detail['version']}, "
                  f"{detail['num_instances']} instances ({detail['modalities'] or '?'})")
    table = Table(title="Timeline")
    for col in ("at", "v", "event", "job", "detail"):
        table.add_column(col)
    for e in detail["timeline"]:
        table.add_row(e["at"], str(e["version"]), e["kind"], str(e["job_id"] or ""),
                      json.dumps(e["detail"])[:80])
    console.print(table)
    for j in detail["jobs"]:
        console.print(f"job {j['id']} ({j['queue']}): {j['state']}, {j['attempts']} attempt(s)"
                      + (f", error: {j['error']}" if j["error"] else ""))
    for d in detail["deliveries"]:
        console.print(f"delivery {d['id']} -> {d['destination']}: {d['state']}")


def _act(action: str, config: Path | None, target: int) -> None:
    from daemon.ops import operations

    settings = _settings(config)
    db = _db(settings, write=True)
    try:
        if action in ("retry", "reroute"):
            from daemon.dispatch.doorbell import Dispatcher
            from daemon.dispatch.tasks import make_celery

            send = Dispatcher(make_celery(settings, name="pacsai-cli"), db)
            if action == "retry":
                operations.retry_job(db, target, _actor(), send)
            else:
                jobs = operations.reroute_study(db, target, _actor(), settings.router(),
                                                settings.queues.inference, send)
                console.print(f"queued job(s): {', '.join(str(j.job_id) for j in jobs)}")
        elif action == "cancel":
            operations.cancel_job(db, target, _actor())
        else:
            operations.resend_delivery(db, target, _actor())
    except operations.NotFound as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(4) from None
    except operations.Conflict as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(5) from None
    finally:
        db.dispose()
    console.print(f"{action}: done")


def retry(job_id: Annotated[int, typer.Argument(help="A failed or cancelled job.")],
          config: ConfigOpt = None) -> None:
    """Queue a failed or cancelled job again (exit 4: no such job, 5: not retryable)."""
    _act("retry", config, job_id)


def reroute(study_id: Annotated[int, typer.Argument(help="A study in state not_routed.")],
            config: ConfigOpt = None) -> None:
    """Apply the routing rules of this configuration to a not-routed study and queue its jobs
    (exit 4: no such study, 5: not in state not_routed, or still no rule matches)."""
    _act("reroute", config, study_id)


def cancel(job_id: Annotated[int, typer.Argument(help="A queued or running job.")],
           config: ConfigOpt = None) -> None:
    """Cancel a queued or running job (exit 4: no such job, 5: not cancellable)."""
    _act("cancel", config, job_id)


def resend(delivery_id: Annotated[int, typer.Argument(help="A dead delivery.")],
           config: ConfigOpt = None) -> None:
    """Put a dead delivery back in the outbox (exit 4: no such delivery, 5: not dead)."""
    _act("resend", config, delivery_id)


def purge(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Apply the retention policy now (what the listener does every retention.interval)."""
    from dataclasses import asdict

    from daemon.ops.retention import purge as run

    settings = _settings(config)
    db = _db(settings, write=not dry_run)
    try:
        report = run(settings, db, actor=_actor(), dry_run=dry_run)
    finally:
        db.dispose()
    if as_json:
        print(json.dumps(asdict(report)))
        return
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb} the spool files of {len(report.spool_studies)} studies "
                  f"({report.files_removed} files, {report.bytes_freed} B) and the rows of "
                  f"{len(report.rows_studies)} studies")
