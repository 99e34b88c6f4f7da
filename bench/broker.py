"""The RabbitMQ side of the benchmark: a queue bound to ``#`` that counts, and the publish baseline.

Every name starts with the run's own prefix, and everything declared is deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection


class Broker:
    """One connection of the driver's own: declares, counts, purges and deletes."""

    def __init__(self, url: str, *, queue_type: str = "classic") -> None:
        self.url = url
        self.queue_type = queue_type
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: list[str] = []
        self._queues: list[str] = []

    async def open(self) -> None:
        self._connection = await aio_pika.connect(self.url)
        self._channel = await self._connection.channel()

    @property
    def server_version(self) -> str:
        assert self._connection is not None
        properties = self._connection.transport.connection.server_properties
        return str(properties.get("version", "?"))

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None
        return self._channel

    async def close(self) -> None:
        """Delete every exchange and queue this run declared (the broker is shared)."""
        if self._connection is None:
            return
        cleanup = await self._connection.channel()
        for queue in self._queues:
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await cleanup.queue_delete(queue)
        for exchange in self._exchanges:
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await cleanup.exchange_delete(exchange)
        await self._connection.close()

    def forget_later(self, *, exchanges: tuple[str, ...] = (), queues: tuple[str, ...] = ()) -> None:
        """Objects someone else declares under this run's names (the bridge's unrouted, invalid)."""
        self._exchanges.extend(e for e in exchanges if e not in self._exchanges)
        self._queues.extend(q for q in queues if q not in self._queues)

    async def counting_queue(self, exchange: str, *, bridge_style: bool) -> str:
        """Declare ``exchange`` as its publisher will, and a durable queue bound to ``#`` on it.

        ``bridge_style``: topic with the alternate exchange ``<exchange>.unrouted``, exactly as
        servio-bridge declares it (a different declaration would close its channel).
        """
        if bridge_style:
            unrouted = f"{exchange}.unrouted"
            await self.channel.declare_exchange(unrouted, aio_pika.ExchangeType.FANOUT, durable=True)
            self.forget_later(exchanges=(unrouted,))
            arguments = {"alternate-exchange": unrouted}
        else:
            arguments = None
        declared = await self.channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True, arguments=arguments
        )
        self.forget_later(exchanges=(exchange,))
        name = f"{exchange}.all"
        queue = await self.channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": self.queue_type}
        )
        self.forget_later(queues=(name,))
        await queue.bind(declared, "#")
        return name

    async def count(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count is not None
        return int(declared.declaration_result.message_count)

    async def purge(self, queue: str) -> None:
        declared = await self.channel.declare_queue(queue, passive=True)
        await declared.purge()

    async def wait_for(self, queue: str, count: int, *, timeout: float, poll: float = 0.02) -> float | None:
        """Wall-clock time at which ``queue`` first held ``count`` messages; None after ``timeout``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if await self.count(queue) >= count:
                return time.time()
            await asyncio.sleep(poll)
        return None

    async def settled_count(self, queue: str, *, quiet: float = 0.5, timeout: float = 10.0) -> int:
        """The count once it stopped changing for ``quiet`` seconds (stragglers arrived)."""
        end = time.monotonic() + timeout
        seen = await self.count(queue)
        while time.monotonic() < end:
            await asyncio.sleep(quiet)
            now = await self.count(queue)
            if now == seen:
                break
            seen = now
        return seen


async def pipelined_publish(broker: Broker, exchange: str, *, messages: int, in_flight: int = 256) -> float:
    """aio-pika's own confirmed publish rate (msg/s): ``in_flight`` unconfirmed at a time.

    Persistent messages of the bridge's size to a fresh exchange with a durable queue bound to
    ``#``, counted until all are in the queue, like the fan-out it is compared with.
    """
    queue = await broker.counting_queue(exchange, bridge_style=False)
    assert broker._connection is not None
    channel = await broker._connection.channel(publisher_confirms=True)
    target = await channel.get_exchange(exchange)
    body = (
        b'{"entity":"guests","action":"update","id":1234567,"source":"bench",'
        b'"delivery_id":"4f0c2b1e9d8a4c6b8e2f1a3d5c7b9e0f","received_at":"2026-11-28T10:15:02.123456+00:00"}'
    )
    window = asyncio.Semaphore(in_flight)

    async def one(n: int) -> None:
        try:
            await target.publish(
                aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    message_id=f"bench.{n}",
                ),
                "servio.guests.update",
                mandatory=True,
            )
        finally:
            window.release()

    started = time.time()
    tasks = []
    for n in range(messages):
        await window.acquire()
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    done = await broker.wait_for(queue, messages, timeout=120)
    await channel.close()
    await broker.purge(queue)
    if done is None:
        raise RuntimeError("the pipelined baseline did not reach its queue")
    return messages / (done - started)
