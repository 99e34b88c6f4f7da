"""What operators see over HTTP: /readyz, /metrics, and the gate that turns webhooks away on shutdown.

``install_operations`` adds all of it to an app built by ``bridge.app.build_app``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from bridge.message import DEFAULT_SOURCE
from bridge.metrics import CONTENT_TYPE, Metrics, State
from bridge.spool import Spool

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WEBHOOK_PREFIX = "/webhooks/"
RETRY_AFTER = 5


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
class Operations:
    """The running parts the operations endpoints look at."""

    broker: BrokerStatus
    spool: Spool | None
    metrics: Metrics
    gate: ShutdownGate = field(default_factory=ShutdownGate)

    def __post_init__(self) -> None:
        self.metrics.watch(self.state)

    def problems(self) -> list[str]:
        """Why the bridge is not ready; empty when it is."""
        found = []
        if self.gate.closed:
            found.append("shutting_down")
        if self.spool is not None and not self.spool.writable:
            found.append("spool_not_writable")
        if self.broker.blocked:
            found.append("broker_blocked")
        elif not self.broker.connected:
            found.append("broker_disconnected")
        return found

    def state(self) -> State:
        stats = self.spool.stats if self.spool is not None and self.spool.writable else None
        return State(
            spool_entries=stats.entries if stats else 0,
            spool_bytes=stats.bytes if stats else 0,
            spool_oldest=stats.oldest if stats else None,
            broker_connected=self.broker.connected,
            broker_blocked=self.broker.blocked,
            ready=not self.problems(),
        )


OPERATIONS = web.AppKey("operations", Operations)


def install_operations(app: web.Application, operations: Operations) -> None:
    """Add /readyz, /metrics, request metrics and the shutdown gate to ``app`` (before it starts)."""
    app[OPERATIONS] = operations
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    # Outermost: sees the final status of every request, refusals included.
    app.middlewares.insert(0, metrics_middleware)
    # Innermost: the request log still writes its line for a request turned away.
    app.middlewares.append(gate_middleware)


async def readyz(request: web.Request) -> web.Response:
    """200 when webhooks flow to RabbitMQ; 503 naming what is wrong (a load balancer's check)."""
    ops = request.app[OPERATIONS]
    problems = ops.problems()
    body: dict[str, object] = {
        "status": "not_ready" if problems else "ready",
        "problems": problems,
        "broker": {"connected": ops.broker.connected, "blocked": ops.broker.blocked},
    }
    if ops.spool is not None:
        body["spool"] = {"writable": ops.spool.writable, "entries": ops.spool.stats.entries}
    headers = {"Retry-After": str(RETRY_AFTER)} if problems else None
    return web.json_response(body, status=503 if problems else 200, headers=headers)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    return web.Response(body=request.app[OPERATIONS].metrics.render(), headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request by route; count webhooks by status and source."""
    ops = request.app[OPERATIONS]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        ops.metrics.request(route, time.perf_counter() - started)
        if request.path.startswith(WEBHOOK_PREFIX) and resource is not None:
            ops.metrics.webhook(status, request.match_info.get("source", DEFAULT_SOURCE))


@web.middleware
async def gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Webhooks get 503 once shutdown began; those already in flight are counted until they finish."""
    if not request.path.startswith(WEBHOOK_PREFIX):
        return await handler(request)
    gate = request.app[OPERATIONS].gate
    if gate.closed:
        return web.json_response(
            {"status": "error", "error": "shutting_down", "detail": "the bridge is shutting down"},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER), "Connection": "close"},
        )
    gate.enter()
    try:
        return await handler(request)
    finally:
        gate.leave()
