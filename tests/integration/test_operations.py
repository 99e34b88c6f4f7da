"""Readiness, metrics and fail-over against the real RabbitMQ, outages made with a TCP proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aio_pika.abc import AbstractChannel
from aiohttp.test_utils import TestClient

from bench.proxy import TcpProxy, free_port
from bridge.settings import Settings
from tests.conftest import AMQP_URL, bind_all, collect
from tests.integration.conftest import BridgeFactory
from tests.integration.serving import serving
from tests.prom import sample

Client = TestClient[Any, Any]
BROKER_PORT = int(AMQP_URL.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    started = TcpProxy(BROKER_PORT)
    await started.start()
    yield started
    started.flowing.set()
    await started.close()


def via(proxy: TcpProxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}/"


async def status_within(client: Client, path: str, want: int, within: float) -> float:
    """Seconds until ``path`` answered ``want``; fails the test after ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if (await client.get(path)).status == want:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} did not answer {want} within {within}s")


async def problems_within(client: Client, want: list[str], within: float) -> float:
    """Seconds until /readyz listed exactly ``want`` as its problems; fails the test after ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if (await (await client.get("/readyz")).json())["problems"] == want:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz did not list {want} within {within}s")


async def metric(client: Client, name: str, **labels: str) -> float:
    return sample(await (await client.get("/metrics")).text(), name, **labels) or 0.0


class TestReadiness:
    async def test_outage_with_no_traffic(
        self,
        bridge: BridgeFactory,
        proxy: TcpProxy,
        tmp_path: Path,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """/readyz names broker_disconnected within seconds of the broker going away, no traffic
        needed, yet stays 200 (the spool keeps webhooks); clear again after; healthz 200."""
        everything = await bind_all(amqp_channel, exchange_name)
        async with bridge(amqp_urls=(via(proxy),), spool_dir=tmp_path / "spool") as client:
            assert (await client.get("/readyz")).status == 200
            await proxy.refuse()
            went_down = await problems_within(client, ["broker_disconnected"], within=5)
            response = await client.get("/readyz")
            assert response.status == 200
            assert (await response.json())["blocking"] == []
            assert (await client.get("/healthz")).status == 200
            assert await metric(client, "servio_bridge_broker_connected") == 0
            await asyncio.sleep(1)  # a few reconnect attempts: still down, still alive
            assert (await client.get("/healthz")).status == 200
            await proxy.accept()
            came_back = await problems_within(client, [], within=10)
            assert (await client.get("/healthz")).status == 200
            await client.post("/webhooks/servio", data=b'{"Add":{"Guests":[1]}}')
            await everything.wait_for(1)
        print(f"broker_disconnected after {went_down:.2f}s of refusal, clear {came_back:.2f}s after accept")
        assert went_down < 3

    async def test_outage_without_a_spool_refuses(self, bridge: BridgeFactory, proxy: TcpProxy) -> None:
        """Without a spool nothing can be kept while the broker is away: /readyz 503, blocking."""
        async with bridge(amqp_urls=(via(proxy),)) as client:
            assert (await client.get("/readyz")).status == 200
            await proxy.refuse()
            await status_within(client, "/readyz", 503, within=5)
            assert (await (await client.get("/readyz")).json())["blocking"] == ["broker_disconnected"]
            await proxy.accept()
            await status_within(client, "/readyz", 200, within=10)

    async def test_silent_broker_is_noticed_by_heartbeats(
        self, bridge: BridgeFactory, proxy: TcpProxy, tmp_path: Path, amqp_channel: AbstractChannel
    ) -> None:
        """A broker that falls silent (no FIN, no RST) is named in /readyz within ~10 s through heartbeats."""
        async with bridge(amqp_urls=(via(proxy),), spool_dir=tmp_path / "spool") as client:
            assert (await client.get("/readyz")).status == 200
            proxy.flowing.clear()
            went_down = await problems_within(client, ["broker_disconnected"], within=15)
            proxy.flowing.set()
            proxy.cut()
            await problems_within(client, [], within=10)
        print(f"readyz 503 after {went_down:.2f}s of silence")
        assert 2 < went_down < 13


class TestMetricsMove:
    async def test_webhooks_dead_letters_and_an_outage(
        self,
        bridge: BridgeFactory,
        proxy: TcpProxy,
        tmp_path: Path,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """Counters follow published messages and dead letters; the spool depth rises in an outage, then 0."""
        everything = await bind_all(amqp_channel, exchange_name)
        async with bridge(amqp_urls=(via(proxy),), spool_dir=tmp_path / "spool") as client:
            invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
            await client.post(
                "/webhooks/servio/Jam_1", data=b'{"Add":{"Guests":[1,2,"x"]},"Delete":{"Rooms":[3]}}'
            )
            await client.post("/webhooks/servio/Jam_1", data=b"{")
            await everything.wait_for(3)
            await invalid.wait_for(2)
            await asyncio.sleep(0.2)  # the drain counts after the confirm it waits for
            count = await metric(
                client, "servio_bridge_messages_published_total", routing_key="servio.guests.add"
            )
            assert count == 2
            deleted = await metric(
                client, "servio_bridge_messages_published_total", routing_key="servio.rooms.delete"
            )
            assert deleted == 1
            # The rejected parts of one request are one dead letter (PRODUCT.md), counted by its reason.
            assert await metric(client, "servio_bridge_dead_letters_total", reason="rejected_parts") == 1
            assert await metric(client, "servio_bridge_dead_letters_total", reason="not_json") == 1
            assert await metric(client, "servio_bridge_confirm_latency_seconds_count") == 5
            received = await metric(
                client, "servio_bridge_webhooks_received_total", status="200", source="Jam_1"
            )
            assert received == 1

            await proxy.refuse()
            await problems_within(client, ["broker_disconnected"], within=5)
            for n in range(5):
                response = await client.post(
                    "/webhooks/servio/Jam_2", data=orjson.dumps({"Update": {"Guests": [n]}})
                )
                assert response.status == 200
            assert await metric(client, "servio_bridge_spool_entries") == 5
            assert await metric(client, "servio_bridge_spool_bytes") > 0
            await asyncio.sleep(1.1)
            assert await metric(client, "servio_bridge_spool_oldest_age_seconds") >= 1
            await proxy.accept()
            await everything.wait_for(8, timeout=15)
            await problems_within(client, [], within=5)
            for _ in range(50):
                if await metric(client, "servio_bridge_spool_entries") == 0:
                    break
                await asyncio.sleep(0.1)
            assert await metric(client, "servio_bridge_spool_entries") == 0
            assert await metric(client, "servio_bridge_spool_bytes") == 0
            assert await metric(client, "servio_bridge_spool_oldest_age_seconds") == 0
            text = await (await client.get("/metrics")).text()
            retries = [
                float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line.startswith("servio_bridge_publish_retries_total")
            ]
            assert sum(retries) >= 1


class TestFailover:
    async def test_first_url_dead_second_alive(
        self, bridge: BridgeFactory, tmp_path: Path, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """With the first node refusing connections, the bridge connects to the second and messages flow."""
        everything = await bind_all(amqp_channel, exchange_name)
        dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        async with bridge(amqp_urls=(dead, AMQP_URL), spool_dir=tmp_path / "spool") as client:
            assert (await client.get("/readyz")).status == 200
            response = await client.post("/webhooks/servio", data=b'{"Add":{"Clients":[12766]}}')
            assert response.status == 200
            (message,) = await everything.wait_for(1)
        assert orjson.loads(message.body)["id"] == 12766

    async def test_fails_over_when_the_connected_node_goes(
        self,
        bridge: BridgeFactory,
        proxy: TcpProxy,
        tmp_path: Path,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """When the node in use goes away, the next one in the list takes over, no traffic needed."""
        everything = await bind_all(amqp_channel, exchange_name)
        other = await TcpProxy(BROKER_PORT).start()
        try:
            async with bridge(amqp_urls=(via(proxy), via(other)), spool_dir=tmp_path / "spool") as client:
                assert proxy.connections >= 1
                before = other.connections
                await proxy.refuse()
                await problems_within(client, ["broker_disconnected"], within=3)
                await problems_within(client, [], within=10)
                assert other.connections > before
                await client.post("/webhooks/servio", data=b'{"Add":{"Clients":[5]}}')
                await everything.wait_for(1)
        finally:
            await other.close()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    """One keep-alive GET over a raw connection; its status line."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bridge\r\n\r\n".encode())
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


class TestConnectionBound:
    async def test_past_the_bound_a_connection_waits_for_a_free_slot(
        self, tmp_path: Path, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """With BRIDGE_MAX_CONNECTIONS=4 and four idle keep-alive connections, a fifth is not
        answered (it waits in the kernel's backlog) until one of the four closes; then it is 200."""
        settings = Settings(
            host="127.0.0.1",
            port=0,
            amqp_urls=(AMQP_URL,),
            exchange=exchange_name,
            spool_dir=None,
            declare_queues=False,
            max_connections=4,
        )
        async with serving(settings) as (host, port):
            idle = [await asyncio.open_connection(host, port) for _ in range(4)]
            for reader, writer in idle:
                assert (await _get(reader, writer, "/healthz")).startswith(b"HTTP/1.1 200")
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readline(), 1.0)
            idle[0][1].close()
            status = await asyncio.wait_for(reader.readline(), 5.0)
            assert status.startswith(b"HTTP/1.1 200")
            for _, other in [*idle[1:], (reader, writer)]:
                other.close()
