"""The HTTP API with a fake publisher: status codes, JSON answers, what reaches the publisher."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.http.app import build_app
from bridge.logs import configure_logging, request_line
from bridge.settings import Settings
from bridge.sink import DirectSink
from tests.fakes import FakePublisher

Client = TestClient[Any, Any]


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
async def client(publisher: FakePublisher) -> AsyncIterator[Client]:
    settings = Settings(exchange="servio", spool_dir=None, max_body=4096)
    app = build_app(settings, DirectSink(publisher, timeout=1.0))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


class TestWebhook:
    async def test_accepted_answer_counts_messages(self, client: Client, publisher: FakePublisher) -> None:
        """200 names the delivery and counts published and rejected parts."""
        response = await client.post("/webhooks/servio/Hotel-1.a_b", data=b'{"Add":{"Guests":[1,2,true]}}')
        body = await response.json()
        assert response.status == 200
        assert body["status"] == "accepted"
        assert (body["messages"], body["rejected"]) == (2, 1)
        assert len(body["delivery_id"]) == 32
        assert [m.routing_key for m in publisher.published] == [
            "servio.guests.add",
            "servio.guests.add",
            "servio.invalid",
        ]
        assert json.loads(publisher.published[0].body)["source"] == "Hotel-1.a_b"

    async def test_rejected_parts_are_one_dead_letter(self, client: Client, publisher: FakePublisher) -> None:
        """Every rejected part of a request goes into one dead letter; the answer counts the parts."""
        response = await client.post(
            "/webhooks/servio", data=b'{"Add":{"Guests":[1,true,"x"],"Guests":[2]},"Update":{"Rooms":1e400}}'
        )
        assert (await response.json())["rejected"] == 4
        assert [m.routing_key for m in publisher.published] == ["servio.guests.add", "servio.invalid"]
        letter = json.loads(publisher.published[1].body)
        assert [p["reason"] for p in letter["parts"]] == ["bad_id", "bad_id", "ids_not_list", "duplicate_key"]

    @pytest.mark.parametrize(
        ("data", "content_type"),
        [
            pytest.param(b"\xef\xbb\xbf" + b'{"Add":{"Guests":[9]}}', "application/json", id="utf-8-bom"),
            pytest.param('{"Add":{"Guests":[9]}}'.encode("utf-16"), "application/json", id="utf-16-bom"),
            pytest.param(
                '{"Add":{"Guests":[9]}}'.encode("utf-16-be"),
                "application/json; charset=utf-16be",
                id="utf-16be",
            ),
        ],
    )
    async def test_bom_and_utf_16_are_decoded(
        self, client: Client, publisher: FakePublisher, data: bytes, content_type: str
    ) -> None:
        """A UTF-8 BOM is ignored; UTF-16, by its BOM or the Content-Type's charset, is decoded."""
        response = await client.post("/webhooks/servio", data=data, headers={"Content-Type": content_type})
        assert response.status == 200, await response.text()
        assert [json.loads(m.body)["id"] for m in publisher.published] == [9]

    async def test_source_defaults_when_url_has_none(self, client: Client, publisher: FakePublisher) -> None:
        """POST /webhooks/servio labels its messages with the source "default"."""
        response = await client.post("/webhooks/servio", data=b'{"Delete":{"Rooms":["160"]}}')
        assert response.status == 200
        assert json.loads(publisher.published[0].body)["source"] == "default"
        assert json.loads(publisher.published[0].body)["id"] == 160

    async def test_content_type_is_ignored(self, client: Client, publisher: FakePublisher) -> None:
        """The body is parsed as JSON whatever the Content-Type says."""
        response = await client.post(
            "/webhooks/servio", data=b'{"Add":{"Guests":[9]}}', headers={"Content-Type": "text/plain"}
        )
        assert response.status == 200
        assert len(publisher.published) == 1

    async def test_empty_object_is_accepted_with_nothing_to_publish(
        self, client: Client, publisher: FakePublisher
    ) -> None:
        """A body with only null sections is a valid webhook that says nothing."""
        response = await client.post("/webhooks/servio", data=b'{"Add":null,"Update":null,"Delete":null}')
        assert response.status == 200
        assert (await response.json())["messages"] == 0
        assert publisher.published == []

    @pytest.mark.parametrize(
        ("body", "error"),
        [(b"[1,2]", "not_an_object"), (b'"x"', "not_an_object"), (b"{", "not_json"), (b"", "not_json")],
        ids=["array", "string", "cut-short", "empty"],
    )
    async def test_not_an_object_is_400_and_kept_raw(
        self, client: Client, publisher: FakePublisher, body: bytes, error: str
    ) -> None:
        """A body that is not a JSON object: 400 with a JSON error, raw bytes kept as a dead letter."""
        response = await client.post("/webhooks/servio/Jam_1", data=body)
        answer = await response.json()
        assert response.status == 400
        assert answer["error"] == error
        (letter,) = publisher.published
        assert letter.body == body
        assert letter.routing_key == "servio.invalid"
        assert letter.exchange == ""
        assert letter.headers["reason"] == error
        assert letter.headers["delivery_id"] == answer["delivery_id"]

    async def test_broker_down_is_503_with_retry_after(
        self, client: Client, publisher: FakePublisher
    ) -> None:
        """When the messages cannot be confirmed the answer is 503 with Retry-After, never 200."""
        publisher.break_down()
        response = await client.post("/webhooks/servio", data=b'{"Add":{"Guests":[1]}}')
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        assert (await response.json())["error"] == "broker_unavailable"

    async def test_refused_even_as_dead_letter_is_503_without_a_spool(
        self, client: Client, publisher: FakePublisher
    ) -> None:
        """Without a spool there is no quarantine: a message refused for good, even as a dead
        letter, means the request was not kept, so it is 503, never 200."""
        publisher.refuse_routing_key = "servio.guests.delete"
        response = await client.post("/webhooks/servio", data=b'{"Delete":{"Guests":[7]}}')
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        assert (await response.json())["error"] == "broker_refused"


class TestHttpErrors:
    @pytest.mark.parametrize(
        "path",
        ["/webhooks/servio/bad label", "/webhooks/servio/" + "x" * 65, "/webhooks/servio/a/b", "/nothing"],
        ids=["space", "too-long", "two-levels", "unknown-path"],
    )
    async def test_unknown_path_is_json_404(self, client: Client, path: str) -> None:
        """Paths outside the API, and source labels outside [A-Za-z0-9_.-]{1,64}, are 404 in JSON."""
        response = await client.post(path, data=b"{}")
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"

    async def test_wrong_method_is_json_405(self, client: Client) -> None:
        """GET on the webhook URL is 405 in JSON, with Allow."""
        response = await client.get("/webhooks/servio")
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert (await response.json())["error"] == "method_not_allowed"

    async def test_body_over_max_is_json_413(self, client: Client, publisher: FakePublisher) -> None:
        """A body over BRIDGE_MAX_BODY is 413 in JSON and nothing is published."""
        response = await client.post("/webhooks/servio", data=b"{" + b" " * 5000 + b"}")
        assert response.status == 413
        assert (await response.json())["status"] == "error"
        assert publisher.published == []

    async def test_healthz(self, client: Client) -> None:
        """/healthz answers 200 while the process lives."""
        response = await client.get("/healthz")
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


class TestRequestLog:
    async def test_one_json_line_per_request_with_delivery_id(self, publisher: FakePublisher) -> None:
        """Each request writes exactly one line, with its delivery_id, status and counts."""
        stream = io.StringIO()
        configure_logging("json", stream=stream)
        settings = Settings(exchange="servio", spool_dir=None)
        app = build_app(settings, DirectSink(publisher, timeout=1.0))
        async with TestClient(TestServer(app)) as client:
            first = await (await client.post("/webhooks/servio/a", data=b'{"Add":{"Guests":[1]}}')).json()
            second = await (await client.post("/webhooks/servio/b?token=hidden", data=b"[]")).json()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        requests = [line for line in lines if line["event"] == "request"]
        assert [(r["delivery_id"], r["status"], r["source"]) for r in requests] == [
            (first["delivery_id"], 200, "a"),
            (second["delivery_id"], 400, "b"),
        ]
        assert requests[0]["messages"] == 1
        assert "hidden" not in stream.getvalue()

    async def test_lines_of_one_loop_iteration_leave_together_and_in_order(self) -> None:
        """Lines written on the event loop wait for the end of its iteration and leave in one
        write; a stdlib logger's line written meanwhile comes after them, not before."""

        class CountingStream(io.StringIO):
            writes = 0

            def write(self, text: str) -> int:
                CountingStream.writes += 1
                return super().write(text)

        stream = CountingStream()
        configure_logging("json", stream=stream)
        for n in range(5):
            request_line("bridge.http", "request", {"n": n})
        assert stream.getvalue() == ""  # not yet: the iteration is not over
        logging.getLogger("aiohttp.server").warning("from the stdlib")
        request_line("bridge.http", "request", {"n": 5})
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [e.get("n", e["event"]) for e in events] == [0, 1, 2, 3, 4, "from the stdlib", 5]
        assert CountingStream.writes == 3  # five lines, the stdlib line, the last line
