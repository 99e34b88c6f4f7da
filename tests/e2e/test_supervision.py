"""The real process keeps its publishing child running: a child that cannot be spawned (EMFILE,
made by lowering the running bridge's own RLIMIT_NOFILE) is tried again with back-off, /healthz
says 503 while it fails, and once files can be opened again the child is back and the spool drains."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from tests.conftest import AMQP_URL, bind_all
from tests.e2e.process import BridgeProcess

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found


async def status_within(
    http: aiohttp.ClientSession, path: str, want: int, within: float
) -> dict[str, object]:
    """The body of the first answer with status ``want``; fails the test after ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        async with http.get(path) as response:
            if response.status == want:
                body: dict[str, object] = await response.json()
                return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} did not answer {want} within {within}s")


class TestSpawnFailure:
    async def test_emfile_is_retried_seen_and_recovered(
        self,
        processes: list[BridgeProcess],
        tmp_path: Path,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """Out of file descriptors the child cannot be respawned: webhooks are still kept, /healthz
        turns 503 (publisher_failing) within seconds; with the limit raised the child comes back,
        every webhook answered 200 is delivered and /healthz is 200 again."""
        everything = await bind_all(amqp_channel, exchange_name)
        bridge = BridgeProcess(
            {
                "BRIDGE_AMQP_URL": AMQP_URL,
                "BRIDGE_EXCHANGE": exchange_name,
                "BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
                "BRIDGE_DECLARE_QUEUES": "false",
                # The one connection the test keeps must outlive the outage: no new one can be accepted.
                "BRIDGE_READ_TIMEOUT": "300",
            },
            cwd=tmp_path,
        )
        processes.append(bridge)
        await bridge.event("broker_connected")
        pid = bridge.proc.pid
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(bridge.base_url, connector=connector) as http:
            async with http.get("/healthz") as response:
                assert response.status == 200
            (child,) = children(pid)
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            in_use = len(os.listdir(f"/proc/{pid}/fd"))
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use - 2, hard))
            started = time.monotonic()
            try:
                os.kill(child, signal.SIGKILL)
                for n in range(5):
                    async with http.post(
                        "/webhooks/servio", data=orjson.dumps({"Add": {"Guests": [n]}})
                    ) as response:
                        assert response.status == 200
                body = await status_within(http, "/healthz", 503, within=30)
                failed_after = time.monotonic() - started
                assert body["problems"] == ["publisher_failing"]
                assert children(pid) == []
            finally:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            raised = time.monotonic()
            messages = await everything.wait_for(5, timeout=30)
            delivered_after = time.monotonic() - raised
            await status_within(http, "/healthz", 200, within=30)
        assert sorted(orjson.loads(m.body)["id"] for m in messages) == [0, 1, 2, 3, 4]
        failures = [e for e in bridge.events() if e["event"] == "worker_spawn_failed"]
        assert failures, "no spawn failure was logged"
        assert "Too many open files" in str(failures[0]["error"])
        print(
            f"/healthz 503 {failed_after:.1f}s after the child died; "
            f"delivered {delivered_after:.1f}s after the limit was raised"
        )
