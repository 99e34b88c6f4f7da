"""The spool's writer: accepted messages on disk (fsynced) until RabbitMQ confirms them.

SQLite in WAL mode (``schema``). Each append is one small transaction written on the event loop's
own thread (``synchronous=OFF``: into the page cache, no fsync), and ``append`` returns only once
the syncer's next ``fdatasync`` of the WAL covers it (``commit``: group commit). The checkpointer
thread copies the WAL into the database file (``checkpoint``). The drain's publishing process
reads batches in order (``reader``); what even the dead-letter queue refused is moved to the
``quarantine`` table.

A full disk is not fatal: an append that fails for space is rolled back and refused (503), and a
reserve file in the spool directory is given up when a delete or a checkpoint needs room, so the
drain can always remove what RabbitMQ confirmed. Busy and read errors are retried; only a failed
write or fsync of an append, or a file that fails its integrity check, is. See docs/spool.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import structlog

from bridge.errors import SpoolError, SpoolFull, Unavailable
from bridge.spool.checkpoint import Checkpointer
from bridge.spool.commit import GroupCommit, Row, SyncTimes
from bridge.spool.reader import RETRY_DELAYS, Span, SpoolStats, count_quarantined, oldest_created
from bridge.spool.reserve import DEFAULT_BYTES, Reserve, Room
from bridge.spool.schema import (
    ENTRY_OVERHEAD,
    FILE_NAME,
    Busy,
    DiskFull,
    connect,
    lock_directory,
    open_writer,
    run_transaction,
)

log = structlog.get_logger("bridge.spool.store")

# A delete that cannot be written (busy, no room even without the reserve) waits at most this long
# before it tries again: the drain has nothing else to do meanwhile.
REMOVE_RETRY_MAX = 2.0


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
        self._room = Room(self.path, Reserve(directory, reserve_bytes), retry_after)
        self._lock_file: IO[bytes] | None = None
        self._writer: sqlite3.Connection | None = None  # the event loop's thread only
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoints: Checkpointer | None = None  # the checkpointer thread's, once open
        self._wal_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._written = 0  # transactions written: the syncer is asked to cover them by number
        self._commit = GroupCommit(self._insert, self._refuse, self._fail)
        self._threads: list[threading.Thread] = []
        # Set by the checkpointer's request, on the loop's thread: no transaction is written
        # until it is cleared (appends wait in the group commit, removes wait for _resumed).
        self._paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._entries = 0
        self._bytes = 0
        self._failed: SpoolError | None = None
        self.appended = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the spool, check it, and start the syncer and checkpointer threads."""
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self._lock_file = lock_directory(self.directory)
        # The reserve of the last run is this one's room to open on a full disk (the WAL index,
        # a WAL left by a kill); it is taken again below once the spool is open and checkpointed.
        self._room.reserve.discard()
        self._writer = open_writer(self.path)
        self._reader = connect(self.path)  # the event loop's thread only: counts and the oldest entry
        self._checkpointer = connect(self.path, check_same_thread=False, synchronous="FULL")
        row = self._reader.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0) FROM spool").fetchone()
        self._entries, record_bytes = int(row[0]), int(row[1])
        self._bytes = record_bytes + self._entries * ENTRY_OVERHEAD
        if not self._room.reserve.take():
            self._room.full = True
            log.warning("spool_disk_full", path=str(self.path), reserve_bytes=self._room.reserve.size)
        try:
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SpoolError(f"spool WAL file of {self.path} cannot be opened: {exc}") from None
        self._loop = asyncio.get_running_loop()
        self._commit.bind(self._wal_fd, self._loop)
        self._checkpoints = Checkpointer(self, self._checkpointer, self._room, self._loop)
        for target, name in (
            (self._commit.syncer.run, "spool-syncer"),
            (self._checkpoints.run, "spool-checkpointer"),
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
            disk_full=self._room.full,
        )

    def close(self) -> None:
        """Sync what was written, stop the threads, checkpoint, and release the directory."""
        self._commit.syncer.stop()
        if self._checkpoints is not None:
            self._checkpoints.stop()
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
        return self._room.full

    @property
    def sync_times(self) -> SyncTimes:
        """How long each fsync of the WAL took, since the spool opened: every append waits for one."""
        return self._commit.syncer.clock.read()

    @property
    def commits(self) -> int:
        """fsyncs of the WAL: each makes every append before it durable."""
        return self._commit.syncer.commits

    @property
    def checkpoints(self) -> int:
        """Checkpoints run, and of them those that held the writer (``whole_checkpoints``)."""
        return 0 if self._checkpoints is None else self._checkpoints.checkpoints

    @property
    def whole_checkpoints(self) -> int:
        return 0 if self._checkpoints is None else self._checkpoints.whole_checkpoints

    @property
    def entries(self) -> int:
        """Entries appended and not yet removed; read from the checkpointer's thread too."""
        return self._entries

    async def append(self, records: Sequence[bytes]) -> None:
        """Keep ``records`` durably, in order, before returning.

        Raises:
            SpoolFull: they would take the spool past its size bound; nothing was written.
            SpoolError: the write or its fsync failed; the spool cannot be trusted any more.
        """
        if self._failed is not None:
            raise self._failed
        if self._room.full:
            raise self._room.no_room()
        size = sum(len(r) for r in records) + ENTRY_OVERHEAD * len(records)
        if self._bytes + size > self._max_bytes:
            raise SpoolFull(
                "spool_full",
                f"the spool holds {self._bytes} bytes, its bound is {self._max_bytes}",
                self._retry_after,
            )
        now = time.time()
        durable = self._commit.add([(r, now) for r in records])
        self._entries += len(records)
        self._bytes += size
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
            except DiskFull:
                if self._room.give_up_reserve(self._entries):
                    continue
                log.warning("spool_remove_waiting", reason="disk_full", first=span.first, last=span.last)
            except Busy:
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
            DiskFull: no room for it; rolled back, the spool goes on.
            Busy: another connection holds the lock; rolled back, try again.
            SpoolError: the write failed otherwise; the spool is failed for good.
        """
        if self._failed is not None:
            raise self._failed
        if self._writer is None:
            raise SpoolError("spool is closed")
        try:
            counts = run_transaction(self._writer, statements)
        except sqlite3.Error as exc:
            # Any other failed write leaves the file in a state we cannot vouch for (the lesson
            # of PostgreSQL's fsync bug): refuse everything from now on.
            raise self._fail(SpoolError(f"spool write failed: {exc}")) from None
        self._written += 1
        return counts

    def _insert(self, rows: list[Row]) -> int:
        """Appended rows in one transaction; its number. Raises as ``_write`` does."""
        self._write([("INSERT INTO spool (record, created) VALUES (?, ?)", rows)])
        return self._written

    def _refuse(self, rows: list[Row], futures: list[asyncio.Future[None]], full: bool) -> None:
        """Answer appends whose transaction was rolled back, busy or ``full``: nothing of them was
        kept."""
        if full:
            self._room.refused(self._entries)
            error: Unavailable = self._room.no_room()
        else:
            error = Unavailable("spool_busy", "the spool is locked", self._retry_after)
        self._entries -= len(rows)
        self._bytes -= sum(len(record) for record, _ in rows) + ENTRY_OVERHEAD * len(rows)
        for future in futures:
            if not future.done():
                future.set_exception(error)

    def _fail(self, error: SpoolError) -> SpoolError:
        if self._failed is None:
            self._failed = error
            log.critical("spool_write_failed", error=str(error), pid=os.getpid())
        self._commit.fail(self._failed)
        return self._failed

    def _quarantined_count(self) -> int:
        # Read, not counted: ``spool quarantine redrive`` removes entries from another process.
        return 0 if self._reader is None else count_quarantined(self._reader)

    def _oldest(self) -> float | None:
        if self._reader is None or self._entries == 0:
            return None
        return oldest_created(self._reader)

    # -- called by the checkpointer thread, on the loop's thread ------------------------------

    def compact(self) -> None:
        """Rewrite an emptied spool small (VACUUM): only on a full disk, where its freed pages
        would otherwise keep every checkpoint from completing."""
        if self._entries != 0 or self._writer is None or self._failed is not None or self._paused:
            return
        self._room.compact(self._writer)

    def hold_writes(self) -> None:
        """Write no transaction until ``release_writes``: the checkpointer copies the whole WAL."""
        self._paused = True
        self._commit.held = True
        self._resumed.clear()

    def release_writes(self) -> None:
        self._paused = False
        self._resumed.set()
        self._commit.resume()
