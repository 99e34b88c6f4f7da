"""Wiring and lifecycle: settings in, a running listener and publisher out, until shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from bridge.app import build_app
from bridge.publisher import AmqpPublisher
from bridge.settings import Settings
from bridge.sink import DirectSink
from bridge.topology import build_topology

log = structlog.get_logger("bridge.service")
PUBLISHER = web.AppKey("publisher", AmqpPublisher)


def build_service(settings: Settings) -> web.Application:
    """The app with its publisher, opened and closed by aiohttp's cleanup_ctx."""
    topology = build_topology(settings.exchange, settings.routing_key, declare_queues=settings.declare_queues)
    publisher = AmqpPublisher(
        settings.amqp_urls,
        topology,
        confirm_timeout=settings.publish_timeout,
        connect_timeout=min(5.0, settings.publish_timeout),
    )
    app = build_app(settings, DirectSink(publisher, timeout=settings.publish_timeout))
    app[PUBLISHER] = publisher

    async def broker_ctx(_app: web.Application) -> AsyncIterator[None]:
        # Listen at once even when the broker is slow to answer; requests wait for it.
        connecting = asyncio.create_task(publisher.connect())
        yield
        connecting.cancel()
        await publisher.close()

    app.cleanup_ctx.append(broker_ctx)
    return app


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Awaitable[object] | None = None,
    on_listening: Callable[[list[tuple[str, int]]], None] | None = None,
) -> None:
    """Run until ``shutdown_trigger`` completes, or until SIGTERM/SIGINT when none is given."""
    app = build_service(settings)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    addresses = [tuple(a[:2]) for a in runner.addresses]
    log.info("listening", addresses=[f"{h}:{p}" for h, p in addresses])
    if on_listening is not None:
        on_listening(addresses)
    try:
        if shutdown_trigger is None:
            shutdown_trigger = _signal_received()
        await shutdown_trigger
        log.info("shutting_down")
    finally:
        await runner.cleanup()
    log.info("stopped")


def run(settings: Settings, shutdown_trigger: Awaitable[object] | None = None) -> int:
    """Serve on uvloop; returns the process exit code."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, shutdown_trigger=shutdown_trigger))
    return 0


async def _signal_received() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
