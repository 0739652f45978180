"""Dynamic batching for the inference worker (as Triton does it).

A worker bound to a GPU runs one process with a thread pool; each thread analyses one
study. Their images go through one :class:`DynamicBatcher` per model, which packs images
from concurrent callers into engine batches of up to ``max_batch`` and runs a batch when it
is full or when its oldest image has waited ``max_delay_ms``. One background thread makes
the engine calls, so a GPU sees one call at a time per model.

    batcher = get_batcher(model, max_batch=16, max_delay_ms=2)
    results = batcher.submit(images)   # [N, C, H, W] float -> N ImageResults, in order
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from inference.model import ImageResult, Model

log = logging.getLogger(__name__)

BatchHook = Callable[[int, float, float], None]
"""Called after each engine call with (batch size, oldest image's wait s, engine time s)."""


class BatcherClosed(RuntimeError):
    """The batcher was closed before (or while) the request was waiting."""


@dataclass(frozen=True)
class BatchStats:
    """A snapshot of what a batcher did since it started."""

    batches: int = 0
    images: int = 0
    requests: int = 0
    failed_batches: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> number of batches
    wait_s_total: float = 0.0  # sum over images of (batch start - image enqueued)
    engine_s_total: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.images / self.batches if self.batches else 0.0

    @property
    def mean_wait_s(self) -> float:
        """Mean time an image waited in the queue before its engine call started."""
        return self.wait_s_total / self.images if self.images else 0.0


class _Request:
    """One caller's images; filled in by the batching thread."""

    __slots__ = ("images", "results", "remaining", "error", "done", "enqueued")

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.results: list[ImageResult | None] = [None] * len(images)
        self.remaining = len(images)
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.enqueued = time.monotonic()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass
class _Segment:
    """Images ``start:stop`` of a request still waiting to be batched."""

    request: _Request
    start: int
    stop: int


class DynamicBatcher:
    """Packs images of concurrent :meth:`submit` calls into engine batches of one model."""

    def __init__(self, model: Model, max_batch: int, max_delay_ms: float,
                 on_batch: BatchHook | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_delay_ms < 0:
            raise ValueError("max_delay_ms must be >= 0")
        engine_max = model.engine.max_batch
        self.model = model
        self.max_batch = min(max_batch, engine_max) if engine_max else max_batch
        self.max_delay = max_delay_ms / 1000.0
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._queue: deque[_Segment] = deque()
        self._pending = 0  # images in _queue
        self._closed = False
        self._stats = _Counters()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{model.name}", daemon=True)
        self._thread.start()

    # -- callers -----------------------------------------------------------------------

    def submit(self, images: np.ndarray, timeout: float | None = None) -> list[ImageResult]:
        """Results for ``images`` ``[N, C, H, W]`` (float), blocking until they are ready.

        Raises what the engine raised for a batch holding these images, :class:`BatcherClosed`
        when the batcher is closed, ``TimeoutError`` after ``timeout`` seconds (images not yet
        batched are then dropped), ``ValueError`` for a wrong shape or dtype.
        """
        images = self._check(images)
        if len(images) == 0:
            return []
        request = _Request(images)
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"batcher for {self.model.name} is closed")
            self._queue.append(_Segment(request, 0, len(images)))
            self._pending += len(images)
            self._stats.requests += 1
            self._cond.notify()
        if not request.done.wait(timeout):
            request.fail(TimeoutError(f"{self.model.name}: no result within {timeout} s"))
        if request.error is not None:
            raise request.error
        # all filled when done without error
        return request.results  # type: ignore[return-value]

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.model.input_shape:
            shape = ", ".join(map(str, self.model.input_shape))
            raise ValueError(f"{self.model.name}: expected images [N, {shape}], got {images.shape}")
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{self.model.name}: expected float images, got {images.dtype}")
        return images

    @property
    def stats(self) -> BatchStats:
        with self._cond:
            return self._stats.snapshot()

    @property
    def pending(self) -> int:
        """Images waiting for a batch."""
        with self._cond:
            return self._pending

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the thread after the batch in flight; pending callers get :class:`BatcherClosed`."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._pending = 0
            self._cond.notify_all()
        for seg in waiting:
            seg.request.fail(BatcherClosed(
                f"batcher for {self.model.name} closed before these images were run"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the batching thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[_Segment] | None:
        """Wait until a batch is due (full, or oldest image waited max_delay); take it."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                self._drop_finished()
                if self._pending >= self.max_batch:
                    break
                if self._pending:
                    left = self._queue[0].request.enqueued + self.max_delay - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                else:
                    self._cond.wait()
            return self._take()

    def _drop_finished(self) -> None:
        """Forget queued images of failed requests (timed out, or an earlier part failed)."""
        if any(s.request.done.is_set() for s in self._queue):
            kept = deque(s for s in self._queue if not s.request.done.is_set())
            self._pending = sum(s.stop - s.start for s in kept)
            self._queue = kept

    def _take(self) -> list[_Segment]:
        taken: list[_Segment] = []
        room = self.max_batch
        while room and self._queue:
            seg = self._queue[0]
            n = min(room, seg.stop - seg.start)
            taken.append(_Segment(seg.request, seg.start, seg.start + n))
            if seg.start + n == seg.stop:
                self._queue.popleft()
            else:
                seg.start += n  # the rest of an oversized request waits for the next batch
            room -= n
        self._pending -= self.max_batch - room
        return taken

    def _execute(self, batch: list[_Segment]) -> None:
        started = time.monotonic()
        size = sum(s.stop - s.start for s in batch)
        waited = sum((started - s.request.enqueued) * (s.stop - s.start) for s in batch)
        oldest = started - min(s.request.enqueued for s in batch)
        try:
            images = np.concatenate([s.request.images[s.start:s.stop] for s in batch])
            results = self.model.predict(images.astype(np.float32, copy=False))
            if len(results) != size:
                raise RuntimeError(f"{self.model.name}: {len(results)} results for {size} images")
        except Exception as exc:  # noqa: BLE001 - raised in every caller of this batch
            log.warning("batch of %d images for %s failed: %s", size, self.model.name, exc)
            with self._cond:
                self._stats.add(size, waited, time.monotonic() - started, failed=True)
            for seg in batch:
                seg.request.fail(exc)
            return
        elapsed = time.monotonic() - started
        with self._cond:
            self._stats.add(size, waited, elapsed, failed=False)
        offset = 0
        for seg in batch:
            req, n = seg.request, seg.stop - seg.start
            req.results[seg.start:seg.stop] = results[offset:offset + n]
            offset += n
            req.remaining -= n
            if req.remaining == 0 and req.error is None:
                req.done.set()
        if self.on_batch is not None:
            try:
                self.on_batch(size, oldest, elapsed)
            except Exception:  # noqa: BLE001 - a metrics hook must not break inference
                log.exception("batch hook failed")


class _Counters:
    """Mutable counters behind :class:`BatchStats` (guarded by the batcher's lock)."""

    def __init__(self) -> None:
        self.batches = self.images = self.requests = self.failed = 0
        self.sizes: Counter[int] = Counter()
        self.wait_s = self.engine_s = 0.0

    def add(self, size: int, wait_s: float, engine_s: float, *, failed: bool) -> None:
        self.batches += 1
        self.images += size
        self.failed += failed
        self.sizes[size] += 1
        self.wait_s += wait_s
        self.engine_s += engine_s

    def snapshot(self) -> BatchStats:
        return BatchStats(self.batches, self.images, self.requests, self.failed,
                          dict(sorted(self.sizes.items())), self.wait_s, self.engine_s)


class BatcherRegistry:
    """One :class:`DynamicBatcher` per model in this process, created on first use."""

    def __init__(self, on_batch: Callable[[Model], BatchHook | None] | None = None) -> None:
        self._lock = threading.Lock()
        self._batchers: dict[int, DynamicBatcher] = {}
        self._on_batch = on_batch

    def get(self, model: Model, max_batch: int, max_delay_ms: float) -> DynamicBatcher:
        """The batcher of ``model`` (the first call's ``max_batch``/``max_delay_ms`` stay)."""
        with self._lock:
            batcher = self._batchers.get(id(model))
            if batcher is None or batcher.model is not model:
                hook = self._on_batch(model) if self._on_batch else None
                batcher = DynamicBatcher(model, max_batch, max_delay_ms, on_batch=hook)
                self._batchers[id(model)] = batcher
                log.info("dynamic batcher for %s: max_batch %d, max_delay %.1f ms",
                         model.name, batcher.max_batch, max_delay_ms)
            return batcher

    def stats(self) -> dict[str, BatchStats]:
        """Stats by model name (for metrics)."""
        with self._lock:
            return {b.model.name: b.stats for b in self._batchers.values()}

    def close_all(self) -> None:
        with self._lock:
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for b in batchers:
            b.close()


registry = BatcherRegistry()


def get_batcher(model: Model, max_batch: int, max_delay_ms: float) -> DynamicBatcher:
    """The process-wide batcher of ``model`` (see :class:`BatcherRegistry`)."""
    return registry.get(model, max_batch, max_delay_ms)
