"""Group commit: one fdatasync of the WAL makes every transaction written before it durable.

The appends of one loop iteration go in one transaction, into the page cache; the syncer thread
then fsyncs the WAL, and every append made meanwhile waits for it and goes in the next one. The
thread waits in C, needing the GIL only twice per fsync.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.errors import SpoolError
from bridge.spool.reader import RETRY_DELAYS
from bridge.spool.schema import Busy, DiskFull

# An appended record and the time it was appended.
Row = tuple[bytes, float]

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


class GroupCommit:
    """Appends waiting to be written and synced, on the loop's thread.

    ``insert`` writes rows in one transaction and returns its number (raising ``Busy``,
    ``DiskFull`` or ``SpoolError``); ``refuse`` answers appends whose transaction was rolled back
    (``full``: for want of room); ``fail`` is told of a failed fsync.
    """

    def __init__(
        self,
        insert: Callable[[list[Row]], int],
        refuse: Callable[[list[Row], list[asyncio.Future[None]], bool], None],
        fail: Callable[[SpoolError], object],
    ) -> None:
        self._insert = insert
        self._refuse = refuse
        self._fail = fail
        self.syncer = Syncer(self._settle)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Appends not yet written: their rows and futures; whether a flush or an fsync is under way.
        self._pending_rows: list[Row] = []
        self._pending: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._syncing = False
        self._busy_attempt = 0
        # The futures of appends written and waiting for a sync, oldest first, by transaction.
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        # Set while the checkpointer copies the whole WAL: nothing is written until cleared.
        self.held = False

    def bind(self, wal_fd: int, loop: asyncio.AbstractEventLoop) -> None:
        """The WAL file to sync and the loop the appends wait on; before the syncer runs."""
        self._loop = loop
        self.syncer.bind(wal_fd, loop)

    def add(self, rows: list[Row]) -> asyncio.Future[None]:
        """A future done once ``rows`` are written and synced."""
        assert self._loop is not None
        self._pending_rows.extend(rows)
        durable = self._loop.create_future()
        self._pending.append(durable)
        if not self._syncing and not self._flush_scheduled:
            # The appends of this loop iteration go in one transaction; while an fsync runs,
            # everything appended meanwhile waits for it to end and goes in the next one.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return durable

    def resume(self) -> None:
        """Writes are let go again: what waited is written, unless an fsync will do it."""
        self.held = False
        if not self._syncing:
            self._flush()

    def fail(self, error: SpoolError) -> None:
        """Answer every append not yet durable with ``error``."""
        pending, self._pending, self._pending_rows = self._pending, [], []
        while self._waiting:
            pending.append(self._waiting.popleft()[1])
        for future in pending:
            if not future.done():
                future.set_exception(error)

    def _flush(self) -> None:
        """Write what was appended since the last fsync in one transaction, and have it synced."""
        self._flush_scheduled = False
        if not self._pending or self.held:
            return
        rows, futures = self._pending_rows, self._pending
        self._pending_rows, self._pending = [], []
        try:
            written = self._insert(rows)
        except Busy:
            if self._busy_attempt < len(RETRY_DELAYS):
                # Kept in order ahead of anything appended meanwhile, written after the back-off.
                self._pending_rows[:0], self._pending[:0] = rows, futures
                assert self._loop is not None
                self._flush_scheduled = True
                self._loop.call_later(RETRY_DELAYS[self._busy_attempt], self._flush)
                self._busy_attempt += 1
                return
            self._busy_attempt = 0
            self._refuse(rows, futures, False)
            return
        except DiskFull:
            self._busy_attempt = 0
            self._refuse(rows, futures, True)
            return
        except SpoolError as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        self._busy_attempt = 0
        self._waiting.extend((written, f) for f in futures)
        self._syncing = True
        self.syncer.request(written)

    def _settle(self, covered: int, error: SpoolError | None) -> None:
        self._syncing = False
        if error is not None:
            self._fail(error)
            return
        while self._waiting and self._waiting[0][0] <= covered:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
        self._flush()
