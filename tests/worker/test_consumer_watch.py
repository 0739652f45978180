"""The consumer watch's verdict: only an idle worker that takes none of the work waiting
for it, for the whole stall window, is declared stalled."""

from __future__ import annotations

from worker.consumer_watch import ConsumerWatch


def _watch(backlog: list[int | None], busy: list[bool]) -> tuple[ConsumerWatch, list[float]]:
    stalls: list[float] = []

    def read() -> int | None:
        value = backlog.pop(0)
        if value is None:
            raise ConnectionError("broker away")
        return value

    watch = ConsumerWatch(read, lambda: busy.pop(0), stall_seconds=10, period=1,
                          on_stall=lambda stalled, waiting: stalls.append(stalled))
    return watch, stalls


def test_idle_with_work_waiting_for_the_whole_window_is_a_stall() -> None:
    watch, stalls = _watch([3, 3, 3], [False] * 3)
    watch.received_at = -1.0
    assert not watch.check(0) and not watch.check(9)
    assert watch.check(10) and stalls == [10]


def test_busy_empty_receiving_or_unreadable_resets_the_window() -> None:
    watch, stalls = _watch([3, 0, 3, None, 3, 3, 3, 3], [False, False, False, False, False,
                                                          True, False, False])
    watch.received_at = -1.0
    assert not watch.check(0)
    assert not watch.check(8)  # nothing waits: it is not stalled, it has nothing to do
    assert not watch.check(9)  # waiting again: the window starts here
    assert not watch.check(15)  # the broker cannot be read: no verdict, window reset
    assert not watch.check(16)
    assert not watch.check(17)  # busy (a task reserved or running)
    assert not watch.check(18)
    watch.received()  # a task arrived meanwhile: it consumes
    assert not watch.check(40)
    assert stalls == []
