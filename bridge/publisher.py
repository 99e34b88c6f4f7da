"""Publishing to RabbitMQ with publisher confirms, retried until confirmed.

The only module that uses tenacity, and with ``bridge.broker`` (the operator commands' probe
and dead-letter reading) the only one that touches aio-pika. Its callers see ``BrokerError``
subclasses and nothing of aio-pika's own exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import aio_pika
import aiormq
import pamqp.frame
import structlog
import tenacity
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq import spec
from aiormq.abc import ChannelFrame
from pamqp.header import ContentHeader
from yarl import URL

from bridge.errors import BrokerError, BrokerUnavailable, ConfirmTimeout, MessageNacked, MessageReturned
from bridge.message import Outbound
from bridge.topology import Topology

log = structlog.get_logger("bridge.publisher")

# OSError covers ConnectionError and TimeoutError; aiormq raises RuntimeError on a closed channel.
AMQP_ERRORS = (aiormq.exceptions.AMQPError, OSError, RuntimeError)


class Publisher(Protocol):
    """Where messages go; ``publish`` returns only once every message is confirmed."""

    @property
    def connected(self) -> bool: ...

    async def publish(self, messages: Sequence[Outbound], *, deadline: float | None = None) -> None:
        """Publish all ``messages``, retrying until confirmed.

        Raises:
            BrokerError: ``deadline`` (a ``time.monotonic()`` value) passed first.
        """
        ...


class PublishObserver(Protocol):
    """What the publisher reports as it goes (metrics); every call must be cheap and never raise."""

    def confirmed(self, message: Outbound, seconds: float) -> None:
        """``message`` was confirmed ``seconds`` after it was sent."""
        ...

    def retried(self) -> None:
        """A publish attempt failed and will be tried again."""
        ...


class AmqpPublisher:
    """One connection, one confirming channel, the topology declared on every (re)connect.

    Within one ``publish`` call at most ``window`` messages are unconfirmed at once (or the
    call's own ``window``), and never two with the same ``order_key``: a retry can then not
    overtake an earlier message of the same guest, and no message_id is ever pending twice on a
    channel.
    """

    def __init__(
        self,
        urls: Sequence[str],
        topology: Topology,
        *,
        name: str = "servio-bridge",
        window: int = 256,
        confirm_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        # aiormq gives up on a silent peer after (heartbeat + 1) * 3 seconds: 2 s notices a
        # vanished broker within ~9 s, so /readyz turns 503 before an operator wonders why.
        heartbeat: int = 2,
        observer: PublishObserver | None = None,
        log_blocked: bool = True,
    ) -> None:
        self._log_blocked = log_blocked
        self._urls = [_with_heartbeat(url, heartbeat) for url in urls]
        self._topology = topology
        self._name = name
        self._window = window
        self._confirm_timeout = confirm_timeout
        self._connect_timeout = connect_timeout
        self._observer = observer
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._next_url = 0
        self._down_logged = False
        self._closed = False
        self._blocked = False
        self._last_timestamp = (-1, datetime.fromtimestamp(0, UTC))

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.is_closed and not self._connection_closed()

    @property
    def blocked(self) -> bool:
        """RabbitMQ has blocked this connection (connection.blocked: a memory or disk alarm)."""
        return self._blocked

    async def supervise(self, *, poll: float = 0.25) -> None:
        """Keep a connection open even when nothing is published, until cancelled.

        Reconnects in turn over the URLs with exponential back-off, and notices blocked and
        unblocked connections, so readiness and metrics follow the broker with no traffic.
        """
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(BrokerUnavailable),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=5.0),
            stop=tenacity.stop_never,
            reraise=True,
        )
        while not self._closed:
            if not self.connected:
                async for attempt in retrying:
                    with attempt:
                        await self._ensure_channel()
            self._watch_blocked()
            await asyncio.sleep(poll)

    def _watch_blocked(self) -> None:
        blocked = self._connection_blocked()
        if blocked == self._blocked:
            return
        self._blocked = blocked
        if not self._log_blocked:  # the publishing process's parent says it instead
            return
        if blocked:
            log.warning("broker_blocked", name=self._name, hint="RabbitMQ has a memory or disk alarm")
        else:
            log.info("broker_unblocked", name=self._name)

    def _connection_blocked(self) -> bool:
        connection = self._connection
        if connection is None or connection.is_closed or connection.transport is None:
            return False
        # aiormq tracks connection.blocked/unblocked in this event and offers no public view
        # of it (only ``ready()``, which waits); reading it is side-effect free.
        unblocked = getattr(connection.transport.connection, "_Connection__connection_unblocked", None)
        return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()

    async def connect(self) -> None:
        """Open the connection now (start-up); failure is logged, publish will try again."""
        with contextlib.suppress(BrokerUnavailable):
            await self._ensure_channel()

    async def close(self) -> None:
        self._closed = True
        await self._drop_connection()

    async def publish(
        self, messages: Sequence[Outbound], *, deadline: float | None = None, window: int | None = None
    ) -> None:
        """``Publisher.publish``, with at most ``window`` unconfirmed (the publisher's own when None)."""
        remaining = list(messages)
        window = self._window if window is None else max(1, window)
        stop: tenacity.stop.stop_base = tenacity.stop_never
        if deadline is not None:
            stop = tenacity.stop_after_delay(max(0.0, deadline - time.monotonic()))
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(BrokerError),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=5.0),
            stop=stop,
            reraise=True,
            before_sleep=self._before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                if self._closed:
                    raise BrokerUnavailable("publisher is closed")
                remaining, error = await self._publish_once(remaining, deadline, window)
                if error is not None:
                    raise error

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        if self._observer is not None:
            self._observer.retried()
        exc = state.outcome.exception() if state.outcome else None
        log.debug("publish_retry", attempt=state.attempt_number, error=str(exc))

    async def _publish_once(
        self, messages: list[Outbound], deadline: float | None, window: int
    ) -> tuple[list[Outbound], BrokerError | None]:
        """Publish ``messages``; return the unconfirmed ones and the first failure, if any."""
        try:
            channel = await (await self._ensure_channel()).get_underlay_channel()
        except AMQP_ERRORS as exc:
            await self._drop_channel()
            return messages, BrokerUnavailable(f"channel not open: {exc!r}")
        assert isinstance(channel, aiormq.Channel)
        timeout = self._confirm_timeout
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        batch = _Batch(messages, self._observer)
        try:
            await self._send_all(channel, batch, timeout, window)
        except AMQP_ERRORS as exc:
            batch.fail(exc)
        if batch.failure is None:
            return [], None
        left = [m for m, ok in zip(messages, batch.confirmed, strict=True) if not ok]
        err = _translate(batch.failure)
        if not isinstance(err, MessageNacked | MessageReturned):
            # The channel may still hold unconfirmed publishes: a fresh one avoids a second
            # pending publish of the same message_id (aio-pika issue 689).
            await self._drop_channel()
        return left, err

    async def _send_all(
        self, channel: aiormq.Channel, batch: _Batch, confirm_within: float, window: int
    ) -> None:
        """Write the batch in chunks of what the window and the order rule allow, one write per
        chunk, and wait for confirms in between: aiormq's ``basic_publish`` costs a lock, a
        timeout, a queue hop and a socket write per message, more than RabbitMQ's own work."""
        messages = batch.messages
        next_index = 0
        while next_index < len(messages) or batch.inflight:
            if batch.failure is not None:
                if not isinstance(batch.failure, TimeoutError):
                    # Let what is in flight settle first: its retry must not be pending twice.
                    await batch.wait_settled(confirm_within)
                return
            chunk: list[bytes] = []
            while next_index < len(messages) and len(batch.inflight) < window:
                message = messages[next_index]
                if message.order_key in batch.keys:
                    break  # an earlier message of this (entity, ID) is not confirmed yet
                chunk.append(self._frames(channel, message))
                batch.track(next_index, self._register(channel, message))
                next_index += 1
            if chunk:
                # aiormq's write queue holds 10 frames: a connection RabbitMQ stopped reading
                # (an alarm) makes this wait rather than overflow.
                await channel.write_queue.put(ChannelFrame(payload=b"".join(chunk), should_close=False))
            oldest = min(batch.inflight.values())
            if not await batch.wait_progress(max(0.0, oldest + confirm_within - time.monotonic())):
                batch.fail(TimeoutError())

    def _register(self, channel: aiormq.Channel, message: Outbound) -> asyncio.Future[Any]:
        """What ``basic_publish`` does before writing: the next delivery tag, and the future its
        confirm (or a basic.return of this message_id) resolves."""
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation: asyncio.Future[Any] = channel.create_future()
        channel.confirmations[tag] = confirmation
        channel.message_id_delivery_tag[message.message_id] = tag

        def forget(_: asyncio.Future[Any]) -> None:
            if channel.message_id_delivery_tag.get(message.message_id) == tag:
                del channel.message_id_delivery_tag[message.message_id]

        confirmation.add_done_callback(forget)
        return confirmation

    def _frames(self, channel: aiormq.Channel, message: Outbound) -> bytes:
        properties = spec.Basic.Properties(
            content_type=message.content_type,
            delivery_mode=message.delivery_mode,
            app_id=message.app_id,
            message_id=message.message_id,
            timestamp=self._timestamp(message.timestamp),
            headers=dict(message.headers) if message.headers else None,
        )
        frames: list[Any] = [
            spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key, mandatory=True),
            ContentHeader(properties=properties, body_size=len(message.body)),
            *channel._split_body(message.body),
        ]
        return b"".join(pamqp.frame.marshal(frame, channel.number) for frame in frames)

    def _timestamp(self, seconds: int) -> datetime:
        # pamqp wants a datetime; the messages of one batch mostly share their second.
        if seconds != self._last_timestamp[0]:
            self._last_timestamp = (seconds, datetime.fromtimestamp(seconds, UTC))
        return self._last_timestamp[1]

    async def _ensure_channel(self) -> AbstractChannel:
        if self.connected:
            assert self._channel is not None
            return self._channel
        async with self._lock:
            if self.connected:
                assert self._channel is not None
                return self._channel
            if self._closed:
                raise BrokerUnavailable("publisher is closed")
            if self._connection_closed():
                await self._connect()
            assert self._connection is not None
            try:
                channel = await self._connection.channel(publisher_confirms=True, on_return_raises=False)
            except AMQP_ERRORS as exc:
                await self._drop_connection()
                raise BrokerUnavailable(f"cannot open a channel: {exc!r}") from None
            self._channel = channel
            return channel

    async def _connect(self) -> None:
        errors = []
        for _ in range(len(self._urls)):
            url = self._urls[self._next_url]
            try:
                connection = await aio_pika.connect(
                    url,
                    timeout=self._connect_timeout,
                    client_properties={"connection_name": self._name},
                )
            except AMQP_ERRORS as exc:
                errors.append(f"{_redacted(url)}: {exc!r}")
                self._next_url = (self._next_url + 1) % len(self._urls)
                continue
            try:
                await self._declare(connection)
            except AMQP_ERRORS as exc:
                await connection.close()
                errors.append(f"{_redacted(url)}: declaring topology failed: {exc!r}")
                self._next_url = (self._next_url + 1) % len(self._urls)
                continue
            except asyncio.CancelledError:
                # Shutting down mid-connect: do not leave a connection nobody will close.
                with contextlib.suppress(*AMQP_ERRORS):
                    await asyncio.shield(connection.close())
                raise
            self._connection = connection
            connection.close_callbacks.add(self._on_connection_closed)
            self._down_logged = False
            log.info("broker_connected", url=_redacted(url), name=self._name)
            return
        if not self._down_logged:
            log.warning("broker_unreachable", errors=errors, name=self._name)
            self._down_logged = True
        raise BrokerUnavailable("; ".join(errors))

    async def _declare(self, connection: AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=False)
        try:
            for ex in self._topology.exchanges:
                await channel.declare_exchange(
                    ex.name,
                    aio_pika.ExchangeType(ex.type),
                    durable=True,
                    arguments=dict(ex.arguments) or None,
                )
            for q in self._topology.queues:
                queue = await channel.declare_queue(q.name, durable=True, arguments=dict(q.arguments))
                for exchange, key in q.bindings:
                    await queue.bind(exchange, key)
        finally:
            if not channel.is_closed:
                await channel.close()

    def _on_connection_closed(self, _sender: Any, exc: BaseException | None) -> None:
        self._blocked = False
        if not self._closed:
            log.warning("broker_disconnected", error=repr(exc), name=self._name)

    def _connection_closed(self) -> bool:
        return self._connection is None or self._connection.is_closed

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await asyncio.wait_for(channel.close(), 2)

    async def _drop_connection(self) -> None:
        await self._drop_channel()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await asyncio.wait_for(connection.close(), 2)


class _Batch:
    """One ``publish`` attempt's account: what is in flight, confirmed, or failed."""

    def __init__(self, messages: list[Outbound], observer: PublishObserver | None) -> None:
        self.messages = messages
        self.confirmed = [False] * len(messages)
        self.inflight: dict[int, float] = {}  # index -> when it was sent
        self.keys: set[str] = set()
        self.failure: BaseException | None = None
        self._observer = observer
        self._progress = asyncio.Event()

    def track(self, index: int, confirmation: asyncio.Future[Any]) -> None:
        sent = time.monotonic()
        self.inflight[index] = sent
        self.keys.add(self.messages[index].order_key)
        confirmation.add_done_callback(lambda future: self._settle(index, future, sent))

    def _settle(self, index: int, future: asyncio.Future[Any], sent: float) -> None:
        if self.inflight.pop(index, None) is None:
            return
        message = self.messages[index]
        self.keys.discard(message.order_key)
        self._progress.set()
        if future.cancelled():
            self.fail(asyncio.CancelledError())
            return
        result = future.exception() or future.result()
        if isinstance(result, BaseException):
            self.fail(result)
        elif isinstance(result, aiormq.abc.DeliveredMessage):
            # With confirms on and on_return_raises off, a basic.return comes back as the result.
            self.fail(MessageReturned(f"unroutable: {message.exchange!r} {message.routing_key!r}"))
        else:
            self.confirmed[index] = True
            if self._observer is not None:
                self._observer.confirmed(message, time.monotonic() - sent)

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self._progress.set()

    async def wait_settled(self, within: float) -> None:
        """Wait up to ``within`` seconds for every message in flight to be confirmed or refused."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.inflight:
                    self._progress.clear()
                    await self._progress.wait()

    async def wait_progress(self, within: float) -> bool:
        """Wait up to ``within`` seconds for a confirm or a failure; False on timeout."""
        if self._progress.is_set():
            self._progress.clear()
            return True
        try:
            async with asyncio.timeout(within):
                await self._progress.wait()
        except TimeoutError:
            return False
        self._progress.clear()
        return True


def _translate(exc: BaseException) -> BrokerError:
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return MessageNacked(f"broker refused the message: {exc!r}")
    if isinstance(exc, asyncio.TimeoutError):
        return ConfirmTimeout("no confirm in time")
    return BrokerUnavailable(f"publish failed: {exc!r}")


def _with_heartbeat(url: str, heartbeat: int) -> str:
    parsed = URL(url)
    if "heartbeat" in parsed.query:
        return url
    return str(parsed.update_query(heartbeat=heartbeat))


def _redacted(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else str(parsed.with_query(None))
