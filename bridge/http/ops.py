"""The running bridge's state in one place (``Runtime``) and what operators see of it over HTTP:
/readyz, /metrics, what /healthz checks, and the gate that turns webhooks away on shutdown.

``install_operations`` adds all of it to an app built by ``bridge.http.app.build_app``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson
import structlog
from aiohttp import web

from bridge.errors import SpoolError
from bridge.metrics import CONTENT_TYPE, Metrics, State
from bridge.spool.drain import Drain
from bridge.spool.store import Spool

WEBHOOK_PREFIX = "/webhooks/"
RETRY_AFTER = 5
# Room a spool needs to take one more ordinary webhook; with less it is full rather than "nearly".
SPOOL_ROOM = 1024
# Problems that refuse traffic whatever else holds: nothing accepted now could be kept.
ALWAYS_BLOCKING = frozenset({"shutting_down", "spool_not_writable", "spool_full"})
# Without a spool a webhook waits for RabbitMQ: an outage or an alarm is then a refusal too.
BLOCKING_WITHOUT_SPOOL = frozenset({"broker_disconnected", "broker_blocked"})

log = structlog.get_logger("bridge.service")


class BrokerStatus(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def blocked(self) -> bool: ...


@dataclass
class ShutdownGate:
    """Counts webhooks in flight; once ``close``d, new ones are answered 503."""

    closed: bool = False
    inflight: int = 0
    deadline: float | None = None
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self, *, deadline: float | None = None) -> None:
        """Turn new webhooks away; ``deadline`` (``time.monotonic()``) ends the shutdown budget."""
        self.closed = True
        self.deadline = deadline

    def remaining(self, default: float) -> float:
        """Seconds left of the shutdown budget, or ``default`` when none was set."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - time.monotonic())

    async def wait_idle(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the webhooks in flight to finish; True if they did."""
        try:
            async with asyncio.timeout(within):
                while self.inflight > 0:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()


@dataclass
class LoopMonitor:
    """Wakes every ``interval`` seconds and measures how late it woke: the event loop's lag.

    A lag past ``threshold`` within the last ``window`` seconds means the loop was blocked (every
    request waited that long): ``blocked`` says so, for /healthz.
    """

    interval: float = 0.5
    threshold: float = 5.0
    window: float = 60.0
    _lags: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)

    async def run(self, each: Callable[[], None] | None = None) -> None:
        """Measure until cancelled, calling ``each`` after every wake."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self._lags.append((now, max(0.0, now - before - self.interval)))
            self._forget(now)
            if each is not None:
                each()

    def _forget(self, now: float) -> None:
        while self._lags and self._lags[0][0] < now - self.window:
            self._lags.popleft()

    @property
    def lag(self) -> float:
        """The longest lag seen in the last ``window`` seconds."""
        self._forget(time.monotonic())
        return max((lag for _, lag in self._lags), default=0.0)

    @property
    def blocked(self) -> bool:
        return self.lag > self.threshold


@dataclass
class Runtime:
    """The one holder of a running bridge's state: its parts, what /readyz and /healthz derive
    from them, and the failure that stops the process."""

    publisher: BrokerStatus
    spool: Spool | None
    metrics: Metrics
    drain: Drain | None = None
    gate: ShutdownGate = field(default_factory=ShutdownGate)
    stall_after: float = 60.0
    spool_max_bytes: int | None = None
    monitor: LoopMonitor = field(default_factory=LoopMonitor)
    # Running parts that ended when they should not have (named in /healthz).
    stopped: list[str] = field(default_factory=list)
    # The spool failure that stops the process (its exit code), and the event that stops it.
    fatal: SpoolError | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Wall time since which the broker has been connected and unblocked, None while it is not.
    _up_since: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.metrics.watch(self.state)

    def fail(self, error: SpoolError) -> None:
        """The spool failed: stop the process rather than answer 200 on a spool we cannot trust."""
        if self.fatal is None:
            self.fatal = error
            log.critical("stopping_on_spool_failure", error=str(error))
            self.stop.set()

    def observe(self) -> None:
        """Note whether the broker is up now; the stall clock starts no earlier than that."""
        if not self.publisher.connected or self.publisher.blocked:
            self._up_since = None
        elif self._up_since is None:
            self._up_since = time.time()

    def problems(self) -> list[str]:
        """Everything worth knowing about traffic now; empty when all is well."""
        self.observe()
        found = []
        if self.gate.closed:
            found.append("shutting_down")
        if self.spool is not None:
            if not self.spool.writable:
                found.append("spool_not_writable")
            elif self._spool_full():
                found.append("spool_full")
        if self.publisher.blocked:
            found.append("broker_blocked")
        elif not self.publisher.connected:
            found.append("broker_disconnected")
        if self.drain_stalled():
            found.append("drain_stalled")
        return found

    def blocking(self, problems: list[str]) -> list[str]:
        """Those of ``problems`` that make /readyz 503: webhooks cannot be kept safe now."""
        stop = ALWAYS_BLOCKING if self.spool is not None else ALWAYS_BLOCKING | BLOCKING_WITHOUT_SPOOL
        return [p for p in problems if p in stop]

    def _spool_full(self) -> bool:
        """At its byte bound, or on a disk with no room left."""
        assert self.spool is not None
        if self.spool.disk_full:
            return True
        bound = self.spool_max_bytes
        return bound is not None and self.spool.stats.bytes + SPOOL_ROOM > bound

    def drain_stalled(self) -> bool:
        """The oldest entry has waited past ``stall_after`` while the broker was up and nothing was
        confirmed: a bridge idle for hours, or a broker just back, starts a new wait, not a stall."""
        if self.spool is None or not self.spool.writable or self._up_since is None:
            return False
        oldest = self.spool.stats.oldest
        if oldest is None:
            return False
        waiting_since = max(oldest, self._up_since, self.metrics.last_confirm or 0.0)
        return time.time() - waiting_since > self.stall_after

    def liveness(self) -> list[str]:
        """Why the process cannot do its job and should be restarted; empty while it can."""
        found = []
        if self.monitor.blocked:
            found.append("event_loop_blocked")
        if not getattr(self.publisher, "healthy", True):
            found.append("publisher_failing")
        found.extend(self.stopped)
        return found

    def state(self) -> State:
        stats = self.spool.stats if self.spool is not None and self.spool.writable else None
        problems = self.problems()
        return State(
            spool_entries=stats.entries if stats else 0,
            spool_bytes=stats.bytes if stats else 0,
            spool_oldest=stats.oldest if stats else None,
            broker_connected=self.publisher.connected,
            broker_blocked=self.publisher.blocked,
            ready=not self.blocking(problems),
            spool_sync=self.spool.sync_times if self.spool is not None else None,
            spool_quarantined=stats.quarantined if stats else 0,
            drain_stalled="drain_stalled" in problems,
            last_confirm=self.metrics.last_confirm,
            loop_lag=self.monitor.lag,
            publisher_healthy=bool(getattr(self.publisher, "healthy", True)),
        )

    async def watching(self, _app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the loop monitor, which also follows the broker's state between requests."""
        task = asyncio.create_task(self.monitor.run(self.observe))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


RUNTIME = web.AppKey("runtime", Runtime)


def install_operations(app: web.Application, runtime: Runtime) -> None:
    """Add /readyz and /metrics to ``app`` (before it starts); with ``runtime`` in the app, its
    request edge (``bridge.http.app.build_edge``) counts every request and applies the shutdown gate."""
    app[RUNTIME] = runtime
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(runtime.watching)


async def readyz(request: web.Request) -> web.Response:
    """200 while webhooks can be accepted safely now (a load balancer's check); 503 when they
    cannot. Either way the body lists every problem, and which of them are ``blocking``."""
    ops = request.app[RUNTIME]
    problems = ops.problems()
    blocking = ops.blocking(problems)
    body: dict[str, object] = {
        "status": "not_ready" if blocking else "degraded" if problems else "ready",
        "problems": problems,
        "blocking": blocking,
        "broker": {"connected": ops.publisher.connected, "blocked": ops.publisher.blocked},
    }
    if ops.spool is not None:
        body["spool"] = {"writable": ops.spool.writable, "entries": ops.spool.stats.entries}
    headers = {"Retry-After": str(RETRY_AFTER)} if blocking else None
    # Compact, as every other answer is.
    return web.Response(
        body=orjson.dumps(body),
        status=503 if blocking else 200,
        headers=headers,
        content_type="application/json",
    )


def liveness_answer(ops: Runtime) -> tuple[dict[str, object], int]:
    """/healthz's body and status: 503 naming why the process should be restarted."""
    problems = ops.liveness()
    if problems:
        return {"status": "unhealthy", "problems": problems}, 503
    return {"status": "ok"}, 200


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    return web.Response(body=request.app[RUNTIME].metrics.render(), headers={"Content-Type": CONTENT_TYPE})
