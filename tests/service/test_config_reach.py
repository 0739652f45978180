"""``pacsai config check`` on a worker host: it reaches the listener, the broker and the database,
or says which one it cannot (exit 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pacsai_process import REPO, PacsaiProcess, free_port, wait_until
from peers import RedisServer


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "config", "check"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_worker_host_config_check_reaches_what_it_names(tmp_path: Path, pg_url: str) -> None:
    admin = free_port()
    with RedisServer(tmp_path / "redis") as redis, PacsaiProcess(
            tmp_path / "recv", command="listener", database_url=pg_url,
            config={"PACSAI_ADMIN__PORT": str(admin),
                    "PACSAI_BROKER__URL": redis.url}) as recv:
        token_file = recv.data_dir / "dicomweb-token"
        wait_until(token_file.exists, 20)
        worker_host = {**{k: v for k, v in os.environ.items() if not k.startswith("PACSAI_")},
                       "PACSAI_STORAGE__DATA_DIR": str(tmp_path / "w1"),
                       "PACSAI_DATABASE__URL": pg_url, "PACSAI_BROKER__URL": redis.url,
                       "PACSAI_WORKER__LISTENER_URL": f"http://127.0.0.1:{admin}/dicomweb",
                       "PACSAI_WORKER__LISTENER_TOKEN": token_file.read_text().strip()}
        good = _check(worker_host)
        assert good.returncode == 0, good.stderr
        assert all(f"ok   {n}" in good.stderr for n in ("database", "broker", "listener"))

        wrong = _check({**worker_host, "PACSAI_WORKER__LISTENER_TOKEN": "not-the-token",
                        "PACSAI_BROKER__URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert wrong.returncode == 3
    assert "FAIL broker" in wrong.stderr and "FAIL listener" in wrong.stderr
    assert "the token is refused" in wrong.stderr and "ok   database" in wrong.stderr
