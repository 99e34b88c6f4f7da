"""The spool's quarantine: entries even ``<exchange>.invalid`` refused, published again on demand.

``servio-bridge spool quarantine redrive`` publishes each with confirms and deletes it from the
quarantine table only once RabbitMQ took it (as itself, or as a ``broker_refused`` dead letter);
what is refused again stays. It writes only the quarantine table, with SQLite's locking and a busy
timeout, so it is safe beside a running bridge (whose writes wait out its short transactions) and
on a stopped spool.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from bridge.amqp.publisher import AmqpPublisher, build_publisher
from bridge.core.record import decode_record
from bridge.errors import BrokerError, SpoolError
from bridge.settings import Settings
from bridge.spool.reader import BUSY_TIMEOUT_MS, QuarantinedEntry, read_quarantine
from bridge.spool.schema import FILE_NAME

log = structlog.get_logger("bridge.cli.quarantine")


@dataclass(slots=True)
class QuarantineReport:
    examined: int = 0
    published: int = 0
    left: int = 0
    errors: list[str] = field(default_factory=list)


async def redrive_quarantine(
    settings: Settings, directory: Path, *, confirm_within: float = 30.0
) -> QuarantineReport:
    """Publish every quarantined entry again; delete those RabbitMQ confirmed.

    Raises:
        SpoolError: the quarantine cannot be read or written.
    """
    entries = read_quarantine(directory)
    report = QuarantineReport()
    if not entries:
        return report
    publisher = build_publisher(settings, name="servio-bridge quarantine redrive")
    conn = _connect(directory / FILE_NAME)
    try:
        await publisher.connect()
        for entry in entries:
            report.examined += 1
            error = await _publish(publisher, entry, confirm_within)
            if error is not None:
                report.left += 1
                report.errors.append(f"seq {entry.seq}: {error}")
                log.warning("quarantine_entry_refused", seq=entry.seq, error=error)
                continue
            try:
                conn.execute("DELETE FROM quarantine WHERE seq = ?", (entry.seq,))
            except sqlite3.Error as exc:
                # Published but still listed: a later redrive publishes it again (same message_id).
                raise SpoolError(
                    f"quarantined entry {entry.seq} was published but not removed: {exc}"
                ) from None
            report.published += 1
    finally:
        await publisher.close()
        conn.close()
    return report


async def _publish(publisher: AmqpPublisher, entry: QuarantinedEntry, confirm_within: float) -> str | None:
    """None once confirmed; otherwise why not."""
    try:
        message = decode_record(entry.record)
    except ValueError as exc:
        return f"cannot be decoded: {exc}"
    try:
        refusals = await publisher.publish([message], deadline=time.monotonic() + confirm_within)
    except BrokerError as exc:
        return f"not confirmed: {exc}"
    if refusals:
        return f"refused again: {refusals[0].reason}: {refusals[0].error}"
    return None


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise SpoolError(f"spool file {path} cannot be opened for writing: {exc}") from None
    return conn
