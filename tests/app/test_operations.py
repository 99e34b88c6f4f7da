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

from bridge import sink as sink_module
from bridge.core.outbound import Outbound
from bridge.http import app as app_module
from bridge.http.app import build_app
from bridge.http.ops import LoopMonitor, Runtime, install_operations
from bridge.logs import configure_logging
from bridge.metrics import MAX_FAILURE_CLASSES, Metrics
from bridge.settings import Settings
from bridge.sink import DirectSink, SpoolSink
from bridge.spool import store as spool_module
from bridge.spool.reader import SpoolReader
from bridge.spool.store import Spool
from tests.fakes import FakePublisher
from tests.prom import sample

Client = TestClient[Any, Any]


class FakeBroker(FakePublisher):
    """The fake publisher, plus the connection.blocked state /readyz reads."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = False
        self.healthy = True

    def reconnect(self) -> None:
        self.fail_with = None


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def stall_after() -> float:
    return 60.0


@pytest.fixture
def monitor() -> LoopMonitor:
    return LoopMonitor()


@pytest.fixture
def spool_max_bytes() -> int:
    return 1 << 20


@pytest.fixture
async def ops(
    broker: FakeBroker, tmp_path: Path, stall_after: float, monitor: LoopMonitor, spool_max_bytes: int
) -> AsyncIterator[tuple[Client, Runtime]]:
    spool = Spool(tmp_path / "spool", max_bytes=spool_max_bytes)
    spool.open()
    app = build_app(Settings(spool_dir=tmp_path / "spool"), SpoolSink(spool, on_fatal=lambda _e: None))
    runtime = Runtime(
        broker, spool, Metrics(), stall_after=stall_after, monitor=monitor, spool_max_bytes=spool_max_bytes
    )
    install_operations(app, runtime)
    async with TestClient(TestServer(app)) as client:
        yield client, runtime
    spool.close()


@pytest.fixture
async def spoolless(broker: FakeBroker) -> AsyncIterator[Client]:
    """The app without a spool: every webhook waits for the broker."""
    app = build_app(Settings(spool_dir=None), DirectSink(broker, timeout=1.0))
    install_operations(app, Runtime(broker, None, Metrics()))
    async with TestClient(TestServer(app)) as client:
        yield client


WEBHOOK = b'{"Add":{"Guests":[1]}}'


class TestReadiness:
    async def test_ready_when_connected_and_spool_writable(self, ops: tuple[Client, Runtime]) -> None:
        """/readyz 200 and /healthz 200 with the broker connected and the spool open."""
        client, _ = ops
        response = await client.get("/readyz")
        assert response.status == 200
        body = await response.json()
        assert (body["status"], body["problems"], body["blocking"]) == ("ready", [], [])
        assert (await client.get("/healthz")).status == 200

    async def test_broker_down_with_a_spool_is_reported_not_refused(
        self, ops: tuple[Client, Runtime], broker: FakeBroker
    ) -> None:
        """With a healthy spool a broker outage is in the body, not a 503: webhooks are still kept."""
        client, operations = ops
        broker.break_down()
        response = await client.get("/readyz")
        assert response.status == 200
        assert "Retry-After" not in response.headers
        body = await response.json()
        assert (body["status"], body["problems"], body["blocking"]) == (
            "degraded",
            ["broker_disconnected"],
            [],
        )
        assert body["broker"] == {"connected": False, "blocked": False}
        assert (await client.get("/healthz")).status == 200
        posted = await client.post("/webhooks/servio/h1", data=b'{"Add":{"Guests":[1,2]}}')
        assert posted.status == 200
        assert operations.spool is not None
        assert operations.spool.stats.entries == 2
        text = await (await client.get("/metrics")).text()
        assert sample(text, "servio_bridge_ready") == 1

    async def test_blocked_broker_is_named(self, ops: tuple[Client, Runtime], broker: FakeBroker) -> None:
        """A connection blocked by a RabbitMQ alarm is named in /readyz; with a spool it stays 200."""
        client, _ = ops
        broker.blocked = True
        response = await client.get("/readyz")
        assert response.status == 200
        body = await response.json()
        assert (body["problems"], body["blocking"]) == (["broker_blocked"], [])
        assert body["broker"] == {"connected": True, "blocked": True}

    async def test_without_a_spool_a_broker_outage_refuses(
        self, spoolless: Client, broker: FakeBroker
    ) -> None:
        """Without a spool nothing can be kept while the broker is away: 503, Retry-After, blocking."""
        assert (await spoolless.get("/readyz")).status == 200
        broker.break_down()
        response = await spoolless.get("/readyz")
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        body = await response.json()
        assert (body["status"], body["problems"], body["blocking"]) == (
            "not_ready",
            ["broker_disconnected"],
            ["broker_disconnected"],
        )
        broker.reconnect()
        broker.blocked = True
        assert (await (await spoolless.get("/readyz")).json())["blocking"] == ["broker_blocked"]

    @pytest.mark.parametrize("spool_max_bytes", [4096])
    async def test_full_spool_refuses(self, ops: tuple[Client, Runtime]) -> None:
        """A spool at its bound is spool_full and blocking: 503 until it has room again."""
        client, _ = ops
        for n in range(100):
            posted = await client.post("/webhooks/servio", data=b'{"Add":{"Guests":[%d]}}' % n)
            if posted.status == 503:
                break
        else:
            raise AssertionError("the spool never filled")
        response = await client.get("/readyz")
        assert response.status == 503
        body = await response.json()
        assert (body["problems"], body["blocking"]) == (["spool_full"], ["spool_full"])

    async def test_a_full_disk_is_spool_full(
        self, ops: tuple[Client, Runtime], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A spool whose disk is full is spool_full and blocking, whatever its byte count."""
        client, _ = ops
        monkeypatch.setattr(Spool, "disk_full", property(lambda _self: True), raising=False)
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["blocking"] == ["spool_full"]

    async def test_closed_spool_is_not_writable(self, ops: tuple[Client, Runtime]) -> None:
        """A spool that cannot be written is spool_not_writable and blocking."""
        client, operations = ops
        assert operations.spool is not None
        operations.spool.close()
        body = await (await client.get("/readyz")).json()
        assert body["blocking"] == ["spool_not_writable"]
        operations.spool.open()


class TestStall:
    @pytest.mark.parametrize("stall_after", [0.3])
    async def test_waiting_entry_with_the_broker_connected_is_a_stall(
        self, ops: tuple[Client, Runtime]
    ) -> None:
        """The oldest entry waits past BRIDGE_STALL_AFTER with the broker up and no confirm:
        drain_stalled, in the body and the metrics, not blocking; a confirm clears it."""
        client, operations = ops
        assert (await client.post("/webhooks/servio", data=WEBHOOK)).status == 200
        assert (await (await client.get("/readyz")).json())["problems"] == []
        await asyncio.sleep(0.4)
        response = await client.get("/readyz")
        assert response.status == 200
        body = await response.json()
        assert (body["status"], body["problems"], body["blocking"]) == ("degraded", ["drain_stalled"], [])
        text = await (await client.get("/metrics")).text()
        assert sample(text, "servio_bridge_drain_stalled") == 1
        assert sample(text, "servio_bridge_ready") == 1
        before = time.time()
        operations.metrics.confirmed_batch([["published", "servio.guests.add", "", "", 1]], [0.01])
        assert (await (await client.get("/readyz")).json())["problems"] == []
        text = await (await client.get("/metrics")).text()
        assert sample(text, "servio_bridge_drain_stalled") == 0
        assert (sample(text, "servio_bridge_last_confirm_timestamp_seconds") or 0) >= before

    @pytest.mark.parametrize("stall_after", [0.3])
    async def test_an_idle_bridge_is_not_stalled_by_its_next_webhook(
        self, ops: tuple[Client, Runtime]
    ) -> None:
        """The last confirm long ago is no stall: a new entry gets its own BRIDGE_STALL_AFTER."""
        client, operations = ops
        operations.metrics.confirmed_batch([["published", "servio.guests.add", "", "", 1]], [0.01])
        await asyncio.sleep(0.5)  # idle longer than stall_after
        assert (await client.post("/webhooks/servio", data=WEBHOOK)).status == 200
        assert (await (await client.get("/readyz")).json())["problems"] == []

    @pytest.mark.parametrize("stall_after", [0.3])
    async def test_a_broker_back_from_an_outage_gets_its_own_time(
        self, ops: tuple[Client, Runtime], broker: FakeBroker
    ) -> None:
        """Entries kept through an outage are no stall the moment the broker is back; only later."""
        client, _ = ops
        broker.break_down()
        assert (await client.post("/webhooks/servio", data=WEBHOOK)).status == 200
        await asyncio.sleep(0.4)
        assert (await (await client.get("/readyz")).json())["problems"] == ["broker_disconnected"]
        broker.reconnect()
        assert (await (await client.get("/readyz")).json())["problems"] == []
        await asyncio.sleep(0.4)
        assert (await (await client.get("/readyz")).json())["problems"] == ["drain_stalled"]

    async def test_no_confirm_yet_means_no_timestamp(self, ops: tuple[Client, Runtime]) -> None:
        """Before any confirm the last-confirm gauge is 0; a batch that confirmed nothing moves nothing."""
        client, operations = ops
        operations.metrics.confirmed_batch([], [])
        text = await (await client.get("/metrics")).text()
        assert sample(text, "servio_bridge_last_confirm_timestamp_seconds") == 0


class TestLiveness:
    async def test_a_failing_publisher_is_a_503(
        self, ops: tuple[Client, Runtime], broker: FakeBroker
    ) -> None:
        """A publisher that can no longer be run (``healthy`` False) turns /healthz 503 with the reason."""
        client, _ = ops
        assert (await client.get("/healthz")).status == 200
        broker.healthy = False
        response = await client.get("/healthz")
        assert response.status == 503
        assert (await response.json())["problems"] == ["publisher_failing"]

    @pytest.mark.parametrize("monitor", [LoopMonitor(interval=0.05, threshold=0.2, window=1.0)])
    async def test_a_blocked_event_loop_is_a_503_for_a_while(self, ops: tuple[Client, Runtime]) -> None:
        """An event loop held for longer than the threshold shows in /healthz and the lag gauge,
        and clears once the window has passed."""
        client, _ = ops
        await asyncio.sleep(0.1)
        assert (await client.get("/healthz")).status == 200
        time.sleep(0.4)  # noqa: ASYNC251 - the point: the event loop is blocked, nothing else runs
        await asyncio.sleep(0.15)
        response = await client.get("/healthz")
        assert response.status == 503
        assert (await response.json())["problems"] == ["event_loop_blocked"]
        text = await (await client.get("/metrics")).text()
        assert (sample(text, "servio_bridge_event_loop_lag_seconds") or 0) >= 0.3
        await asyncio.sleep(1.2)
        assert (await client.get("/healthz")).status == 200


class TestMetrics:
    async def test_names_and_webhook_counts(self, ops: tuple[Client, Runtime], broker: FakeBroker) -> None:
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
        assert sample(text, "servio_bridge_ready") == 1  # a blocked broker with a spool refuses nothing
        route = "/webhooks/servio/{source}"
        assert sample(text, "servio_bridge_request_duration_seconds_count", route=route) == 4

    async def test_each_spool_fsync_is_timed(self, ops: tuple[Client, Runtime]) -> None:
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
        self, ops: tuple[Client, Runtime], monkeypatch: pytest.MonkeyPatch
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

    async def test_sources_past_the_bound_are_other(self, ops: tuple[Client, Runtime]) -> None:
        """Label values from the outside are bounded: a flood of sources ends up under "other"."""
        _, operations = ops
        for n in range(250):
            operations.metrics.webhook(200, f"s{n}")
        text = operations.metrics.render().decode()
        assert sample(text, "servio_bridge_webhooks_received_total", status="200", source="other") == 50
        assert sample(text, "servio_bridge_webhooks_received_total", status="200", source="s199") == 1

    async def test_retries_by_class_with_a_bounded_label_set(self) -> None:
        """Each retry counts under its failure class; past the bound new classes are "other"."""
        metrics = Metrics()
        metrics.retried("connection")
        metrics.retried("connection")
        metrics.retried()
        for n in range(40):
            metrics.retried(f"class_{n}")
        text = metrics.render().decode()
        assert sample(text, "servio_bridge_publish_retries_total", **{"class": "connection"}) == 2
        classes = {
            line.split('class="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith("servio_bridge_publish_retries_total{")
        }
        assert len(classes) <= MAX_FAILURE_CLASSES + 1
        assert sample(text, "servio_bridge_publish_retries_total", **{"class": "other"}) is not None

    async def test_refusals_by_reason(self) -> None:
        """Messages the broker refused for good are counted by reason, with their count."""
        metrics = Metrics()
        metrics.refused("frame_too_large", 3)
        metrics.refused("frame_too_large", 1)
        metrics.refused("precondition_failed", 2)
        text = metrics.render().decode()
        assert sample(text, "servio_bridge_messages_refused_total", reason="frame_too_large") == 4
        assert sample(text, "servio_bridge_messages_refused_total", reason="precondition_failed") == 2

    async def test_retry_and_refusal_series_exist_before_the_first_event(self) -> None:
        """Every failure class and refusal reason the publisher knows has its series at 0 from the
        start, so an alert on their rate sees data, not an absent series."""
        text = Metrics().render().decode()
        for failure_class in ("closed", "returned", "nacked", "timeout", "unavailable"):
            assert sample(text, "servio_bridge_publish_retries_total", **{"class": failure_class}) == 0
        for reason in ("closed", "returned", "nacked", "too_large", "invalid_field"):
            assert sample(text, "servio_bridge_messages_refused_total", reason=reason) == 0

    async def test_quarantined_entries_are_a_gauge(self, ops: tuple[Client, Runtime]) -> None:
        """The spool's quarantine count is exported (0 while there is none)."""
        client, _ = ops
        text = await (await client.get("/metrics")).text()
        assert sample(text, "servio_bridge_spool_quarantined") == 0

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
    async def test_closed_gate_turns_webhooks_away(self, ops: tuple[Client, Runtime]) -> None:
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
        ready = await client.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["blocking"] == ["shutting_down"]
        assert (await client.get("/healthz")).status == 200


class TestRequestLog:
    async def test_one_line_per_webhook_with_its_facts(self, ops: tuple[Client, Runtime]) -> None:
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
        self, ops: tuple[Client, Runtime], monkeypatch: pytest.MonkeyPatch
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
        assert [json.loads(r)[2].rsplit(".", 1)[1] for _, r in stored] == [str(i) for i in ids]
