"""The durable spool: accepted messages on disk (fsynced) until RabbitMQ confirms them.

SQLite in WAL mode. Each append is one small transaction written on the event loop's own thread
(SQLite's ``synchronous=OFF``: into the page cache, no fsync), and ``append`` returns only once the
syncer thread's next ``fdatasync`` of the WAL file covers it: every append made while one fsync
runs shares the next one (group commit), and the thread needs the GIL only twice per fsync.
Checkpoints, which copy the WAL into the database file, run on a connection of their own with
``synchronous=FULL``, so the WAL is only ever reused once its pages are synced in the database.
The drain's publishing process reads batches in order on a read-only connection of its own
(``SpoolReader``); what even the dead-letter queue refused is moved to the ``quarantine`` table.

A full disk is not fatal: an append that fails for space is rolled back and refused (503), and a
reserve file in the spool directory is given up when a delete or a checkpoint needs room, so the
drain can always remove what RabbitMQ confirmed. Busy and read errors are retried; only a failed
write or fsync of an append, or a file that fails its integrity check, is. See docs/spool.md.
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

from bridge.errors import SpoolCorrupt, SpoolError, SpoolFull, Unavailable
from bridge.spool.reserve import DEFAULT_BYTES, Reserve, free_bytes

log = structlog.get_logger("bridge.spool.store")

# 1: the spool table; 2: and the quarantine table (a version-1 file is migrated on open).
SCHEMA_VERSION = 2
FILE_NAME = "spool.sqlite3"
# Once the disk was found full, appends are taken again only with the reserve back in place and
# this much room for them (free space of the file system plus the spool file's free pages).
ROOM_TO_RESUME = 1024 * 1024
# Back-off, in seconds, of a write or read that met a busy lock or a transient read error.
RETRY_DELAYS = (0.01, 0.05, 0.1, 0.2, 0.4)
# A delete that cannot be written (busy, no room even without the reserve) waits at most this long
# before it tries again: the drain has nothing else to do meanwhile.
REMOVE_RETRY_MAX = 2.0
_QUARANTINE_TABLE = """
    CREATE TABLE quarantine (
        seq INTEGER PRIMARY KEY,
        record BLOB NOT NULL,
        created REAL NOT NULL,
        quarantined REAL NOT NULL,
        reason TEXT NOT NULL
    );
"""
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
    quarantined: int = 0


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


class _DiskFull(Exception):
    """SQLITE_FULL: the transaction was rolled back; nothing of it was kept."""


class _Busy(Exception):
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock; try again shortly."""


def _is_full(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


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

    def __init__(
        self, directory: Path, *, max_bytes: int, retry_after: int = 5, reserve_bytes: int = DEFAULT_BYTES
    ) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self._max_bytes = max_bytes
        self._retry_after = retry_after
        self._reserve = Reserve(directory, reserve_bytes)
        # Set on the loop's thread when the disk refused a write or the reserve was given up;
        # cleared there once the checkpointer thread finds room again.
        self._disk_full = False
        self._busy_attempt = 0
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
        # The reserve of the last run is this one's room to open on a full disk (the WAL index,
        # a WAL left by a kill); it is taken again below once the spool is open and checkpointed.
        self._reserve.discard()
        self._writer = self._connect(synchronous="FULL")
        # Start-up may wait for a ``spool quarantine`` command's short write; later, the loop's
        # thread never blocks on a lock (busy writes are retried by the loop).
        self._writer.execute("PRAGMA busy_timeout=5000")
        self._check(self._writer)
        self._writer.execute("PRAGMA busy_timeout=0")
        # From here the writer leaves durability to the syncer, and checkpoints to the
        # checkpointer's FULL connection (a checkpoint on an OFF connection skips its fsyncs).
        self._writer.execute("PRAGMA synchronous=OFF")
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        # Some builds (Debian's) zero every freed page: a delete would then write every page it
        # frees into the WAL, room a full disk does not have. The records need no shredding.
        self._writer.execute("PRAGMA secure_delete=OFF")
        self._writer.execute(f"PRAGMA journal_size_limit={WAL_BYTES_KEPT}")
        self._reader = self._connect()  # the event loop's thread only: counts and the oldest entry
        self._checkpointer = self._connect(check_same_thread=False, synchronous="FULL")
        row = self._reader.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0) FROM spool").fetchone()
        self._entries, record_bytes = int(row[0]), int(row[1])
        self._bytes = record_bytes + self._entries * ENTRY_OVERHEAD
        if not self._reserve.take():
            self._disk_full = True
            log.warning("spool_disk_full", path=str(self.path), reserve_bytes=self._reserve.size)
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
        log.info(
            "spool_opened",
            path=str(self.path),
            entries=self._entries,
            bytes=self._bytes,
            quarantined=self._quarantined_count(),
            disk_full=self._disk_full,
        )

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
                    BEGIN IMMEDIATE;
                    -- AUTOINCREMENT: a seq is never reused once the table empties, so the
                    -- drain's "seq > last" never skips a new entry.
                    CREATE TABLE spool (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        record BLOB NOT NULL,
                        created REAL NOT NULL
                    );
                    {_QUARANTINE_TABLE}
                    PRAGMA user_version = {SCHEMA_VERSION};
                    COMMIT;
                    """
                )
                return
            if version == 1 and tables == {"spool"}:
                # The previous release's spool: every entry stays where it is.
                conn.executescript(
                    f"BEGIN IMMEDIATE; {_QUARANTINE_TABLE} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
                log.info("spool_migrated", path=str(self.path), from_version=1, to_version=SCHEMA_VERSION)
                version, tables = SCHEMA_VERSION, {"spool", "quarantine"}
            if version != SCHEMA_VERSION or not {"spool", "quarantine"} <= tables:
                raise SpoolCorrupt(
                    f"spool file {self.path} is not a servio-bridge spool (version {version}); "
                    "move it away to start empty, or start the version that wrote it"
                )
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise SpoolCorrupt(f"spool file {self.path} failed its integrity check: {result}")
        except sqlite3.OperationalError as exc:
            # Busy past the wait, no room, an I/O error: the file may be sound, so not "corrupt".
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise SpoolError(f"spool file {self.path} cannot be opened now: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise SpoolCorrupt(f"spool file {self.path} is corrupt: {exc}") from None

    # -- the event loop's side -----------------------------------------------------------

    @property
    def stats(self) -> SpoolStats:
        return SpoolStats(self._entries, self._bytes, self._oldest(), self._quarantined_count())

    @property
    def writable(self) -> bool:
        return self._writer is not None and self._failed is None

    @property
    def disk_full(self) -> bool:
        """The spool's disk refused a write and has not had room since: appends answer 503."""
        return self._disk_full

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
        if self._disk_full:
            raise self._no_room()
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

    async def remove_span(self, span: Span, *, quarantined: Sequence[tuple[int, str]] = ()) -> None:
        """Forget a span RabbitMQ has confirmed: every entry from ``first`` to ``last``, as read;
        in the same transaction, the listed (seq, reason) entries of it move to the quarantine.

        A span as read is every seq in its range: seqs only grow, and one thread writes. Not
        waited for on disk: a crash before the next fsync brings them back, and they are published
        again with the same message_ids (at least once). A busy lock or a full disk is waited out
        (the reserve is given up first): the drain cannot go on before this is written.
        """
        if span.count == 0:
            return
        now = time.time()
        statements: list[tuple[str, Sequence[tuple[object, ...]]]] = []
        if quarantined:
            statements.append(
                (
                    "INSERT OR IGNORE INTO quarantine (seq, record, created, quarantined, reason) "
                    "SELECT seq, record, created, ?, ? FROM spool WHERE seq = ? AND seq BETWEEN ? AND ?",
                    [(now, reason, seq, span.first, span.last) for seq, reason in quarantined],
                )
            )
        statements.append(("DELETE FROM spool WHERE seq BETWEEN ? AND ?", [(span.first, span.last)]))
        delay = RETRY_DELAYS[0]
        while True:
            while self._paused:
                await self._resumed.wait()
            try:
                counts = self._write(statements)
                break
            except _DiskFull:
                if self._give_up_reserve():
                    continue
                log.warning("spool_remove_waiting", reason="disk_full", first=span.first, last=span.last)
            except _Busy:
                log.info("spool_remove_waiting", reason="busy", first=span.first, last=span.last)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REMOVE_RETRY_MAX)
        if quarantined:
            log.warning("spool_quarantined", n=counts[0], seqs=[seq for seq, _ in quarantined][:20])
        self._entries -= span.count
        self._bytes -= span.record_bytes + ENTRY_OVERHEAD * span.count

    def _write(self, statements: Sequence[tuple[str, Sequence[tuple[object, ...]]]]) -> list[int]:
        """One transaction on the event loop's thread: into the page cache, made durable by the
        syncer. Returns the rows each statement changed.

        Raises:
            _DiskFull: no room for it; rolled back, the spool goes on.
            _Busy: another connection holds the lock; rolled back, try again.
            SpoolError: the write failed otherwise; the spool is failed for good.
        """
        if self._failed is not None:
            raise self._failed
        if self._writer is None:
            raise SpoolError("spool is closed")
        try:
            self._writer.execute("BEGIN IMMEDIATE")
            counts = [self._writer.executemany(sql, rows).rowcount for sql, rows in statements]
            self._writer.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("ROLLBACK")
            # SQLite rolls a transaction that found no room back whole (WAL frames without a
            # commit frame never count), so the file is as it was before it.
            if _is_full(exc):
                raise _DiskFull(str(exc)) from None
            if _is_busy(exc):
                raise _Busy(str(exc)) from None
            # Any other failed write leaves the file in a state we cannot vouch for (the lesson
            # of PostgreSQL's fsync bug): refuse everything from now on.
            raise self._fail(SpoolError(f"spool write failed: {exc}")) from None
        self._written += 1
        return counts

    def _flush(self) -> None:
        """Write what was appended since the last fsync in one transaction, and have it synced."""
        self._flush_scheduled = False
        if not self._pending or self._paused:
            return
        rows, futures = self._pending_rows, self._pending
        self._pending_rows, self._pending = [], []
        try:
            self._write([("INSERT INTO spool (record, created) VALUES (?, ?)", rows)])
        except _Busy:
            if self._busy_attempt < len(RETRY_DELAYS):
                # Kept in order ahead of anything appended meanwhile, written after the back-off.
                self._pending_rows[:0], self._pending[:0] = rows, futures
                assert self._loop is not None
                self._flush_scheduled = True
                self._loop.call_later(RETRY_DELAYS[self._busy_attempt], self._flush)
                self._busy_attempt += 1
                return
            self._busy_attempt = 0
            self._refuse(rows, futures, Unavailable("spool_busy", "the spool is locked", self._retry_after))
            return
        except _DiskFull:
            self._busy_attempt = 0
            self._enter_disk_full()
            self._refuse(rows, futures, self._no_room())
            return
        except SpoolError as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        self._busy_attempt = 0
        self._waiting.extend((self._written, f) for f in futures)
        self._syncing = True
        self._sync_requests.put(self._written)

    def _refuse(
        self, rows: list[tuple[bytes, float]], futures: list[asyncio.Future[None]], error: Unavailable
    ) -> None:
        """Answer appends whose transaction was rolled back: nothing of them was kept."""
        self._entries -= len(rows)
        self._bytes -= sum(len(record) for record, _ in rows) + ENTRY_OVERHEAD * len(rows)
        for future in futures:
            if not future.done():
                future.set_exception(error)

    def _no_room(self) -> SpoolFull:
        return SpoolFull("spool_full", f"the disk of the spool {self.directory} is full", self._retry_after)

    def _enter_disk_full(self) -> None:
        # Either thread: a flag the loop's thread reads, set once.
        if not self._disk_full:
            self._disk_full = True
            log.warning("spool_disk_full", path=str(self.path), entries=self._entries)

    def _room_returned(self) -> None:
        if self._disk_full:
            self._disk_full = False
            log.info("spool_room_returned", path=str(self.path))

    def _give_up_reserve(self) -> bool:
        """Delete the reserve file so a checkpoint, a delete or a compaction finds room; False if
        there was none."""
        if not self._reserve.give_up():
            return False
        log.warning("spool_reserve_released", path=str(self._reserve.path), bytes=self._reserve.size)
        # Until the reserve is back, appends wait and checkpoints run only where they can finish.
        self._enter_disk_full()
        return True

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

    def _quarantined_count(self) -> int:
        # Read, not counted: ``spool quarantine redrive`` removes entries from another process.
        if self._reader is None:
            return 0
        try:
            return int(self._reader.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
        except sqlite3.OperationalError:  # busy: a scrape can do with none this time
            return 0

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
                if self._disk_full and not closing:
                    self._look_for_room()
                else:
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

    def _look_for_room(self) -> None:
        """While the disk is full, instead of the periodic checkpoint: have an emptied spool
        compacted; checkpoint only when the database file has room to grow for it (a checkpoint
        that cannot finish would only take the room deletes need), giving the WAL's room back;
        take the reserve back, and let appends in once there is room for them."""
        assert self._checkpointer is not None
        assert self._loop is not None
        page_size, pages, free_pages = (
            int(self._checkpointer.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("page_size", "page_count", "freelist_count")
        )
        if self._entries == 0 and free_pages > 0:
            # A checkpoint copies every page up to the database's size, freed ones too: a file
            # grown in the WAL past what the disk holds is only checkpointed once compacted.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._compact)
            return
        growth = pages * page_size - os.stat(self.path).st_size
        free = free_bytes(self.directory)
        # Appends the WAL holds that the file has no room for yet: the reserve is for this first,
        # so that deletes then write over a WAL that starts over rather than one that grows.
        if growth > free and (growth > free + self._reserve.size or not self._give_up_reserve()):
            return
        self._checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self.checkpoints += 1
        if not self._reserve.take():
            return
        if free_bytes(self.directory) + free_pages * page_size >= ROOM_TO_RESUME:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._room_returned)

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

    def _compact(self) -> None:
        """Rewrite an emptied spool small (VACUUM): only on a full disk, where its freed pages
        would otherwise keep every checkpoint from completing."""
        if self._entries != 0 or self._writer is None or self._failed is not None or self._paused:
            return
        try:
            self._writer.execute("VACUUM")
        except sqlite3.Error as exc:
            if not (_is_full(exc) and self._give_up_reserve()):
                log.warning("spool_compact_failed", error=str(exc))
                return
            try:
                self._writer.execute("VACUUM")
            except sqlite3.Error as again:
                log.warning("spool_compact_failed", error=str(again))
                return
        log.info("spool_compacted", path=str(self.path))

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

    def read(
        self, after: int, limit: int, *, max_bytes: int | None = None
    ) -> tuple[Span, list[tuple[int, bytes]]]:
        """The (seq, record) rows after ``after``, oldest first, and the span they take: at most
        ``limit`` rows whose records add up to at most ``max_bytes`` (but always the first one);
        count 0 if none.

        Busy and read errors are retried a few times (~0.8 s); if they last, nothing is read this
        time (count 0, logged) and the drain asks again.

        Raises:
            SpoolCorrupt: the file fails SQLite's integrity checks.
        """
        for delay in (*RETRY_DELAYS, None):
            try:
                rows = self._read(after, limit, max_bytes)
                break
            except sqlite3.OperationalError as exc:
                if delay is None:
                    log.warning("spool_read_failed", error=str(exc), after=after)
                    rows = []
                    break
                log.info("spool_read_retried", error=str(exc), after=after)
                time.sleep(delay)
            except sqlite3.DatabaseError as exc:
                raise SpoolCorrupt(f"spool file {self.path} cannot be read: {exc}") from None
        if not rows:
            return Span(after, after, 0, 0), rows
        return Span(rows[0][0], rows[-1][0], len(rows), sum(len(r) for _, r in rows)), rows

    def _read(self, after: int, limit: int, max_bytes: int | None) -> list[tuple[int, bytes]]:
        cursor = self._conn.execute(
            "SELECT seq, record FROM spool WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        rows: list[tuple[int, bytes]] = []
        total = 0
        try:
            for seq, record in cursor:
                if max_bytes is not None and rows and total + len(record) > max_bytes:
                    break
                rows.append((int(seq), bytes(record)))
                total += len(record)
        finally:
            cursor.close()  # ends the read: a reader left open would keep the WAL from starting over
        return rows

    def close(self) -> None:
        self._conn.close()
