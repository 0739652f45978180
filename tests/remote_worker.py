"""A ``pacsai worker --listener-url`` on "another host": its own data directory and
configuration, and an audit hook that refuses (and records) every file it would open under
the receiving node's data directory, so a test can show it read nothing there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pacsai_process import REPO, wait_until

_HOOK = '''
import os, sys
_forbidden = os.environ.get("PACSAI_TEST_FORBIDDEN_DIR")
if _forbidden:
    _forbidden = os.path.realpath(_forbidden) + os.sep
    _log = os.environ["PACSAI_TEST_FORBIDDEN_LOG"]
    _events = {"open", "os.listdir", "os.scandir", "os.chdir", "shutil.copyfile"}

    def _pacsai_test_hook(event, args):
        if event not in _events or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.realpath(os.path.abspath(os.fsdecode(args[0])))
        if (path + os.sep).startswith(_forbidden):
            fd = os.open(_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(fd, f"{os.getpid()} {event} {path}\\n".encode())
            os.close(fd)
            raise PermissionError(13, "the receiving host's data directory", path)

    sys.addaudithook(_pacsai_test_hook)
'''


class RemoteWorker:
    """``pacsai worker --listener-url URL --token TOKEN`` with a data directory of its own."""

    def __init__(self, data_dir: Path, *, listener_url: str, token: str, forbidden: Path,
                 config: dict[str, str], queues: str = "cpu,infer",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        hook_dir = data_dir.parent / f"{data_dir.name}-hook"
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(_HOOK)
        self.forbidden_log = data_dir.parent / f"{data_dir.name}-forbidden.log"
        self.log_path = data_dir.parent / f"{data_dir.name}-worker.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PACSAI_")},
            "PACSAI_STORAGE__DATA_DIR": str(data_dir),
            "PACSAI_STORAGE__MIN_FREE_BYTES": "0",
            "PACSAI_ADMIN__PORT": "0",
            "PACSAI_LOGGING__LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(hook_dir), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PACSAI_TEST_FORBIDDEN_DIR": str(forbidden),
            "PACSAI_TEST_FORBIDDEN_LOG": str(self.forbidden_log),
            **config,
        }
        self.cmd = [sys.executable, "-m", "daemon.cli", "worker", "--queues", queues,
                    "--concurrency", "1", "--listener-url", listener_url, "--token", token,
                    *extra_args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RemoteWorker":
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env,
                                     stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60) -> "RemoteWorker":
        wait_until(lambda: "ready." in self.log() or self._dead(), timeout, 0.1)
        assert not self._dead(), self.log()[-3000:]
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def forbidden_opens(self) -> list[str]:
        if not self.forbidden_log.exists():
            return []
        return self.forbidden_log.read_text().splitlines()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
