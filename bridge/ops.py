"""What operators see over HTTP: /readyz, /metrics, and the gate that turns webhooks away on shutdown.

``install_operations`` adds all of it to an app built by ``bridge.app.build_app``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from bridge.metrics import CONTENT_TYPE, Metrics, State
from bridge.spool import Spool

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
            spool_sync=self.spool.sync_times if self.spool is not None else None,
        )


OPERATIONS = web.AppKey("operations", Operations)


def install_operations(app: web.Application, operations: Operations) -> None:
    """Add /readyz and /metrics to ``app`` (before it starts); with ``operations`` in the app, its
    request edge (``bridge.app.build_edge``) counts every request and applies the shutdown gate."""
    app[OPERATIONS] = operations
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


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
