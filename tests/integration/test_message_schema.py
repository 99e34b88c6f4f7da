"""Every message the real bridge publishes validates against docs/asyncapi.yaml: bodies against
the JSON schemas, AMQP properties and dead-letter headers against what the document says."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp.test_utils import TestClient, TestServer

from bridge.service import build_service
from bridge.settings import Settings
from tests.conftest import AMQP_URL, SEED, bind_all, collect
from tests.integration.conftest import wait_connected
from tests.message_documents import errors, message_for_address

SEED_LINE = re.compile(r"\b(Jam_\d+):\s*(\{.*)$")
# Bodies beyond the seed, so that every kind of message the bridge publishes is produced.
CRAFTED = [
    ("Jam_9", b'{"Add":{"Bookings":[5]},"Update":null,"Delete":null}'),  # an entity Servio adds later
    ("Jam_9", b'{"Delete":{"Guests":[1, -2, "x"]},"Update":{"Rooms":"160"}}'),  # rejected parts
    # a repeated key, a number past 64 bits, a long value and a long key: every bounded form of a part
    (
        "Jam_9",
        b'{"Add":{"Guests":[1],"Guests":[2, 18446744073709551616, "'
        + b"v" * 400
        + b'"]},"'
        + b"k" * 300
        + b'":{"Guests":[3]}}',
    ),
    ("Jam_9", b"not json at all"),  # a body refused whole
    ("Jam_9", b"[1, 2]"),  # JSON, but not an object
]


def seed_payloads() -> list[tuple[str, bytes]]:
    """The complete JSON bodies of the Servio seed page, with the source label each came under."""
    found = []
    for line in SEED.read_text().splitlines():
        match = SEED_LINE.search(line)
        if match is None:
            continue
        try:
            json.loads(match.group(2))
        except json.JSONDecodeError:
            continue  # the page cut one example short; it is not a complete payload
        found.append((match.group(1), match.group(2).encode()))
    return found


def properties_of(message: AbstractIncomingMessage) -> dict[str, Any]:
    return {
        "content_type": message.content_type,
        "app_id": message.app_id,
        "delivery_mode": int(message.delivery_mode) if message.delivery_mode is not None else None,
        "message_id": message.message_id,
        "timestamp": int(message.timestamp.timestamp()) if message.timestamp is not None else None,
    }


def event_message_name(routing_key: str) -> str:
    try:
        return message_for_address(routing_key)
    except KeyError:
        return "otherEvent"


@pytest.fixture
async def client(exchange_name: str, amqp_channel: AbstractChannel) -> AsyncIterator[TestClient[Any, Any]]:
    """The real app (publisher included) on a free port, publishing to the test's exchange."""
    settings = Settings(amqp_urls=(AMQP_URL,), exchange=exchange_name, spool_dir=None, declare_queues=False)
    async with TestClient(TestServer(build_service(settings))) as client:
        await wait_connected(client.app)
        yield client


class TestEveryPublishedMessage:
    def test_the_seed_has_payloads(self) -> None:
        """The seed page gives the test its seven complete Servio bodies (two are cut short)."""
        assert len(seed_payloads()) == 7

    async def test_events_and_dead_letters_match_the_asyncapi_document(
        self, client: TestClient[Any, Any], exchange_name: str, amqp_channel: AbstractChannel
    ) -> None:
        """Every seed body and every kind of bad body: all published messages validate."""
        events = await bind_all(amqp_channel, exchange_name)
        dead = await collect(amqp_channel, f"{exchange_name}.invalid")
        expected_events = expected_dead = 0
        for source, body in seed_payloads() + CRAFTED:
            response = await client.post(f"/webhooks/servio/{source}", data=body)
            answer = await response.json()
            if response.status == 200:
                expected_events += answer["messages"]
                expected_dead += 1 if answer["rejected"] else 0  # one letter per request
            else:
                assert response.status == 400, answer
                expected_dead += 1

        published = await events.wait_for(expected_events)
        letters = await dead.wait_for(expected_dead)
        problems = []
        for message in published:
            name = event_message_name(message.routing_key or "")
            body = json.loads(message.body)
            problems += [f"{name} body {e}" for e in errors(f"/components/messages/{name}/payload", body)]
            problems += [
                f"{name} properties {e}"
                for e in errors(f"/components/messages/{name}/x-amqp-properties", properties_of(message))
            ]
        for message in letters:
            name = "rejectedPart" if message.content_type == "application/json" else "rejectedBody"
            if name == "rejectedPart":
                problems += [
                    f"{name} body {e}"
                    for e in errors(f"/components/messages/{name}/payload", json.loads(message.body))
                ]
            problems += [
                f"{name} headers {e}"
                for e in errors(f"/components/messages/{name}/headers", dict(message.headers))
            ]
            problems += [
                f"{name} properties {e}"
                for e in errors(f"/components/messages/{name}/x-amqp-properties", properties_of(message))
            ]
        assert problems == []
        assert {event_message_name(m.routing_key or "") for m in published} == {
            "clientsAdd",
            "clientsUpdate",
            "guestsAdd",
            "guestsUpdate",
            "guestsDelete",
            "companiesAdd",
            "roomsUpdate",
            "otherEvent",
        }
        assert {m.content_type for m in letters} == {"application/json", "application/octet-stream"}
        ids = [m.message_id for m in published + letters]
        assert len(set(ids)) == len(ids), "message_id is not unique per message"
