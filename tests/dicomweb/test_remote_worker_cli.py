"""``pacsai worker --listener-url`` leaves delivery (queue cpu) to the receiving host: the
CLI drops it (and refuses a worker left with nothing), ``python -m worker`` refuses it, and
the settings a worker host needs (token, broker, database) are checked before anything runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app

URL = "http://127.0.0.1:9/dicomweb"


@pytest.fixture(autouse=True)
def worker_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in [k for k in os.environ if k.startswith("PACSAI_")]:
        monkeypatch.delenv(key)
    for key in ("LISTENER_URL", "LISTENER_TOKEN", "LISTENER_CA_FILE"):
        # the CLI sets these in os.environ itself: recorded here, so monkeypatch's undo (the
        # last teardown) removes them whatever the test did in between
        monkeypatch.setenv(f"PACSAI_WORKER__{key}", "")  # (delenv of an absent key records
        monkeypatch.delenv(f"PACSAI_WORKER__{key}")      # nothing to undo)
    monkeypatch.setenv("PACSAI_STORAGE__DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PACSAI_BROKER__URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("PACSAI_DATABASE__URL", "postgresql://x@127.0.0.1:9/x")
    yield
    for key in ("LISTENER_URL", "LISTENER_TOKEN", "LISTENER_CA_FILE"):  # set by the CLI itself
        os.environ.pop(f"PACSAI_WORKER__{key}", None)


def test_delivery_queue_is_refused_on_a_worker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    only_cpu = CliRunner().invoke(app, ["worker", "--queues", "cpu", "--listener-url", URL,
                                        "--token", "t"])
    assert only_cpu.exit_code == 2 and "does not deliver" in only_cpu.output
    from worker.__main__ import main

    monkeypatch.setenv("PACSAI_WORKER__LISTENER_URL", URL)
    monkeypatch.setenv("PACSAI_WORKER__LISTENER_TOKEN", "t")
    for argv in (["-Q", "infer,cpu"], ["--concurrency", "1"]):  # no -Q: Celery's default, cpu
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2


@pytest.mark.parametrize("args,env,says", [
    (["--listener-url", URL], {}, "listener_token"),
    (["--listener-url", "ftp://x", "--token", "t"], {}, "http(s) URL"),
    (["--listener-url", URL, "--token", "t"], {"PACSAI_BROKER__URL": ""},
     "needs broker.url and database.url"),
])
def test_a_worker_host_configuration_is_checked(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                env: dict[str, str], says: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(app, ["worker", *args])
    assert result.exit_code == 2 and says in result.output, result.output
