"""The durable spool: accepted messages on disk (fsynced) until RabbitMQ confirms them.

SQLite in WAL mode. Each append is one small transaction written on the event loop's own thread
(SQLite's ``synchronous=OFF``: into the page cache, no fsync), and ``append`` returns only once the
syncer thread's next ``fdatasync`` of the WAL file covers it: every append made while one fsync
runs shares the next one (group commit), and the thread needs the GIL only twice per fsync.
Checkpoints, which copy the WAL into the database file, run on a connection of their own with
``synchronous=FULL``, so the WAL is only ever reused once its pages are synced in the database.
The drain's publishing process reads batches in order on a read-only connection of its own
(``SpoolReader``). See docs/spool.md.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from bridge.errors import SpoolCorrupt, SpoolError, SpoolFull

log = structlog.get_logger("bridge.spool")

SCHEMA_VERSION = 1
FILE_NAME = "spool.sqlite3"
# Bytes counted per entry on top of its record: the row's own cost in the file, roughly.
ENTRY_OVERHEAD = 64
# Seconds between checkpoints (each copies what the WAL holds into the database file).
CHECKPOINT_EVERY = 1.0
# Past this many pages in the WAL, a checkpoint holds appends for as long as it takes to copy the
# rest, so that the next write starts the WAL over: under writes that never stop, a checkpoint
# that runs beside them never catches up and the WAL would grow without end (~32 MiB).
WAL_PAGES_LIMIT = 8192
# What a WAL that grew past the limit is cut back to once it starts over.
WAL_BYTES_KEPT = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpoolStats:
    entries: int
    bytes: int
    oldest: float | None


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


class _SyncClock:
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


@dataclass(frozen=True, slots=True)
class Span:
    """Entries ``first``..``last`` as one read took them: ``count`` records of ``record_bytes`` bytes."""

    first: int
    last: int
    count: int
    record_bytes: int


class Spool:
    """Append, and remove what was confirmed; ``SpoolReader`` reads in order. One process per
    directory (flock).

    Raises (``open``):
        SpoolError: the directory cannot be used, or another process holds it.
        SpoolCorrupt: the file is not a spool this version can read.
    """

    def __init__(self, directory: Path, *, max_bytes: int, retry_after: int = 5) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self._max_bytes = max_bytes
        self._retry_after = retry_after
        self._lock_file: IO[bytes] | None = None
        self._writer: sqlite3.Connection | None = None  # the event loop's thread only
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._wal_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Transactions written; the futures of appends waiting for a sync, oldest first, by their
        # transaction number (``_waiting``).
        self._written = 0
        # To the syncer: the newest transaction to make durable, or None to stop. A C queue: putting
        # costs the loop no Python lock, and the syncer waits in C without the GIL.
        self._sync_requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._threads: list[threading.Thread] = []
        # Appends not yet written: their rows and futures; whether a flush or an fsync is under way.
        self._pending_rows: list[tuple[bytes, float]] = []
        self._pending: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._syncing = False
        # Set by the checkpointer's request, on the loop's thread: no transaction is written
        # until it is cleared (appends wait in _pending, removes wait for _resumed).
        self._paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._pause_taken = threading.Event()
        self._stopping = threading.Event()
        self._entries = 0
        self._bytes = 0
        self._failed: SpoolError | None = None
        self.appended = asyncio.Event()
        self.commits_covered = 0  # the newest transaction the last fsync made durable
        self.commits = 0  # fsyncs of the WAL: each makes every append before it durable
        self._sync_clock = _SyncClock()
        self.checkpoints = 0
        self.whole_checkpoints = 0  # those that held the writer (see _checkpoint_whole)

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the spool, check it, and start the syncer and checkpointer threads."""
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.directory / "spool.lock", "wb")  # noqa: SIM115 - held until close
        except OSError as exc:
            raise SpoolError(f"spool directory {self.directory} is not usable: {exc}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SpoolError(f"spool {self.directory} is in use by another process") from None
        self._writer = self._connect(synchronous="FULL")
        self._check(self._writer)
        # From here the writer leaves durability to the syncer, and checkpoints to the
        # checkpointer's FULL connection (a checkpoint on an OFF connection skips its fsyncs).
        self._writer.execute("PRAGMA synchronous=OFF")
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        self._writer.execute(f"PRAGMA journal_size_limit={WAL_BYTES_KEPT}")
        self._reader = self._connect()  # the event loop's thread only: counts and the oldest entry
        self._checkpointer = self._connect(check_same_thread=False, synchronous="FULL")
        row = self._reader.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0) FROM spool").fetchone()
        self._entries, record_bytes = int(row[0]), int(row[1])
        self._bytes = record_bytes + self._entries * ENTRY_OVERHEAD
        try:
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SpoolError(f"spool WAL file of {self.path} cannot be opened: {exc}") from None
        self._loop = asyncio.get_running_loop()
        for target, name in (
            (self._sync_loop, "spool-syncer"),
            (self._checkpoint_loop, "spool-checkpointer"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("spool_opened", path=str(self.path), entries=self._entries, bytes=self._bytes)

    def close(self) -> None:
        """Sync what was written, stop the threads, checkpoint, and release the directory."""
        self._sync_requests.put(None)
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        for conn in (self._reader, self._checkpointer):
            if conn is not None:
                conn.close()
        self._reader = self._checkpointer = None
        if self._writer is not None:
            # The last connection to close checkpoints the WAL into the file and deletes it: with
            # FULL, that checkpoint syncs the file before the WAL goes.
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA synchronous=FULL")
            self._writer.close()
            self._writer = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _connect(self, *, check_same_thread: bool = True, synchronous: str = "NORMAL") -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=check_same_thread)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise SpoolCorrupt(f"spool file {self.path} cannot be opened: {exc}") from None
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                r[0]
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                if r[0] != "sqlite_sequence"
            }
            if not tables and version == 0:
                conn.executescript(
                    f"""
                    BEGIN;
                    -- AUTOINCREMENT: a seq is never reused once the table empties, so the
                    -- drain's "seq > last" never skips a new entry.
                    CREATE TABLE spool (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        record BLOB NOT NULL,
                        created REAL NOT NULL
                    );
                    PRAGMA user_version = {SCHEMA_VERSION};
                    COMMIT;
                    """
                )
                return
            if version != SCHEMA_VERSION or "spool" not in tables:
                raise SpoolCorrupt(
                    f"spool file {self.path} is not a servio-bridge spool (version {version}); "
                    "move it away to start empty, or start the version that wrote it"
                )
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise SpoolCorrupt(f"spool file {self.path} failed its integrity check: {result}")
        except sqlite3.DatabaseError as exc:
            raise SpoolCorrupt(f"spool file {self.path} is corrupt: {exc}") from None

    # -- the event loop's side -----------------------------------------------------------

    @property
    def stats(self) -> SpoolStats:
        return SpoolStats(self._entries, self._bytes, self._oldest())

    @property
    def writable(self) -> bool:
        return self._writer is not None and self._failed is None

    @property
    def sync_times(self) -> SyncTimes:
        """How long each fsync of the WAL took, since the spool opened: every append waits for one."""
        return self._sync_clock.read()

    async def append(self, records: Sequence[bytes]) -> None:
        """Keep ``records`` durably, in order, before returning.

        Raises:
            SpoolFull: they would take the spool past its size bound; nothing was written.
            SpoolError: the write or its fsync failed; the spool cannot be trusted any more.
        """
        if self._failed is not None:
            raise self._failed
        size = sum(len(r) for r in records) + ENTRY_OVERHEAD * len(records)
        if self._bytes + size > self._max_bytes:
            raise SpoolFull(
                "spool_full",
                f"the spool holds {self._bytes} bytes, its bound is {self._max_bytes}",
                self._retry_after,
            )
        now = time.time()
        self._pending_rows.extend((r, now) for r in records)
        self._entries += len(records)
        self._bytes += size
        assert self._loop is not None
        durable = self._loop.create_future()
        self._pending.append(durable)
        if not self._syncing and not self._flush_scheduled:
            # The appends of this loop iteration go in one transaction; while an fsync runs,
            # everything appended meanwhile waits for it to end and goes in the next one.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        await durable
        self.appended.set()

    async def remove_span(self, span: Span) -> None:
        """Forget a span RabbitMQ has confirmed: every entry from ``first`` to ``last``, as read.

        A span as read is every seq in its range: seqs only grow, and one thread writes. Not
        waited for on disk: a crash before the next fsync brings them back, and they are published
        again with the same message_ids (at least once).
        """
        if span.count == 0:
            return
        while self._paused:
            await self._resumed.wait()
        self._write("DELETE FROM spool WHERE seq BETWEEN ? AND ?", [(span.first, span.last)])
        self._entries -= span.count
        self._bytes -= span.record_bytes + ENTRY_OVERHEAD * span.count

    def _write(self, statement: str, rows: Sequence[tuple[object, ...]]) -> None:
        """One transaction on the event loop's thread: into the page cache, made durable by the syncer."""
        if self._failed is not None:
            raise self._failed
        if self._writer is None:
            raise SpoolError("spool is closed")
        try:
            self._writer.execute("BEGIN IMMEDIATE")
            self._writer.executemany(statement, rows)
            self._writer.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("ROLLBACK")
            # A failed write leaves the file in a state we cannot vouch for (the lesson of
            # PostgreSQL's fsync bug): refuse everything from now on.
            raise self._fail(SpoolError(f"spool write failed: {exc}")) from None
        self._written += 1

    def _flush(self) -> None:
        """Write what was appended since the last fsync in one transaction, and have it synced."""
        self._flush_scheduled = False
        if not self._pending or self._paused:
            return
        rows, futures = self._pending_rows, self._pending
        self._pending_rows, self._pending = [], []
        try:
            self._write("INSERT INTO spool (record, created) VALUES (?, ?)", rows)
        except SpoolError as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        self._waiting.extend((self._written, f) for f in futures)
        self._syncing = True
        self._sync_requests.put(self._written)

    def _fail(self, error: SpoolError) -> SpoolError:
        if self._failed is None:
            self._failed = error
            log.critical("spool_write_failed", error=str(error), pid=os.getpid())
        pending, self._pending, self._pending_rows = self._pending, [], []
        while self._waiting:
            pending.append(self._waiting.popleft()[1])
        for future in pending:
            if not future.done():
                future.set_exception(self._failed)
        return self._failed

    def _oldest(self) -> float | None:
        if self._reader is None or self._entries == 0:
            return None
        row = self._reader.execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    # -- the syncer and checkpointer threads ------------------------------------------------

    def _sync_loop(self) -> None:
        closing = False
        while not closing:
            # The newest transaction asked for covers every one before it; on close, what was
            # asked for before is still synced.
            target = self.commits_covered
            request = self._sync_requests.get()
            while True:
                if request is None:
                    closing = True
                else:
                    target = max(target, request)
                try:
                    request = self._sync_requests.get_nowait()
                except queue.Empty:
                    break
            if target <= self.commits_covered:
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
            self._sync_clock.record(time.perf_counter() - started)
            self.commits += 1
            self.commits_covered = target
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._settle, target, error)

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

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database file now and then, blocking the writer only when the WAL
        has grown past ``WAL_PAGES_LIMIT`` (see ``_checkpoint_whole``)."""
        assert self._checkpointer is not None
        while True:
            closing = self._stopping.wait(CHECKPOINT_EVERY)
            try:
                _busy, pages, _copied = self._checkpointer.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)"
                ).fetchone()
                self.checkpoints += 1
                if not closing and pages > WAL_PAGES_LIMIT:
                    self._checkpoint_whole()
            except sqlite3.Error as exc:
                log.warning("spool_checkpoint_failed", error=str(exc))
            if closing:
                return

    def _checkpoint_whole(self) -> None:
        """Hold the writer on the loop's thread, copy what is left of the WAL, let the writer go:
        its next transaction starts the WAL from the beginning."""
        assert self._loop is not None
        assert self._checkpointer is not None
        self._pause_taken.clear()
        try:
            self._loop.call_soon_threadsafe(self._pause)
        except RuntimeError:  # the loop is closed: nothing writes any more
            return
        try:
            while not self._pause_taken.wait(0.1):
                if self._stopping.is_set():
                    return
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
            self.whole_checkpoints += 1
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._resume)

    def _pause(self) -> None:
        self._paused = True
        self._resumed.clear()
        self._pause_taken.set()

    def _resume(self) -> None:
        self._paused = False
        self._resumed.set()
        if not self._syncing:
            self._flush()


class SpoolReader:
    """The drain's reads from another process: a read-only connection to a spool a bridge holds.

    WAL readers see every committed append and never block the writer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise SpoolCorrupt(f"spool file {path} cannot be opened: {exc}") from None

    def read(self, after: int, limit: int) -> tuple[Span, list[bytes]]:
        """The records after ``after`` (up to ``limit``) and the span they take; count 0 if none.

        Raises:
            SpoolCorrupt: the file can no longer be read.
        """
        try:
            rows: list[tuple[int, bytes]] = self._conn.execute(
                "SELECT seq, record FROM spool WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise SpoolCorrupt(f"spool file {self.path} cannot be read: {exc}") from None
        records = [bytes(record) for _seq, record in rows]
        if not rows:
            return Span(after, after, 0, 0), records
        return Span(rows[0][0], rows[-1][0], len(rows), sum(len(r) for r in records)), records

    def close(self) -> None:
        self._conn.close()
