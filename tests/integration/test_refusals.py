"""Messages RabbitMQ will not take, on the real broker: refused for good, dead-lettered as
``broker_refused`` or handed back for quarantine, and never a block for the messages around them;
and the topology declared again after a return or a channel close."""

from __future__ import annotations

import time
from typing import Any

from aio_pika.abc import AbstractChannel

from bridge.amqp.publisher import AmqpPublisher, RetryBudget
from bridge.amqp.wire import Wire
from bridge.core.outbound import Outbound
from tests.conftest import collect
from tests.integration.test_publisher import outbound, publisher_on


class Seen:
    """An observer that records the classes of retries and the refusals, as they happen."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.retries: list[str] = []
        self.refusals: list[tuple[str, int]] = []

    def confirmed(self, message: Outbound, _seconds: float) -> None:
        self.ids.append(message.message_id)

    def retried(self, failure_class: str = "other") -> None:
        self.retries.append(failure_class)

    def refused(self, reason: str, n: int) -> None:
        self.refusals.append((reason, n))


def poison(exchange: str, **fields: Any) -> Outbound:
    """An event message with ``fields`` replaced (a huge header, a long routing key, ...)."""
    values: dict[str, Any] = {
        "exchange": exchange,
        "routing_key": "servio.guests.add",
        "body": b'{"poison":true}',
        "message_id": "poison",
        "timestamp": int(time.time()),
        "order_key": "poison",
        **fields,
    }
    return Outbound(**values)


async def published(
    publisher: AmqpPublisher, messages: list[Outbound], within: float = 20.0
) -> tuple[list[Any], float]:
    started = time.monotonic()
    try:
        quarantined = await publisher.publish(messages, deadline=time.monotonic() + within)
    finally:
        await publisher.close()
    return list(quarantined), time.monotonic() - started


class HeaderCheckOff(AmqpPublisher):
    """A publisher that sends even what its own check would refuse, so the broker refuses it."""

    def _frame_limit(self, wire: Wire) -> int:
        return 0


class TestRefusedBeforeSending:
    async def test_a_header_over_the_frame_limit_is_dead_lettered_and_the_rest_delivered(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A header of 200,000 bytes cannot fit one frame of 131,072: it is never sent, goes to
        <exchange>.invalid as broker_refused with its body, and the 20 around it arrive at once."""
        good = [outbound(exchange_name, n, f"guests.{n}") for n in range(20)]
        bad = poison(exchange_name, headers={"reason": "bad_id", "detail": "k" * 200_000})
        seen = Seen()
        publisher = publisher_on(exchange_name, observer=seen)
        await publisher.connect()
        everything = await collect(amqp_channel, f"{exchange_name}.unrouted")
        invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
        quarantined, took = await published(publisher, [*good[:10], bad, *good[10:]])
        assert quarantined == []
        assert took < 3
        got = await everything.wait_for(20)
        assert sorted(m.message_id for m in got) == sorted(m.message_id for m in good)
        [letter] = await invalid.wait_for(1)
        assert letter.body == bad.body
        assert letter.message_id == "poison.refused"
        headers = letter.headers or {}
        assert headers["reason"] == "broker_refused"
        assert headers["original_exchange"] == exchange_name
        assert headers["original_routing_key"] == "servio.guests.add"
        assert "frame" in str(headers["error"])
        assert sum(len(str(v)) for v in headers.values()) < 2000
        assert seen.refusals == [("too_large", 1)]
        assert seen.retries == []

    async def test_a_routing_key_over_255_bytes_is_dead_lettered(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """AMQP's short strings hold 255 bytes: a longer routing key is refused at once, its
        dead letter carries the key cut short."""
        bad = poison(exchange_name, routing_key="servio." + "x" * 300)
        seen = Seen()
        publisher = publisher_on(exchange_name, observer=seen)
        await publisher.connect()
        invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
        quarantined, took = await published(publisher, [bad, outbound(exchange_name, 1, "guests.1")])
        assert quarantined == []
        assert took < 3
        [letter] = await invalid.wait_for(1)
        headers = letter.headers or {}
        assert headers["reason"] == "broker_refused"
        assert len(str(headers["original_routing_key"])) <= 255
        assert seen.refusals == [("invalid_field", 1)]


class TestRefusedByTheBroker:
    async def test_a_connection_closed_for_one_message_finds_it_and_delivers_the_rest(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """With the publisher's own check off, the broker closes the connection (FRAME_ERROR) for
        the oversized header: the in-flight ones are sent again one at a time, the culprit is
        refused after its attempts alone and dead-lettered, and all the others arrive."""
        good = [outbound(exchange_name, n, f"guests.{n}") for n in range(30)]
        bad = poison(exchange_name, headers={"detail": "k" * 200_000})
        seen = Seen()
        publisher = publisher_on(exchange_name, HeaderCheckOff, observer=seen)
        await publisher.connect()
        everything = await collect(amqp_channel, f"{exchange_name}.unrouted")
        invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
        quarantined, took = await published(publisher, [*good[:15], bad, *good[15:]])
        assert quarantined == []
        assert took < 15
        got = await everything.wait_for(30)
        assert sorted({m.message_id for m in got}) == sorted(m.message_id for m in good)
        [letter] = await invalid.wait_for(1)
        assert (letter.headers or {})["reason"] == "broker_refused"
        assert letter.body == bad.body
        assert ("closed", 1) in seen.refusals
        assert set(seen.retries) == {"closed"}
        assert len(seen.retries) <= 1 + RetryBudget().closed

    async def test_an_exchange_that_does_not_exist_is_refused_after_its_attempts(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A record for an exchange no longer configured (NOT_FOUND closes the channel) goes to
        <exchange>.invalid once the topology was declared again and it still fails."""
        bad = poison(f"{exchange_name}.gone")
        good = [outbound(exchange_name, n, f"guests.{n}") for n in range(5)]
        seen = Seen()
        publisher = publisher_on(exchange_name, observer=seen)
        await publisher.connect()
        everything = await collect(amqp_channel, f"{exchange_name}.unrouted")
        invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
        quarantined, took = await published(publisher, [bad, *good])
        assert quarantined == []
        assert took < 10
        await everything.wait_for(5)
        [letter] = await invalid.wait_for(1)
        assert (letter.headers or {})["original_exchange"] == f"{exchange_name}.gone"
        assert ("closed", 1) in seen.refusals

    async def test_a_message_returned_after_every_redeclare_is_dead_lettered(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A dead letter for a queue that no declare creates is returned again and again: it is
        refused after its budget and goes to <exchange>.invalid; the rest are confirmed."""
        good = [outbound(exchange_name, n, f"guests.{n}") for n in range(10)]
        lost = poison("", routing_key=f"{exchange_name}.no-such-queue", message_id="returned")
        seen = Seen()
        publisher = publisher_on(exchange_name, observer=seen)
        await publisher.connect()
        everything = await collect(amqp_channel, f"{exchange_name}.unrouted")
        invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
        quarantined, took = await published(publisher, [*good[:5], lost, *good[5:]])
        assert quarantined == []
        assert took < 10
        await everything.wait_for(10)
        [letter] = await invalid.wait_for(1)
        assert letter.message_id == "returned.refused"
        assert ("returned", 1) in seen.refusals
        assert seen.retries.count("returned") == RetryBudget().returned

    async def test_a_dead_letter_refused_too_is_handed_back_for_quarantine(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """<exchange>.invalid made by the operator to refuse everything (nacks): a message refused
        for good cannot become a dead letter either, and ``publish`` returns it to be kept
        elsewhere; the messages around it are confirmed."""
        await amqp_channel.declare_queue(
            f"{exchange_name}.invalid",
            durable=True,
            arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
        )
        good = [outbound(exchange_name, n, f"guests.{n}") for n in range(5)]
        bad = poison(exchange_name, headers={"detail": "k" * 200_000})
        seen = Seen()
        publisher = publisher_on(exchange_name, observer=seen, budget=RetryBudget(nacked=3, nacked_for=1.0))
        await publisher.connect()
        everything = await collect(amqp_channel, f"{exchange_name}.unrouted")
        quarantined, took = await published(publisher, [*good[:2], bad, *good[2:]])
        assert [(r.index, r.reason) for r in quarantined] == [(2, "nacked")]
        assert took < 10
        await everything.wait_for(5)
        assert ("too_large", 1) in seen.refusals
        assert ("nacked", 1) in seen.refusals
        assert "nacked" in seen.retries


class TestTopologyHealing:
    async def test_a_deleted_unrouted_queue_is_declared_again_before_the_retry(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """The unrouted queue deleted under a connected publisher: the next message is returned,
        the topology declared again, and the message lands in the new queue."""
        seen = Seen()
        publisher = publisher_on(exchange_name, observer=seen)
        await publisher.connect()
        await amqp_channel.queue_delete(f"{exchange_name}.unrouted")
        quarantined, took = await published(publisher, [outbound(exchange_name, 1, "guests.1")])
        assert quarantined == []
        assert took < 5
        unrouted = await collect(amqp_channel, f"{exchange_name}.unrouted")
        [message] = await unrouted.wait_for(1)
        assert message.message_id == "m1"
        assert seen.retries == ["returned"]

    async def test_a_deleted_exchange_is_declared_again_after_not_found(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """The exchange deleted under a connected publisher: NOT_FOUND closes the channel, the
        topology is declared again, and the message goes out."""
        seen = Seen()
        publisher = publisher_on(exchange_name, observer=seen)
        await publisher.connect()
        await amqp_channel.exchange_delete(exchange_name)
        quarantined, took = await published(publisher, [outbound(exchange_name, 1, "guests.1")])
        assert quarantined == []
        assert took < 5
        unrouted = await collect(amqp_channel, f"{exchange_name}.unrouted")
        assert [m.message_id for m in await unrouted.wait_for(1)] == ["m1"]
        assert seen.retries == ["closed"]

    async def test_a_queue_the_operator_declared_otherwise_does_not_stop_the_connection(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """<exchange>.invalid declared beforehand with other arguments: the declare of the
        topology keeps it as it is, and the publisher connects and publishes."""
        await amqp_channel.declare_queue(f"{exchange_name}.invalid", durable=True)
        publisher = publisher_on(exchange_name)
        await publisher.connect()
        assert publisher.connected
        unrouted = await collect(amqp_channel, f"{exchange_name}.unrouted")
        quarantined, _ = await published(publisher, [outbound(exchange_name, 1, "guests.1")])
        assert quarantined == []
        assert [m.message_id for m in await unrouted.wait_for(1)] == ["m1"]
