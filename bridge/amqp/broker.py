"""The operator commands' own access to RabbitMQ: probe a node, take dead letters off a queue.

Publishing stays in ``bridge.amqp.publisher``; like it, this module keeps aio-pika's exceptions to
itself and raises ``BrokerUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from bridge.amqp.wire import AMQP_ERRORS, NOT_FOUND
from bridge.errors import BrokerUnavailable


@dataclass(frozen=True, slots=True)
class Probe:
    """What one node said: reachable or not, and which of the named objects it lacks."""

    reachable: bool
    detail: str
    missing: tuple[str, ...] = ()


async def probe(url: str, *, exchanges: tuple[str, ...], queues: tuple[str, ...], within: float) -> Probe:
    """Connect to ``url`` and declare the named objects passively (nothing is created)."""
    try:
        async with asyncio.timeout(within):
            connection = await aio_pika.connect(
                url, client_properties={"connection_name": "servio-bridge check"}
            )
    except (*AMQP_ERRORS, TimeoutError) as exc:
        return Probe(False, f"cannot connect: {exc!r}")
    missing = []
    try:
        async with asyncio.timeout(within):
            declares = [(_declare_exchange, name) for name in exchanges]
            declares += [(_declare_queue, name) for name in queues]
            for declare, name in declares:
                # A failed passive declare closes its channel: one channel per object.
                channel = await connection.channel()
                try:
                    await declare(channel, name)
                except NOT_FOUND:
                    missing.append(name)
                finally:
                    await _close(channel)
    except (*AMQP_ERRORS, TimeoutError) as exc:
        return Probe(False, f"connected, then failed: {exc!r}")
    finally:
        with contextlib.suppress(*AMQP_ERRORS):
            await connection.close()
    return Probe(True, "connected", tuple(missing))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message taken off a queue, not yet acknowledged."""

    body: bytes
    headers: dict[str, str]
    content_type: str | None
    message_id: str | None
    timestamp: int | None
    _message: AbstractIncomingMessage = field(repr=False)

    async def ack(self) -> None:
        """Remove it from the queue (after whatever replaces it is confirmed)."""
        try:
            await self._message.ack()
        except AMQP_ERRORS as exc:
            raise BrokerUnavailable(f"cannot acknowledge: {exc!r}") from None


class DeadLetterQueue:
    """``<exchange>.invalid`` read one message at a time with manual acks (``async with``).

    ``size`` is the message count when it was opened: a run takes at most that many, so what
    it puts back at the tail is not read again in the same run.
    """

    def __init__(self, urls: tuple[str, ...], name: str, *, timeout: float = 10.0) -> None:
        self._urls = urls
        self._name = name
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._queue: AbstractQueue | None = None
        self.size = 0

    async def __aenter__(self) -> DeadLetterQueue:
        errors = []
        for url in self._urls:
            try:
                async with asyncio.timeout(self._timeout):
                    connection = await aio_pika.connect(
                        url, client_properties={"connection_name": "servio-bridge redrive"}
                    )
            except (*AMQP_ERRORS, TimeoutError) as exc:
                errors.append(repr(exc))
                continue
            try:
                channel: AbstractChannel = await connection.channel()
                queue = await channel.declare_queue(self._name, passive=True)
            except NOT_FOUND:
                await connection.close()
                raise BrokerUnavailable(f"queue {self._name!r} does not exist") from None
            except AMQP_ERRORS as exc:
                await connection.close()
                errors.append(repr(exc))
                continue
            self._connection, self._queue = connection, queue
            result = queue.declaration_result
            self.size = int(result.message_count or 0) if result is not None else 0
            return self
        raise BrokerUnavailable("no node reachable: " + "; ".join(errors))

    async def __aexit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        # Unacknowledged messages go back to the queue when the connection closes.
        if self._connection is not None:
            with contextlib.suppress(*AMQP_ERRORS):
                await self._connection.close()

    async def take(self) -> DeadLetter | None:
        """The next message, or None when the queue is empty."""
        assert self._queue is not None
        try:
            message = await self._queue.get(no_ack=False, fail=False, timeout=self._timeout)
        except (*AMQP_ERRORS, TimeoutError) as exc:
            raise BrokerUnavailable(f"cannot read {self._name!r}: {exc!r}") from None
        if message is None:
            return None
        headers = {str(k): _text(v) for k, v in (message.headers or {}).items()}
        stamp = message.timestamp
        return DeadLetter(
            body=message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            timestamp=int(stamp.timestamp()) if stamp is not None else None,
            _message=message,
        )


async def _declare_exchange(channel: AbstractChannel, name: str) -> None:
    await channel.declare_exchange(name, passive=True)


async def _declare_queue(channel: AbstractChannel, name: str) -> None:
    await channel.declare_queue(name, passive=True)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def _close(channel: AbstractChannel) -> None:
    if not channel.is_closed:
        with contextlib.suppress(*AMQP_ERRORS):
            await channel.close()
