"""SIGTERM on the real process: a bounded graceful drain, exit 0, nothing accepted lost."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from bench.proxy import free_port
from tests.conftest import AMQP_URL, bind_all
from tests.e2e.process import BridgeProcess

pytestmark = pytest.mark.slow


def settings(exchange: str, spool: Path, url: str, **more: str) -> dict[str, str]:
    return {
        "BRIDGE_AMQP_URL": url,
        "BRIDGE_EXCHANGE": exchange,
        "BRIDGE_SPOOL_DIR": str(spool),
        "BRIDGE_DECLARE_QUEUES": "false",
        **more,
    }


class TestSigtermDuringOutage:
    async def test_exits_0_within_timeout_and_delivers_after_restart(
        self,
        processes: list[BridgeProcess],
        tmp_path: Path,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """Broker down: new webhooks 503 while draining, exit 0 within the timeout, the rest after restart."""
        everything = await bind_all(amqp_channel, exchange_name)
        spool = tmp_path / "spool"
        dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        bridge = BridgeProcess(
            settings(exchange_name, spool, dead, BRIDGE_SHUTDOWN_TIMEOUT="3"), cwd=tmp_path
        )
        processes.append(bridge)
        async with aiohttp.ClientSession(bridge.base_url) as http:
            for id_ in range(4):
                async with http.post(
                    "/webhooks/servio", data=orjson.dumps({"Delete": {"Guests": [id_]}})
                ) as r:
                    assert r.status == 200
            signalled = time.monotonic()
            bridge.signal(signal.SIGTERM)
            await asyncio.to_thread(bridge.wait_for_event, "shutting_down", 5)
            async with http.post("/webhooks/servio", data=b'{"Add":{"Guests":[99]}}') as late:
                assert late.status == 503
                assert (await late.json())["error"] == "shutting_down"
                assert "Retry-After" in late.headers
            async with http.get("/healthz") as health:
                assert health.status == 200
        code = await asyncio.to_thread(bridge.wait, 15)
        took = time.monotonic() - signalled
        assert code == 0
        assert 2.5 < took < 3 + 3, f"exited {took:.1f}s after SIGTERM"
        stopped = next(e for e in bridge.events() if e["event"] == "drain_stopped")
        assert (stopped["emptied"], stopped["left"]) == (False, 4)
        names = [e["event"] for e in bridge.events()]
        assert names.count("broker_unreachable") == 1  # once per outage, not once per retry
        print(f"SIGTERM during an outage: exit 0 after {took:.2f}s (BRIDGE_SHUTDOWN_TIMEOUT=3)")

        again = BridgeProcess(settings(exchange_name, spool, AMQP_URL), cwd=tmp_path)
        processes.append(again)
        messages = await everything.wait_for(4, timeout=20)
        assert [orjson.loads(m.body)["id"] for m in messages] == [0, 1, 2, 3]
        again.signal(signal.SIGTERM)
        assert await asyncio.to_thread(again.wait, 15) == 0


class TestSigtermUnderLoad:
    async def test_nothing_accepted_is_lost(
        self,
        processes: list[BridgeProcess],
        tmp_path: Path,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """Every webhook answered 200 before or during the drain is in RabbitMQ once the process exited 0."""
        everything = await bind_all(amqp_channel, exchange_name)
        bridge = BridgeProcess(settings(exchange_name, tmp_path / "spool", AMQP_URL), cwd=tmp_path)
        processes.append(bridge)
        await asyncio.to_thread(bridge.wait_for_event, "broker_connected")
        accepted: list[int] = []
        refused = 0
        stop = asyncio.Event()

        async def poster(http: aiohttp.ClientSession, worker: int) -> None:
            nonlocal refused
            n = 0
            while not stop.is_set():
                id_ = worker * 1_000_000 + n
                n += 1
                body = orjson.dumps({"Update": {"Guests": [id_, id_ + 500_000]}})
                try:
                    async with http.post("/webhooks/servio", data=body) as response:
                        if response.status == 200:
                            accepted.extend((id_, id_ + 500_000))
                        else:
                            refused += 1
                            return
                except aiohttp.ClientError:
                    refused += 1
                    return

        async with aiohttp.ClientSession(bridge.base_url) as http:
            posters = [asyncio.create_task(poster(http, w)) for w in range(1, 5)]
            await asyncio.sleep(1.5)
            bridge.signal(signal.SIGTERM)
            done, _ = await asyncio.wait(posters, timeout=15)
            stop.set()
            assert len(done) == len(posters)
        assert await asyncio.to_thread(bridge.wait, 20) == 0
        assert refused == 4  # each poster ended on a 503 or a closed listener, never on a lost answer
        assert len(accepted) > 20
        messages = await everything.wait_for(len(accepted), timeout=20)
        delivered = {orjson.loads(m.body)["id"] for m in messages}
        assert set(accepted) <= delivered
        print(f"SIGTERM under load: {len(accepted)} accepted messages, all delivered")
