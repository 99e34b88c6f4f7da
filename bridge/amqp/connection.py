"""The publisher's connection: one confirming channel kept open over the URLs in turn, the
topology declared on every (re)connect and again whenever a publish made it stale."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection
from yarl import URL

from bridge.amqp.wire import AMQP_ERRORS, PRECONDITION_FAILED, connection_blocked
from bridge.core.topology import Topology
from bridge.errors import BrokerUnavailable

log = structlog.get_logger("bridge.amqp.publisher")


class BrokerConnection:
    """Connects, declares and hands out the confirming channel; ``stale`` asks for the topology
    to be declared again before the next channel (after a return, a NOT_FOUND, a channel close)."""

    def __init__(
        self,
        urls: Sequence[str],
        topology: Topology,
        *,
        name: str,
        connect_timeout: float,
        heartbeat: int,
        log_blocked: bool,
    ) -> None:
        self._urls = [_with_heartbeat(url, heartbeat) for url in urls]
        self._topology = topology
        self._name = name
        self._connect_timeout = connect_timeout
        self._log_blocked = log_blocked
        self._declared_otherwise: set[str] = set()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._next_url = 0
        self._down_logged = False
        self._blocked = False
        self.stale = False
        self.closed = False

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.is_closed and not self._connection_closed()

    @property
    def blocked(self) -> bool:
        return self._blocked

    def watch_blocked(self) -> None:
        """Notice a blocked or unblocked connection (polled: aiormq offers no callback)."""
        blocked = connection_blocked(self._connection)
        if blocked == self._blocked:
            return
        self._blocked = blocked
        if not self._log_blocked:  # the publishing process's parent says it instead
            return
        if blocked:
            log.warning("broker_blocked", name=self._name, hint="RabbitMQ has a memory or disk alarm")
        else:
            log.info("broker_unblocked", name=self._name)

    async def close(self) -> None:
        self.closed = True
        await self.drop_connection()

    async def channel(self) -> AbstractChannel:
        """The open confirming channel, connecting and declaring first as needed.

        Raises:
            BrokerUnavailable: no URL could be connected to, or the channel not opened.
        """
        if self.connected and not self.stale:
            assert self._channel is not None
            return self._channel
        async with self._lock:
            if self.closed:
                raise BrokerUnavailable("publisher is closed")
            if self._connection_closed():
                await self._connect()
            elif self.stale:
                await self._declare_again()
            if self.connected:
                assert self._channel is not None
                return self._channel
            assert self._connection is not None
            try:
                channel = await self._connection.channel(publisher_confirms=True, on_return_raises=False)
            except AMQP_ERRORS as exc:
                await self.drop_connection()
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
            self.stale = False
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
            await self.drop_connection()
            raise BrokerUnavailable(f"declaring topology failed: {exc!r}") from None
        self.stale = False
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
                except PRECONDITION_FAILED as exc:
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
        if not self.closed:
            log.warning("broker_disconnected", error=repr(exc), name=self._name)

    def _connection_closed(self) -> bool:
        return self._connection is None or self._connection.is_closed

    async def drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await asyncio.wait_for(channel.close(), 2)

    async def drop_connection(self) -> None:
        await self.drop_channel()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await asyncio.wait_for(connection.close(), 2)


def _with_heartbeat(url: str, heartbeat: int) -> str:
    parsed = URL(url)
    if "heartbeat" in parsed.query:
        return url
    return str(parsed.update_query(heartbeat=heartbeat))


def _redacted(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else str(parsed.with_query(None))
