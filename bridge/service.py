"""Wiring and lifecycle: settings in, a running listener, spool, drain and publisher out."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from bridge.amqp.process import ProcessPublisher
from bridge.amqp.publisher import AmqpPublisher, build_publisher
from bridge.errors import SpoolError
from bridge.http.app import build_app
from bridge.http.listener import BoundedSite
from bridge.http.ops import RUNTIME, Runtime, install_operations
from bridge.http.tls import build_server_context
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sink import DirectSink, Sink, SpoolSink
from bridge.spool.drain import Drain
from bridge.spool.store import Spool

log = structlog.get_logger("bridge.service")
# How long a thread holding the GIL keeps it while another waits (Python's default: 5 ms). The
# spool's fsync thread needs it twice per fsync, and every webhook of that group commit waits for
# it; the event loop holds it almost always under load.
SWITCH_INTERVAL = 0.0005
MAX_HEADERS = 64
LINGERING_TIME = 2.0


def build_service(settings: Settings) -> web.Application:
    """The app with its publisher (and spool and drain), opened and closed by cleanup_ctx."""
    metrics = Metrics()
    spool: Spool | None = None
    drain: Drain | None = None
    sink: Sink
    if settings.spool_dir is not None:
        # The drain's publishing in a process of its own: it would otherwise take the listener's CPU.
        spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes)
        in_child = ProcessPublisher(settings, observer=metrics)
        publisher: AmqpPublisher | ProcessPublisher = in_child
        drain = Drain(spool, in_child)
    else:
        publisher = build_publisher(settings, name="servio-bridge", observer=metrics)
        sink = DirectSink(publisher, timeout=settings.publish_timeout)
    runtime = Runtime(
        publisher,
        spool,
        metrics,
        drain=drain,
        stall_after=settings.stall_after,
        spool_max_bytes=settings.spool_max_bytes if spool is not None else None,
    )
    if spool is not None:
        sink = SpoolSink(spool, on_fatal=runtime.fail)
    app = build_app(settings, sink)
    install_operations(app, runtime)

    async def spool_ctx(_app: web.Application) -> AsyncIterator[None]:
        assert runtime.spool is not None
        runtime.spool.open()
        yield
        runtime.spool.close()

    async def broker_ctx(_app: web.Application) -> AsyncIterator[None]:
        # Listen at once even when the broker is slow to answer; publishing waits for it. The
        # supervisor also reconnects while no traffic flows, so /readyz follows the broker.
        connecting = asyncio.create_task(publisher.supervise())
        connecting.add_done_callback(stopped_on(runtime, "publisher_supervisor_stopped"))
        yield
        connecting.cancel()
        await publisher.close()

    async def drain_ctx(_app: web.Application) -> AsyncIterator[None]:
        assert runtime.drain is not None
        drain = runtime.drain
        task = asyncio.create_task(drain.run())
        task.add_done_callback(runtime_failed_on(runtime))
        yield
        if not task.done() and runtime.fatal is None:
            # serve() may have spent part of the shutdown budget already, listening meanwhile.
            emptied = await drain.wait_empty(runtime.gate.remaining(settings.shutdown_timeout))
            assert runtime.spool is not None
            log.info("drain_stopped", emptied=emptied, left=runtime.spool.stats.entries)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    if runtime.spool is not None:
        app.cleanup_ctx.append(spool_ctx)
    app.cleanup_ctx.append(broker_ctx)
    if runtime.drain is not None:
        app.cleanup_ctx.append(drain_ctx)
    return app


def runtime_failed_on(runtime: Runtime) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback for the drain: an error there (a corrupt entry) stops the process, and so
    does a drain that returned (it runs until cancelled): nothing would empty the spool."""

    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, SpoolError):
            runtime.fail(exc)
        elif exc is not None:
            log.critical("drain_crashed", error=repr(exc))
            runtime.fail(SpoolError(f"drain crashed: {exc!r}"))
        else:
            log.critical("drain_crashed", error="the drain returned")
            runtime.fail(SpoolError("drain stopped"))

    return done


def stopped_on(runtime: Runtime, problem: str) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback for a task that runs until cancelled: ending otherwise is logged and makes
    /healthz 503 with ``problem``, so it is seen and the process restarted."""

    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        log.critical(problem, error=repr(exc) if exc is not None else "returned")
        if problem not in runtime.stopped:
            runtime.stopped.append(problem)

    return done


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Awaitable[object] | None = None,
    on_listening: Callable[[list[tuple[str, int]]], None] | None = None,
) -> int:
    """Run until ``shutdown_trigger`` completes (or SIGTERM/SIGINT when none); return the exit code.

    Raises:
        SpoolError: the spool cannot be opened (start-up refused).
    """
    app = build_service(settings)
    runtime = app[RUNTIME]
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
    try:
        site = BoundedSite(
            runner,
            settings.host,
            settings.port,
            max_connections=settings.max_connections,
            ssl_context=ssl_context,
        )
        await site.start()
        addresses = [(str(a[0]), int(a[1])) for a in runner.addresses]
        log.info("listening", addresses=[f"{h}:{p}" for h, p in addresses])
        # Everything start-up made lives as long as the process: out of the collector's sight, no
        # full collection walks it while every answer waits (docs/benchmarks.md, third round).
        gc.freeze()
        if on_listening is not None:
            on_listening(addresses)
        trigger = asyncio.ensure_future(
            shutdown_trigger if shutdown_trigger is not None else _signal_received()
        )
        stopped = asyncio.create_task(runtime.stop.wait())
        await asyncio.wait([trigger, stopped], return_when=asyncio.FIRST_COMPLETED)
        trigger.cancel()
        stopped.cancel()
        log.info("shutting_down", timeout=settings.shutdown_timeout)
        if runtime.fatal is None:
            await _drain_listening(app, settings.shutdown_timeout)
    finally:
        await runner.cleanup()
    log.info("stopped")
    return runtime.fatal.exit_code if runtime.fatal is not None else 0


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


async def _drain_listening(app: web.Application, budget: float) -> None:
    """Answer new webhooks 503 while those in flight finish and the spool drains, within ``budget`` s."""
    gate = app[RUNTIME].gate
    gate.close(deadline=time.monotonic() + budget)
    finished = await gate.wait_idle(gate.remaining(budget))
    log.info("requests_finished" if finished else "requests_cut_short", left=gate.inflight)
    drain = app[RUNTIME].drain
    if drain is not None:
        await drain.wait_empty(gate.remaining(budget))


def run(settings: Settings, shutdown_trigger: Awaitable[object] | None = None) -> int:
    """Serve on uvloop; returns the process exit code."""
    import uvloop

    sys.setswitchinterval(SWITCH_INTERVAL)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(serve(settings, shutdown_trigger=shutdown_trigger))
        except SpoolError as exc:
            log.critical("spool_unusable", error=str(exc))
            return exc.exit_code


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
