"""The ``pacsai`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from daemon import demo_cli, send_cli, train_cli
from daemon.cli_common import ConfigOpt, _logging, _settings, console, err
from daemon.config import masked_dump
from daemon.ops import commands

app = typer.Typer(help="pacsai: a DICOM AI plugin daemon for your PACS.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
studies_app = typer.Typer(help="Received studies and their timelines.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(studies_app, name="studies")
commands.register(app, studies_app)
app.command("send")(send_cli.send_command)
app.command("demo")(demo_cli.demo_command)

@config_app.command("check")
def config_check(
    config: ConfigOpt = None,
    reach: Annotated[Optional[bool], typer.Option(
        "--reach/--no-reach", help="Also connect to the database, the broker and (on a worker "
        "host) the receiving node; default: on a worker host (worker.listener_url set).")] = None,
) -> None:
    """Validate the configuration and print it (secrets masked); exit 3 if something named in
    it cannot be reached."""
    from daemon.ops.reachability import reach as reach_all
    from daemon.routing.rules import check_rules

    settings = _settings(config)
    console.print_json(json.dumps(masked_dump(settings)))
    _, warnings = check_rules(settings.routes, [p.name for p in settings.pipelines],
                              [d.name for d in settings.destinations])
    for warning in warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    if reach is None:
        reach = settings.worker.listener_url is not None
    if reach:
        checks = reach_all(settings)
        for c in checks:
            err.print(f"{'[green]ok[/green]  ' if c.ok else '[red]FAIL[/red]'} {c.name}: {c.detail}")
        if not all(c.ok for c in checks):
            raise typer.Exit(3)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply database migrations (the services also do at start; nothing else migrates)."""
    from daemon.store.db import Database

    settings = _settings(config)
    Database(settings.database_url).upgrade()
    console.print("database is up to date")


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run everything on this machine: listener, study tracking and a worker (embedded default)."""
    from daemon.service import serve as run

    settings = _settings(config)
    _logging(settings)
    run(settings, with_worker=True)


@app.command()
def listener(config: ConfigOpt = None) -> None:
    """Run the DICOM listener and study tracking only (workers run separately)."""
    from daemon.service import serve as run

    settings = _settings(config)
    _logging(settings)
    run(settings, with_worker=False)


@app.command()
def worker(
    config: ConfigOpt = None,
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume.")] = "cpu,infer",
    concurrency: Annotated[Optional[int], typer.Option(help="Worker processes (threads with --gpu).")] = None,
    gpu: Annotated[Optional[int], typer.Option(help="Bind to this GPU and consume gpu.N.")] = None,
    listener_url: Annotated[Optional[str], typer.Option(
        help="On another host: the receiving node's DICOMweb root (https://recv:8080/dicomweb); "
             "sets worker.listener_url.")] = None,
    token: Annotated[Optional[str], typer.Option(
        help="The receiving node's DICOMweb token (worker.listener_token; the configuration "
             "file or PACSAI_WORKER__LISTENER_TOKEN keep it out of the process list).")] = None,
    ca_file: Annotated[Optional[Path], typer.Option(
        help="CA bundle for the receiving node's certificate (worker.listener_ca_file).")] = None,
) -> None:
    """Run a Celery worker (replaces this process).

    ``--gpu N``: one process bound to GPU N (CUDA_VISIBLE_DEVICES set before anything can
    touch CUDA) consuming ``gpu.N`` with a thread pool, so the process that holds the CUDA
    context never forks; its threads share warm engines and the dynamic batcher.

    ``--listener-url``: a worker on another host. It fetches each study version from the
    receiving node (WADO-RS) and stores its results there (STOW-RS) before the job is done;
    it never consumes ``cpu`` (delivery reads the result files, which are on the receiving
    host: run ``pacsai serve``, or ``pacsai worker --queues cpu`` next to ``pacsai listener``,
    there).
    """
    from daemon.dispatch.tasks import DEFAULT_QUEUE as DELIVERY_QUEUE
    from daemon.service import worker_command, worker_env

    for name, value in (("LISTENER_URL", listener_url), ("LISTENER_TOKEN", token),
                        ("LISTENER_CA_FILE", str(ca_file.resolve()) if ca_file else None)):
        if value is not None:
            os.environ[f"PACSAI_WORKER__{name}"] = value  # the worker process reads them
    settings = _settings(config)
    qs = [q.strip() for q in queues.split(",") if q.strip()]
    env = worker_env(settings)
    pool = "prefork"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        env["PACSAI_WORKER_GPU"] = str(gpu)
        qs = [f"gpu.{gpu}"]
        pool = "threads"
    if settings.worker.listener_url and DELIVERY_QUEUE in qs:
        qs.remove(DELIVERY_QUEUE)
        if not qs:
            err.print(f"[red]error:[/red] a worker with a listener URL does not deliver (queue "
                      f"{DELIVERY_QUEUE}: the result files are on the receiving host); give it "
                      "inference queues")
            raise typer.Exit(2)
        err.print(f"queue {DELIVERY_QUEUE} (delivery) is left to the receiving host; "
                  f"consuming {','.join(qs)}")
    cmd = worker_command(settings, qs, concurrency or settings.worker.concurrency, pool=pool)
    os.execve(cmd[0], cmd, env)


@app.command()
def admin(config: ConfigOpt = None) -> None:
    """Run the admin service (dashboard, API, metrics) alone."""
    from daemon.service import serve_admin

    settings = _settings(config)
    if not settings.admin.port:
        err.print("[red]error:[/red] admin.port is 0 (admin service disabled)")
        raise typer.Exit(2)
    _logging(settings)
    serve_admin(settings)


app.add_typer(train_cli.app, name="train")


def main() -> None:  # pragma: no cover - console script
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
