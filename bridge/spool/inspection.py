"""The read-only looks at a spool, which ``reader`` holds: the name importers still use."""

from __future__ import annotations

from bridge.spool.reader import BUSY_TIMEOUT_MS, QuarantinedEntry, read_quarantine, read_spool_stats

__all__ = ["BUSY_TIMEOUT_MS", "QuarantinedEntry", "read_quarantine", "read_spool_stats"]
