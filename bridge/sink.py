"""Where an accepted webhook's messages go before the answer: the seam between HTTP and storage.

``accept`` returns only once every message is safe (confirmed by RabbitMQ, or fsynced in the
spool); otherwise it raises ``Unavailable`` and the webhook is answered 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

from bridge.errors import BrokerError, Unavailable
from bridge.message import Outbound
from bridge.publisher import Publisher


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
                await self._publisher.publish(messages, deadline=time.monotonic() + self._timeout)
        except TimeoutError:
            raise Unavailable(
                "broker_unavailable", "RabbitMQ did not confirm the messages in time", self._retry_after
            ) from None
        except BrokerError as exc:
            raise Unavailable(
                "broker_unavailable", f"RabbitMQ did not confirm the messages: {exc}", self._retry_after
            ) from None
