"""``pacsai serve`` restarts a worker that cannot start with growing delays, and says why.

The realistic case: the configuration file was edited into invalid TOML while the
service ran. The listener keeps its loaded settings; the worker, once it exits,
re-reads the file at each start and dies at once. A real ``pacsai serve`` with its
real worker; ``pacsai status`` asked from a separate process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pacsai_process import REPO, PacsaiProcess, wait_until

EXIT = re.compile(r"worker exited (with code (-?\d+)|\(killed by \w+\)) (within [\d.]+ s of its start"
                  r"|after \d+ s)(: [^\n]*?)?; restarting it in ([\d.]+) s")
GOOD = "[study]\nquiet_seconds = 1\n"
BROKEN = "[study\nquiet_seconds = 1\n"  # a missing bracket


def _state(data_dir: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((data_dir / "worker-supervisor.json").read_text())
    except (OSError, ValueError):
        return {}


def _status(data_dir: Path, port: int) -> dict:  # type: ignore[type-arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSAI_")}
    env.update({"PACSAI_STORAGE__DATA_DIR": str(data_dir), "PACSAI_STORAGE__MIN_FREE_BYTES": "0",
                "PACSAI_LISTENER__HOST": "127.0.0.1", "PACSAI_LISTENER__PORT": str(port)})
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout)


def test_a_worker_that_cannot_start_is_restarted_with_backoff_and_a_reason(tmp_path: Path) -> None:
    config = tmp_path / "pacsai.toml"
    config.write_text(GOOD)
    data = tmp_path / "data"
    with PacsaiProcess(data, config={"PACSAI_CONFIG": str(config)}) as serve:
        wait_until(lambda: " ready" in serve.log(), 90, 0.2)  # celery@...: ready.
        assert serve.proc is not None
        found = subprocess.run(["pgrep", "-P", str(serve.proc.pid), "-f", "[-]m worker"],
                               capture_output=True, text=True, check=True)
        worker_pid = int(found.stdout.split()[0])
        config.write_text(BROKEN)
        os.kill(worker_pid, signal.SIGTERM)  # it stops; its successors read the broken file

        seen: list[tuple[float, re.Match[str]]] = []

        def exits() -> bool:
            found = list(EXIT.finditer(serve.log()))
            for match in found[len(seen):]:
                seen.append((time.monotonic(), match))
            return len(seen) >= 4

        wait_until(exits, 60, 0.05)
        delays = [float(m.group(5)) for _, m in seen[:4]]
        assert delays == [1, 2, 4, 8], [m.group(0) for _, m in seen]
        for _, match in seen[1:4]:  # the worker that could not start, and why
            assert match.group(2) == "1", match.group(0)
            assert match.group(3).startswith("within"), match.group(0)
            assert "ConfigError" in match.group(0) and "cannot read configuration" in match.group(0)
        for (t0, m0), (t1, _) in zip(seen, seen[1:4]):
            # each try waits its delay (then a start of the worker's own) before it fails
            assert t1 - t0 >= float(m0.group(5)) - 0.3, (t1 - t0, m0.group(0))

        # now waiting 8 s for the next try: pacsai status says so, and why
        report = _status(data, serve.port)
        workers = next(c for c in report["checks"] if c["name"] == "workers")
        assert not workers["ok"] and not report["healthy"]
        assert re.search(r"supervised worker restarting, next try in \d+ s", workers["detail"])
        assert "exited with code 1 within" in workers["detail"]
        assert "ConfigError" in workers["detail"]

        config.write_text(GOOD)  # fixed: the next try starts a worker that stays up
        wait_until(lambda: _state(data).get("state") == "running"
                   and serve.log().count(" ready") >= 2, 60, 0.2)
        assert serve.proc is not None and serve.proc.poll() is None  # the listener never went
        report = _status(data, serve.port)
        workers = next(c for c in report["checks"] if c["name"] == "workers")
        assert "restarting" not in workers["detail"], workers
    assert not (data / "worker-supervisor.json").exists()  # a stopped serve leaves no state
