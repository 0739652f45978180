"""The spool: atomic, durable, ours-only file names, disk floor, permissions."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.ingest.spool import Spool, SpoolFull, StoreOutcome


def test_hostile_uids_never_reach_the_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    stored = spool.store("../../../tmp", "../../etc/passwd", [b"DICM", b"data"])
    path = spool.path(stored.relative_path).resolve()
    assert path.is_relative_to((tmp_path / "spool").resolve())
    assert "passwd" not in stored.relative_path and ".." not in stored.relative_path
    assert path.read_bytes() == b"DICMdata"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_identical_and_replaced(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.store("1.2", "1.2.3", [b"abc"]).outcome is StoreOutcome.NEW
    assert spool.store("1.2", "1.2.3", [b"ab", b"c"]).outcome is StoreOutcome.IDENTICAL
    again = spool.store("1.2", "1.2.3", [b"abd"])
    assert again.outcome is StoreOutcome.REPLACED
    assert spool.path(again.relative_path).read_bytes() == b"abd"
    assert list(spool.iter_files()) == [again.relative_path]
    assert not any(spool.tmp.iterdir())


def test_floor_refuses_before_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=1 << 60)
    with pytest.raises(SpoolFull):
        spool.store("1.2", "1.2.3", [b"x" * 1000])
    assert list(spool.iter_files()) == [] and not any(spool.tmp.iterdir())


def test_real_full_disk_leaves_nothing_half_written(small_tmpfs: Callable[[str], Path]) -> None:
    """A tmpfs of 1 MiB: the write that hits ENOSPC is refused and cleaned up."""
    spool = Spool(small_tmpfs("1m") / "spool", min_free_bytes=0)
    kept = []
    with pytest.raises(SpoolFull):
        for i in range(20):
            kept.append(spool.store("1.2", f"1.2.{i}", [os.urandom(200_000)]))
    assert len(kept) >= 3
    assert not any(spool.tmp.iterdir()), "a partial file was left behind"
    assert sorted(spool.iter_files()) == sorted(s.relative_path for s in kept)

def test_clear_tmp(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.tmp / "x.part").write_bytes(b"partial")
    assert spool.clear_tmp() == 1
    assert not any(spool.tmp.iterdir())
