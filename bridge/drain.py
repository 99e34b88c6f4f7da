"""The drain: has the spool published in order, removing each batch only once RabbitMQ confirmed it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from bridge.errors import BrokerError
from bridge.spool import Span, Spool

log = structlog.get_logger("bridge.drain")


class SpanPublisher(Protocol):
    """Reads the spool and publishes what it read (``bridge.worker.ProcessPublisher``)."""

    async def publish_after(self, after: int, limit: int, *, deadline: float | None = None) -> Span:
        """Publish the (up to ``limit``) entries after seq ``after``; return once all are confirmed.

        Returns:
            The span published; count 0 when there was nothing after ``after``.

        Raises:
            BrokerError: they could not all be published; the drain tries again.
            SpoolCorrupt: the spool cannot be read, or a record cannot be decoded.
        """
        ...


class Drain:
    """Has the spool published oldest first, ``batch`` entries at a time.

    The publishing process reads each batch from the spool itself, so the listening process
    neither reads nor passes records on: it asks for the batch after the last one and, once every
    message in it is confirmed, removes that span. A failed publish is retried (same records, same
    message_ids), so nothing leaves the spool unconfirmed and a later batch never overtakes an
    earlier one.
    """

    def __init__(self, spool: Spool, publisher: SpanPublisher, *, batch: int = 512) -> None:
        self._spool = spool
        self._publisher = publisher
        self._batch = batch
        self._idle = asyncio.Event()

    async def run(self) -> None:
        """Drain until cancelled."""
        after = 0
        while True:
            self._spool.appended.clear()
            span = await self._publish(after)
            if span.count == 0:
                self._idle.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spool.appended.wait(), 1.0)
                continue
            self._idle.clear()
            await self._spool.remove_span(span)
            after = span.last

    async def _publish(self, after: int) -> Span:
        while True:
            try:
                return await self._publisher.publish_after(after, self._batch)
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
