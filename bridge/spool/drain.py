"""The drain: has the spool published in order, removing each batch only once RabbitMQ confirmed it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

import structlog

from bridge.errors import BrokerError
from bridge.spool.reader import Span
from bridge.spool.store import Spool

log = structlog.get_logger("bridge.spool.drain")
# Unconfirmed messages per batch while webhooks are arriving (see ``Drain``): 32 and more held
# more answers up, 16 let the drain fall a little behind under load (docs/benchmarks.md, fifth
# round); the p99 answer had less room to spare than the end-to-end rate.
BUSY_WINDOW = 16


@dataclass(frozen=True, slots=True)
class Published:
    """A span published: every entry in it confirmed, except ``quarantined`` (seq, reason), which
    RabbitMQ refused even as dead letters and the spool keeps in its quarantine."""

    span: Span
    quarantined: tuple[tuple[int, str], ...] = ()


class SpanPublisher(Protocol):
    """Reads the spool and publishes what it read (``bridge.amqp.worker.ProcessPublisher``)."""

    async def publish_after(
        self, after: int, limit: int, *, deadline: float | None = None, window: int | None = None
    ) -> Published:
        """Publish the (up to ``limit``) entries after seq ``after``; return once each is
        confirmed, or refused for good and dead-lettered or handed back for quarantine.

        At most ``window`` of them are unconfirmed at once (the publisher's own window when None).

        Returns:
            The span published (count 0 when there was nothing after ``after``), with the
            entries to quarantine.

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

    While webhooks keep arriving, a batch keeps at most ``busy_window`` messages unconfirmed
    rather than the publisher's 256: RabbitMQ, when it shares the CPUs with the listener, then
    gets its work in small pieces between answers instead of bursts that hold the answers up
    (256 messages were ~15 ms of its CPU on the benchmark's machine). With no webhook arriving,
    the full window drains a backlog fastest.
    """

    def __init__(
        self, spool: Spool, publisher: SpanPublisher, *, batch: int = 512, busy_window: int = BUSY_WINDOW
    ) -> None:
        self._spool = spool
        self._publisher = publisher
        self._batch = batch
        self._busy_window = busy_window
        self._idle = asyncio.Event()

    async def run(self) -> None:
        """Drain until cancelled."""
        after = 0
        while True:
            # Set by every append since the last batch began (or by the one that ended a wait).
            busy = self._spool.appended.is_set()
            self._spool.appended.clear()
            published = await self._publish(after, self._busy_window if busy else None)
            span = published.span
            if span.count == 0:
                self._idle.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spool.appended.wait(), 1.0)
                continue
            self._idle.clear()
            if published.quarantined:
                for seq, reason in published.quarantined:
                    log.error("spool_entry_quarantined", seq=seq, reason=reason)
                await self._spool.remove_span(span, quarantined=published.quarantined)
            else:
                await self._spool.remove_span(span)
            after = span.last

    async def _publish(self, after: int, window: int | None) -> Published:
        while True:
            try:
                return await self._publisher.publish_after(after, self._batch, window=window)
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
