"""The AMQP wire below aio-pika's public API: many publishes marshalled into one socket write.

aio-pika publishes one message per call, each with a lock, a timeout, a queue hop and a socket
write, which costs more than RabbitMQ's own work on the drain's batches (docs/benchmarks.md).
Everything that reaches into aiormq and pamqp for that lives here, and only here:
tests/integration/test_wire_contract.py fails on a release that moves what this module relies on,
and pyproject.toml declares aiormq, pamqp and yarl with the range that test passes on.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aiormq
import pamqp.frame
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq import spec
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp.header import ContentHeader

from bridge.core.outbound import Outbound
from bridge.core.refusals import CLOSED, INVALID_FIELD, NACKED, RETURNED, TOO_LARGE, cut
from bridge.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfirmTimeout,
    MessageNacked,
    MessageRefused,
    MessageReturned,
)

_X = aiormq.exceptions
# OSError covers ConnectionError and TimeoutError; aiormq raises RuntimeError on a closed channel.
AMQP_ERRORS = (_X.AMQPError, OSError, RuntimeError)
PRECONDITION_FAILED: type[BaseException] = _X.ChannelPreconditionFailed
NOT_FOUND: type[BaseException] = _X.ChannelNotFoundEntity
# Closes that name what was sent as the cause: they count against the message alone in flight.
# Access refused, a locked resource, a forced close (an operator, a node stopping), resource or
# internal errors are about the broker or its configuration, never one message.
REFUSING_CLOSES: tuple[type[BaseException], ...] = (
    _X.ChannelNotFoundEntity,
    _X.ChannelPreconditionFailed,
    _X.ConnectionFrameError,
    _X.ConnectionSyntaxError,
    _X.ConnectionCommandInvalid,
    _X.ConnectionUnexpectedFrame,
    _X.ConnectionNotAllowed,
    _X.ConnectionNotImplemented,
)
REFUSING_CODES = frozenset({404, 406, 501, 502, 503, 505, 530, 540})


class Returned(Exception):
    """A confirm that came back as a basic.return."""


class Unsendable(Exception):
    """A message the broker could not take as it is (``reason``); it is never sent."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


@functools.lru_cache(maxsize=4)
def _stamp(seconds: int) -> datetime:
    # pamqp wants a datetime; the messages of one batch mostly share their second.
    return datetime.fromtimestamp(seconds, UTC)


class Wire:
    """One confirming channel, written to directly: delivery tags, confirms and frames as
    aiormq's ``basic_publish`` keeps them, without its per-message costs."""

    def __init__(self, channel: aiormq.Channel) -> None:
        self._channel = channel

    @classmethod
    async def of(cls, channel: AbstractChannel) -> Wire:
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        return cls(underlay)

    @property
    def frame_max(self) -> int:
        """The negotiated largest frame, 0 for no limit."""
        return int(self._channel.connection.connection_tune.frame_max)

    def register(self, message_id: str) -> asyncio.Future[Any]:
        """The next delivery tag, and the future its confirm (or a basic.return of this
        message_id) resolves: what ``basic_publish`` does before writing."""
        channel = self._channel
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation: asyncio.Future[Any] = channel.create_future()
        channel.confirmations[tag] = confirmation
        channel.message_id_delivery_tag[message_id] = tag

        def forget(_: asyncio.Future[Any]) -> None:
            if channel.message_id_delivery_tag.get(message_id) == tag:
                del channel.message_id_delivery_tag[message_id]

        confirmation.add_done_callback(forget)
        return confirmation

    def encode(self, message: Outbound) -> tuple[bytes, bytes, Iterable[bytes]]:
        """The message's method frame, content header frame and body frames, marshalled.

        Raises:
            Unsendable: pamqp refuses a short string over 255 bytes (routing key, exchange,
                message_id, a header's name) and values it has no AMQP type for.
        """
        number = self._channel.number
        try:
            properties = spec.Basic.Properties(
                content_type=message.content_type,
                delivery_mode=message.delivery_mode,
                app_id=message.app_id,
                message_id=message.message_id,
                timestamp=_stamp(message.timestamp),
                headers=dict(message.headers) if message.headers else None,
            )
            method = pamqp.frame.marshal(
                spec.Basic.Publish(
                    exchange=message.exchange, routing_key=message.routing_key, mandatory=True
                ),
                number,
            )
            header = pamqp.frame.marshal(
                ContentHeader(properties=properties, body_size=len(message.body)), number
            )
        except (TypeError, ValueError, struct.error) as exc:
            raise Unsendable(INVALID_FIELD, f"cannot be encoded: {exc}") from None
        bodies = (pamqp.frame.marshal(body, number) for body in self._channel._split_body(message.body))
        return method, header, bodies

    def frames(self, message: Outbound, frame_max: int) -> bytes:
        """The message's frames as one write, its content header frame at most ``frame_max`` bytes
        (0: no limit).

        Raises:
            Unsendable: a field AMQP cannot carry (``encode``), or a header frame over
                ``frame_max``: it cannot be split, and RabbitMQ answers it by closing the whole
                connection (FRAME_ERROR, frame_too_large).
        """
        method, header, bodies = self.encode(message)
        if frame_max and len(header) > frame_max:
            raise Unsendable(
                TOO_LARGE, f"content header frame of {len(header)} bytes exceeds frame_max {frame_max}"
            )
        return b"".join((method, header, *bodies))

    async def write(self, frames: bytes) -> None:
        """Queue marshalled frames as one write; aiormq's write queue holds 10, so a connection
        RabbitMQ stopped reading (an alarm) makes this wait rather than overflow."""
        await self._channel.write_queue.put(ChannelFrame(payload=frames, should_close=False))


def connection_blocked(connection: AbstractConnection | None) -> bool:
    """RabbitMQ has blocked ``connection`` (connection.blocked: a memory or disk alarm).

    aiormq tracks connection.blocked/unblocked in a name-mangled event and offers no public view
    of it (only ``ready()``, which waits); reading it is side-effect free.
    """
    if connection is None or connection.is_closed or connection.transport is None:
        return False
    unblocked = getattr(connection.transport.connection, "_Connection__connection_unblocked", None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


def outcome(future: asyncio.Future[Any], message: Outbound) -> BaseException | None:
    """What a settled confirmation says: None for an ack, else the failure (``Returned`` for a
    basic.return, which comes back as the result with confirms on and on_return_raises off)."""
    result = future.exception() or future.result()
    if isinstance(result, DeliveredMessage):
        return Returned(f"unroutable: {message.exchange!r} {message.routing_key!r}")
    return result if isinstance(result, BaseException) else None


def holds_back(exc: BaseException) -> bool:
    """A nack or a return: only later messages of the same order key wait, the attempt goes on."""
    return isinstance(exc, Returned | _X.DeliveryError)


def failure_class(exc: BaseException) -> str:
    """The class a failure counts in (``bridge.core.refusals``): only some count against a message."""
    if isinstance(exc, Returned):
        return RETURNED
    if isinstance(exc, _X.DeliveryError):
        return NACKED
    if isinstance(exc, REFUSING_CLOSES):
        return CLOSED
    if isinstance(exc, _X.ChannelClosed | _X.ConnectionClosed) and (
        exc.args and exc.args[0] in REFUSING_CODES
    ):
        return CLOSED
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "unavailable"


def describe(exc: BaseException) -> str:
    return cut(repr(exc) if isinstance(exc, _X.AMQPError) else str(exc), 512)


def translate(exc: BaseException) -> BrokerError:
    """The bridge's own error for a failed publish: nothing of aiormq's leaves the amqp package."""
    if isinstance(exc, BrokerError):
        return exc
    kind = failure_class(exc)
    if kind == RETURNED:
        return MessageReturned(str(exc))
    if kind == NACKED:
        return MessageNacked(f"broker refused the message: {exc!r}")
    if kind == CLOSED:
        return MessageRefused(f"broker closed the channel: {exc!r}")
    if isinstance(exc, asyncio.TimeoutError):
        return ConfirmTimeout("no confirm in time")
    return BrokerUnavailable(f"publish failed: {exc!r}")
