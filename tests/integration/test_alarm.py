"""A memory alarm on a broker node of the test's own: blocked, shown, and nothing accepted is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import orjson
import pytest
import structlog
from aio_pika.abc import AbstractChannel

from tests.broker import BrokerNode
from tests.conftest import Collected, bind_all
from tests.integration.conftest import BridgeFactory
from tests.integration.test_operations import metric, problems_within

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerNode]:
    """One node for the module: starting one takes seconds."""
    started = BrokerNode(tmp_path_factory.mktemp("node"))
    started.start()
    yield started
    started.kill()


@pytest.fixture
async def node_channel(node: BrokerNode) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(node.url)
    yield await connection.channel()
    await connection.close()


class TestMemoryAlarm:
    async def test_blocked_then_everything_delivered(
        self,
        bridge: BridgeFactory,
        node: BrokerNode,
        node_channel: AbstractChannel,
        tmp_path: Path,
        exchange_name: str,
    ) -> None:
        """A memory alarm shows as blocked in /readyz and metrics; what was accepted meanwhile all arrives."""
        everything = await bind_all(node_channel, exchange_name)
        with structlog.testing.capture_logs() as logged:
            await self.block_and_clear(bridge, node, tmp_path, everything)
        events = [e["event"] for e in logged]
        assert (events.count("broker_blocked"), events.count("broker_unblocked")) == (1, 1)

    async def block_and_clear(
        self, bridge: BridgeFactory, node: BrokerNode, tmp_path: Path, everything: Collected
    ) -> None:
        """Raise the alarm, post meanwhile, clear it; every accepted message must arrive."""
        async with bridge(amqp_urls=(node.url,), spool_dir=tmp_path / "spool") as client:
            node.ctl("set_vm_memory_high_watermark", "0")
            try:
                ids = list(range(10))
                for id_ in ids[:5]:
                    response = await client.post(
                        "/webhooks/servio", data=orjson.dumps({"Add": {"Guests": [id_]}})
                    )
                    assert response.status == 200
                await problems_within(client, ["broker_blocked"], within=10)
                # The spool keeps what arrives meanwhile: named, not refused.
                assert (await client.get("/readyz")).status == 200
                assert await metric(client, "servio_bridge_broker_blocked") == 1
                for id_ in ids[5:]:
                    response = await client.post(
                        "/webhooks/servio", data=orjson.dumps({"Add": {"Guests": [id_]}})
                    )
                    assert response.status == 200
                assert await metric(client, "servio_bridge_spool_entries") == 10
                assert (await client.get("/healthz")).status == 200
            finally:
                node.ctl("set_vm_memory_high_watermark", "0.4")
            await problems_within(client, [], within=20)
            messages = await everything.wait_for(10, timeout=20)
            assert await metric(client, "servio_bridge_broker_blocked") == 0
            for _ in range(50):
                if await metric(client, "servio_bridge_spool_entries") == 0:
                    break
                await asyncio.sleep(0.1)
            assert await metric(client, "servio_bridge_spool_entries") == 0
        assert sorted({orjson.loads(m.body)["id"] for m in messages}) == ids
