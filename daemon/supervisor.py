"""The worker ``pacsai serve`` supervises: restarted with backoff when it exits, and why.

A worker that exits is started again after a delay that doubles with each exit in a
row (1 s, 2 s, 4 s ... at most 60 s); one that stayed up ``stable_seconds`` starts
the count again. Its stderr passes through to ours line by line (the journal sees
the same as before), and its last line that reads like a cause (a traceback's last
line, an error) is kept: that, the exit code and how long it ran are the reason
logged at each exit. The state (running, or restarting with the
next try and the reason) is written to ``<data_dir>/worker-supervisor.json`` so that
``pacsai status`` and ``/readyz`` can say "worker restarting, next try in N s".
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

STATE_FILE = "worker-supervisor.json"


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE


_ALARMING = re.compile(r"error|exception|critical|fatal|cannot|denied|killed|abort", re.I)


def _reason_line(tail: collections.deque[str]) -> str:
    """The last line of the worker's stderr that reads like a cause (a traceback's last
    line, an error log line); "" when there is none (a clean shutdown's INFO lines)."""
    for line in reversed(tail):
        if _ALARMING.search(line):
            return line
    return ""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"exited (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"exited (killed by signal {-code})"
    return f"exited with code {code}"


class WorkerSupervisor:
    """Start, watch and restart one worker process; call :meth:`poll` from a loop."""

    def __init__(self, cmd: list[str], env: dict[str, str], state_file: Path | None, *,
                 first_delay: float = 1.0, max_delay: float = 60.0,
                 stable_seconds: float = 60.0,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.cmd, self.env, self.state_file = cmd, env, state_file
        self.first_delay, self.max_delay = first_delay, max_delay
        self.stable_seconds = stable_seconds
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.next_start = 0.0  # monotonic; 0: start at once
        self.failures = 0  # exits in a row, each within stable_seconds of its start
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self._reader: threading.Thread | None = None

    # -- the loop --------------------------------------------------------------------------
    def poll(self) -> None:
        """Start the worker when due; notice an exit and schedule the next try."""
        now = time.monotonic()
        if self.proc is None:
            if now >= self.next_start:
                self._start()
            return
        code = self.proc.poll()
        if code is None:
            if self.failures and now - self.started_at >= self.stable_seconds:
                log.info("worker up for %.0f s again; restart backoff reset", now - self.started_at)
                self.failures = 0
                self._write_state()
            return
        self._exited(code, now)

    def seconds_to_next_start(self) -> float | None:
        """How long until the next try, while waiting for one (else None)."""
        if self.proc is not None:
            return None
        return max(0.0, self.next_start - time.monotonic())

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the worker (SIGKILL after ``timeout``) and remove the state file."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._reader is not None:
            self._reader.join(2)
        if self.state_file is not None:
            try:
                self.state_file.unlink()
            except OSError:
                pass

    # -- inside ----------------------------------------------------------------------------
    def _start(self) -> None:
        self._tail.clear()
        try:
            self.proc = subprocess.Popen(self.cmd, env=self.env, preexec_fn=self.preexec_fn,
                                         stderr=subprocess.PIPE)
        except OSError as exc:  # the interpreter itself cannot be run
            self.proc = None
            self._tail.append(f"cannot start the worker: {exc}")
            now = time.monotonic()
            self._exited(127, now, started=now)
            return
        self.started_at = time.monotonic()
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._pass_through, args=(self.proc.stderr,),
                                        name="worker-stderr", daemon=True)
        self._reader.start()
        if self.restarts or self.failures:
            log.info("worker started again (pid %d)", self.proc.pid)
        self._write_state()

    def _pass_through(self, stream: IO[bytes]) -> None:
        out = getattr(sys.stderr, "buffer", None)
        for line in iter(stream.readline, b""):
            try:
                if out is not None:
                    out.write(line)
                    out.flush()
                else:
                    sys.stderr.write(line.decode("utf-8", "replace"))
            except (OSError, ValueError):
                pass  # our stderr is gone: keep reading so the worker never blocks
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._tail.append(text)
        stream.close()

    def _exited(self, code: int, now: float, *, started: float | None = None) -> None:
        ran = now - (self.started_at if started is None else started)
        if self._reader is not None:
            self._reader.join(0.5)  # the last lines it wrote
            self._reader = None
        self.proc = None
        if ran >= self.stable_seconds:
            self.failures = 0
        self.failures += 1
        self.restarts += 1
        delay = min(self.max_delay, self.first_delay * 2 ** (self.failures - 1))
        self.next_start = now + delay
        last = _reason_line(self._tail)[:300]
        when = (f"within {ran:.1f} s of its start" if ran < self.stable_seconds
                else f"after {ran:.0f} s")
        reason = f"{_describe_exit(code)} {when}" + (f": {last}" if last else "")
        self.last_exit = {"code": code, "ran_seconds": round(ran, 1), "reason": reason,
                          "at": time.time()}
        log.error("worker %s; restarting it in %g s (%d exit(s) in a row)", reason, delay,
                  self.failures)
        self._write_state(next_start_at=time.time() + delay)

    def _write_state(self, *, next_start_at: float | None = None) -> None:
        if self.state_file is None:
            return
        state = {
            "supervisor_pid": os.getpid(),
            "state": "restarting" if self.proc is None else "running",
            "worker_pid": self.proc.pid if self.proc is not None else None,
            "next_start_at": next_start_at,
            "exits_in_a_row": self.failures,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }
        partial = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.part")
        try:
            partial.write_text(json.dumps(state))
            os.replace(partial, self.state_file)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc)


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The supervisor's state, if a ``pacsai serve`` on this machine is running one."""
    try:
        state = json.loads(state_path(data_dir).read_text())
        pid = int(state["supervisor_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left by a serve that died: not current
    except PermissionError:
        pass  # alive, another user's
    return state


def restarting_detail(state: dict[str, Any], now: float | None = None) -> str | None:
    """"worker restarting, next try in N s: <reason>" while the worker is down, else None."""
    if state.get("state") != "restarting":
        return None
    now = time.time() if now is None else now
    at = state.get("next_start_at")
    when = f"next try in {max(0, round(at - now))} s" if at else "next try soon"
    reason = (state.get("last_exit") or {}).get("reason") or "it exited"
    return (f"supervised worker restarting, {when} ({state.get('exits_in_a_row', 1)} exit(s) "
            f"in a row; last: {reason})")
