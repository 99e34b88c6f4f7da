"""The real process on the real broker: a message RabbitMQ will not take never holds the others
back, and a queue of the topology deleted under a running bridge is back within seconds.

Each poison is made by the test: a spool entry written directly into the spool of a stopped
bridge, a webhook with a huge key, a dead-letter queue that refuses everything, a queue deleted.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bench.load import Load
from bridge.core.outbound import Outbound
from bridge.core.record import encode_record
from bridge.spool.store import Spool
from tests.conftest import AMQP_URL, Collected, collect
from tests.e2e.conftest import Launch
from tests.e2e.process import BridgeProcess
from tests.e2e.reconciliation import delivered_ids

pytestmark = pytest.mark.slow

Starter = Callable[..., Awaitable[BridgeProcess]]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def start_bridge(launch: Launch, exchange_name: str, spool_dir: Path) -> Starter:
    """Start ``servio-bridge serve`` on the shared broker, declaring no event queues: every event
    goes through the alternate exchange to ``<exchange>.unrouted``."""

    async def start(**env: str) -> BridgeProcess:
        settings = {
            "BRIDGE_AMQP_URL": AMQP_URL,
            "BRIDGE_EXCHANGE": exchange_name,
            "BRIDGE_SPOOL_DIR": str(spool_dir),
            "BRIDGE_DECLARE_QUEUES": "false",
            "BRIDGE_ARCHIVE_MAX_AGE": "",
            "BRIDGE_SHUTDOWN_TIMEOUT": "2",
        }
        return await launch({**settings, **env})

    return start


async def spool_holding(directory: Path, messages: list[Outbound]) -> None:
    """Write ``messages`` into the spool at ``directory`` as the bridge would have, before it starts."""
    spool = Spool(directory, max_bytes=1 << 30)
    spool.open()
    try:
        await spool.append([encode_record(m) for m in messages])
    finally:
        spool.close()


def poison(exchange: str) -> Outbound:
    """A guest event whose header frame is over RabbitMQ's 128 KiB frame limit."""
    return Outbound(
        exchange=exchange,
        routing_key="servio.guests.add",
        body=b'{"entity":"guests","action":"add","id":666}',
        message_id="poison-666",
        timestamp=int(time.time()),
        order_key="guests:666",
        headers={"reason": "bad_id", "detail": "k" * 200_000},
    )


async def wait_delivered(everything: Collected, ids: set[int], timeout: float) -> float:
    """Seconds until every ID in ``ids`` arrived (fails after ``timeout``)."""
    started = time.monotonic()
    while not ids <= set(delivered_ids(everything.messages)):
        if time.monotonic() - started > timeout:
            missing = ids - set(delivered_ids(everything.messages))
            raise AssertionError(f"{len(missing)} of {len(ids)} never arrived within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def declared(_channel: AbstractChannel, name: str, timeout: float = 10.0) -> None:
    """Wait until queue ``name`` exists (a passive declare that fails closes its own channel)."""
    end = time.monotonic() + timeout
    connection = await aio_pika.connect(AMQP_URL)
    try:
        while True:
            probe = await connection.channel()
            try:
                await probe.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                assert time.monotonic() < end, f"{name} was not declared (again) within {timeout}s"
                await asyncio.sleep(0.1)
                continue
            await probe.close()
            return
    finally:
        await connection.close()


async def consume(channel: AbstractChannel, name: str) -> Collected:
    """``collect`` queue ``name`` once the bridge has declared it."""
    await declared(channel, name)
    return await collect(channel, name)


def letters(collected: Collected, reason: str) -> list[AbstractIncomingMessage]:
    return [m for m in collected.messages if (m.headers or {}).get("reason") == reason]


async def seen_stalled(http: aiohttp.ClientSession, *, within: float) -> dict[str, Any]:
    """Poll /readyz until it lists ``drain_stalled``; its status, problems and the metrics then."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        async with http.get("/readyz") as ready:
            body = await ready.json()
            if "drain_stalled" in body["problems"]:
                async with http.get("/metrics") as metrics:
                    text = await metrics.text()
                return {**body, "readyz_status": ready.status, "metrics": text}
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz never said drain_stalled within {within} s")


async def stall_cleared(http: aiohttp.ClientSession, *, within: float) -> bool:
    """Whether /readyz stops listing ``drain_stalled`` within ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        async with http.get("/readyz") as ready:
            if "drain_stalled" not in (await ready.json())["problems"]:
                return True
        await asyncio.sleep(0.2)
    return False


class TestPoison:
    async def test_an_entry_the_broker_cannot_take_is_dead_lettered_and_the_rest_flow(
        self, start_bridge: Starter, spool_dir: Path, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A spool entry whose header is over frame_max, between two good ones, in the spool of a
        stopped bridge: once started, it lands in <exchange>.invalid as broker_refused with its
        body, and every webhook answered 200 afterwards arrives within seconds (lost = 0)."""
        good = [
            Outbound(
                exchange=exchange_name,
                routing_key="servio.guests.update",
                body=orjson.dumps({"entity": "guests", "action": "update", "id": n}),
                message_id=f"pre-{n}",
                timestamp=int(time.time()),
                order_key=f"guests:{n}",
            )
            for n in (900001, 900002)
        ]
        await spool_holding(spool_dir, [good[0], poison(exchange_name), good[1]])
        bridge = await start_bridge()
        everything = await consume(amqp_channel, f"{exchange_name}.unrouted")
        invalid = await consume(amqp_channel, f"{exchange_name}.invalid")
        load = Load(bridge.base_url)
        await load.run(count=50)
        assert len(load.accepted) == 50
        took = await wait_delivered(everything, {*load.accepted, 900001, 900002}, timeout=20)
        assert took < 10
        await invalid.wait_for(1, timeout=10)
        [letter] = letters(invalid, "broker_refused")
        assert letter.body == poison(exchange_name).body
        assert letter.message_id == "poison-666.refused"
        assert 666 not in delivered_ids(everything.messages)

    async def test_a_webhook_with_a_huge_rejected_key_does_not_stall_the_drain(
        self, start_bridge: Starter, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A rejected part under a 200,000-character key (its dead letter's header once outgrew
        the frame): the webhooks after it arrive within seconds, and the rejection is kept in
        <exchange>.invalid."""
        bridge = await start_bridge()
        everything = await consume(amqp_channel, f"{exchange_name}.unrouted")
        invalid = await consume(amqp_channel, f"{exchange_name}.invalid")
        body = b'{"Add":{"Guests":[1],"' + b"k" * 200_000 + b'":["x"]}}'
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{bridge.base_url}/webhooks/servio/x", data=body) as response,
        ):
            assert response.status == 200
        load = Load(bridge.base_url)
        await load.run(count=20)
        took = await wait_delivered(everything, {1, *load.accepted}, timeout=20)
        assert took < 10
        await invalid.wait_for(1, timeout=10)

    async def test_a_message_refused_even_as_a_dead_letter_is_quarantined(
        self, start_bridge: Starter, spool_dir: Path, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """<exchange>.invalid made to refuse every message (max length 0, reject-publish): the
        poison's dead letter is nacked until its budget is spent, the entry moves to the spool's
        quarantine table, and the drain goes on with what came after it."""
        await amqp_channel.declare_queue(
            f"{exchange_name}.invalid",
            durable=True,
            arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
        )
        await spool_holding(spool_dir, [poison(exchange_name)])
        bridge = await start_bridge(BRIDGE_STALL_AFTER="2")
        everything = await consume(amqp_channel, f"{exchange_name}.unrouted")
        load = Load(bridge.base_url)
        await load.run(count=10)
        assert len(load.accepted) == 10
        async with aiohttp.ClientSession(bridge.base_url) as http:
            # While the dead letter's nacks hold the batch, the stall is seen and retries are
            # counted as they happen; traffic is still accepted (the spool keeps it).
            stalled = await seen_stalled(http, within=20)
            assert stalled["readyz_status"] == 200
            assert "drain_stalled" in stalled["problems"]
            assert "drain_stalled" not in stalled["blocking"]
            assert "servio_bridge_drain_stalled 1.0" in stalled["metrics"]
            assert 'servio_bridge_publish_retries_total{class="nacked"}' in stalled["metrics"]
            await wait_delivered(everything, load.accepted, timeout=90)
            # The batch's answer reaches the listening process just after its messages arrive.
            assert await stall_cleared(http, within=10)
        await bridge.event("spool_entry_quarantined", timeout=10)
        connection = sqlite3.connect(f"{(spool_dir / 'spool.sqlite3').as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT seq, reason FROM quarantine").fetchall()
        finally:
            connection.close()
        assert rows == [(1, "nacked")]


class TestHealing:
    @pytest.mark.parametrize("which", ["unrouted", "invalid"])
    async def test_a_deleted_queue_is_declared_again_and_the_next_message_lands_in_it(
        self, which: str, start_bridge: Starter, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """<exchange>.unrouted (or .invalid) deleted while the bridge runs: the next webhook's
        message is returned, the topology declared again, and it arrives in the new queue."""
        bridge = await start_bridge()
        queue = f"{exchange_name}.{which}"
        await declared(amqp_channel, queue)
        await amqp_channel.queue_delete(queue)
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            data = orjson.dumps({"Update": {"Guests": [42]}}) if which == "unrouted" else b"not json"
            async with http.post(f"{bridge.base_url}/webhooks/servio/x", data=data) as response:
                assert response.status in (200, 400)
        await declared(amqp_channel, queue)
        arrived = await collect(amqp_channel, queue)
        await arrived.wait_for(1, timeout=10)
        assert time.monotonic() - started < 10
        if which == "unrouted":
            assert delivered_ids(arrived.messages) == [42]
        await bridge.event("topology_declared", timeout=5)
