"""The publisher's batches on the real broker: chunks, the window, per-(entity, ID) order, returns."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from bridge.amqp.publisher import AmqpPublisher, RetryBudget
from bridge.core.outbound import Outbound
from bridge.core.topology import build_topology
from bridge.errors import BrokerError
from tests.conftest import AMQP_URL, bind_all


class Seen:
    """An observer that records what the publisher reports."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.retries = 0

    def confirmed(self, message: Outbound, _seconds: float) -> None:
        self.ids.append(message.message_id)

    def retried(self, _failure_class: str = "other") -> None:
        self.retries += 1

    def refused(self, _reason: str, _n: int) -> None:
        pass


def publisher_on(exchange: str, kind: type[AmqpPublisher] = AmqpPublisher, **options: Any) -> AmqpPublisher:
    """A publisher (of ``kind``) to the local broker for ``exchange``, declaring nothing, with ``options``."""
    return kind(
        [AMQP_URL],
        build_topology(exchange, "servio.{entity}.{action}", declare_queues=False),
        connect_timeout=5,
        **options,
    )


def outbound(exchange: str, n: int, key: str, *, routing_key: str = "servio.guests.update") -> Outbound:
    return Outbound(
        exchange=exchange,
        routing_key=routing_key,
        body=f'{{"n":{n},"key":"{key}"}}'.encode(),
        message_id=f"m{n}",
        timestamp=int(time.time()),
        order_key=key,
    )


class CountingInFlight(AmqpPublisher):
    """A publisher that keeps the most messages it ever had unconfirmed at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unconfirmed = 0
        self.most_unconfirmed = 0

    def _register(self, channel: Any, message: Outbound) -> Any:
        confirmation = super()._register(channel, message)
        self.unconfirmed += 1
        self.most_unconfirmed = max(self.most_unconfirmed, self.unconfirmed)

        def settled(_: Any) -> None:
            self.unconfirmed -= 1

        confirmation.add_done_callback(settled)
        return confirmation


class TestBatches:
    async def test_a_call_s_own_window_bounds_what_is_unconfirmed(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """The same 600 messages go out with up to the publisher's 256 unconfirmed, then with the
        call's window of 8; both arrive whole."""
        collected = await bind_all(amqp_channel, exchange_name)
        publisher = publisher_on(exchange_name, CountingInFlight)
        assert isinstance(publisher, CountingInFlight)
        try:
            wide = [outbound(exchange_name, n, f"guests.{n}") for n in range(600)]
            await publisher.publish(wide, deadline=time.monotonic() + 30)
            most_wide, publisher.most_unconfirmed = publisher.most_unconfirmed, 0
            narrow = [outbound(exchange_name, 1000 + n, f"guests.{n}") for n in range(600)]
            await publisher.publish(narrow, deadline=time.monotonic() + 30, window=8)
        finally:
            await publisher.close()
        got = await collected.wait_for(1200, timeout=30)
        assert sorted(m.message_id for m in got) == sorted(m.message_id for m in wide + narrow)
        assert most_wide > 8
        assert publisher.most_unconfirmed == 8

    async def test_many_keys_through_a_small_window_arrive_in_order_per_key(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """2,000 messages over 40 keys, 16 in flight at most: every one arrives once, each key's in
        the order given, and each is reported confirmed once."""
        collected = await bind_all(amqp_channel, exchange_name)
        seen = Seen()
        publisher = publisher_on(exchange_name, window=16, observer=seen)
        keys = [f"guests.{k}" for k in range(40)]
        messages = [outbound(exchange_name, n, keys[(n * 7) % 40]) for n in range(2000)]
        try:
            await publisher.publish(messages, deadline=time.monotonic() + 30)
        finally:
            await publisher.close()
        got = await collected.wait_for(2000, timeout=30)
        assert sorted(m.message_id for m in got) == sorted(m.message_id for m in messages)
        for key in keys:
            sent = [m.message_id for m in messages if m.order_key == key]
            arrived = [m.message_id for m in got if m.body.decode().endswith(f'"{key}"}}')]
            assert arrived == sent, key
        assert sorted(seen.ids) == sorted(m.message_id for m in messages)
        assert seen.retries == 0
        for message in got:
            assert message.delivery_mode == 2
            assert message.content_type == "application/json"

    async def test_a_returned_message_fails_the_batch_and_the_rest_is_confirmed(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A message the broker returns (no queue of that name on the default exchange), with a
        budget of returns larger than the deadline allows, is retried until the deadline, then the
        publish raises; the messages around it are confirmed and delivered, and the same
        publisher goes on publishing afterwards."""
        collected = await bind_all(amqp_channel, exchange_name)
        seen = Seen()
        publisher = publisher_on(exchange_name, observer=seen, budget=RetryBudget(returned=1000))
        good = [outbound(exchange_name, n, f"guests.{n}") for n in range(20)]
        lost = Outbound(
            exchange="",
            routing_key=f"{exchange_name}.no-such-queue",
            body=b"{}",
            message_id="returned",
            timestamp=int(time.time()),
            order_key="returned",
        )
        try:
            with pytest.raises(BrokerError, match="unroutable"):
                await publisher.publish([*good[:10], lost, *good[10:]], deadline=time.monotonic() + 1.5)
            assert seen.retries >= 1
            assert "returned" not in seen.ids
            assert sorted(seen.ids) == sorted(m.message_id for m in good)
            later = [outbound(exchange_name, 100 + n, f"guests.{100 + n}") for n in range(5)]
            await publisher.publish(later, deadline=time.monotonic() + 10)
        finally:
            await publisher.close()
        got = await collected.wait_for(25, timeout=10)
        assert sorted(m.message_id for m in got) == sorted(m.message_id for m in good + later)

    async def test_a_body_over_the_frame_size_is_split_and_arrives_whole(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A body larger than the negotiated frame (128 KiB on RabbitMQ) goes as several frames."""
        collected = await bind_all(amqp_channel, exchange_name)
        publisher = publisher_on(exchange_name)
        body = b'{"pad":"' + b"x" * 400_000 + b'"}'
        big = Outbound(
            exchange=exchange_name,
            routing_key="servio.guests.add",
            body=body,
            message_id="big",
            timestamp=int(time.time()),
            order_key="guests.1",
        )
        try:
            await publisher.publish(
                [big, outbound(exchange_name, 1, "guests.2")], deadline=time.monotonic() + 10
            )
        finally:
            await publisher.close()
        got = await collected.wait_for(2, timeout=10)
        assert {m.message_id: m.body for m in got}["big"] == body
