"""``servio-bridge spool quarantine list|redrive``: the real command against a spool a bridge holds
open, and the shared RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aio_pika.abc import AbstractChannel

from bridge.core.message import build_event
from bridge.core.outbound import Webhook
from bridge.core.payload import Event
from bridge.core.record import encode_record
from bridge.spool.reader import SpoolReader
from bridge.spool.store import Spool
from tests.conftest import bind_all

pytestmark = pytest.mark.slow


def event_record(exchange: str, guest: int) -> bytes:
    delivery = Webhook("d-quarantine", "Jam_1", datetime(2026, 11, 28, 10, 0, tzinfo=UTC))
    event = Event("update", "guests", guest)
    return encode_record(build_event(event, delivery, exchange=exchange, template="servio.{entity}.{action}"))


async def quarantine(spool: Spool, records: list[bytes], reason: str) -> list[int]:
    """Append ``records`` and move them all to the quarantine, as the drain would."""
    await spool.append(records)
    reader = SpoolReader(spool.path)
    try:
        span, rows = reader.read(0, 100)
    finally:
        reader.close()
    await spool.remove_span(span, quarantined=[(seq, reason) for seq, _ in rows])
    return [seq for seq, _ in rows]


async def command(spool: Spool, exchange: str, *args: str) -> tuple[int, list[dict[str, object]], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_SPOOL_DIR=str(spool.directory), BRIDGE_EXCHANGE=exchange, BRIDGE_DECLARE_QUEUES="false")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge", "spool", "quarantine", *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    rows = [json.loads(line) for line in result.stdout.decode().splitlines() if line.startswith("{")]
    return result.returncode, rows, result.stdout.decode() + result.stderr.decode()


@pytest.fixture
async def held_spool(tmp_path: Path) -> Spool:
    """A spool held open as a serving bridge holds it (flock, writer, checkpointer)."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    spool.open()
    yield spool
    spool.close()


class TestQuarantineCommand:
    async def test_list_shows_each_entry_while_the_bridge_holds_the_spool(
        self, held_spool: Spool, exchange_name: str
    ) -> None:
        """seq, when, reason, routing key and message_id; an undecodable record is listed too."""
        seqs = await quarantine(
            held_spool, [event_record(exchange_name, 7), b"not a record"], "broker_refused"
        )
        code, rows, output = await command(held_spool, exchange_name, "list", "--json")
        assert code == 0, output
        assert [row["seq"] for row in rows] == seqs
        assert rows[0]["reason"] == "broker_refused"
        assert rows[0]["routing_key"] == "servio.guests.update"
        assert isinstance(rows[0]["message_id"], str)
        assert rows[1]["routing_key"] is None
        assert datetime.fromisoformat(str(rows[0]["quarantined"])).year >= 2026
        code, _, output = await command(held_spool, exchange_name, "list")
        assert code == 0
        assert "reason=broker_refused" in output

    async def test_redrive_publishes_with_confirms_and_removes_only_what_was_confirmed(
        self, held_spool: Spool, exchange_name: str, amqp_channel: AbstractChannel
    ) -> None:
        """Beside a bridge that keeps appending: the good entry is published and removed, the one
        that cannot be published stays (exit 1), and the bridge's own writes go on."""
        everything = await bind_all(amqp_channel, exchange_name)
        await quarantine(held_spool, [event_record(exchange_name, 41), b"not a record"], "broker_refused")
        stop = asyncio.Event()

        async def keep_appending() -> int:
            n = 0
            while not stop.is_set():
                await held_spool.append([b"live-%d" % n])
                n += 1
                await asyncio.sleep(0.005)
            return n

        appending = asyncio.create_task(keep_appending())
        try:
            code, rows, output = await command(held_spool, exchange_name, "redrive", "--json")
        finally:
            stop.set()
            appended = await appending
        assert code == 1, output
        assert rows[0] == {"examined": 2, "published": 1, "left": 1}
        (message,) = await everything.wait_for(1)
        assert orjson.loads(message.body)["id"] == 41
        assert held_spool.stats.quarantined == 1
        assert held_spool.writable
        assert held_spool.stats.entries == appended
        _, listed, _ = await command(held_spool, exchange_name, "list", "--json")
        assert [row["routing_key"] for row in listed] == [None]

    async def test_redrive_on_a_stopped_spool(self, tmp_path: Path, exchange_name: str) -> None:
        """No bridge running: the command opens the file itself; nothing quarantined is exit 0."""
        spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
        spool.open()
        spool.close()
        code, rows, output = await command(spool, exchange_name, "redrive", "--json")
        assert code == 0, output
        assert rows == [{"examined": 0, "published": 0, "left": 0}]
