"""``pacsai demo`` against a running ``pacsai serve``: findings, result objects, PNGs, dashboard."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from pacsai_process import REPO, PacsaiProcess, free_port


def test_demo_sends_a_chest_study_and_shows_what_came_back(tmp_path: Path) -> None:
    admin = free_port()
    with PacsaiProcess(tmp_path / "data", config={"PACSAI_ADMIN__PORT": str(admin)}) as proc:
        out = subprocess.run([sys.executable, "-m", "daemon.cli", "demo", "--timeout", "120"],
                             cwd=REPO, env=proc.env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert re.search(r"study \d+: done after", text), text
    assert re.search(r"chest-cxr-\S+: .+ \d\.\d{3} \(threshold \d\.\d{3}\) -> (PRESENT|absent)", text)
    assert "structured report (TID 1500, Comprehensive 3D SR)" in text
    pngs = re.findall(r"as PNG: (\S+\.png)", text)
    assert pngs and all(Image.open(p).mode == "RGB" for p in pngs)
    assert f"dashboard: http://127.0.0.1:{admin}/#token=" in text
    assert "Synthetic" not in text  # no patient name printed
