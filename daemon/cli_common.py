"""What every ``pacsai`` command module shares: the --config option, the consoles, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from daemon.config import ConfigError, Settings, load_settings

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="pacsai.toml (default: $PACSAI_CONFIG, else built-in defaults)."),
]

console = Console()
err = Console(stderr=True, soft_wrap=True)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _logging(settings: Settings) -> None:
    from daemon.logs import configure_logging

    configure_logging(settings.logging.level, json_logs=settings.logging.json_logs)
