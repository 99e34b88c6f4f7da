"""/healthz, /readyz, /metrics and the shutdown gate, with a fake broker and a real spool."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge import app as app_module
from bridge import sink as sink_module
from bridge import spool as spool_module
from bridge.app import build_app
from bridge.logs import configure_logging
from bridge.message import Outbound
from bridge.metrics import Metrics
from bridge.ops import Operations, install_operations
from bridge.settings import Settings
from bridge.sink import SpoolSink
from bridge.spool import Spool, SpoolReader
from tests.fakes import FakePublisher
from tests.prom import sample

Client = TestClient[Any, Any]


class FakeBroker(FakePublisher):
    """The fake publisher, plus the connection.blocked state /readyz reads."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = False


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
async def ops(broker: FakeBroker, tmp_path: Path) -> AsyncIterator[tuple[Client, Operations]]:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    spool.open()
    app = build_app(Settings(spool_dir=tmp_path / "spool"), SpoolSink(spool, on_fatal=lambda _e: None))
    operations = Operations(broker, spool, Metrics())
    install_operations(app, operations)
    async with TestClient(TestServer(app)) as client:
        yield client, operations
    spool.close()


class TestReadiness:
    async def test_ready_when_connected_and_spool_writable(self, ops: tuple[Client, Operations]) -> None:
        """/readyz 200 and /healthz 200 with the broker connected and the spool open."""
        client, _ = ops
        response = await client.get("/readyz")
        assert response.status == 200
        assert (await response.json())["problems"] == []
        assert (await client.get("/healthz")).status == 200

    async def test_broker_down_is_503_and_webhooks_still_accepted(
        self, ops: tuple[Client, Operations], broker: FakeBroker
    ) -> None:
        """Not ready while the broker is gone, yet webhooks are still kept in the spool; healthz stays 200."""
        client, operations = ops
        broker.break_down()
        response = await client.get("/readyz")
        assert response.status == 503
        assert "Retry-After" in response.headers
        assert (await response.json())["problems"] == ["broker_disconnected"]
        assert (await client.get("/healthz")).status == 200
        posted = await client.post("/webhooks/servio/h1", data=b'{"Add":{"Guests":[1,2]}}')
        assert posted.status == 200
        assert operations.spool is not None
        assert operations.spool.stats.entries == 2

    async def test_blocked_broker_is_named(self, ops: tuple[Client, Operations], broker: FakeBroker) -> None:
        """A connection blocked by a RabbitMQ alarm makes /readyz 503 with reason broker_blocked."""
        client, _ = ops
        broker.blocked = True
        response = await client.get("/readyz")
        assert response.status == 503
        body = await response.json()
        assert body["problems"] == ["broker_blocked"]
        assert body["broker"] == {"connected": True, "blocked": True}


class TestMetrics:
    async def test_names_and_webhook_counts(self, ops: tuple[Client, Operations], broker: FakeBroker) -> None:
        """Every name starts servio_bridge_; webhooks are counted by status and source; gauges read live."""
        client, _ = ops
        for _ in range(3):
            await client.post("/webhooks/servio/Jam_1", data=b'{"Add":{"Guests":[7]}}')
        await client.post("/webhooks/servio/Jam_2", data=b"{")
        broker.blocked = True
        text = await (await client.get("/metrics")).text()
        names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert names
        assert all(name.startswith("servio_bridge_") for name in names), names
        assert sample(text, "servio_bridge_webhooks_received_total", status="200", source="Jam_1") == 3
        assert sample(text, "servio_bridge_webhooks_received_total", status="400", source="Jam_2") == 1
        assert sample(text, "servio_bridge_spool_entries") == 4  # three events and one raw dead letter
        assert (sample(text, "servio_bridge_spool_bytes") or 0) > 0
        assert (sample(text, "servio_bridge_spool_oldest_age_seconds") or -1) >= 0
        assert sample(text, "servio_bridge_broker_connected") == 1
        assert sample(text, "servio_bridge_broker_blocked") == 1
        assert sample(text, "servio_bridge_ready") == 0
        route = "/webhooks/servio/{source}"
        assert sample(text, "servio_bridge_request_duration_seconds_count", route=route) == 4

    async def test_each_spool_fsync_is_timed(self, ops: tuple[Client, Operations]) -> None:
        """Every webhook answered 200 waited for an fsync of the spool: each one is in the histogram."""
        client, operations = ops
        for n in range(5):
            assert (await client.post("/webhooks/servio", data=b'{"Add":{"Guests":[%d]}}' % n)).status == 200
        assert operations.spool is not None
        text = await (await client.get("/metrics")).text()
        count = sample(text, "servio_bridge_spool_sync_seconds_count")
        assert count is not None
        assert count == operations.spool.commits >= 1
        assert (sample(text, "servio_bridge_spool_sync_seconds_sum") or 0) > 0
        bounds = ["0.0005", "0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0"]
        cumulative = [
            sample(text, "servio_bridge_spool_sync_seconds_bucket", le=b) for b in [*bounds, "+Inf"]
        ]
        assert None not in cumulative
        assert cumulative == sorted(cumulative)  # type: ignore[type-var]
        assert cumulative[-1] == count

    async def test_a_slow_disk_shows_in_the_fsync_times(
        self, ops: tuple[Client, Operations], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """fsyncs that take 30 ms land past the 25 ms bound, and the answers waited for them."""
        client, _ = ops
        real = spool_module.os.fdatasync

        def slow(fd: int) -> None:
            real(fd)
            time.sleep(0.03)

        monkeypatch.setattr(spool_module.os, "fdatasync", slow)
        started = time.monotonic()
        assert (await client.post("/webhooks/servio", data=b'{"Add":{"Guests":[1]}}')).status == 200
        assert time.monotonic() - started >= 0.03
        text = await (await client.get("/metrics")).text()
        under = sample(text, "servio_bridge_spool_sync_seconds_bucket", le="0.025")
        total = sample(text, "servio_bridge_spool_sync_seconds_count")
        assert under is not None
        assert total is not None
        assert total - under >= 1

    async def test_sources_past_the_bound_are_other(self, ops: tuple[Client, Operations]) -> None:
        """Label values from the outside are bounded: a flood of sources ends up under "other"."""
        _, operations = ops
        for n in range(250):
            operations.metrics.webhook(200, f"s{n}")
        text = operations.metrics.render().decode()
        assert sample(text, "servio_bridge_webhooks_received_total", status="200", source="other") == 50
        assert sample(text, "servio_bridge_webhooks_received_total", status="200", source="s199") == 1

    async def test_registries_do_not_collide(self) -> None:
        """Two apps in one process keep their own counts."""
        first, second = Metrics(), Metrics()
        first.webhook(200, "a")
        assert (
            sample(
                second.render().decode(), "servio_bridge_webhooks_received_total", status="200", source="a"
            )
            is None
        )


class TestShutdownGate:
    async def test_closed_gate_turns_webhooks_away(self, ops: tuple[Client, Operations]) -> None:
        """After shutdown began: webhooks 503, Retry-After, Connection: close; readyz 503; healthz 200."""
        client, operations = ops
        operations.gate.close()
        response = await client.post("/webhooks/servio", data=b'{"Add":{"Guests":[1]}}')
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert response.headers["Connection"].lower() == "close"
        assert (await response.json())["error"] == "shutting_down"
        assert operations.spool is not None
        assert operations.spool.stats.entries == 0
        assert (await (await client.get("/readyz")).json())["problems"] == ["shutting_down"]
        assert (await client.get("/healthz")).status == 200


class TestRequestLog:
    async def test_one_line_per_webhook_with_its_facts(self, ops: tuple[Client, Operations]) -> None:
        """The request line carries delivery_id, source, status, messages, rejected and duration."""
        client, _ = ops
        stream = io.StringIO()
        configure_logging("json", stream=stream)
        response = await client.post("/webhooks/servio/Jam_4", data=b'{"Add":{"Guests":[1,true]}}')
        answer = await response.json()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        (line,) = [entry for entry in lines if entry["event"] == "request"]
        assert line["delivery_id"] == answer["delivery_id"]
        assert (line["source"], line["status"], line["messages"], line["rejected"]) == ("Jam_4", 200, 1, 1)
        assert line["duration_ms"] >= 0


class TestLargeWebhooks:
    async def test_other_requests_run_between_chunks_of_a_large_webhook(
        self, ops: tuple[Client, Operations], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A 2,500-ID webhook is built and encoded 1,000 messages at a time, and the event loop
        runs other tasks between two chunks; every message still reaches the spool, in order."""
        client, operations = ops
        turns = 0
        running = True

        async def other_task() -> None:
            nonlocal turns
            while running:
                turns += 1
                await asyncio.sleep(0)

        built_at: list[int] = []
        encoded_at: list[int] = []
        build_chunks = app_module.message_chunks
        encode = sink_module.encode_record

        def watched_chunks(*args: Any, **kwargs: Any) -> Iterator[list[Outbound]]:
            for chunk in build_chunks(*args, **kwargs):
                built_at.append(turns)
                yield chunk

        def watched_encode(message: Outbound) -> bytes:
            encoded_at.append(turns)
            return encode(message)

        monkeypatch.setattr(app_module, "message_chunks", watched_chunks)
        monkeypatch.setattr(sink_module, "encode_record", watched_encode)
        other = asyncio.create_task(other_task())
        try:
            ids = list(range(1, 2501))
            response = await client.post("/webhooks/servio/big", data=json.dumps({"Add": {"Guests": ids}}))
        finally:
            running = False
            await other
        assert response.status == 200
        assert len(built_at) == 3
        assert built_at == sorted(set(built_at)), "the loop did not run between two built chunks"
        assert len(set(encoded_at)) == 3, "the loop did not run between two encoded chunks"
        assert operations.spool is not None
        reader = SpoolReader(operations.spool.path)
        try:
            _, stored = reader.read(0, 10_000)
        finally:
            reader.close()
        assert [json.loads(r)[2].rsplit(".", 1)[1] for r in stored] == [str(i) for i in ids]
