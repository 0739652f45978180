"""``pacsai send``: C-STORE files or folders to any AE, with a progress bar and a clear line
for every instance the peer refused (a first test of a listener, or a manual re-send)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicom_io.sender import Destination, InstanceOutcome, TLSParams, send


def files_of(paths: list[Path]) -> list[Path]:
    """The files named, and every file under the folders named (sorted, hidden ones skipped)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*")
                          if f.is_file() and not any(part.startswith(".") for part in f.parts))
        elif p.is_file():
            out.append(p)
        else:
            raise typer.BadParameter(f"{p} is neither a file nor a folder")
    return out


def send_command(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    host: Annotated[str, typer.Option(help="The peer's host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The peer's port.")] = 11112,
    aet: Annotated[str, typer.Option("--aet", help="The peer's AE title (called AE).")] = "PACSAI",
    calling: Annotated[str, typer.Option(help="Our AE title (calling AE).")] = "PACSAISEND",
    tls_ca: Annotated[Optional[Path], typer.Option(help="CA bundle: send over DICOM TLS.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for association and answers.")] = 30.0,
) -> None:
    """Send DICOM files to a C-STORE SCP (exit 1 when any instance was refused or unreadable)."""
    files = files_of(paths)
    if not files:
        typer.echo("nothing to send")
        raise typer.Exit(1)
    tls = TLSParams(ca_file=str(tls_ca), server_hostname=host) if tls_ca else None
    destination = Destination(ae_title=aet, host=host, port=port, calling_ae=calling, tls=tls)
    problems: list[InstanceOutcome] = []
    columns = (TextColumn("sending to {task.fields[peer]}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("send", total=len(files), peer=f"{aet}@{host}:{port}")

        def one(outcome: InstanceOutcome) -> None:
            bar.advance(task)
            if outcome.category != "success":
                problems.append(outcome)

        outcomes = send(files, destination, timeout=timeout, progress=one)
    ok = sum(o.category == "success" for o in outcomes)
    warned = sum(o.category == "warning" for o in outcomes)
    for o in problems:
        typer.echo(f"{'warning' if o.category == 'warning' else 'refused'}: {o.sop_instance_uid}: "
                   f"{o.error or 'no answer'}", err=True)
    typer.echo(f"{ok} stored, {warned} with a warning, {len(files) - ok - warned} not stored, "
               f"of {len(files)} file(s)")
    if ok + warned < len(files):
        raise typer.Exit(1)
