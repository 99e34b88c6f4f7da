"""The contract ``bridge.amqp.wire`` holds aiormq and pamqp to, below aio-pika's public API.

Each test names one thing the wire relies on; a release of aiormq or pamqp that moves it fails
here, by name, rather than in production. pyproject.toml declares the range these pass on.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aio_pika
import aiormq
import pamqp.frame
import pytest
from aio_pika.abc import AbstractChannel
from aiormq import spec
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from bridge.amqp.wire import REFUSING_CLOSES, Returned, Unsendable, Wire, connection_blocked, outcome
from bridge.core.outbound import Outbound
from tests.conftest import AMQP_URL, bind_all


def outbound(
    exchange: str, n: int, *, body: bytes = b"{}", routing_key: str = "servio.guests.add"
) -> Outbound:
    return Outbound(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        message_id=f"wire.{n}",
        timestamp=1_700_000_000 + n,
        order_key=f"guests.{n}",
        headers={"n": n},
    )


def stamp(message: Outbound) -> datetime:
    return datetime.fromtimestamp(message.timestamp, UTC)


class TestWhatTheLibrariesOffer:
    def test_a_channel_frame_is_one_marshalled_payload(self) -> None:
        """``ChannelFrame(payload=..., should_close=False)`` is what the wire queues as one write."""
        frame = ChannelFrame(payload=b"frames", should_close=False)
        assert frame.payload == b"frames"
        assert frame.should_close is False

    def test_a_channel_splits_bodies_and_makes_futures(self) -> None:
        """``Channel._split_body`` and ``Channel.create_future`` are there to call."""
        assert callable(getattr(aiormq.Channel, "_split_body", None))
        assert callable(getattr(aiormq.Channel, "create_future", None))

    def test_pamqp_marshals_what_unpacks_as_a_publish(self) -> None:
        """Method, header and body frames marshalled by pamqp read back as what was written."""
        properties = spec.Basic.Properties(message_id="m1", delivery_mode=2, headers={"reason": "x"})
        data = b"".join(
            (
                pamqp.frame.marshal(spec.Basic.Publish(exchange="e", routing_key="k", mandatory=True), 3),
                pamqp.frame.marshal(ContentHeader(properties=properties, body_size=2), 3),
                pamqp.frame.marshal(ContentBody(b"{}"), 3),
            )
        )
        frames = []
        while data:
            consumed, channel, frame = pamqp.frame.unmarshal(data)
            assert channel == 3
            frames.append(frame)
            data = data[consumed:]
        publish, header, body = frames
        assert isinstance(publish, spec.Basic.Publish)
        assert (publish.exchange, publish.routing_key, publish.mandatory) == ("e", "k", True)
        assert isinstance(header, ContentHeader)
        assert header.properties.message_id == "m1"
        assert header.properties.headers == {"reason": "x"}
        assert isinstance(body, ContentBody)
        assert body.value == b"{}"

    def test_the_closes_that_refuse_a_message_are_amqp_errors(self) -> None:
        assert all(issubclass(kind, aiormq.exceptions.AMQPError) for kind in REFUSING_CLOSES)


class TestOnTheBroker:
    async def test_a_batch_written_at_once_is_confirmed_and_delivered_as_sent(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Three messages in one write, one body over frame_max: each confirmed, each delivered
        with its properties, and the channel's own bookkeeping of message_ids emptied after."""
        everything = await bind_all(amqp_channel, exchange_name)
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
            wire = await Wire.of(channel)
            assert wire.frame_max > 0
            big = b'"' + b"x" * (wire.frame_max * 2) + b'"'
            messages = [
                outbound(exchange_name, 1),
                outbound(exchange_name, 2, body=big),
                outbound(exchange_name, 3),
            ]
            confirmations = []
            chunk = []
            for message in messages:
                method, header, bodies = wire.encode(message)
                chunk.append(b"".join((method, header, *bodies)))
                confirmations.append(wire.register(message.message_id))
            await wire.write(b"".join(chunk))
            async with asyncio.timeout(10):
                await asyncio.wait(confirmations)
            assert [outcome(c, m) for c, m in zip(confirmations, messages, strict=True)] == [None] * 3
            underlay = await channel.get_underlay_channel()
            assert underlay.message_id_delivery_tag == {}
            delivered = await everything.wait_for(3)
            assert [m.message_id for m in delivered] == ["wire.1", "wire.2", "wire.3"]
            assert delivered[1].body == big
            assert [m.headers for m in delivered] == [{"n": 1}, {"n": 2}, {"n": 3}]
            assert delivered[0].timestamp == stamp(messages[0])
        finally:
            await connection.close()

    async def test_an_unroutable_message_comes_back_as_returned(
        self, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Mandatory, to an exchange with no binding: the confirmation resolves as ``Returned``."""
        await amqp_channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
            wire = await Wire.of(channel)
            message = outbound(exchange_name, 1)
            method, header, bodies = wire.encode(message)
            confirmation = wire.register(message.message_id)
            await wire.write(b"".join((method, header, *bodies)))
            async with asyncio.timeout(10):
                await asyncio.wait([confirmation])
            assert isinstance(outcome(confirmation, message), Returned)
        finally:
            await connection.close()

    async def test_the_connection_s_blocked_state_is_readable(self) -> None:
        """aiormq still keeps connection.blocked in the event ``connection_blocked`` reads; were it
        gone, an alarm would never show on /readyz."""
        connection = await aio_pika.connect(AMQP_URL)
        try:
            assert connection.transport is not None
            unblocked = getattr(connection.transport.connection, "_Connection__connection_unblocked", None)
            assert isinstance(unblocked, asyncio.Event)
            assert unblocked.is_set()
            assert connection_blocked(connection) is False
        finally:
            await connection.close()
        assert connection_blocked(connection) is False

    async def test_a_short_string_over_255_bytes_is_unencodable(self) -> None:
        """pamqp still refuses what AMQP cannot carry, and the wire says so as ``Unsendable``."""
        connection = await aio_pika.connect(AMQP_URL)
        try:
            wire = await Wire.of(await connection.channel(publisher_confirms=True))
            message = outbound("e", 1, routing_key="k" * 256)
            with pytest.raises(Unsendable):
                wire.encode(message)
        finally:
            await connection.close()
