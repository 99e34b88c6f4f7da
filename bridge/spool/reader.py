"""Reading a spool from outside its writer: the drain's batches in order, and the read-only looks
of the CLI (depth, quarantine), all safe while a running bridge holds the file (no lock, no write).

WAL readers see every committed append and never block the writer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from bridge.errors import SpoolCorrupt
from bridge.spool.schema import ENTRY_OVERHEAD, FILE_NAME

log = structlog.get_logger("bridge.spool.reader")

# Back-off, in seconds, of a write or read that met a busy lock or a transient read error.
RETRY_DELAYS = (0.01, 0.05, 0.1, 0.2, 0.4)
# A running bridge's short write transactions are waited for rather than reported.
BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What a spool holds: entries, bytes as counted against its bound, the oldest entry's time,
    and the quarantined entries."""

    entries: int
    bytes: int
    oldest: float | None
    quarantined: int = 0


@dataclass(frozen=True, slots=True)
class Span:
    """Entries ``first``..``last`` as one read took them: ``count`` records of ``record_bytes`` bytes."""

    first: int
    last: int
    count: int
    record_bytes: int


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


def count_quarantined(conn: sqlite3.Connection) -> int:
    """Entries in the quarantine table; 0 while another connection holds it busy (a scrape can
    do without it this once)."""
    try:
        return int(conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def oldest_created(conn: sqlite3.Connection) -> float | None:
    """When the oldest entry of the spool was appended (epoch seconds), or None when it is empty."""
    row = conn.execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


@dataclass(frozen=True, slots=True)
class QuarantinedEntry:
    """A spool entry that even ``<exchange>.invalid`` refused, kept with why and when."""

    seq: int
    record: bytes
    created: float
    quarantined: float
    reason: str


def read_spool_stats(directory: Path) -> SpoolStats | None:
    """Depth, bytes (as counted against BRIDGE_SPOOL_MAX_BYTES), oldest entry and quarantined
    entries; None if no spool file.

    Raises:
        SpoolCorrupt: the file is there but cannot be read as a spool.
    """
    path = directory / FILE_NAME
    if not path.exists():
        return None
    with _read_only(path) as conn:
        try:
            count, size, oldest = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0), MIN(created) FROM spool"
            ).fetchone()
            quarantined = (
                conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] if _has_quarantine(conn) else 0
            )
        except sqlite3.Error as exc:
            raise SpoolCorrupt(f"spool file {path} cannot be read: {exc}") from None
    return SpoolStats(
        int(count),
        int(size) + int(count) * ENTRY_OVERHEAD,
        None if oldest is None else float(oldest),
        int(quarantined),
    )


def read_quarantine(directory: Path) -> list[QuarantinedEntry]:
    """Every quarantined entry, oldest seq first; [] without a spool file or quarantine table.

    Raises:
        SpoolCorrupt: the file is there but cannot be read as a spool.
    """
    path = directory / FILE_NAME
    if not path.exists():
        return []
    with _read_only(path) as conn:
        if not _has_quarantine(conn):
            return []
        try:
            rows = conn.execute(
                "SELECT seq, record, created, quarantined, reason FROM quarantine ORDER BY seq"
            ).fetchall()
        except sqlite3.Error as exc:
            raise SpoolCorrupt(f"spool file {path} cannot be read: {exc}") from None
    return [
        QuarantinedEntry(int(seq), bytes(record), float(created), float(moved), str(reason))
        for seq, record, created, moved, reason in rows
    ]


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise SpoolCorrupt(f"spool file {path} cannot be opened: {exc}") from None
    try:
        yield conn
    finally:
        conn.close()


def _has_quarantine(conn: sqlite3.Connection) -> bool:
    """A spool of schema version 1 (not yet opened by this release) has no quarantine table."""
    try:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='quarantine'").fetchone()
    except sqlite3.Error as exc:
        raise SpoolCorrupt(f"spool file cannot be read: {exc}") from None
    return row is not None
