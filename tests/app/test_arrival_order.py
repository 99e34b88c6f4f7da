"""Order by arrival: ``received_at`` is when the body was complete, and spool order follows it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.core.record import decode_record
from bridge.errors import SpoolError
from bridge.http.app import build_app
from bridge.settings import Settings
from bridge.sink import SpoolSink
from bridge.spool.reader import SpoolReader
from bridge.spool.schema import FILE_NAME
from bridge.spool.store import Spool

Client = TestClient[Any, Any]


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = Spool(tmp_path / "spool", max_bytes=1 << 30)
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
async def client(spool: Spool) -> AsyncIterator[Client]:
    def fatal(exc: SpoolError) -> None:
        raise AssertionError(f"spool failed: {exc}")

    app = build_app(Settings(exchange="servio", spool_dir=None), SpoolSink(spool, on_fatal=fatal))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def spooled(tmp_path: Path) -> list[tuple[str, str]]:
    """(received_at, delivery_id) of every spooled event, in spool order, one per request."""
    _, rows = SpoolReader(tmp_path / "spool" / FILE_NAME).read(0, 1_000_000)
    seen: dict[str, str] = {}
    for _, record in rows:
        body = orjson.loads(decode_record(record).body)
        seen.setdefault(body["delivery_id"], body["received_at"])
    return [(received, delivery) for delivery, received in seen.items()]


async def send_headers(client: Client, body_length: int) -> asyncio.StreamWriter:
    """Open a connection and send a webhook's headers and nothing of its body yet."""
    _, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST /webhooks/servio/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {body_length}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    return writer


class TestArrivalOrder:
    async def test_slow_body_is_stamped_and_spooled_when_complete(
        self, client: Client, tmp_path: Path
    ) -> None:
        """A request whose body arrives slowly, started first, comes after a fast one sent meanwhile:
        both by received_at and in the spool."""
        slow = b'{"Add":{"Guests":[1]}}'
        writer = await send_headers(client, len(slow))
        writer.write(slow[:5])
        await writer.drain()
        await asyncio.sleep(0.2)
        fast = await client.post("/webhooks/servio/fast", data=b'{"Add":{"Guests":[2]}}')
        assert fast.status == 200
        await asyncio.sleep(0.05)
        reader_task = asyncio.ensure_future(writer.drain())
        writer.write(slow[5:])
        await reader_task
        await asyncio.sleep(0.5)
        writer.close()
        order = spooled(tmp_path)
        assert len(order) == 2
        assert order == sorted(order), "spool order is not received_at order"
        assert order[0][1] == (await fast.json())["delivery_id"]

    async def test_a_large_body_complete_first_is_spooled_first(self, client: Client, tmp_path: Path) -> None:
        """A large webhook complete first and a small one right after: spool order is received_at order,
        though the large one takes longer to build."""
        large = orjson.dumps({"Add": {"Guests": list(range(1, 5001))}})
        for _ in range(3):
            answers = await asyncio.gather(
                client.post("/webhooks/servio/large", data=large),
                *(client.post("/webhooks/servio/small", data=b'{"Add":{"Guests":[9]}}') for _ in range(4)),
            )
            assert [a.status for a in answers] == [200] * 5
        order = spooled(tmp_path)
        assert len(order) == 15
        assert order == sorted(order), "spool order is not received_at order"
