"""Group commit: one fdatasync of the WAL makes every transaction written before it durable.

The writer commits into the page cache and asks the syncer thread for the newest transaction;
every transaction written while one fsync runs is covered by the next one, and the thread waits
in C, needing the GIL only twice per fsync.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.errors import SpoolError

# Upper bounds, in seconds, of the spool's fsync-time histogram (the last bucket is +Inf).
SYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class SyncTimes:
    """How long the fsyncs of the WAL took: a count per bucket of ``SYNC_BUCKETS`` (not
    cumulative; the last one is past the largest bound) and their sum."""

    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)


class SyncClock:
    """The fsync times, kept by the syncer thread and read by a scrape on the loop's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(SYNC_BUCKETS) + 1)
        self._sum = 0.0

    def record(self, seconds: float) -> None:
        index = bisect.bisect_left(SYNC_BUCKETS, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def read(self) -> SyncTimes:
        with self._lock:
            return SyncTimes(tuple(self._counts), self._sum)


class Syncer:
    """The syncer thread: ``request(n)`` asks for transaction ``n`` and every one before it to be
    made durable; ``settle(covered, error)`` then runs on the loop's thread."""

    def __init__(self, settle: Callable[[int, SpoolError | None], None]) -> None:
        self._settle = settle
        # The newest transaction to make durable, or None to stop. A C queue: putting costs the
        # loop no Python lock, and the syncer waits in C without the GIL.
        self._requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._wal_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.covered = 0  # the newest transaction the last fsync made durable
        self.commits = 0  # fsyncs of the WAL: each makes every append before it durable
        self.clock = SyncClock()

    def bind(self, wal_fd: int, loop: asyncio.AbstractEventLoop) -> None:
        """The WAL file to sync and the loop to settle on; before the thread runs."""
        self._wal_fd = wal_fd
        self._loop = loop

    def request(self, transaction: int) -> None:
        self._requests.put(transaction)

    def stop(self) -> None:
        """Have the thread end once what was asked for before is synced."""
        self._requests.put(None)

    def run(self) -> None:
        closing = False
        while not closing:
            # The newest transaction asked for covers every one before it; on close, what was
            # asked for before is still synced.
            target = self.covered
            request = self._requests.get()
            while True:
                if request is None:
                    closing = True
                else:
                    target = max(target, request)
                try:
                    request = self._requests.get_nowait()
                except queue.Empty:
                    break
            if target <= self.covered:
                continue
            assert self._wal_fd is not None
            assert self._loop is not None
            error = None
            started = time.perf_counter()
            try:
                os.fdatasync(self._wal_fd)
            except OSError as exc:
                error = SpoolError(f"spool fsync failed: {exc}")
            # As the appends saw it: the system call, and the wait for the GIL after it.
            self.clock.record(time.perf_counter() - started)
            self.commits += 1
            self.covered = target
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._settle, target, error)
