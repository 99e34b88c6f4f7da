"""The bridge against a broker loaded with deploy/rabbitmq/definitions.json: no
PRECONDITION_FAILED, messages land in the defined queues, and the dead-letter policy works."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from bridge.amqp.publisher import AmqpPublisher
from bridge.core.message import build_event
from bridge.core.outbound import Webhook
from bridge.core.payload import Event
from bridge.core.topology import KNOWN_KEYS, build_topology
from tests.integration.imported_definitions import ImportedBroker, imported_definitions


@pytest.fixture(scope="module")
def broker() -> Iterator[ImportedBroker]:
    with imported_definitions() as imported:
        yield imported


@pytest.fixture
async def channel(broker: ImportedBroker) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(broker.amqp_url)
    yield await connection.channel()
    await connection.close()


def delivery() -> Webhook:
    return Webhook("d" * 32, "Jam_8", datetime(2026, 11, 28, 10, 15, 2, 123456, tzinfo=UTC))


async def wait_for_count(channel: AbstractChannel, queue: str, count: int, timeout: float = 5.0) -> int:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        declared = await channel.declare_queue(queue, passive=True)
        found = declared.declaration_result.message_count or 0
        if found >= count or loop.time() > end:
            return found
        await asyncio.sleep(0.05)


class TestBridgeAgainstTheDefinitions:
    @pytest.mark.parametrize("declare_queues", [True, False], ids=["declare-queues", "no-queues"])
    async def test_the_bridge_declares_without_precondition_failed(
        self, broker: ImportedBroker, declare_queues: bool
    ) -> None:
        """The bridge's declarations are all equal to the loaded ones, so it connects."""
        topology = build_topology("servio", "servio.{entity}.{action}", declare_queues=declare_queues)
        publisher = AmqpPublisher([broker.amqp_url], topology, connect_timeout=5)
        try:
            await publisher.connect()
            assert publisher.connected, "the bridge could not declare its topology on the loaded broker"
        finally:
            await publisher.close()

    async def test_a_published_message_lands_in_its_defined_queue(
        self, broker: ImportedBroker, channel: AbstractChannel
    ) -> None:
        """Every known key routes to the queue of that name, and the publish is confirmed."""
        topology = build_topology("servio", "servio.{entity}.{action}", declare_queues=True)
        publisher = AmqpPublisher([broker.amqp_url], topology, connect_timeout=5)
        events = [Event(action, entity, 7) for entity, action in KNOWN_KEYS]
        messages = [
            build_event(e, delivery(), exchange="servio", template="servio.{entity}.{action}") for e in events
        ]
        try:
            await publisher.publish(messages, deadline=asyncio.get_running_loop().time() + 10)
        finally:
            await publisher.close()
        for message in messages:
            queue = await channel.declare_queue(message.routing_key, passive=True)
            got = await queue.get(no_ack=True, fail=True, timeout=5)
            assert got is not None
            assert got.message_id == message.message_id

    async def test_a_key_nobody_bound_is_kept_in_unrouted(
        self, broker: ImportedBroker, channel: AbstractChannel
    ) -> None:
        """A new entity Servio adds later reaches servio.unrouted through the alternate exchange."""
        exchange = await channel.get_exchange("servio")
        await exchange.publish(aio_pika.Message(b"{}", message_id="new-entity"), "servio.bookings.add")
        queue = await channel.declare_queue("servio.unrouted", passive=True)
        got = await queue.get(no_ack=True, fail=True, timeout=5)
        assert got is not None
        assert got.message_id == "new-entity"


class TestConsumerDeadLetterPolicy:
    async def test_a_message_requeued_past_the_limit_goes_to_servio_dead(
        self, broker: ImportedBroker, channel: AbstractChannel
    ) -> None:
        """A consumer that keeps nacking with requeue ends up dead-lettering via the policy."""
        exchange = await channel.get_exchange("servio")
        await exchange.publish(
            aio_pika.Message(b'{"poison": true}', message_id="keeps-failing"), "servio.rooms.update"
        )
        queue = await channel.declare_queue("servio.rooms.update", passive=True)
        attempts = 0
        for _ in range(50):
            message = await queue.get(fail=False, timeout=5)
            if message is None:
                break
            attempts += 1
            await message.nack(requeue=True)
        assert attempts > 1, "the message was not redelivered at all"
        assert await wait_for_count(channel, "servio.dead", 1) == 1
        dead = await channel.declare_queue("servio.dead", passive=True)
        got = await dead.get(no_ack=True, fail=True, timeout=5)
        assert got is not None
        assert got.message_id == "keeps-failing"
        assert got.headers["x-first-death-queue"] == "servio.rooms.update"
