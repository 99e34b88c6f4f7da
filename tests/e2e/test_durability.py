"""Answered 200 means delivered: the real process through broker outages, restarts and kill -9.

Every outage here is made by the test itself: a TCP proxy it controls between the bridge and
the shared RabbitMQ, or a broker node of its own. Each test reconciles the IDs answered 200
against what reached a queue bound to ``#``: lost must be 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from bench.load import Load
from bench.proxy import TcpProxy, free_port
from tests.broker import BrokerNode
from tests.conftest import Collected, bind_all
from tests.disk import fill_the_disk, mounted_tmpfs
from tests.e2e.conftest import Launch
from tests.e2e.process import BridgeProcess
from tests.e2e.reconciliation import delivered_ids, reconcile

pytestmark = pytest.mark.slow

Starter = Callable[..., Awaitable[BridgeProcess]]


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """A proxy to the shared RabbitMQ that the test can make refuse or cut."""
    started = await TcpProxy(5672).start()
    yield started
    await started.close()


@pytest.fixture
def start_bridge(launch: Launch, tmp_path: Path, exchange_name: str, proxy: TcpProxy) -> Starter:
    """Start ``servio-bridge serve`` on a spool in tmp_path, publishing through the proxy."""

    async def start(**env: str) -> BridgeProcess:
        settings = {
            "BRIDGE_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
            "BRIDGE_EXCHANGE": exchange_name,
            "BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
            "BRIDGE_DECLARE_QUEUES": "false",
            "BRIDGE_SHUTDOWN_TIMEOUT": "2",
        }
        return await launch({**settings, **env})

    return start


async def wait_delivered(everything: Collected, accepted: set[int], timeout: float = 60.0) -> None:
    """Wait until every accepted ID has arrived (fails with the count still missing)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if accepted <= set(delivered_ids(everything.messages)):
            return
        await asyncio.sleep(0.1)
    missing = accepted - set(delivered_ids(everything.messages))
    raise AssertionError(
        f"{len(missing)} of {len(accepted)} accepted IDs never arrived: {sorted(missing)[:10]}"
    )


class TestBrokerOutages:
    async def test_unreachable_at_start_then_all_delivered(
        self, start_bridge: Starter, proxy: TcpProxy, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Broker refused at start: 200 webhooks all answered 200, all delivered once it is back."""
        everything = await bind_all(amqp_channel, exchange_name)
        await proxy.refuse()
        bridge = await start_bridge()
        load = Load(bridge.base_url)
        await load.run(count=200, concurrency=8)
        assert len(load.accepted) == 200, load.statuses
        assert everything.messages == []
        await proxy.accept()
        await wait_delivered(everything, load.accepted)
        lost, duplicates = reconcile(load.accepted, await everything.settle(0.3))
        assert (lost, duplicates) == (0, 0)

    async def test_connection_cut_twice_under_load(
        self, start_bridge: Starter, proxy: TcpProxy, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """The broker connection cut twice under concurrent load: lost 0, few duplicates."""
        everything = await bind_all(amqp_channel, exchange_name)
        bridge = await start_bridge()
        await bridge.event("broker_connected")
        load = Load(bridge.base_url)

        async def cut_twice() -> None:
            for _ in range(2):
                await asyncio.sleep(2)
                proxy.cut()

        await asyncio.gather(load.run(seconds=6, concurrency=16), cut_twice())
        await wait_delivered(everything, load.accepted)
        lost, duplicates = reconcile(load.accepted, await everything.settle(0.5))
        assert lost == 0
        assert len(load.accepted) > 300, load.statuses
        assert duplicates <= 0.05 * len(load.accepted), (duplicates, len(load.accepted))
        assert proxy.connections >= 3
        assert load.refused == 0, load.statuses

    async def test_order_of_one_guest_kept_through_outage(
        self, start_bridge: Starter, proxy: TcpProxy, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Add, update, delete of one guest sent during an outage arrive in that order."""
        everything = await bind_all(amqp_channel, exchange_name)
        await proxy.refuse()
        bridge = await start_bridge()
        async with aiohttp.ClientSession(bridge.base_url) as http:
            for action, others in (("Add", [1, 2]), ("Update", [3]), ("Delete", [4, 5])):
                body = {action: {"Guests": [*others[:1], 77, *others[1:]]}}
                async with http.post("/webhooks/servio/Jam_5", data=orjson.dumps(body)) as response:
                    assert response.status == 200
        await proxy.accept()
        messages = await everything.wait_for(8, timeout=60)
        guest = [m.routing_key for m in messages if orjson.loads(m.body)["id"] == 77]
        assert guest == ["servio.guests.add", "servio.guests.update", "servio.guests.delete"]

    async def test_spool_full_answers_503_and_keeps_the_rest(
        self, start_bridge: Starter, proxy: TcpProxy, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Spool full: 503 with Retry-After; everything answered 200 before is delivered."""
        everything = await bind_all(amqp_channel, exchange_name)
        await proxy.refuse()
        bridge = await start_bridge(BRIDGE_SPOOL_MAX_BYTES="20000")
        load = Load(bridge.base_url)
        retry_after = None
        async with aiohttp.ClientSession() as http:
            for id_ in range(1, 1000):
                body = orjson.dumps({"Update": {"Guests": [id_]}})
                async with http.post(f"{bridge.base_url}/webhooks/servio/x", data=body) as response:
                    if response.status == 503:
                        retry_after = response.headers.get("Retry-After")
                        assert (await response.json())["error"] == "spool_full"
                        break
                    assert response.status == 200
                    load.accepted.add(id_)
        assert retry_after is not None
        assert int(retry_after) > 0
        assert 20 < len(load.accepted) < 200
        await proxy.accept()
        await wait_delivered(everything, load.accepted)
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # the drain frees the spool: webhooks are accepted again
                async with http.post(
                    f"{bridge.base_url}/webhooks/servio/x", data=b'{"Add":{"Rooms":[1]}}'
                ) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert r.status == 200


class TestBrokerNodeKilled:
    async def test_node_sigkilled_and_restarted_under_load(
        self, tmp_path: Path, exchange_name: str, start_bridge: Starter
    ) -> None:
        """A broker node of the test's own SIGKILLed and restarted under load: lost 0."""
        node = BrokerNode(tmp_path / "node")
        node.start()
        try:
            connection = await aio_pika.connect(node.url)
            await bind_all(await connection.channel(), exchange_name, quorum=True)
            await connection.close()
            bridge = await start_bridge(BRIDGE_AMQP_URL=node.url)
            await bridge.event("broker_connected")
            load = Load(bridge.base_url)

            async def kill_and_restart() -> None:
                await asyncio.sleep(1.5)
                node.kill()
                await asyncio.sleep(1.0)
                await asyncio.to_thread(node.start)

            await asyncio.gather(load.run(seconds=5, concurrency=8), kill_and_restart())
            assert len(load.accepted) > 100, load.statuses
            connection = await aio_pika.connect(node.url)
            everything = await bind_all(await connection.channel(), exchange_name, quorum=True)
            try:
                await wait_delivered(everything, load.accepted, timeout=90)
                lost, _ = reconcile(load.accepted, await everything.settle(0.5))
                assert lost == 0
            finally:
                await connection.close()
        finally:
            node.stop()


class TestBridgeKilled:
    async def test_sigkill_with_backlog_then_restart_delivers_all(
        self, start_bridge: Starter, proxy: TcpProxy, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """The bridge SIGKILLed with a backlog, restarted on the same spool: all delivered."""
        everything = await bind_all(amqp_channel, exchange_name)
        await proxy.refuse()
        bridge = await start_bridge()
        load = Load(bridge.base_url)
        await load.run(count=300, concurrency=8)
        assert len(load.accepted) == 300
        bridge.signal(signal.SIGKILL)
        assert bridge.wait() == -signal.SIGKILL
        await proxy.accept()
        await start_bridge()
        await wait_delivered(everything, load.accepted)
        lost, duplicates = reconcile(load.accepted, await everything.settle(0.3))
        assert (lost, duplicates) == (0, 0)

    async def test_sigkill_three_times_under_live_load(
        self, start_bridge: Starter, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Killed with SIGKILL three times while webhooks keep coming: every 200 is delivered."""
        everything = await bind_all(amqp_channel, exchange_name)
        port = str(free_port())
        bridge = await start_bridge(BRIDGE_PORT=port)
        load = Load(bridge.base_url)
        kills = 0

        async def kill_three_times() -> None:
            nonlocal bridge, kills
            for _ in range(3):
                await asyncio.sleep(1.5)
                bridge.signal(signal.SIGKILL)
                await asyncio.to_thread(bridge.wait)
                kills += 1
                bridge = await start_bridge(BRIDGE_PORT=port)

        await asyncio.gather(load.run(seconds=7, concurrency=8), kill_three_times())
        assert kills == 3
        assert len(load.accepted) > 100, load.statuses
        await wait_delivered(everything, load.accepted)
        lost, duplicates = reconcile(load.accepted, await everything.settle(0.5))
        assert lost == 0
        print(f"accepted={len(load.accepted)} duplicates={duplicates} failed={load.failed}")


class TestCorruptSpool:
    def test_start_up_refuses_with_clear_message(self, tmp_path: Path) -> None:
        """A corrupt spool file: start-up refuses (exit 3) with one line naming the file."""
        spool = tmp_path / "spool"
        spool.mkdir()
        (spool / "spool.sqlite3").write_bytes(b"\x00garbage" * 4096)
        result = subprocess.run(
            [sys.executable, "-m", "bridge", "serve"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "BRIDGE_SPOOL_DIR": str(spool), "BRIDGE_PORT": "0"},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 3
        lines = [json.loads(line) for line in result.stderr.decode().splitlines()]
        failures = [line for line in lines if line["event"] == "spool_unusable"]
        assert len(failures) == 1
        assert str(spool / "spool.sqlite3") in failures[0]["error"]
        assert (spool / "spool.sqlite3").read_bytes() == b"\x00garbage" * 4096


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of the test's own, to make the spool's disk fill (root only)."""
    with mounted_tmpfs(tmp_path / "small-disk", "1m") as mount_point:
        yield mount_point


class TestDiskFull:
    async def test_a_full_disk_answers_503_stays_up_and_a_restart_on_it_drains(
        self,
        small_disk: Path,
        start_bridge: Starter,
        proxy: TcpProxy,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """The spool's disk fills while the broker is cut: 503 spool_full with Retry-After and no
        exit; killed and restarted on the still-full disk, the bridge starts, drains and deletes
        once the broker is back, every 200 is delivered, and webhooks are taken again."""
        everything = await bind_all(amqp_channel, exchange_name)
        # Room for the spool's 40 MiB reserve and some 100 webhooks of 1,000 IDs each.
        remount = ["mount", "-o", "remount,size=72m", str(small_disk)]
        await asyncio.to_thread(subprocess.run, remount, check=True)
        await proxy.refuse()
        spool = str(small_disk / "spool")
        bridge = await start_bridge(BRIDGE_SPOOL_DIR=spool)
        accepted: set[int] = set()
        refusals: list[tuple[str, str | None]] = []
        async with aiohttp.ClientSession(bridge.base_url) as http:
            for n in range(1000):
                ids = list(range(n * 1000, n * 1000 + 1000))
                async with http.post("/webhooks/servio/x", data=orjson.dumps({"Add": {"Guests": ids}})) as r:
                    if r.status == 200:
                        accepted.update(ids)
                        continue
                    assert r.status == 503, r.status
                    refusals.append(((await r.json())["error"], r.headers.get("Retry-After")))
                    if len(refusals) == 5:
                        break
                    await asyncio.sleep(0.2)
        assert len(accepted) >= 20_000, len(accepted)
        assert {error for error, _ in refusals} == {"spool_full"}, refusals
        assert all(after is not None and int(after) > 0 for _, after in refusals), refusals
        await asyncio.sleep(1.0)
        assert bridge.proc.poll() is None, bridge.lines[-10:]
        assert any(e["event"] == "spool_disk_full" for e in bridge.events())
        # Whatever room the spool gave back meanwhile, something else on the disk takes.
        await asyncio.to_thread(fill_the_disk, small_disk / "filler")
        bridge.signal(signal.SIGKILL)
        assert await asyncio.to_thread(bridge.wait) == -signal.SIGKILL
        # The disk is still full: the new process must start on it, and drain it.
        restarted = await start_bridge(BRIDGE_SPOOL_DIR=spool)
        await proxy.accept()
        await wait_delivered(everything, accepted, timeout=120)
        lost, _ = reconcile(accepted, await everything.settle(0.5))
        assert lost == 0
        assert restarted.proc.poll() is None, restarted.lines[-10:]
        # The drain emptied the spool on the full disk: room again, webhooks are taken again.
        late = 5_000_000
        async with aiohttp.ClientSession(restarted.base_url) as http:
            for _ in range(300):
                body = orjson.dumps({"Add": {"Guests": [late]}})
                async with http.post("/webhooks/servio/x", data=body) as r:
                    if r.status == 200:
                        break
                    assert (await r.json())["error"] == "spool_full"
                await asyncio.sleep(0.1)
            assert r.status == 200
        await wait_delivered(everything, {late}, timeout=30)
        assert not any(e["event"] == "stopping_on_spool_failure" for e in restarted.events())


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def nice_of(pid: int) -> int:
    """A process's nice value, field 19 of /proc/<pid>/stat (after the parenthesised name)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])


class TestPublishingProcessKilled:
    async def test_worker_sigkilled_under_load_is_replaced_and_nothing_lost(
        self, start_bridge: Starter, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """The publishing child SIGKILLed twice under load: a new one takes over, every 200 is delivered."""
        everything = await bind_all(amqp_channel, exchange_name)
        bridge = await start_bridge()
        await bridge.event("broker_connected")
        load = Load(bridge.base_url)
        killed: list[int] = []

        async def kill_worker_twice() -> None:
            for _ in range(2):
                await asyncio.sleep(1.5)
                (worker,) = child_pids(bridge.proc.pid)
                os.kill(worker, signal.SIGKILL)
                killed.append(worker)

        await asyncio.gather(load.run(seconds=5, concurrency=8), kill_worker_twice())
        await wait_delivered(everything, load.accepted)
        lost, _ = reconcile(load.accepted, await everything.settle(0.5))
        assert lost == 0
        assert len(killed) == 2
        assert len(load.accepted) > 100, load.statuses
        assert load.refused == 0, load.statuses
        assert sum(e["event"] == "worker_exited" for e in bridge.events()) == 2
        (replacement,) = child_pids(bridge.proc.pid)
        assert replacement not in killed
        # Answering goes first: the publishing process, a replacement too, runs at nice 19.
        assert nice_of(replacement) == 19
        assert nice_of(bridge.proc.pid) == 0
        bridge.signal(signal.SIGTERM)
        assert await asyncio.to_thread(bridge.wait) == 0
