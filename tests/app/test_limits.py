"""No input can hurt the bridge: body size, nesting depth, ID count, headers, slow bodies, crowding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.core.outbound import RAW
from bridge.errors import Unavailable
from bridge.http.app import build_app
from bridge.http.limits import Admission
from bridge.service import runner_options
from bridge.settings import Settings
from tests.app.recording_sink import RecordingSink

BODY = b'{"Add":{"Clients":[12766],"Companies":null,"Guests":null},"Update":null,"Delete":null}'
ClientFactory = Callable[..., Any]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Start the app, with the server limits ``serve`` uses, on a real port; returns (client, sink)."""
    clients: list[TestClient[Any, Any]] = []

    async def make(sink: RecordingSink | None = None, **overrides: Any) -> tuple[TestClient[Any, Any], Any]:
        sink = sink or RecordingSink()
        settings = Settings(spool_dir=None, **overrides)
        server = TestServer(build_app(settings, sink), host="127.0.0.1")
        # TestServer drops keyword arguments given to its constructor; start_server passes them on.
        await server.start_server(**runner_options(settings))
        client: TestClient[Any, Any] = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client, sink

    yield make
    for client in clients:
        await client.close()


async def raw_request(client: TestClient[Any, Any], data: bytes, *, timeout: float = 5) -> bytes:
    """Send ``data`` on a fresh connection; the status line of the answer (b"" if closed first)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout=timeout)
    finally:
        writer.close()


def ids_body(count: int) -> bytes:
    return orjson.dumps({"Update": {"Guests": list(range(count))}})


class TestBodySize:
    async def test_content_length_over_limit_refused_unread(self, make_client: ClientFactory) -> None:
        """Content-Length over BRIDGE_MAX_BODY gets 413 before a byte of the body is sent."""
        client, sink = await make_client(max_body=1000)
        status = await raw_request(
            client, b"POST /webhooks/servio HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"
        )
        assert status.split()[1] == b"413"
        assert sink.kept == []

    async def test_chunked_body_cut_off_at_limit(self, make_client: ClientFactory) -> None:
        """A chunked body is cut off with 413 once it passes the limit; nothing is kept."""
        client, sink = await make_client(max_body=1000)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" " * 100

        response = await client.post("/webhooks/servio", data=chunks())
        assert response.status == 413
        assert (await response.json())["error"] == "body_too_large"
        assert sink.kept == []

    @pytest.mark.parametrize(("size", "status"), [(1000, 200), (1001, 413)], ids=["at-limit", "one-over"])
    async def test_limit_is_inclusive(self, make_client: ClientFactory, size: int, status: int) -> None:
        """A body of exactly BRIDGE_MAX_BODY bytes is accepted, one more byte is not."""
        client, _ = await make_client(max_body=1000)
        body = BODY + b" " * (size - len(BODY))

        async def chunked() -> AsyncIterator[bytes]:
            yield body

        for data in (body, chunked()):
            assert (await client.post("/webhooks/servio", data=data)).status == status


class TestNesting:
    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"[" * 50_000 + b"]" * 50_000, id="arrays-50000"),
            pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="objects-50000"),
            pytest.param(b'{"Add":{"Guests":[' + b"[" * 300 + b"]" * 300 + b"]}}", id="id-300-deep"),
            pytest.param(b'{"Add":{"Guests":[' + b"{" * 30_000, id="unclosed"),
        ],
    )
    async def test_deep_body_refused_and_kept_raw(self, make_client: ClientFactory, body: bytes) -> None:
        """Deep nesting gets a 4xx, its raw bytes are the dead letter, and the bridge keeps serving."""
        client, sink = await make_client()
        response = await client.post("/webhooks/servio", data=body)
        assert 400 <= response.status < 500
        assert [m.body for m in sink.kept] == [body]
        assert sink.kept[0].content_type == RAW
        assert (await client.post("/webhooks/servio", data=BODY)).status == 200
        assert (await client.get("/healthz")).status == 200


class TestIdCount:
    @pytest.mark.parametrize(("count", "status"), [(50, 200), (51, 413)], ids=["at-limit", "over"])
    async def test_ids_over_max_ids_refused(
        self, make_client: ClientFactory, count: int, status: int
    ) -> None:
        """More IDs than BRIDGE_MAX_IDS in one request gets 413 too_many_ids, the raw body kept."""
        client, sink = await make_client(max_ids=50)
        body = ids_body(count)
        response = await client.post("/webhooks/servio", data=body)
        assert response.status == status
        if status == 413:
            assert (await response.json())["error"] == "too_many_ids"
            assert [m.body for m in sink.kept] == [body]
        else:
            assert len(sink.kept) == count

    async def test_default_takes_a_hundred_thousand(self, make_client: ClientFactory) -> None:
        """The default limit lets 100,000 IDs through in one request."""
        client, _ = await make_client()
        response = await client.post("/webhooks/servio", data=ids_body(100_000))
        assert response.status == 200
        assert (await response.json())["messages"] == 100_000


class TestHeaders:
    @pytest.mark.parametrize(
        "head",
        [
            pytest.param(b"X-Big: " + b"a" * 2000 + b"\r\n", id="long-field"),
            pytest.param(b"".join(b"X-H%d: 1\r\n" % i for i in range(100)), id="many-fields"),
        ],
    )
    async def test_oversized_headers_refused(self, make_client: ClientFactory, head: bytes) -> None:
        """Headers past BRIDGE_MAX_HEADER_SIZE or the field count are refused; serving goes on."""
        client, sink = await make_client(max_header_size=1024)
        status = await raw_request(
            client, b"POST /webhooks/servio HTTP/1.1\r\nHost: x\r\n" + head + b"Content-Length: 2\r\n\r\n{}"
        )
        assert status.split()[1] in (b"400", b"431")
        assert sink.kept == []
        assert (await client.post("/webhooks/servio", data=BODY)).status == 200


class TestSlowClients:
    async def test_slow_body_gets_408(self, make_client: ClientFactory) -> None:
        """A body that does not arrive within BRIDGE_READ_TIMEOUT is abandoned with 408, nothing kept."""
        client, sink = await make_client(read_timeout=0.5)
        started = time.monotonic()
        status = await raw_request(
            client, b"POST /webhooks/servio HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", timeout=5
        )
        assert status.split()[1] == b"408"
        assert time.monotonic() - started < 2
        assert sink.kept == []

    async def test_trickled_headers_cut_off(self, make_client: ClientFactory) -> None:
        """A client that never finishes its headers is disconnected after BRIDGE_READ_TIMEOUT."""
        client, _ = await make_client(read_timeout=0.5)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        started = time.monotonic()
        writer.write(b"POST /webhooks/servio HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(40):
            writer.write(b"X-a: b\r\n")
            await asyncio.sleep(0.1)
            try:
                closed = await asyncio.wait_for(reader.read(1), timeout=0.01) == b""
            except ConnectionError:
                closed = True
            except TimeoutError:
                continue
            if closed:
                break
        writer.close()
        assert closed
        assert time.monotonic() - started < 3


class TestConcurrencyCap:
    async def test_over_the_cap_gets_503_with_retry_after(self, make_client: ClientFactory) -> None:
        """Past BRIDGE_MAX_CONCURRENT webhooks in progress, the next one is refused 503 + Retry-After."""
        sink = RecordingSink(hold=True)
        client, _ = await make_client(sink, max_concurrent=2)
        held = [asyncio.create_task(client.post("/webhooks/servio", data=BODY)) for _ in range(2)]
        await asyncio.sleep(0.2)
        refused = await client.post("/webhooks/servio", data=BODY)
        assert refused.status == 503
        assert refused.headers["Retry-After"].isdigit()
        assert (await refused.json())["error"] == "busy"
        sink.release.set()
        assert [(await t).status for t in held] == [200, 200]
        assert (await client.post("/webhooks/servio", data=BODY)).status == 200

    async def test_large_bodies_in_progress_are_bounded_in_bytes(self, make_client: ClientFactory) -> None:
        """Large bodies in progress add up to at most BRIDGE_MAX_BODY bytes (their messages are
        what fills memory): with one of exactly that size in progress, a second large body waits,
        then is refused 503, while small ones are still let in at once."""
        max_body = 200_000
        sink = RecordingSink(hold=True)
        client, _ = await make_client(sink, max_body=max_body, max_concurrent=64)
        large = ids_body(20_000)
        large = large[:-1] + b" " * (max_body - len(large)) + b"}"
        assert len(large) == max_body
        held = asyncio.create_task(client.post("/webhooks/servio", data=large))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(client.post("/webhooks/servio", data=large))
        await asyncio.sleep(0.1)
        small = [asyncio.create_task(client.post("/webhooks/servio", data=BODY)) for _ in range(5)]
        refused = await waiting
        assert refused.status == 503
        assert (await refused.json())["error"] == "busy"
        await asyncio.sleep(1.2)  # past the admission's wait: one still waiting would have a 503
        assert not any(task.done() for task in small)  # admitted: only the sink holds them
        sink.release.set()
        assert [(await task).status for task in (held, *small)] == [200] * 6
        assert (await client.post("/webhooks/servio", data=large)).status == 200


class TestAdmission:
    async def test_turns_given_back_whatever_the_timing(self) -> None:
        """Hundreds of turns of mixed sizes, some waiting past the limit, some cancelled: every
        one is either taken and given back or refused as busy, and the admission ends empty."""
        admission = Admission(4, budget=100, wait=0.02)
        outcomes: list[str] = []

        async def one(n: int) -> None:
            try:
                async with admission.admit(90 if n % 3 == 0 else 5):
                    await asyncio.sleep(0.001 * (n % 7))
                outcomes.append("done")
            except Unavailable:
                outcomes.append("busy")

        tasks = [asyncio.create_task(one(n)) for n in range(300)]
        await asyncio.sleep(0.01)
        for task in tasks[::11]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert outcomes.count("done") > 0
        assert (admission._taken, admission._bytes, len(admission._queue)) == (0, 0, 0)
