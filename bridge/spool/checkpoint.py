"""Checkpoints: the checkpointer thread copies the WAL into the database file now and then.

It runs on a connection of its own with ``synchronous=FULL``, so the WAL is only ever reused once
its pages are synced in the database. While the disk is full it looks for room instead: a
checkpoint only where it can finish, the reserve taken back, appends let in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

import structlog

from bridge.spool.reserve import Room, free_bytes

log = structlog.get_logger("bridge.spool.checkpoint")

# Seconds between checkpoints (each copies what the WAL holds into the database file).
CHECKPOINT_EVERY = 1.0
# Past this many pages in the WAL, a checkpoint holds appends for as long as it takes to copy the
# rest, so that the next write starts the WAL over: under writes that never stop, a checkpoint
# that runs beside them never catches up and the WAL would grow without end (~32 MiB).
WAL_PAGES_LIMIT = 8192
# Once the disk was found full, appends are taken again only with the reserve back in place and
# this much room for them (free space of the file system plus the spool file's free pages).
ROOM_TO_RESUME = 1024 * 1024


class Checkpointed(Protocol):
    """The spool as its checkpointer sees it: ``entries`` read from the checkpointer's thread, the
    rest called on the loop's thread."""

    path: Path
    directory: Path

    @property
    def entries(self) -> int: ...

    def compact(self) -> None: ...

    def hold_writes(self) -> None: ...

    def release_writes(self) -> None: ...


class Checkpointer:
    """The checkpointer thread (``run``) of one spool, on its FULL connection ``conn``."""

    def __init__(
        self, spool: Checkpointed, conn: sqlite3.Connection, room: Room, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._spool = spool
        self._conn = conn
        self._room = room
        self._reserve = room.reserve
        self._loop = loop
        self._stopping = threading.Event()
        self._pause_taken = threading.Event()
        self.checkpoints = 0
        self.whole_checkpoints = 0  # those that held the writer (see _checkpoint_whole)

    def stop(self) -> None:
        """Have the thread end after one last checkpoint."""
        self._stopping.set()

    def run(self) -> None:
        """Copy the WAL into the database file now and then, blocking the writer only when the WAL
        has grown past ``WAL_PAGES_LIMIT`` (see ``_checkpoint_whole``)."""
        while True:
            closing = self._stopping.wait(CHECKPOINT_EVERY)
            try:
                if self._room.full and not closing:
                    self._look_for_room()
                else:
                    _busy, pages, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
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
        page_size, pages, free_pages = (
            int(self._conn.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("page_size", "page_count", "freelist_count")
        )
        if self._spool.entries == 0 and free_pages > 0:
            # A checkpoint copies every page up to the database's size, freed ones too: a file
            # grown in the WAL past what the disk holds is only checkpointed once compacted.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._spool.compact)
            return
        growth = pages * page_size - os.stat(self._spool.path).st_size
        free = free_bytes(self._spool.directory)
        # Appends the WAL holds that the file has no room for yet: the reserve is for this first,
        # so that deletes then write over a WAL that starts over rather than one that grows.
        if growth > free and (
            growth > free + self._reserve.size or not self._room.give_up_reserve(self._spool.entries)
        ):
            return
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self.checkpoints += 1
        if not self._reserve.take():
            return
        if free_bytes(self._spool.directory) + free_pages * page_size >= ROOM_TO_RESUME:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._room.returned)

    def _checkpoint_whole(self) -> None:
        """Hold the writer on the loop's thread, copy what is left of the WAL, let the writer go:
        its next transaction starts the WAL from the beginning."""
        self._pause_taken.clear()
        try:
            self._loop.call_soon_threadsafe(self._pause)
        except RuntimeError:  # the loop is closed: nothing writes any more
            return
        try:
            while not self._pause_taken.wait(0.1):
                if self._stopping.is_set():
                    return
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
            self.whole_checkpoints += 1
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._spool.release_writes)

    def _pause(self) -> None:
        self._spool.hold_writes()
        self._pause_taken.set()
