"""The core pipeline against the real RabbitMQ: webhook in, one confirmed message per event out."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aio_pika.abc import AbstractChannel

from bench.proxy import free_port
from tests.conftest import bind_all, collect
from tests.integration.conftest import BridgeFactory
from tests.seed import EXPECTED, seed_payloads


class TestSeedPayloads:
    async def test_every_seed_payload_as_printed(
        self, bridge: BridgeFactory, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Complete seed bodies give exactly the expected keys and IDs; cut-short ones: 400, dead letter."""
        everything = await bind_all(amqp_channel, exchange_name)
        async with bridge() as client:
            invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
            expected_messages: list[tuple[str, int, str, str]] = []
            expected_invalid: list[tuple[bytes, str]] = []
            for seed, expected in zip(seed_payloads(), EXPECTED, strict=True):
                response = await client.post(f"/webhooks/servio/{seed.source}", data=seed.body)
                answer = await response.json()
                if expected is None:
                    assert response.status == 400, seed
                    assert answer["error"] == "not_json"
                    expected_invalid.append((seed.body, answer["delivery_id"]))
                    continue
                assert response.status == 200, (seed, answer)
                assert answer["messages"] == len(expected)
                assert answer["rejected"] == 0
                for key, id_ in expected:
                    expected_messages.append((key, id_, seed.source, answer["delivery_id"]))
            messages = await everything.wait_for(len(expected_messages))
            dead = await invalid.wait_for(len(expected_invalid))
        got = []
        for message in await everything.settle(0.3):
            body = orjson.loads(message.body)
            assert message.routing_key == f"servio.{body['entity']}.{body['action']}"
            got.append((message.routing_key, body["id"], body["source"], body["delivery_id"]))
        assert got == expected_messages
        assert len(messages) == len(expected_messages)
        assert [(m.body, m.headers["delivery_id"]) for m in dead] == expected_invalid
        assert all(m.headers["reason"] == "not_json" for m in dead)
        assert {m.headers["source"] for m in dead} == {"Jam_1", "Jam_2"}


class TestMessages:
    async def test_properties_of_every_message(
        self, bridge: BridgeFactory, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Persistent, JSON, app_id, timestamp and a per-(delivery, entity, action, ID) message_id."""
        everything = await bind_all(amqp_channel, exchange_name)
        body = {
            "Add": {"Guests": [1, "2"]},
            "Update": {"Guests": [1], "Rooms": [7]},
            "Delete": {"Guests": [1]},
        }
        async with bridge() as client:
            before = int(time.time())
            response = await client.post("/webhooks/servio/Jam_8", data=json.dumps(body))
            answer = await response.json()
            assert response.status == 200
            messages = await everything.wait_for(5)
        assert answer["messages"] == 5
        ids = set()
        for message in messages:
            assert message.delivery_mode == 2
            assert message.content_type == "application/json"
            assert message.app_id == "servio-bridge"
            assert message.timestamp is not None
            assert before - 1 <= int(message.timestamp.timestamp()) <= int(time.time()) + 1
            decoded = orjson.loads(message.body)
            assert set(decoded) == {"entity", "action", "id", "source", "delivery_id", "received_at"}
            assert decoded["delivery_id"] == answer["delivery_id"]
            assert decoded["received_at"].endswith("+00:00")
            assert message.message_id is not None
            assert answer["delivery_id"] in message.message_id
            ids.add(message.message_id)
        assert len(ids) == 5
        keys = [(m.routing_key, orjson.loads(m.body)["id"]) for m in messages]
        assert keys == [
            ("servio.guests.add", 1),
            ("servio.guests.add", 2),
            ("servio.guests.update", 1),
            ("servio.rooms.update", 7),
            ("servio.guests.delete", 1),
        ]

    async def test_unbound_key_ends_in_unrouted(
        self, bridge: BridgeFactory, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A message no queue is bound for is kept in <exchange>.unrouted, not dropped."""
        async with bridge() as client:
            response = await client.post("/webhooks/servio/x", data=b'{"Merge":{"Guests":[5]}}')
            assert response.status == 200
            unrouted = await collect(amqp_channel, f"{exchange_name}.unrouted")
            (message,) = await unrouted.wait_for(1)
        assert message.routing_key == "servio.guests.merge"
        assert orjson.loads(message.body)["id"] == 5

    async def test_rejected_parts_become_dead_letters(
        self, bridge: BridgeFactory, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Valid parts are published; the malformed ones land together in one dead letter in
        <exchange>.invalid, each with its path and reason."""
        everything = await bind_all(amqp_channel, exchange_name)
        body = b'{"Add":{"Guests":[1, true, -3, "x"],"Rooms":5},"Update":[1]}'
        async with bridge() as client:
            invalid = await collect(amqp_channel, f"{exchange_name}.invalid")
            response = await client.post("/webhooks/servio/Jam_3", data=body)
            answer = await response.json()
            assert response.status == 200
            assert (answer["messages"], answer["rejected"]) == (1, 5)
            (letter,) = await invalid.wait_for(1)
            published = await everything.settle(0.3)
            assert len(await invalid.settle(0.3)) == 1
        assert [orjson.loads(m.body)["id"] for m in published] == [1]
        assert letter.headers["reason"] == "rejected_parts"
        assert letter.headers["delivery_id"] == answer["delivery_id"]
        assert letter.headers["source"] == "Jam_3"
        assert letter.delivery_mode == 2
        parts = orjson.loads(letter.body)["parts"]
        assert sorted((json.dumps(p["path"]), p["reason"], json.dumps(p["value"])) for p in parts) == sorted(
            [
                ('["Add", "Guests", 1]', "bad_id", "true"),
                ('["Add", "Guests", 2]', "bad_id", "-3"),
                ('["Add", "Guests", 3]', "bad_id", '"x"'),
                ('["Add", "Rooms"]', "ids_not_list", "5"),
                ('["Update"]', "section_not_object", "[1]"),
            ]
        )

    async def test_ten_thousand_ids_in_list_order(
        self, bridge: BridgeFactory, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """A 10,000-ID body gives 10,000 confirmed messages, in list order, within a few seconds."""
        everything = await bind_all(amqp_channel, exchange_name)
        ids = list(range(500_000, 510_000))
        async with bridge(publish_timeout=30.0) as client:
            started = time.monotonic()
            response = await client.post("/webhooks/servio", data=orjson.dumps({"Delete": {"Guests": ids}}))
            answered = time.monotonic() - started
            assert response.status == 200
            assert (await response.json())["messages"] == 10_000
            messages = await everything.wait_for(10_000, timeout=30)
        assert answered < 15, f"answered after {answered:.1f}s"
        assert [orjson.loads(m.body)["id"] for m in messages] == ids


@pytest.fixture
async def silent_broker() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never says a word of AMQP."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


class TestBrokerDown:
    async def test_refused_connection_answers_503(self, bridge: BridgeFactory) -> None:
        """With no spool and a broker that refuses connections: 503 with Retry-After, never 200."""
        url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        async with bridge(amqp_urls=(url,), publish_timeout=1.0, connected=False) as client:
            for _ in range(3):
                started = time.monotonic()
                response = await client.post("/webhooks/servio", data=b'{"Add":{"Guests":[1]}}')
                assert response.status == 503
                assert int(response.headers["Retry-After"]) > 0
                assert (await response.json())["error"] == "broker_unavailable"
                assert time.monotonic() - started < 5

    async def test_silent_broker_answers_503(self, bridge: BridgeFactory, silent_broker: int) -> None:
        """A broker that accepts TCP and never answers is too slow: 503 within the publish timeout."""
        url = f"amqp://guest:guest@127.0.0.1:{silent_broker}/"
        async with bridge(amqp_urls=(url,), publish_timeout=1.0, connected=False) as client:
            started = time.monotonic()
            response = await client.post("/webhooks/servio", data=b'{"Add":{"Guests":[1]}}')
            assert response.status == 503
            assert "Retry-After" in response.headers
            assert time.monotonic() - started < 5

    async def test_bad_body_with_broker_down_is_not_answered_400(self, bridge: BridgeFactory) -> None:
        """A body that cannot be kept as a dead letter is answered 503, so nothing is silently lost."""
        url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        async with bridge(amqp_urls=(url,), publish_timeout=0.5, connected=False) as client:
            response = await client.post("/webhooks/servio", data=b"{not json")
            assert response.status == 503


def test_free_port_refuses() -> None:
    """The helper's port really refuses connections (else the 503 tests would prove nothing)."""
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", free_port()), 1):
        pass
