"""Wiring and lifecycle: settings in, a running listener and publisher out, until shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from bridge.app import build_app
from bridge.publisher import AmqpPublisher
from bridge.settings import Settings
from bridge.sink import DirectSink
from bridge.tls import build_server_context
from bridge.topology import build_topology

log = structlog.get_logger("bridge.service")
MAX_HEADERS = 64
LINGERING_TIME = 2.0


def build_service(settings: Settings) -> web.Application:
    """The app with its publisher, opened and closed by aiohttp's cleanup_ctx."""
    topology = build_topology(settings.exchange, settings.routing_key, declare_queues=settings.declare_queues)
    publisher = AmqpPublisher(settings.amqp_urls, topology, confirm_timeout=settings.publish_timeout)
    app = build_app(settings, DirectSink(publisher, timeout=settings.publish_timeout))

    async def broker_ctx(_app: web.Application) -> AsyncIterator[None]:
        await publisher.connect()
        yield
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
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        **runner_options(settings),
    )
    await runner.setup()
    ssl_context = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        ssl_context = build_server_context(settings.tls_cert, settings.tls_key)
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context)
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


def runner_options(settings: Settings) -> dict[str, Any]:
    """The HTTP server's own limits, for ``web.AppRunner`` (and tests' ``TestServer``)."""
    return {
        # aiohttp's idle timer also runs from the connection's start until its first request is
        # parsed: it is what cuts off a client that trickles its headers (slowloris).
        "keepalive_timeout": settings.read_timeout,
        "max_line_size": settings.max_header_size,
        "max_field_size": settings.max_header_size,
        "max_headers": MAX_HEADERS,
        # After a refusal, unread body is drained this long so the client can read the answer.
        "lingering_time": LINGERING_TIME,
    }


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
