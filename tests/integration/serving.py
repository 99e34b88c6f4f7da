"""Run ``bridge.service.serve`` in-process on a free port for the length of a ``with`` block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bridge.service import serve
from bridge.settings import Settings


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """The (host, port) the real listener bound; stopped through its shutdown trigger afterwards."""
    stop = asyncio.Event()
    bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(settings, shutdown_trigger=stop.wait(), on_listening=lambda a: bound.set_result(a[0]))
    )
    await asyncio.wait([task, bound], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if not bound.done():
        stop.set()
        await task  # re-raises what stopped start-up
        raise AssertionError("the bridge did not start listening")
    try:
        yield bound.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
