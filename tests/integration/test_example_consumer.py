"""examples/consume_guest_deletes.py against the real RabbitMQ loaded with the deploy
definitions: a duplicate is handled once, poison and hopeless messages go to servio.dead."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bridge.amqp.publisher import AmqpPublisher
from bridge.core.message import build_event
from bridge.core.outbound import Outbound, Webhook
from bridge.core.payload import Event
from bridge.core.topology import build_topology
from tests.integration.imported_definitions import ImportedBroker, imported_definitions
from tests.scripts import load_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "consume_guest_deletes.py"
QUEUE = "servio.guests.delete"
DEAD = "servio.dead"


example = load_script(EXAMPLE, "consume_guest_deletes")


@pytest.fixture(scope="module")
def broker() -> Iterator[ImportedBroker]:
    with imported_definitions() as imported:
        yield imported


@pytest.fixture
async def channel(broker: ImportedBroker) -> AsyncIterator[AbstractChannel]:
    """A channel in the test vhost, with the consumer's queue and servio.dead emptied first."""
    connection = await aio_pika.connect(broker.amqp_url)
    channel = await connection.channel()
    for name in (QUEUE, DEAD):
        await (await channel.declare_queue(name, passive=True)).purge()
    yield channel
    await connection.close()


def guest_deleted(guest_id: int, delivery_id: str = "a" * 32) -> Outbound:
    """A message exactly as the bridge builds it."""
    delivery = Webhook(delivery_id, "Jam_8", datetime(2026, 11, 28, 10, 15, 2, 123456, tzinfo=UTC))
    return build_event(
        Event("delete", "guests", guest_id), delivery, exchange="servio", template="servio.{entity}.{action}"
    )


async def publish_as_the_bridge(broker: ImportedBroker, messages: list[Outbound]) -> None:
    """Publish with the bridge's own publisher: same properties, confirms, topology checks."""
    topology = build_topology("servio", "servio.{entity}.{action}", declare_queues=True)
    publisher = AmqpPublisher([broker.amqp_url], topology, connect_timeout=5)
    try:
        await publisher.publish(messages, deadline=asyncio.get_running_loop().time() + 10)
    finally:
        await publisher.close()


async def ready_count(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.message_count or 0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() > end:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running_consumer(config: Any, handler: Callable[[Any], Awaitable[None]]) -> AsyncIterator[None]:
    """The example's consume() in a task; on exit it stops, and unacked messages go back."""
    stop = asyncio.Event()
    task = asyncio.create_task(example.consume(config, handler, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


class Recorder:
    """A handler that remembers every guest it was asked to delete."""

    def __init__(self, delay: float = 0.0) -> None:
        self.ids: list[int] = []
        self.delay = delay

    async def __call__(self, event: Any) -> None:
        # A slow handler keeps the first copy in flight while its duplicate arrives.
        await asyncio.sleep(self.delay)
        self.ids.append(event.id)


def config_for(broker: ImportedBroker, **overrides: Any) -> Any:
    return example.Config(amqp_url=broker.amqp_url, **overrides)


async def take_all(channel: AbstractChannel, name: str) -> list[AbstractIncomingMessage]:
    queue = await channel.declare_queue(name, passive=True)
    taken = []
    while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
        taken.append(message)
    return taken


class TestDuplicates:
    async def test_a_duplicate_delivery_is_handled_once(
        self, broker: ImportedBroker, channel: AbstractChannel
    ) -> None:
        """The same message published twice (a bridge re-publish) reaches the handler once."""
        first, other = guest_deleted(23061), guest_deleted(23062)
        await publish_as_the_bridge(broker, [first, first, other])
        handler = Recorder(delay=0.2)
        async with running_consumer(config_for(broker), handler):
            await eventually(lambda: _true(len(handler.ids) >= 2))
            await asyncio.sleep(0.5)  # room for a wrong second call
        assert sorted(handler.ids) == [23061, 23062]
        assert await ready_count(channel, QUEUE) == 0, "a message was left unacked"
        assert await ready_count(channel, DEAD) == 0

    async def test_dedup_survives_a_restart_with_a_sqlite_file(
        self, broker: ImportedBroker, channel: AbstractChannel, tmp_path: Path
    ) -> None:
        """With DEDUP_DB, a duplicate arriving after a restart is still skipped."""
        message = guest_deleted(777, delivery_id="b" * 32)
        config = config_for(broker, dedup_db=tmp_path / "handled.sqlite3")
        handler = Recorder()
        await publish_as_the_bridge(broker, [message])
        async with running_consumer(config, handler):
            await eventually(lambda: _true(handler.ids == [777]))
        await publish_as_the_bridge(broker, [message])
        async with running_consumer(config, handler):
            await eventually(lambda: _ready_is(channel, QUEUE, 0))
            await asyncio.sleep(0.3)
        assert handler.ids == [777]
        assert await ready_count(channel, QUEUE) == 0


class TestDeadLetters:
    async def test_poison_messages_go_to_the_dead_letter_queue(
        self, broker: ImportedBroker, channel: AbstractChannel
    ) -> None:
        """Not JSON, or JSON without the fields: dead-lettered with the reason, never handled."""
        exchange = await channel.get_exchange("servio")
        await exchange.publish(aio_pika.Message(b"\xff not json", message_id="poison-1"), QUEUE)
        await exchange.publish(
            aio_pika.Message(
                json.dumps({"entity": "guests", "action": "delete"}).encode(), message_id="poison-2"
            ),
            QUEUE,
        )
        handler = Recorder()
        async with running_consumer(config_for(broker), handler):
            await eventually(lambda: _ready_is(channel, DEAD, 2))
        assert handler.ids == []
        assert await ready_count(channel, QUEUE) == 0
        dead = {m.message_id: m for m in await take_all(channel, DEAD)}
        assert set(dead) == {"poison-1", "poison-2"}
        assert "not JSON" in str(dead["poison-1"].headers[example.POISON_REASON])
        assert "missing fields" in str(dead["poison-2"].headers[example.POISON_REASON])
        assert dead["poison-1"].body == b"\xff not json"
        assert dead["poison-1"].headers["x-original-queue"] == QUEUE

    async def test_a_message_the_handler_keeps_failing_on_is_dead_lettered(
        self, broker: ImportedBroker, channel: AbstractChannel
    ) -> None:
        """Retried up to MAX_ATTEMPTS deliveries, then dead-lettered and acked."""
        attempts: list[int] = []

        async def failing(event: Any) -> None:
            attempts.append(event.id)
            raise RuntimeError("CRM is down")

        message = guest_deleted(4242, delivery_id="c" * 32)
        await publish_as_the_bridge(broker, [message])
        async with running_consumer(config_for(broker, max_attempts=3), failing):
            await eventually(lambda: _ready_is(channel, DEAD, 1))
        assert attempts == [4242, 4242, 4242]
        (dead,) = await take_all(channel, DEAD)
        assert dead.message_id == message.message_id
        assert "handler failed 3 times" in str(dead.headers[example.POISON_REASON])
        assert await ready_count(channel, QUEUE) == 0


class TestParsing:
    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"[]", "not a JSON object"),
            (
                b'{"entity":"rooms","action":"update","id":1,"source":"s","delivery_id":"d",'
                b'"received_at":"2026-11-28T10:15:02+00:00"}',
                "not a guest deletion",
            ),
            (
                b'{"entity":"guests","action":"delete","id":-1,"source":"s","delivery_id":"d",'
                b'"received_at":"2026-11-28T10:15:02+00:00"}',
                "non-negative integer",
            ),
            (
                b'{"entity":"guests","action":"delete","id":true,"source":"s","delivery_id":"d",'
                b'"received_at":"2026-11-28T10:15:02+00:00"}',
                "non-negative integer",
            ),
        ],
        ids=["array", "other-key", "negative-id", "bool-id"],
    )
    def test_malformed_bodies_are_poison(self, body: bytes, reason: str) -> None:
        """Each way a body can be wrong raises Poison naming the problem."""
        with pytest.raises(example.Poison, match=reason):
            example.parse_guest_deleted(body)

    def test_the_bridge_body_parses(self) -> None:
        """A body the bridge builds parses into the event it describes."""
        event = example.parse_guest_deleted(guest_deleted(23061).body)
        assert (event.id, event.source) == (23061, "Jam_8")


async def _true(value: bool) -> bool:
    return value


async def _ready_is(channel: AbstractChannel, name: str, count: int) -> bool:
    return await ready_count(channel, name) == count
