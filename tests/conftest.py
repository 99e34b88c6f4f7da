"""Fixtures shared by every test layer: the real RabbitMQ on localhost, names that never collide."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SEED = Path(__file__).resolve().parents[1] / "tests" / "data" / "servio-webhook-settings.txt"


@pytest.fixture
def exchange_name() -> str:
    """An exchange name of this test's own, so tests never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def amqp_channel(exchange_name: str) -> AsyncIterator[AbstractChannel]:
    """A channel on the shared broker; deletes what the test's exchange name left behind."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    yield channel
    cleanup = await connection.channel()
    for queue in (f"{exchange_name}.unrouted", f"{exchange_name}.invalid", f"{exchange_name}.all"):
        await cleanup.queue_delete(queue)
    for exchange in (exchange_name, f"{exchange_name}.unrouted"):
        await cleanup.exchange_delete(exchange)
    await connection.close()


@dataclass
class Collected:
    """Messages taken off a queue, in the order the broker delivered them."""

    queue: AbstractQueue
    messages: list[AbstractIncomingMessage] = field(default_factory=list)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[AbstractIncomingMessage]:
        """Wait until at least ``count`` messages arrived; fail the test after ``timeout``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.messages) < count:
            if loop.time() > end:
                raise AssertionError(f"expected {count} messages, got {len(self.messages)} in {timeout}s")
            await asyncio.sleep(0.02)
        return self.messages

    async def settle(self, quiet: float = 0.5) -> list[AbstractIncomingMessage]:
        """Wait until no message has arrived for ``quiet`` seconds (to see that no more come)."""
        seen = -1
        while seen != len(self.messages):
            seen = len(self.messages)
            await asyncio.sleep(quiet)
        return self.messages


async def collect(channel: AbstractChannel, queue_name: str, *, declare: bool = False) -> Collected:
    """Consume ``queue_name`` into a list (auto-ack)."""
    if declare:
        queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    else:
        queue = await channel.get_queue(queue_name)
    collected = Collected(queue)

    async def on_message(message: AbstractIncomingMessage) -> None:
        collected.messages.append(message)

    await queue.consume(on_message, no_ack=True)
    return collected


async def bind_all(channel: AbstractChannel, exchange_name: str, *, quorum: bool = False) -> Collected:
    """A queue ``<exchange>.all`` bound to ``#`` on the exchange, consumed into a list.

    Declares the exchange as the bridge does, so the binding exists before the bridge starts.
    """
    await channel.declare_exchange(f"{exchange_name}.unrouted", aio_pika.ExchangeType.FANOUT, durable=True)
    exchange = await channel.declare_exchange(
        exchange_name,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": f"{exchange_name}.unrouted"},
    )
    arguments = {"x-queue-type": "quorum"} if quorum else None
    queue = await channel.declare_queue(f"{exchange_name}.all", durable=True, arguments=arguments)
    await queue.bind(exchange, "#")
    collected = Collected(queue)

    async def on_message(message: AbstractIncomingMessage) -> None:
        collected.messages.append(message)

    await queue.consume(on_message, no_ack=True)
    return collected
