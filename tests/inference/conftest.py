"""Make the repository root importable ahead of the test folders.

``tests/conftest.py`` puts ``tests/`` first on ``sys.path``; without the repository root on the
path too, ``tests/inference`` would be imported as a namespace package named ``inference``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)
for name in ("inference", "daemon", "dicom_io"):
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__file__", None) is None:  # namespace shadow
        del sys.modules[name]
