"""A bounded load of webhooks, and the reconciliation of 200 answers against what reached a queue."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import aiohttp
import orjson
from aio_pika.abc import AbstractIncomingMessage


@dataclass
class Load:
    """Posts one guest update per webhook, each with a fresh ID; remembers which got 200."""

    base_url: str
    source: str = "load"
    accepted: set[int] = field(default_factory=set)
    refused: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def post_one(self, http: aiohttp.ClientSession, id_: int) -> None:
        body = orjson.dumps({"Update": {"Guests": [id_]}})
        try:
            async with http.post(f"{self.base_url}/webhooks/servio/{self.source}", data=body) as response:
                await response.read()
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                if response.status == 200:
                    self.accepted.add(id_)
                else:
                    self.refused += 1
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.failed += 1
            await asyncio.sleep(0.02)  # the bridge is down: do not spin

    async def run(
        self, *, count: int | None = None, seconds: float | None = None, concurrency: int = 8
    ) -> None:
        """Post ``count`` webhooks, or as many as fit in ``seconds``, ``concurrency`` at a time."""
        loop = asyncio.get_running_loop()
        end = None if seconds is None else loop.time() + seconds
        timeout = aiohttp.ClientTimeout(total=10)
        remaining = count

        async def worker(http: aiohttp.ClientSession) -> None:
            nonlocal remaining
            while True:
                if end is not None and loop.time() > end:
                    return
                if remaining is not None:
                    if remaining <= 0:
                        return
                    remaining -= 1
                await self.post_one(http, next(self._ids))

        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            await asyncio.gather(*(worker(http) for _ in range(concurrency)))


def delivered_ids(messages: list[AbstractIncomingMessage]) -> list[int]:
    return [int(orjson.loads(m.body)["id"]) for m in messages]


def reconcile(accepted: set[int], messages: list[AbstractIncomingMessage]) -> tuple[int, int]:
    """(lost, duplicates): IDs answered 200 that never arrived, and extra copies that did."""
    ids = delivered_ids(messages)
    lost = len(accepted - set(ids))
    return lost, len(ids) - len(set(ids))
