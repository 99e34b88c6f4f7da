"""Limits no request can pass: body size, time to send the body, webhooks in progress at once.

Header size and the time to send headers are the HTTP server's; ``service.runner_options``
sets them from the same settings.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

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


# Bodies up to this size count only against the number in progress (64 of 64 KiB at most by
# default), never against the byte budget.
SMALL = 64 * 1024


class Admission:
    """Which webhooks may be parsed and made safe now, by count and by body bytes.

    At most ``limit`` webhooks are parsed and made safe at once, and the bodies over ``SMALL``
    bytes among them add up to at most ``budget`` bytes (a body's messages are what fill memory:
    ~1 KB per ID at the peak, see docs/spool.md); the next one waits up to ``wait`` seconds for a
    turn, then is refused with 503 so the client retries later. Small bodies (Servio's are a few
    hundred bytes) are bounded by the count alone, so large ones in progress or waiting never keep
    them out; a body larger than the budget alone still goes once no other large one is in progress.
    """

    def __init__(self, limit: int, *, budget: int, wait: float = 1.0, retry_after: int = 1) -> None:
        self._limit = limit
        self._budget = budget
        self._wait = wait
        self._retry_after = retry_after
        self._taken = 0
        self._bytes = 0
        self._queue: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def admit(self, size: int) -> _Admitted:
        """Hold one turn of ``size`` body bytes for the body of the ``async with``.

        Raises (on entering):
            Unavailable: no turn came free within ``wait`` seconds.
        """
        return _Admitted(self, size)

    def _fits(self, size: int) -> bool:
        if self._taken >= self._limit:
            return False
        return size <= SMALL or self._bytes + size <= self._budget or self._bytes == 0

    async def _acquire(self, size: int) -> None:
        # While anyone waits, one slot stays in reserve for the waiters: later webhooks, which
        # wait for the waiter's ticket in the spool's order, cannot take every slot and leave it
        # none.
        if self._fits(size) and self._taken + (1 if self._queue else 0) < self._limit:
            # Taken without waiting: no future, no timer to arm and cancel per request.
            self._take(size)
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._queue.append(entry)
        try:
            async with asyncio.timeout(self._wait):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the turn was handed over just as the wait ran out: it is ours
            self._leave(entry)
            raise Unavailable("busy", "too many webhooks in progress", self._retry_after) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(size)  # handed a turn just as it was cancelled
            else:
                self._leave(entry)
            raise

    def _leave(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        """Give up a place in the queue (``_wake`` may have dropped it already, cancelled)."""
        with contextlib.suppress(ValueError):
            self._queue.remove(entry)
        self._wake()  # those behind it may fit now

    def _take(self, size: int) -> None:
        self._taken += 1
        if size > SMALL:
            self._bytes += size

    def _release(self, size: int) -> None:
        self._taken -= 1
        if size > SMALL:
            self._bytes -= size
        self._wake()

    def _wake(self) -> None:
        """Hand turns to the waiters that fit now, oldest first; one that does not fit yet does
        not hold up a smaller one behind it."""
        for entry in list(self._queue):
            size, waiter = entry
            if waiter.done():
                self._queue.remove(entry)
            elif self._fits(size):
                self._queue.remove(entry)
                self._take(size)
                waiter.set_result(None)
            elif self._taken >= self._limit:
                return


class _Admitted:
    """``Admission.admit()``: a plain async context manager, since a generator-based one costs a
    frame and an object per webhook."""

    __slots__ = ("_admission", "_size")

    def __init__(self, admission: Admission, size: int) -> None:
        self._admission = admission
        self._size = size

    async def __aenter__(self) -> None:
        await self._admission._acquire(self._size)

    async def __aexit__(self, *_exc: object) -> None:
        self._admission._release(self._size)
