"""The spool file: its tables, its version, the migration of an older file when it opens, and the
two failed writes the spool goes on after (no room, a busy lock)."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import structlog

from bridge.errors import SpoolCorrupt, SpoolError

log = structlog.get_logger("bridge.spool.schema")

# 1: the spool table; 2: and the quarantine table (a version-1 file is migrated on open).
SCHEMA_VERSION = 2
FILE_NAME = "spool.sqlite3"
# What a WAL that grew past the checkpointer's limit is cut back to once it starts over.
WAL_BYTES_KEPT = 64 * 1024 * 1024
# Bytes counted per entry on top of its record: the row's own cost in the file, roughly.
ENTRY_OVERHEAD = 64
_QUARANTINE_TABLE = """
    CREATE TABLE quarantine (
        seq INTEGER PRIMARY KEY,
        record BLOB NOT NULL,
        created REAL NOT NULL,
        quarantined REAL NOT NULL,
        reason TEXT NOT NULL
    );
"""


class DiskFull(Exception):
    """SQLITE_FULL: the transaction was rolled back; nothing of it was kept."""


class Busy(Exception):
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock; try again shortly."""


def is_full(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL


def is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def run_transaction(
    conn: sqlite3.Connection, statements: Sequence[tuple[str, Sequence[tuple[object, ...]]]]
) -> list[int]:
    """Run ``statements`` in one immediate transaction; the rows each changed.

    Raises:
        DiskFull: no room for it; rolled back whole.
        Busy: another connection holds the lock; rolled back, try again.
        sqlite3.Error: any other failure, rolled back.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        counts = [conn.executemany(sql, rows).rowcount for sql, rows in statements]
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        # SQLite rolls a transaction that found no room back whole (WAL frames without a commit
        # frame never count), so the file is as it was before it.
        if is_full(exc):
            raise DiskFull(str(exc)) from None
        if is_busy(exc):
            raise Busy(str(exc)) from None
        raise
    return counts


def lock_directory(directory: Path) -> IO[bytes]:
    """The spool directory, made if need be, locked for this process until the file is closed.

    Raises:
        SpoolError: the directory cannot be used, or another process holds it.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock_file = open(directory / "spool.lock", "wb")  # noqa: SIM115 - held until the spool closes
    except OSError as exc:
        raise SpoolError(f"spool directory {directory} is not usable: {exc}") from None
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.close()
        raise SpoolError(f"spool {directory} is in use by another process") from None
    return lock_file


def open_writer(path: Path) -> sqlite3.Connection:
    """The writer's connection: the file checked (and migrated), then set to write into the page
    cache only, leaving fsyncs to the syncer and checkpoints to the checkpointer.

    Raises:
        SpoolCorrupt: the file is not a spool this version can read.
        SpoolError: the file cannot be opened now.
    """
    writer = connect(path, synchronous="FULL")
    try:
        # Start-up may wait for a ``spool quarantine`` command's short write; later, the loop's
        # thread never blocks on a lock (busy writes are retried by the loop).
        writer.execute("PRAGMA busy_timeout=5000")
        check(writer, path)
        writer.execute("PRAGMA busy_timeout=0")
        # From here the writer leaves durability to the syncer, and checkpoints to the
        # checkpointer's FULL connection (a checkpoint on an OFF connection skips its fsyncs).
        writer.execute("PRAGMA synchronous=OFF")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        # Some builds (Debian's) zero every freed page: a delete would then write every page it
        # frees into the WAL, room a full disk does not have. The records need no shredding.
        writer.execute("PRAGMA secure_delete=OFF")
        writer.execute(f"PRAGMA journal_size_limit={WAL_BYTES_KEPT}")
    except BaseException:
        writer.close()
        raise
    return writer


def connect(path: Path, *, check_same_thread: bool = True, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A read-write connection to the spool file, in WAL mode.

    Raises:
        SpoolCorrupt: the file cannot be opened as a database.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise SpoolCorrupt(f"spool file {path} cannot be opened: {exc}") from None
    return conn


def check(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables of an empty file, migrate a version-1 file, and check the file.

    Raises:
        SpoolCorrupt: the file is not a spool this version can read, or fails its integrity check.
        SpoolError: the file cannot be read now (busy past the wait, no room, an I/O error).
    """
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
            log.info("spool_migrated", path=str(path), from_version=1, to_version=SCHEMA_VERSION)
            version, tables = SCHEMA_VERSION, {"spool", "quarantine"}
        if version != SCHEMA_VERSION or not {"spool", "quarantine"} <= tables:
            raise SpoolCorrupt(
                f"spool file {path} is not a servio-bridge spool (version {version}); "
                "move it away to start empty, or start the version that wrote it"
            )
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise SpoolCorrupt(f"spool file {path} failed its integrity check: {result}")
    except sqlite3.OperationalError as exc:
        # Busy past the wait, no room, an I/O error: the file may be sound, so not "corrupt".
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise SpoolError(f"spool file {path} cannot be opened now: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise SpoolCorrupt(f"spool file {path} is corrupt: {exc}") from None
