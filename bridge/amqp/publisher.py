"""Publishing to RabbitMQ with publisher confirms, retried until confirmed.

The only module that uses tenacity, and with ``bridge.amqp.broker`` (the operator commands' probe
and dead-letter reading) the only one that touches aio-pika. Its callers see ``BrokerError``
subclasses and nothing of aio-pika's own exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
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

from bridge.core.message import Outbound, invalid_queue
from bridge.core.refusals import (
    CLOSED,
    INVALID_FIELD,
    NACKED,
    RETURNED,
    TOO_LARGE,
    Ledger,
    Refusal,
    RetryBudget,
    cut,
)
from bridge.core.topology import Topology
from bridge.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfirmTimeout,
    MessageNacked,
    MessageRefused,
    MessageReturned,
)

log = structlog.get_logger("bridge.amqp.publisher")

# OSError covers ConnectionError and TimeoutError; aiormq raises RuntimeError on a closed channel.
AMQP_ERRORS = (aiormq.exceptions.AMQPError, OSError, RuntimeError)
_X = aiormq.exceptions
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


class Publisher(Protocol):
    """Where messages go; ``publish`` returns only once every message is confirmed."""

    @property
    def connected(self) -> bool: ...

    async def publish(
        self, messages: Sequence[Outbound], *, deadline: float | None = None
    ) -> Sequence[Refusal]:
        """Publish all ``messages``, retrying until each is confirmed or refused for good.

        Returns:
            The messages refused even as dead letters (by index), for the caller to keep.

        Raises:
            BrokerError: ``deadline`` (a ``time.monotonic()`` value) passed first.
        """
        ...


class PublishObserver(Protocol):
    """What the publisher reports as it goes (metrics); every call must be cheap and never raise."""

    def confirmed(self, message: Outbound, seconds: float) -> None:
        """``message`` was confirmed ``seconds`` after it was sent."""
        ...

    def retried(self, failure_class: str = "other") -> None:
        """A publish attempt failed (``failure_class``) and will be tried again."""
        ...

    def refused(self, reason: str, n: int) -> None:
        """``n`` messages were refused for good (``reason``)."""
        ...


class AmqpPublisher:
    """One connection, one confirming channel, the topology declared on every (re)connect and
    again after a return, a NOT_FOUND or any channel close.

    Within one ``publish`` call at most ``window`` messages are unconfirmed at once (or the
    call's own ``window``), and never two with the same ``order_key``: a retry can then not
    overtake an earlier message of the same guest, and no message_id is ever pending twice on a
    channel. A message the broker refuses for good (``budget``, see ``bridge.core.refusals``) goes to
    ``<exchange>.invalid`` as a ``broker_refused`` dead letter instead of blocking the others.
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
        budget: RetryBudget | None = None,
    ) -> None:
        self._log_blocked = log_blocked
        self._budget = budget or RetryBudget()
        topic = next((ex.name for ex in topology.exchanges if ex.type == "topic"), "")
        self._invalid_queue = invalid_queue(topic)
        # Set by a return or a channel close: the topology is declared again before the retry.
        self._stale_topology = False
        self._declared_otherwise: set[str] = set()
        self.last_error = ""  # the failure of the last attempt that is retried, for the logs
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
    ) -> list[Refusal]:
        """``Publisher.publish``, with at most ``window`` unconfirmed (the publisher's own when None)."""
        ledger = Ledger(messages, self._budget, self._invalid_queue)
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
                # Refusals put dead letters in their messages' place: those go out at once.
                while ledger.pending:
                    if self._closed:
                        raise BrokerUnavailable("publisher is closed")
                    error = await self._publish_once(ledger, deadline, window)
                    if error is not None:
                        raise error
        for refusal in ledger.quarantined:
            log.error(
                "message_quarantined",
                message_id=cut(messages[refusal.index].message_id, 255),
                reason=refusal.reason,
                error=refusal.error,
            )
        return ledger.quarantined

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        failure_class = exc.failure_class if isinstance(exc, BrokerError) else "other"
        self.last_error = cut(str(exc), 512)
        if self._observer is not None:
            self._observer.retried(failure_class)
        log.debug("publish_retry", attempt=state.attempt_number, failure_class=failure_class, error=str(exc))

    def _refuse(self, ledger: Ledger, index: int, reason: str, error: str) -> None:
        message = ledger.message(index)
        log.warning(
            "message_refused",
            message_id=cut(message.message_id, 255),
            routing_key=cut(message.routing_key, 255),
            reason=reason,
            error=cut(error, 512),
        )
        ledger.refuse(index, reason, error)
        if self._observer is not None:
            self._observer.refused(reason, 1)

    async def _publish_once(self, ledger: Ledger, deadline: float | None, window: int) -> BrokerError | None:
        """Publish what ``ledger`` has pending; settle each message in it, return the first failure."""
        try:
            channel = await (await self._ensure_channel()).get_underlay_channel()
        except AMQP_ERRORS as exc:
            await self._drop_channel()
            return BrokerUnavailable(f"channel not open: {exc!r}")
        assert isinstance(channel, aiormq.Channel)
        timeout = self._confirm_timeout
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        entries = [(index, ledger.message(index)) for index in ledger.pending]
        solo_until = max((pos for pos, (i, _) in enumerate(entries) if i in ledger.suspects), default=-1)
        batch = _Batch(entries, self._observer, solo_until)
        try:
            await self._send_all(
                channel, batch, timeout, window, channel.connection.connection_tune.frame_max
            )
        except AMQP_ERRORS as exc:
            batch.fail(exc)
        self._settle(ledger, batch)
        if batch.failure is None:
            return None
        err = _translate(batch.failure)
        if isinstance(err, MessageReturned | MessageRefused):
            self._stale_topology = True
        if not isinstance(err, MessageNacked | MessageReturned):
            # The channel may still hold unconfirmed publishes: a fresh one avoids a second
            # pending publish of the same message_id (aio-pika issue 689).
            self._stale_topology = True
            if isinstance(batch.failure, ConnectionError):
                await self._drop_connection()  # closed under us: the next attempt connects anew
            else:
                await self._drop_channel()
        return err

    def _settle(self, ledger: Ledger, batch: _Batch) -> None:
        """Carry one attempt's outcome into the ledger: confirmed, refused, or counted against."""
        for pos, reason, error in batch.unsendable:
            self._refuse(ledger, batch.entries[pos][0], reason, error)
        for pos, ok in enumerate(batch.confirmed):
            if ok:
                ledger.confirmed(batch.entries[pos][0])
        now = time.monotonic()
        closed = [pos for pos, exc in batch.errors.items() if _failure_class(exc) == CLOSED]
        if len(closed) > 1:  # which of them the broker objects to is found one at a time
            for pos in closed:
                ledger.suspect(batch.entries[pos][0])
        for pos, exc in batch.errors.items():
            failure_class = _failure_class(exc)
            if failure_class == CLOSED and len(closed) > 1:
                continue
            index = batch.entries[pos][0]
            if ledger.spent(index, failure_class, now):
                self._refuse(ledger, index, failure_class, _describe(exc))

    async def _send_all(
        self, channel: aiormq.Channel, batch: _Batch, confirm_within: float, window: int, frame_max: int
    ) -> None:
        """Write the batch in chunks of what the window and the order rule allow, one write per
        chunk, and wait for confirms in between: aiormq's ``basic_publish`` costs a lock, a
        timeout, a queue hop and a socket write per message, more than RabbitMQ's own work.

        A nack or a return holds back only the later messages of the same ``order_key``; any other
        failure stops the attempt. Suspects (``batch.solo_until``) go one at a time.
        """
        entries = batch.entries
        next_index = 0
        while next_index < len(entries) or batch.inflight:
            if batch.broken is not None:
                if not isinstance(batch.broken, TimeoutError):
                    # Let what is in flight settle first: its retry must not be pending twice.
                    await batch.wait_settled(confirm_within)
                return
            chunk: list[bytes] = []
            while next_index < len(entries) and len(batch.inflight) < batch.limit(next_index, window):
                _, message = entries[next_index]
                if message.order_key in batch.held:
                    next_index += 1  # an earlier message of this (entity, ID) failed: it goes first
                    continue
                if message.order_key in batch.keys:
                    break  # an earlier message of this (entity, ID) is not confirmed yet
                try:
                    frames = self._frames(channel, message, frame_max)
                except _Unsendable as exc:
                    batch.unsendable.append((next_index, exc.reason, exc.error))
                    next_index += 1
                    continue
                chunk.append(frames)
                batch.track(next_index, self._register(channel, message))
                next_index += 1
            if chunk:
                # aiormq's write queue holds 10 frames: a connection RabbitMQ stopped reading
                # (an alarm) makes this wait rather than overflow.
                await channel.write_queue.put(ChannelFrame(payload=b"".join(chunk), should_close=False))
            if not batch.inflight:
                continue
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

    def _frames(self, channel: aiormq.Channel, message: Outbound, frame_max: int) -> bytes:
        """The message's frames, marshalled.

        Raises:
            _Unsendable: the broker could not take it as it is (``_check``).
        """
        try:
            properties = spec.Basic.Properties(
                content_type=message.content_type,
                delivery_mode=message.delivery_mode,
                app_id=message.app_id,
                message_id=message.message_id,
                timestamp=self._timestamp(message.timestamp),
                headers=dict(message.headers) if message.headers else None,
            )
            method = pamqp.frame.marshal(
                spec.Basic.Publish(
                    exchange=message.exchange, routing_key=message.routing_key, mandatory=True
                ),
                channel.number,
            )
            header = pamqp.frame.marshal(
                ContentHeader(properties=properties, body_size=len(message.body)), channel.number
            )
        except (TypeError, ValueError, struct.error) as exc:
            # pamqp refuses a short string over 255 bytes (routing key, exchange, message_id,
            # a header's name) and values it has no AMQP type for.
            raise _Unsendable(INVALID_FIELD, f"cannot be encoded: {exc}") from None
        self._check(message, frame_max, header)
        bodies = (pamqp.frame.marshal(body, channel.number) for body in channel._split_body(message.body))
        return b"".join((method, header, *bodies))

    def _check(self, message: Outbound, frame_max: int, header: bytes) -> None:
        """Refuse a content header frame larger than the negotiated frame_max: it cannot be split,
        and RabbitMQ answers it by closing the whole connection (FRAME_ERROR, frame_too_large).

        Raises:
            _Unsendable: it would not fit.
        """
        if frame_max and len(header) > frame_max:
            raise _Unsendable(
                TOO_LARGE, f"content header frame of {len(header)} bytes exceeds frame_max {frame_max}"
            )

    def _timestamp(self, seconds: int) -> datetime:
        # pamqp wants a datetime; the messages of one batch mostly share their second.
        if seconds != self._last_timestamp[0]:
            self._last_timestamp = (seconds, datetime.fromtimestamp(seconds, UTC))
        return self._last_timestamp[1]

    async def _ensure_channel(self) -> AbstractChannel:
        if self.connected and not self._stale_topology:
            assert self._channel is not None
            return self._channel
        async with self._lock:
            if self._closed:
                raise BrokerUnavailable("publisher is closed")
            if self._connection_closed():
                await self._connect()
            elif self._stale_topology:
                await self._declare_again()
            if self.connected:
                assert self._channel is not None
                return self._channel
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
            self._stale_topology = False
            connection.close_callbacks.add(self._on_connection_closed)
            self._down_logged = False
            log.info("broker_connected", url=_redacted(url), name=self._name)
            return
        if not self._down_logged:
            log.warning("broker_unreachable", errors=errors, name=self._name)
            self._down_logged = True
        raise BrokerUnavailable("; ".join(errors))

    async def _declare_again(self) -> None:
        """Declare the topology on the open connection: what an operator deleted is back before
        the retry. A failure drops the connection; the next connect declares again."""
        assert self._connection is not None
        try:
            await self._declare(self._connection)
        except AMQP_ERRORS as exc:
            await self._drop_connection()
            raise BrokerUnavailable(f"declaring topology failed: {exc!r}") from None
        self._stale_topology = False
        log.info("topology_declared", name=self._name)

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
                try:
                    queue = await channel.declare_queue(q.name, durable=True, arguments=dict(q.arguments))
                except aiormq.exceptions.ChannelPreconditionFailed as exc:
                    # The queue exists with arguments of the operator's choosing (a length limit,
                    # another type): use it as it is, rather than never connect again.
                    if q.name not in self._declared_otherwise:
                        log.warning("queue_declared_otherwise", queue=q.name, error=str(exc))
                        self._declared_otherwise.add(q.name)
                    channel = await connection.channel(publisher_confirms=False)
                    queue = await channel.declare_queue(q.name, passive=True)
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


class _Unsendable(Exception):
    """A message the broker could not take as it is; never sent."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


class _Returned(Exception):
    """A confirm that came back as a basic.return."""


class _Batch:
    """One ``publish`` attempt's account: what is in flight, confirmed, refused or failed.

    Positions index ``entries``, each an (index in the ledger, message) pair.
    """

    def __init__(
        self, entries: list[tuple[int, Outbound]], observer: PublishObserver | None, solo_until: int = -1
    ) -> None:
        self.entries = entries
        self.confirmed = [False] * len(entries)
        self.inflight: dict[int, float] = {}  # position -> when it was sent
        self.keys: set[str] = set()
        self.held: set[str] = set()  # order keys of messages nacked or returned in this attempt
        self.errors: dict[int, BaseException] = {}
        self.unsendable: list[tuple[int, str, str]] = []
        self.failure: BaseException | None = None  # the first failure of any kind
        self.broken: BaseException | None = None  # one that ends the attempt (not a nack or return)
        self.solo_until = solo_until
        self._observer = observer
        self._progress = asyncio.Event()

    def limit(self, position: int, window: int) -> int:
        """How many may be in flight when sending ``position``: one while suspects are sent."""
        if position <= self.solo_until or any(p <= self.solo_until for p in self.inflight):
            return 1
        return window

    def track(self, position: int, confirmation: asyncio.Future[Any]) -> None:
        sent = time.monotonic()
        self.inflight[position] = sent
        self.keys.add(self.entries[position][1].order_key)
        confirmation.add_done_callback(lambda future: self._settle(position, future, sent))

    def _settle(self, position: int, future: asyncio.Future[Any], sent: float) -> None:
        if self.inflight.pop(position, None) is None:
            return
        message = self.entries[position][1]
        self.keys.discard(message.order_key)
        self._progress.set()
        if future.cancelled():
            self.fail(asyncio.CancelledError())
            return
        result = future.exception() or future.result()
        if isinstance(result, aiormq.abc.DeliveredMessage):
            # With confirms on and on_return_raises off, a basic.return comes back as the result.
            result = _Returned(f"unroutable: {message.exchange!r} {message.routing_key!r}")
        if isinstance(result, BaseException):
            self.errors[position] = result
            if isinstance(result, _Returned | aiormq.exceptions.DeliveryError):
                self.held.add(message.order_key)
                if self.failure is None:
                    self.failure = result
            else:
                self.fail(result)
        else:
            self.confirmed[position] = True
            if self._observer is not None:
                self._observer.confirmed(message, time.monotonic() - sent)

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        if self.broken is None:
            self.broken = exc
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


def _failure_class(exc: BaseException) -> str:
    """The class a failure counts in (``bridge.core.refusals``): only some count against a message."""
    if isinstance(exc, _Returned):
        return RETURNED
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return NACKED
    if isinstance(exc, REFUSING_CLOSES):
        return CLOSED
    if isinstance(exc, aiormq.exceptions.ChannelClosed | aiormq.exceptions.ConnectionClosed) and (
        exc.args and exc.args[0] in REFUSING_CODES
    ):
        return CLOSED
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "unavailable"


def _describe(exc: BaseException) -> str:
    return cut(repr(exc) if isinstance(exc, aiormq.exceptions.AMQPError) else str(exc), 512)


def _translate(exc: BaseException) -> BrokerError:
    if isinstance(exc, BrokerError):
        return exc
    failure_class = _failure_class(exc)
    if failure_class == RETURNED:
        return MessageReturned(str(exc))
    if failure_class == NACKED:
        return MessageNacked(f"broker refused the message: {exc!r}")
    if failure_class == CLOSED:
        return MessageRefused(f"broker closed the channel: {exc!r}")
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
