"""Read-only looks at a spool, safe while a running bridge holds it (no lock, no write)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import SpoolCorrupt
from bridge.spool.store import ENTRY_OVERHEAD, FILE_NAME, SpoolStats

# A running bridge's short write transactions are waited for rather than reported.
BUSY_TIMEOUT_MS = 5000


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
