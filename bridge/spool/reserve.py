"""Room on the spool's disk: whether appends have it, and a preallocated reserve file given up
when a delete needs room.

Without the reserve a full disk could not even take the delete of what RabbitMQ confirmed (a
delete in WAL mode writes pages too), and a restart on a full disk would publish its backlog for
ever. See docs/spool.md ("The reserve") for its size.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import structlog

from bridge.errors import SpoolFull
from bridge.spool.schema import is_full

log = structlog.get_logger("bridge.spool.reserve")

FILE_NAME = "spool.reserve"
# A checkpoint of a WAL at its limit (8,192 pages, 32 MiB) plus the second of appends before the
# checkpointer looks (one test run filled a disk with ~23 MB of WAL between two checkpoints),
# then the WAL frames of deletes until the WAL starts over.
DEFAULT_BYTES = 40 * 1024 * 1024


class Reserve:
    """The reserve file in ``directory``; taken and given up from either of two threads."""

    def __init__(self, directory: Path, size: int = DEFAULT_BYTES) -> None:
        self.path = directory / FILE_NAME
        self.size = size
        self._lock = threading.Lock()
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def discard(self) -> None:
        """Delete a reserve file left by an earlier run, held or not."""
        with self._lock, contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
            self._held = False

    def take(self) -> bool:
        """Make the file if it is not there; False if the file system has no room for it."""
        with self._lock:
            if self._held:
                return True
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    if self.size > 0:
                        os.posix_fallocate(fd, 0, self.size)
                finally:
                    os.close(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                return False
            self._held = True
            return True

    def give_up(self) -> bool:
        """Delete the file, so that its room can be written; False if it was not held."""
        with self._lock:
            if not self._held:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._held = False
            return True


class Room:
    """Whether the spool's disk has room for appends: ``full`` once it refused a write or the
    reserve was given up (either thread), cleared on the loop's thread once the checkpointer
    finds room again."""

    def __init__(self, spool_path: Path, reserve: Reserve, retry_after: int) -> None:
        self.reserve = reserve
        self.full = False
        self._path = spool_path
        self._retry_after = retry_after

    def no_room(self) -> SpoolFull:
        """The refusal of an append while the disk is full."""
        return SpoolFull(
            "spool_full", f"the disk of the spool {self._path.parent} is full", self._retry_after
        )

    def refused(self, entries: int) -> None:
        """The disk refused a write; ``entries`` the spool holds."""
        # Either thread: a flag the loop's thread reads, set once.
        if not self.full:
            self.full = True
            log.warning("spool_disk_full", path=str(self._path), entries=entries)

    def returned(self) -> None:
        if self.full:
            self.full = False
            log.info("spool_room_returned", path=str(self._path))

    def give_up_reserve(self, entries: int) -> bool:
        """Delete the reserve file so a checkpoint, a delete or a compaction finds room; False if
        there was none."""
        if not self.reserve.give_up():
            return False
        log.warning("spool_reserve_released", path=str(self.reserve.path), bytes=self.reserve.size)
        # Until the reserve is back, appends wait and checkpoints run only where they can finish.
        self.refused(entries)
        return True

    def compact(self, writer: sqlite3.Connection) -> None:
        """Rewrite an emptied spool small (VACUUM), giving up the reserve if that is what it takes:
        on a full disk its freed pages would otherwise keep every checkpoint from completing."""
        for attempt in range(2):
            try:
                writer.execute("VACUUM")
            except sqlite3.Error as exc:
                if attempt == 0 and is_full(exc) and self.give_up_reserve(0):
                    continue
                log.warning("spool_compact_failed", error=str(exc))
                return
            log.info("spool_compacted", path=str(self._path))
            return


def free_bytes(directory: Path) -> int:
    """Room an unprivileged writer has on the file system of ``directory``."""
    fs = os.statvfs(directory)
    return fs.f_bavail * fs.f_frsize
