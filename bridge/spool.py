"""The durable spool: accepted messages on disk (fsynced) until RabbitMQ confirms them.

SQLite in WAL mode with ``synchronous=FULL``, written by one thread that commits whatever
has queued up since its last commit in one transaction (group commit): concurrent webhooks
share one fsync. The drain reads batches in order on a second connection.
"""

from __future__ import annotations

import asyncio
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


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    record: bytes
    created: float


@dataclass(frozen=True, slots=True)
class SpoolStats:
    entries: int
    bytes: int
    oldest: float | None


@dataclass(slots=True)
class _Job:
    """One unit of work for the writer thread; ``future`` belongs to the event loop."""

    records: Sequence[bytes] = ()
    remove: Sequence[int] = ()
    future: asyncio.Future[None] | None = None


class Spool:
    """Append, read in order, remove after confirm. One process per directory (flock).

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
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._entries = 0
        self._bytes = 0
        self._reserved = 0
        self._failed: SpoolError | None = None
        self.appended = asyncio.Event()
        self.commits = 0

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the spool, check it, and start the writer thread."""
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
        writer = self._connect(check_same_thread=False)  # handed to the writer thread
        try:
            self._check(writer)
            self._reader = self._connect(check_same_thread=False)
            row = self._reader.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0) FROM spool"
            ).fetchone()
        except BaseException:
            writer.close()
            raise
        self._entries, record_bytes = int(row[0]), int(row[1])
        self._bytes = record_bytes + self._entries * ENTRY_OVERHEAD
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(
            target=self._write_loop, args=(writer,), name="spool-writer", daemon=True
        )
        self._writer.start()
        log.info("spool_opened", path=str(self.path), entries=self._entries, bytes=self._bytes)

    def close(self) -> None:
        """Stop the writer after what it has queued; release the directory."""
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=check_same_thread)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit is fsynced before append() returns, so a 200 survives power loss.
            conn.execute("PRAGMA synchronous=FULL")
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

    async def append(self, records: Sequence[bytes]) -> None:
        """Keep ``records`` durably, in order, before returning.

        Raises:
            SpoolFull: they would take the spool past its size bound; nothing was written.
            SpoolError: the write or its fsync failed; the spool cannot be trusted any more.
        """
        if self._failed is not None:
            raise self._failed
        size = sum(len(r) for r in records) + ENTRY_OVERHEAD * len(records)
        if self._bytes + self._reserved + size > self._max_bytes:
            raise SpoolFull(
                "spool_full",
                f"the spool holds {self._bytes} bytes, its bound is {self._max_bytes}",
                self._retry_after,
            )
        self._reserved += size
        try:
            await self._submit(_Job(records=records))
        finally:
            self._reserved -= size
        self._entries += len(records)
        self._bytes += size
        self.appended.set()

    async def remove(self, entries: Sequence[Entry]) -> None:
        """Forget entries RabbitMQ has confirmed."""
        if not entries:
            return
        await self._submit(_Job(remove=[e.seq for e in entries]))
        self._entries -= len(entries)
        self._bytes -= sum(len(e.record) + ENTRY_OVERHEAD for e in entries)

    async def read(self, *, after: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries with seq > ``after``, oldest first.

        Raises:
            SpoolCorrupt: the file can no longer be read.
        """
        return await asyncio.to_thread(self._read, after, limit)

    def _read(self, after: int, limit: int) -> list[Entry]:
        assert self._reader is not None
        try:
            with self._read_lock:
                rows = self._reader.execute(
                    "SELECT seq, record, created FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise SpoolCorrupt(f"spool file {self.path} cannot be read: {exc}") from None
        return [Entry(seq, bytes(record), created) for seq, record, created in rows]

    def _oldest(self) -> float | None:
        if self._reader is None or self._entries == 0:
            return None
        with self._read_lock:
            row = self._reader.execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    async def _submit(self, job: _Job) -> None:
        assert self._loop is not None
        if self._writer is None:
            raise SpoolError("spool is closed")
        job.future = self._loop.create_future()
        self._jobs.put(job)
        await job.future

    # -- the writer thread ---------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                jobs = [first]
                stop = False
                while True:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    jobs.append(more)
                self._commit(conn, jobs)
                if stop:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        error: SpoolError | None = self._failed
        if error is None:
            now = time.time()
            try:
                conn.execute("BEGIN IMMEDIATE")
                for job in jobs:
                    if job.records:
                        conn.executemany(
                            "INSERT INTO spool (record, created) VALUES (?, ?)",
                            [(r, now) for r in job.records],
                        )
                    if job.remove:
                        conn.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in job.remove])
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:
                # A failed write or fsync leaves the file in a state we cannot vouch for (the
                # lesson of PostgreSQL's fsync bug): refuse everything from now on.
                error = SpoolError(f"spool write failed: {exc}")
                self._failed = error
                log.critical("spool_write_failed", error=str(exc), pid=os.getpid())
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_settle, [job.future for job in jobs], error)


def _settle(futures: list[asyncio.Future[None] | None], error: SpoolError | None) -> None:
    for future in futures:
        if future is None or future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
