"""The drain: publishes the spool in order, removing each batch only once RabbitMQ confirmed it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

import structlog

from bridge.errors import BrokerError
from bridge.spool import Entry, Spool

log = structlog.get_logger("bridge.drain")


class RecordPublisher(Protocol):
    """Publishes spool records as they are (``bridge.worker.ProcessPublisher``)."""

    async def publish_records(self, records: Sequence[bytes], *, deadline: float | None = None) -> None:
        """Return once every record is confirmed.

        Raises:
            BrokerError: they could not all be published; the drain tries again.
            SpoolCorrupt: a record cannot be decoded.
        """
        ...


class Drain:
    """Reads the spool oldest first, ``batch`` entries at a time, and publishes them.

    A batch is removed only after every message in it is confirmed; a failed publish is
    retried (same message_ids) by the publisher, so nothing leaves the spool unconfirmed and
    a later batch never overtakes an earlier one.
    """

    def __init__(self, spool: Spool, publisher: RecordPublisher, *, batch: int = 512) -> None:
        self._spool = spool
        self._publisher = publisher
        self._batch = batch
        self._idle = asyncio.Event()

    async def run(self) -> None:
        """Drain until cancelled."""
        after = 0
        while True:
            self._spool.appended.clear()
            entries = await self._spool.read(after=after, limit=self._batch)
            if not entries:
                self._idle.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spool.appended.wait(), 1.0)
                continue
            self._idle.clear()
            await self._publish(entries)
            await self._spool.remove(entries)
            after = entries[-1].seq

    async def _publish(self, entries: list[Entry]) -> None:
        records = [e.record for e in entries]
        while True:
            try:
                await self._publisher.publish_records(records)
                return
            except BrokerError as exc:  # the publishing process died mid-batch: a new one takes it again
                log.warning("drain_publish_failed", error=str(exc))
                await asyncio.sleep(1)

    async def wait_empty(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the spool to be empty; True if it is."""
        try:
            async with asyncio.timeout(within):
                while self._spool.stats.entries > 0:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True
