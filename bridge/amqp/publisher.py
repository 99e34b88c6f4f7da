"""Publishing to RabbitMQ with publisher confirms, retried until confirmed.

The only module that uses tenacity; with ``bridge.amqp.connection``, ``wire`` and ``broker`` the
only ones that touch aio-pika. Its callers see ``BrokerError`` subclasses and
nothing of aio-pika's own exceptions. ``build_publisher`` is the one way to make one from Settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
import tenacity

from bridge.amqp.batch import Batch
from bridge.amqp.connection import BrokerConnection
from bridge.amqp.seams import Publisher, PublishObserver, SupervisedPublisher
from bridge.amqp.wire import AMQP_ERRORS, Unsendable, Wire, describe, failure_class, translate
from bridge.core.outbound import Outbound, invalid_queue
from bridge.core.refusals import CLOSED, Ledger, Refusal, RetryBudget, cut
from bridge.core.topology import Topology, build_topology
from bridge.errors import BrokerError, BrokerUnavailable, MessageNacked, MessageRefused, MessageReturned
from bridge.settings import Settings

__all__ = [
    "AmqpPublisher",
    "PublishObserver",
    "Publisher",
    "RetryBudget",
    "SupervisedPublisher",
    "build_publisher",
]

log = structlog.get_logger("bridge.amqp.publisher")


def build_publisher(
    settings: Settings, *, name: str, observer: PublishObserver | None = None, log_blocked: bool = True
) -> AmqpPublisher:
    """The publisher ``settings`` describe: their URLs, topology and publish timeout."""
    return AmqpPublisher(
        settings.amqp_urls,
        build_topology(settings.exchange, settings.routing_key, declare_queues=settings.declare_queues),
        name=name,
        confirm_timeout=settings.publish_timeout,
        connect_timeout=min(5.0, settings.publish_timeout),
        observer=observer,
        log_blocked=log_blocked,
    )


class AmqpPublisher:
    """One connection, one confirming channel (``BrokerConnection``), written to in chunks
    (``Wire``).

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
        self._link = BrokerConnection(
            urls,
            topology,
            name=name,
            connect_timeout=connect_timeout,
            heartbeat=heartbeat,
            log_blocked=log_blocked,
        )
        self._budget = budget or RetryBudget()
        topic = next((ex.name for ex in topology.exchanges if ex.type == "topic"), "")
        self._invalid_queue = invalid_queue(topic)
        self.last_error = ""  # the failure of the last attempt that is retried, for the logs
        self._window = window
        self._confirm_timeout = confirm_timeout
        self._observer = observer

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def blocked(self) -> bool:
        """RabbitMQ has blocked this connection (connection.blocked: a memory or disk alarm)."""
        return self._link.blocked

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
        while not self._link.closed:
            if not self._link.connected:
                async for attempt in retrying:
                    with attempt:
                        await self._link.channel()
            self._link.watch_blocked()
            await asyncio.sleep(poll)

    async def connect(self) -> None:
        """Open the connection now (start-up); failure is logged, publish will try again."""
        with contextlib.suppress(BrokerUnavailable):
            await self._link.channel()

    async def close(self) -> None:
        await self._link.close()

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
                    if self._link.closed:
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
            wire = await Wire.of(await self._link.channel())
        except AMQP_ERRORS as exc:
            await self._link.drop_channel()
            return BrokerUnavailable(f"channel not open: {exc!r}")
        timeout = self._confirm_timeout
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        entries = [(index, ledger.message(index)) for index in ledger.pending]
        solo_until = max((pos for pos, (i, _) in enumerate(entries) if i in ledger.suspects), default=-1)
        batch = Batch(entries, self._observer, solo_until)
        try:
            await self._send_all(wire, batch, timeout, window, self._frame_limit(wire))
        except AMQP_ERRORS as exc:
            batch.fail(exc)
        self._settle(ledger, batch)
        if batch.failure is None:
            return None
        err = translate(batch.failure)
        if isinstance(err, MessageReturned | MessageRefused):
            self._link.stale = True
        if not isinstance(err, MessageNacked | MessageReturned):
            # The channel may still hold unconfirmed publishes: a fresh one avoids a second
            # pending publish of the same message_id (aio-pika issue 689).
            self._link.stale = True
            if isinstance(batch.failure, ConnectionError):
                await self._link.drop_connection()  # closed under us: the next attempt connects anew
            else:
                await self._link.drop_channel()
        return err

    def _settle(self, ledger: Ledger, batch: Batch) -> None:
        """Carry one attempt's outcome into the ledger: confirmed, refused, or counted against."""
        for pos, reason, error in batch.unsendable:
            self._refuse(ledger, batch.entries[pos][0], reason, error)
        for pos, ok in enumerate(batch.confirmed):
            if ok:
                ledger.confirmed(batch.entries[pos][0])
        now = time.monotonic()
        closed = [pos for pos, exc in batch.errors.items() if failure_class(exc) == CLOSED]
        if len(closed) > 1:  # which of them the broker objects to is found one at a time
            for pos in closed:
                ledger.suspect(batch.entries[pos][0])
        for pos, exc in batch.errors.items():
            kind = failure_class(exc)
            if kind == CLOSED and len(closed) > 1:
                continue
            index = batch.entries[pos][0]
            if ledger.spent(index, kind, now):
                self._refuse(ledger, index, kind, describe(exc))

    async def _send_all(
        self, wire: Wire, batch: Batch, confirm_within: float, window: int, frame_max: int
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
                    frames = wire.frames(message, frame_max)
                except Unsendable as exc:
                    batch.unsendable.append((next_index, exc.reason, exc.error))
                    next_index += 1
                    continue
                chunk.append(frames)
                batch.track(next_index, self._register(wire, message))
                next_index += 1
            if chunk:
                await wire.write(b"".join(chunk))
            if not batch.inflight:
                continue
            oldest = min(batch.inflight.values())
            if not await batch.wait_progress(max(0.0, oldest + confirm_within - time.monotonic())):
                batch.fail(TimeoutError())

    def _register(self, wire: Wire, message: Outbound) -> asyncio.Future[Any]:
        """The future ``message``'s confirm resolves (a seam tests count through)."""
        return wire.register(message.message_id)

    def _frame_limit(self, wire: Wire) -> int:
        """The largest content header frame to send: the connection's negotiated frame_max (a
        seam tests open to have the broker itself refuse a header)."""
        return wire.frame_max
