"""The HTTP listener: at most ``max_connections`` open connections at once.

Past the bound the listener stops accepting, so a new connection waits in the kernel's backlog
(not in the process's memory) until one closes. asyncio's and uvloop's servers accept whatever
arrives and cannot be paused, so the accepting is done here: ``loop.sock_accept`` while a slot is
free, then ``loop.connect_accepted_socket`` with aiohttp's own protocol factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("bridge.http.listener")
BACKLOG = 128
# After an accept failed for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM), wait this long
# rather than spin on a connection that stays in the backlog.
ACCEPT_PAUSE = 0.5


class _Slot:
    """One connection's place under the bound, given back exactly once."""

    __slots__ = ("_free", "_taken")

    def __init__(self, free: asyncio.Semaphore) -> None:
        self._free = free
        self._taken = True

    def release(self) -> None:
        if self._taken:
            self._taken = False
            self._free.release()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, giving its slot back when the connection ends."""

    __slots__ = ("_inner", "_slot")

    def __init__(self, inner: asyncio.Protocol, slot: _Slot) -> None:
        self._inner = inner
        self._slot = slot

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._slot.release()


class _BoundedServer(asyncio.AbstractServer):
    """Accepts on ``sockets`` while fewer than ``limit`` connections are open."""

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        *,
        limit: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._sockets = sockets
        self._factory = factory
        self._ssl = ssl_context
        self._free = asyncio.Semaphore(limit)
        self._loop = asyncio.get_running_loop()
        self._accepting = [self._loop.create_task(self._accept(sock)) for sock in sockets]
        self._connecting: set[asyncio.Task[None]] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return any(not task.done() for task in self._accepting)

    def close(self) -> None:
        """Stop accepting and close the listening sockets; open connections are the runner's."""
        for task in (*self._accepting, *self._connecting):
            task.cancel()
        for sock in self._sockets:
            sock.close()

    async def wait_closed(self) -> None:
        for task in (*self._accepting, *self._connecting):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def start_serving(self) -> None:
        """Serving starts on construction."""

    async def serve_forever(self) -> None:
        await asyncio.gather(*self._accepting)

    async def _accept(self, sock: socket.socket) -> None:
        while True:
            await self._free.acquire()
            slot = _Slot(self._free)
            try:
                conn, _address = await self._loop.sock_accept(sock)
            except OSError as exc:
                slot.release()
                log.warning("accept_failed", error=str(exc))
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            except BaseException:
                slot.release()
                raise
            task = self._loop.create_task(self._connect(conn, slot))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket, slot: _Slot) -> None:
        # A task of its own: a TLS handshake must not hold up the next accept.
        try:
            await self._loop.connect_accepted_socket(
                lambda: _Counted(self._factory(), slot), conn, ssl=self._ssl
            )
        except BaseException as exc:
            # Never connected (a failed or cut-short handshake): its protocol never saw it.
            slot.release()
            conn.close()
            if not isinstance(exc, Exception):
                raise
            log.info("connection_failed", error=str(exc))


class BoundedSite(web.BaseSite):
    """``web.TCPSite`` with at most ``max_connections`` open connections."""

    __slots__ = ("_host", "_max_connections", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = BACKLOG,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._max_connections = max_connections

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        """Bind and listen on every address of ``host``, then accept.

        Raises:
            OSError: an address cannot be bound (e.g. the port is in use).
        """
        await super().start()
        server = self._runner.server
        assert server is not None
        sockets = _bind(self._host, self._port, self._backlog)
        factory: Any = server  # aiohttp's Server builds a RequestHandler (an asyncio protocol) per call
        self._server = _BoundedServer(
            sockets, factory, limit=self._max_connections, ssl_context=self._ssl_context
        )


def _bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to, as ``loop.create_server`` makes."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
