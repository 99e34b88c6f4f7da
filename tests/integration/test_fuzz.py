"""Thousands of hostile bodies against the live app and the real RabbitMQ: no 5xx, nothing dropped.

Hypothesis drives a plain HTTP/1.1 keep-alive connection from a worker thread while the app runs
on this test's event loop, so a dropped connection or a 5xx fails the run with the body that did it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.service import build_service, runner_options
from bridge.settings import Settings
from tests.conftest import collect
from tests.integration.conftest import wait_connected

ACTION_KEYS = ["Add", "Update", "Delete", "Update ", " add", "DELETE", "Move", "", "a.b", "x" * 70]
ENTITY_KEYS = ["Clients", "Guests", "Companies", "Rooms", " rooms ", "Beds", "", "a b", "Ünï"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.from_regex(r"[0-9]{1,40}", fullmatch=True)
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
id_like = st.integers(min_value=0, max_value=2**63 + 5) | st.from_regex(r"[0-9]{1,21}", fullmatch=True)
ids = st.none() | st.lists(id_like | scalars, max_size=8) | junk
section = st.none() | st.dictionaries(st.sampled_from(ENTITY_KEYS), ids, max_size=4) | junk
servio_like = st.dictionaries(st.sampled_from(ACTION_KEYS), section, max_size=4)
BATCH = 20


@st.composite
def plausible_but_wrong(draw: st.DrawFn) -> bytes:
    """A Servio-shaped body, sometimes with its bytes cut or poked (stdlib json: big ints, NaN)."""
    raw = json.dumps(draw(servio_like)).encode()
    how = draw(st.sampled_from(["as-is", "as-is", "truncate", "poke", "append"]))
    if how == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "poke" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=3)) + raw[at + 1 :]
    elif how == "append":
        raw += draw(st.binary(min_size=1, max_size=8))
    return raw


raw_bytes = st.binary(max_size=600) | st.builds(lambda b: b"{" + b, st.binary(max_size=200))


@dataclass
class Outcomes:
    """What the fuzzing thread saw: one (status, body sent, answer) per request."""

    seen: list[tuple[int, bytes, dict[str, Any]]] = field(default_factory=list)
    # Local (address, port) of each connection used: id() of a closed socket can be reused.
    sockets: set[tuple[str, int]] = field(default_factory=set)


@pytest.fixture
async def live(exchange_name: str, amqp_channel: AbstractChannel) -> AsyncIterator[TestServer]:
    """The service with its real publisher on a real port; the channel fixture cleans up after."""
    bridge_settings = Settings(exchange=exchange_name, spool_dir=None, declare_queues=False)
    server = TestServer(build_service(bridge_settings), host="127.0.0.1")
    await server.start_server(**runner_options(bridge_settings))
    await wait_connected(server.app)
    yield server
    await server.close()


def fuzz(server: TestServer, strategy: st.SearchStrategy[bytes], bodies: int, out: Outcomes) -> None:
    """Post ``bodies`` bodies drawn from ``strategy`` over one keep-alive connection.

    Drawn in batches: Hypothesis' cost per example, not per body, dominates otherwise.
    """
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)

    @settings(
        max_examples=bodies // BATCH, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(batch=st.lists(strategy, min_size=BATCH, max_size=BATCH))
    def post(batch: list[bytes]) -> None:
        for body in batch:
            conn.request("POST", "/webhooks/servio/fuzz", body=body)
            response = conn.getresponse()
            answer = json.loads(response.read())
            out.sockets.add(conn.sock.getsockname())
            assert response.status < 500, (response.status, answer, body)
            assert response.status in (200, 400, 413), (response.status, answer, body)
            out.seen.append((response.status, body, answer))

    try:
        post()
    finally:
        conn.close()


class TestFuzzedBodies:
    @pytest.mark.timeout(90)
    async def test_no_5xx_no_drops_and_every_refused_body_kept_raw(
        self, live: TestServer, exchange_name: str, amqp_channel: AbstractChannel
    ) -> None:
        """Plausible-but-wrong and raw-byte bodies: never a 5xx, one connection throughout, and
        every 400 body is in <exchange>.invalid byte for byte."""
        invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
        out = Outcomes()
        started = time.monotonic()
        await asyncio.to_thread(fuzz, live, plausible_but_wrong(), 1500, out)
        await asyncio.to_thread(fuzz, live, raw_bytes, 1000, out)
        elapsed = time.monotonic() - started

        statuses = [status for status, _, _ in out.seen]
        assert len(out.seen) >= 2500
        assert len(out.sockets) == 2, "a connection was dropped and reopened"
        refused = {answer["delivery_id"]: body for status, body, answer in out.seen if status == 400}
        expected_letters = len(refused) + sum(a["rejected"] for s, _, a in out.seen if s == 200)
        assert refused, "the strategies produced no invalid body at all"
        letters = await invalid.wait_for(expected_letters, timeout=30)
        raw_letters = {
            m.headers["delivery_id"]: m.body for m in letters if m.content_type == "application/octet-stream"
        }
        assert raw_letters == refused
        async with aiohttp.ClientSession() as session, session.get(live.make_url("/healthz")) as health:
            assert health.status == 200
        print(
            f"fuzz: {len(statuses)} bodies in {elapsed:.1f}s, "
            f"{statuses.count(200)}x200 {statuses.count(400)}x400 {statuses.count(413)}x413, "
            f"{expected_letters} dead letters"
        )
