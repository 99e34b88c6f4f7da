"""What the rest of the bridge sees of publishing: the seams a fake or the child can stand in for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bridge.core.outbound import Outbound
from bridge.core.refusals import Refusal


class Publisher(Protocol):
    """Where messages go; ``publish`` returns only once every message is confirmed."""

    @property
    def connected(self) -> bool: ...

    async def publish(
        self, messages: Sequence[Outbound], *, deadline: float | None = None
    ) -> Sequence[Refusal]:
        """Publish all ``messages``, retrying until each is confirmed or refused for good.

        Returns:
            The messages refused even as dead letters (by index), for the caller to keep.

        Raises:
            BrokerError: ``deadline`` (a ``time.monotonic()`` value) passed first.
        """
        ...


class SupervisedPublisher(Protocol):
    """What the service runs, stops and watches, whether it publishes in process
    (``bridge.amqp.publisher.AmqpPublisher``) or in a child
    (``bridge.amqp.process.ProcessPublisher``)."""

    @property
    def connected(self) -> bool: ...

    @property
    def blocked(self) -> bool:
        """RabbitMQ has blocked the connection (a memory or disk alarm)."""
        ...

    async def supervise(self) -> None:
        """Keep the connection (or the child) up until cancelled."""
        ...

    async def close(self) -> None: ...


class PublishObserver(Protocol):
    """What the publisher reports as it goes (metrics); every call must be cheap and never raise."""

    def confirmed(self, message: Outbound, seconds: float) -> None:
        """``message`` was confirmed ``seconds`` after it was sent."""
        ...

    def retried(self, failure_class: str = "other") -> None:
        """A publish attempt failed (``failure_class``) and will be tried again."""
        ...

    def refused(self, reason: str, n: int) -> None:
        """``n`` messages were refused for good (``reason``)."""
        ...
