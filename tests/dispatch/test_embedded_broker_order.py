"""The embedded broker's order (priority, then first in first out) survives a reboot.

A reboot is simulated by the clocks the transport could read: ``time.monotonic_ns``
(which restarts near zero at boot) and ``time.time_ns`` (which goes on). Each "boot"
re-imports the transport module under those clocks, as a new process would, and
messages are put and taken through kombu's real channel on a real folder.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

import daemon.dispatch.embedded_broker as embedded

DAY = 86_400 * 10**9
WALL = 1_760_000_000 * 10**9  # some afternoon in 2025, in ns


@pytest.fixture
def boot(monkeypatch: pytest.MonkeyPatch) -> Iterator:  # type: ignore[type-arg]
    """``boot(uptime_ns, wall_ns)``: the transport as a process started at that moment
    sees it; the clocks then advance by 1 µs per reading."""

    def start(uptime: int, wall: int) -> None:
        mono = iter(range(uptime, uptime + 10**9, 1000))
        real = iter(range(wall, wall + 10**9, 1000))
        monkeypatch.setattr(time, "monotonic_ns", lambda: next(mono))
        monkeypatch.setattr(time, "time_ns", lambda: next(real))
        importlib.reload(embedded)

    yield start
    monkeypatch.undo()
    importlib.reload(embedded)


def _put(folder: Path, messages: list[tuple[str, int]]) -> None:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    with Connection("filesystem://", transport=embedded.TRANSPORT,
                    transport_options=options) as conn:
        channel = conn.channel()
        for name, priority in messages:
            channel._put("q", {"name": name, "properties": {"priority": priority}})


def _drain(folder: Path) -> list[str]:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    out = []
    with Connection("filesystem://", transport=embedded.TRANSPORT,
                    transport_options=options) as conn:
        channel = conn.channel()
        while True:
            try:
                out.append(channel._get("q")["name"])
            except Empty:
                return out


def test_messages_from_before_a_reboot_are_taken_first(tmp_path: Path, boot) -> None:  # type: ignore[no-untyped-def]
    # Boot 1 has been up for 30 days when it queues a routine backlog and a stat study.
    boot(30 * DAY, WALL)
    _put(tmp_path, [("routine-1", 5), ("routine-2", 5), ("stat-1", 0), ("routine-3", 5)])
    # The machine reboots an hour later: monotonic time starts again near zero.
    boot(5 * 10**9, WALL + 3600 * 10**9)
    _put(tmp_path, [("routine-4", 5), ("stat-2", 0)])
    # Boot 3 comes up with its real-time clock a day behind (a dead RTC battery, NTP not
    # yet synced): still after everything queued before.
    boot(3 * 10**9, WALL - DAY)
    _put(tmp_path, [("routine-5", 5), ("stat-3", 0)])

    assert _drain(tmp_path) == ["stat-1", "stat-2", "stat-3",
                                "routine-1", "routine-2", "routine-3", "routine-4", "routine-5"]


def test_a_clock_stepped_back_keeps_the_order_within_a_process(
        tmp_path: Path, boot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """And a reboot between the two halves (so the old monotonic stamps sort wrong)."""
    boot(30 * DAY, WALL)
    _put(tmp_path, [("a", 5)])
    boot(10**9, WALL + 10**12)
    _put(tmp_path, [("b", 5)])
    monkeypatch.setattr(time, "time_ns", lambda: WALL)  # NTP steps the wall clock back
    _put(tmp_path, [("c", 5), ("d", 5)])
    assert _drain(tmp_path) == ["a", "b", "c", "d"]
