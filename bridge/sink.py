"""Where an accepted webhook's messages go before the answer: the seam between HTTP and storage.

``accept`` returns only once every message is safe (confirmed by RabbitMQ, or fsynced in the
spool); otherwise it raises ``Unavailable`` and the webhook is answered 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from bridge.amqp.publisher import Publisher
from bridge.core.message import CHUNK
from bridge.core.outbound import Outbound
from bridge.core.record import encode_record
from bridge.errors import BrokerError, SpoolError, Unavailable
from bridge.spool.store import Spool


class Sink(Protocol):
    @property
    def ready(self) -> bool:
        """True when the sink can keep messages right now."""
        ...

    async def accept(self, messages: Sequence[Outbound]) -> None:
        """Keep ``messages`` safe before returning.

        Raises:
            Unavailable: they could not be kept; nothing may be answered 200.
        """
        ...


class DirectSink:
    """No spool: publish with confirms before answering, within ``timeout`` seconds."""

    def __init__(self, publisher: Publisher, *, timeout: float, retry_after: int = 5) -> None:
        self._publisher = publisher
        self._timeout = timeout
        self._retry_after = retry_after

    @property
    def ready(self) -> bool:
        return self._publisher.connected

    async def accept(self, messages: Sequence[Outbound]) -> None:
        try:
            # The deadline paces retries; the timeout also bounds a connect that hangs.
            async with asyncio.timeout(self._timeout):
                kept_nowhere = await self._publisher.publish(
                    messages, deadline=time.monotonic() + self._timeout
                )
        except TimeoutError:
            raise Unavailable(
                "broker_unavailable", "RabbitMQ did not confirm the messages in time", self._retry_after
            ) from None
        except BrokerError as exc:
            raise Unavailable(
                "broker_unavailable", f"RabbitMQ did not confirm the messages: {exc}", self._retry_after
            ) from None
        if kept_nowhere:
            # Refused even as dead letters, and without a spool there is no quarantine to hold
            # them: the request was not kept whole, so it must not be answered 200.
            raise Unavailable(
                "broker_refused",
                f"RabbitMQ refused {len(kept_nowhere)} message(s), even as dead letters",
                self._retry_after,
            )


class SpoolSink:
    """Keep messages in the fsynced spool; the drain publishes them after the answer."""

    def __init__(self, spool: Spool, *, on_fatal: Callable[[SpoolError], None], retry_after: int = 5) -> None:
        self._spool = spool
        self._on_fatal = on_fatal
        self._retry_after = retry_after

    @property
    def ready(self) -> bool:
        return self._spool.writable

    async def accept(self, messages: Sequence[Outbound]) -> None:
        try:
            if len(messages) <= CHUNK:
                records = [encode_record(m) for m in messages]
            else:
                records = await encode_records(messages)
            await self._spool.append(records)
        except Unavailable:
            # SpoolFull (its bound, or no room on its disk) or spool_busy: nothing was kept and
            # the spool goes on; the sender is told to come back.
            raise
        except SpoolError as exc:
            # A failed write or fsync other than for room: the process stops (exit 3).
            self._on_fatal(exc)
            raise Unavailable("spool_failed", "the spool cannot be written", self._retry_after) from None


async def encode_records(messages: Sequence[Outbound]) -> list[bytes]:
    """The spool records of ``messages``, letting other requests run between two chunks of them."""
    records: list[bytes] = []
    for start in range(0, len(messages), CHUNK):
        if start:
            await asyncio.sleep(0)
        records.extend([encode_record(m) for m in messages[start : start + CHUNK]])
    return records
