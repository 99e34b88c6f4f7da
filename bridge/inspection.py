"""Read-only looks at a spool, safe while a running bridge holds it (no lock, no write)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.errors import SpoolCorrupt
from bridge.spool import ENTRY_OVERHEAD, FILE_NAME, SpoolStats


def read_spool_stats(directory: Path) -> SpoolStats | None:
    """Depth, bytes (as counted against BRIDGE_SPOOL_MAX_BYTES) and oldest entry; None if no spool file.

    Raises:
        SpoolCorrupt: the file is there but cannot be read as a spool.
    """
    path = directory / FILE_NAME
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SpoolCorrupt(f"spool file {path} cannot be opened: {exc}") from None
    try:
        count, size, oldest = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0), MIN(created) FROM spool"
        ).fetchone()
    except sqlite3.Error as exc:
        raise SpoolCorrupt(f"spool file {path} cannot be read: {exc}") from None
    finally:
        conn.close()
    return SpoolStats(
        int(count), int(size) + int(count) * ENTRY_OVERHEAD, None if oldest is None else float(oldest)
    )
