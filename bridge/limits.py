"""Limits no request can pass: body size, time to send the body, webhooks in progress at once.

Header size and the time to send headers are the HTTP server's; ``service.runner_options``
sets them from the same settings.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from bridge.errors import RequestTimeout, TooLarge, Unavailable


async def read_body(request: web.Request, *, max_body: int, read_timeout: float) -> bytes:
    """The whole body, refused before reading when Content-Length is over ``max_body``, cut off as
    soon as a chunked body passes it, and abandoned when it takes longer than ``read_timeout`` seconds.

    Raises:
        TooLarge: the body is over ``max_body`` bytes.
        RequestTimeout: the body did not arrive within ``read_timeout``.
    """
    if request.content_length is not None and request.content_length > max_body:
        raise TooLarge("body_too_large", f"body is over BRIDGE_MAX_BODY ({max_body} bytes)")
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (a Servio webhook is a few hundred bytes): no
        # waiting, so no timer to arm and cancel. Content-Length was checked above; a chunked
        # body that arrived whole is checked here.
        whole = content.read_nowait()
        if len(whole) > max_body:
            raise TooLarge("body_too_large", f"body is over BRIDGE_MAX_BODY ({max_body} bytes)")
        return whole
    body = bytearray()
    try:
        async with asyncio.timeout(read_timeout):
            while chunk := await content.readany():
                body.extend(chunk)
                if len(body) > max_body:
                    raise TooLarge("body_too_large", f"body is over BRIDGE_MAX_BODY ({max_body} bytes)")
    except TimeoutError:
        raise RequestTimeout("read_timeout", f"body not received within {read_timeout:g} s") from None
    return bytes(body)


class Gate:
    """At most ``limit`` webhooks are parsed and made safe at once; the next one waits up to
    ``wait`` seconds for a turn, then is refused with 503 so the client retries later.
    """

    def __init__(self, limit: int, *, wait: float = 1.0, retry_after: int = 1) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._wait = wait
        self._retry_after = retry_after

    def turn(self) -> _Turn:
        """Hold one slot for the body of the ``async with``.

        Raises (on entering):
            Unavailable: no slot came free within ``wait`` seconds.
        """
        return _Turn(self)

    async def _acquire(self) -> None:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise Unavailable("busy", "too many webhooks in progress", self._retry_after) from None
        else:
            # A free slot is taken without waiting: no timer to arm and cancel per request.
            await self._slots.acquire()


class _Turn:
    """``Gate.turn()``: a plain async context manager (a generator-based one costs a frame and an
    object per webhook)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    async def __aenter__(self) -> None:
        await self._gate._acquire()

    async def __aexit__(self, *_exc: object) -> None:
        self._gate._slots.release()
