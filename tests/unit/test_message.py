"""Outbound messages: routing key, body, AMQP properties, message_id, dead letters, spool records."""

from __future__ import annotations

import base64
import calendar
import json
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import deadletter, message
from bridge.core.body import BigNumber
from bridge.core.deadletter import build_invalid_body, build_rejections
from bridge.core.message import (
    build_event,
    build_messages,
    check_template,
    message_chunks,
    message_id,
    render_routing_key,
)
from bridge.core.outbound import Outbound, Webhook
from bridge.core.payload import Event, Payload, Rejection, parse_payload
from bridge.core.record import decode_record, encode_record

DEFAULT_TEMPLATE = "servio.{entity}.{action}"
RECEIVED = datetime(2026, 11, 28, 10, 15, 2, 123456, tzinfo=UTC)
# 2026-11-28T10:15:02Z counted by calendar, not by datetime.timestamp().
RECEIVED_EPOCH = calendar.timegm((2026, 11, 28, 10, 15, 2, 0, 0, 0))
DELIVERY = Webhook("3f2a9c", "Jam_8", RECEIVED)
MAX_ID = 2**63 - 1
NAMES = st.from_regex(r"[a-z0-9_]{1,64}", fullmatch=True)


def event_message(event: Event, template: str = DEFAULT_TEMPLATE, delivery: Webhook = DELIVERY) -> Outbound:
    return build_event(event, delivery, exchange="servio", template=template)


def plain(value: Any) -> Any:
    """A decoded value with its big numbers as Python reads them."""
    if isinstance(value, BigNumber):
        return json.loads(value.text)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class TestRoutingKey:
    """The routing key comes from the template, lower-case."""

    @pytest.mark.parametrize(
        ("template", "event", "expected"),
        [
            pytest.param(
                DEFAULT_TEMPLATE, Event("delete", "guests", 1), "servio.guests.delete", id="default"
            ),
            pytest.param(DEFAULT_TEMPLATE, Event("update", "rooms", 160), "servio.rooms.update", id="rooms"),
            pytest.param(
                "Servio.{source}.{entity}.{action}",
                Event("delete", "guests", 23061),
                "servio.jam_8.guests.delete",
                id="with-source-lower-cased",
            ),
            pytest.param("{action}-{entity}", Event("add", "clients", 1), "add-clients", id="other-shape"),
            pytest.param("HOTEL.ALL", Event("add", "clients", 1), "hotel.all", id="no-placeholders"),
        ],
    )
    def test_routing_key(self, template: str, event: Event, expected: str) -> None:
        """Placeholders are filled and the whole key lower-cased."""
        assert event_message(event, template).routing_key == expected

    def test_render_routing_key(self) -> None:
        """render_routing_key fills {source}, {entity} and {action} and lower-cases."""
        key = render_routing_key("X.{source}.{entity}.{action}", entity="guests", action="add", source="HQ")
        assert key == "x.hq.guests.add"

    def test_keys_are_kept_only_up_to_a_bound(self) -> None:
        """Rendered keys are kept for reuse, but a sender inventing sources cannot grow the store
        past its bound, and a key rendered past the bound is still right."""
        for n in range(message._ROUTING_KEYS_KEPT + 50):
            key = render_routing_key(
                "{source}.{entity}.{action}", entity="guests", action="add", source=f"S{n}"
            )
            assert key == f"s{n}.guests.add"
        assert len(message._ROUTING_KEYS) <= message._ROUTING_KEYS_KEPT

    def test_every_event_of_a_webhook_carries_its_arrival(self) -> None:
        """The arrival, worked out once per webhook, is the same in every message of a fan-out,
        and the same as one event built alone; a time in another zone is written in UTC."""
        elsewhere = Webhook("d", "s", RECEIVED.astimezone(timezone(timedelta(hours=3))))
        events = tuple(Event("add", "guests", i) for i in range(3))
        built = build_messages(Payload(events, ()), elsewhere, exchange="servio", template=DEFAULT_TEMPLATE)
        alone = event_message(events[0], delivery=elsewhere)
        for m in built:
            assert orjson.loads(m.body)["received_at"] == "2026-11-28T10:15:02.123456+00:00"
            assert m.timestamp == alone.timestamp == RECEIVED_EPOCH

    def test_event_goes_to_the_exchange(self) -> None:
        """An event is published to the configured exchange."""
        assert (
            build_event(Event("add", "guests", 1), DELIVERY, exchange="hotel", template="a").exchange
            == "hotel"
        )


class TestEventBody:
    """The body of an event message: exactly entity, action, id, source, delivery_id, received_at."""

    def test_body_fields(self) -> None:
        """The body is the JSON object of PRODUCT.md, with nothing more."""
        body = orjson.loads(event_message(Event("delete", "guests", 23061)).body)
        assert body == {
            "entity": "guests",
            "action": "delete",
            "id": 23061,
            "source": "Jam_8",
            "delivery_id": "3f2a9c",
            "received_at": "2026-11-28T10:15:02.123456+00:00",
        }

    def test_id_is_a_json_integer(self) -> None:
        """The ID is written as a JSON number, exact even at 2^63-1."""
        body = event_message(Event("add", "clients", MAX_ID)).body
        assert b'"id":9223372036854775807' in body
        assert json.loads(body)["id"] == MAX_ID

    def test_received_at_always_has_microseconds(self) -> None:
        """A time on a whole second still carries six digits of microseconds."""
        delivery = Webhook("d", "s", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        body = orjson.loads(event_message(Event("add", "guests", 1), delivery=delivery).body)
        assert body["received_at"] == "2026-01-02T03:04:05.000000+00:00"


class TestProperties:
    """The AMQP properties every event message carries."""

    def test_properties(self) -> None:
        """Persistent, application/json, app_id servio-bridge, timestamp of arrival in epoch seconds."""
        message = event_message(Event("add", "guests", 1))
        assert message.delivery_mode == 2
        assert message.content_type == "application/json"
        assert message.app_id == "servio-bridge"
        assert message.timestamp == RECEIVED_EPOCH
        assert type(message.timestamp) is int

    def test_timestamp_drops_the_fraction(self) -> None:
        """A time just before the next second still gives the second it is in."""
        delivery = Webhook("d", "s", RECEIVED.replace(microsecond=999_999))
        assert event_message(Event("add", "guests", 1), delivery=delivery).timestamp == RECEIVED_EPOCH


class TestMessageId:
    """message_id is unique per (delivery, entity, action, ID) and the same on every re-publish."""

    def test_same_when_built_twice(self) -> None:
        """Building the same event twice gives the same message, message_id included."""
        first = event_message(Event("delete", "guests", 23061))
        again = event_message(Event("delete", "guests", 23061))
        assert first.message_id == again.message_id
        assert first == again

    @pytest.mark.parametrize(
        ("delivery_id", "event"),
        [
            pytest.param("other", Event("delete", "guests", 23061), id="other-delivery"),
            pytest.param("3f2a9c", Event("add", "guests", 23061), id="other-action"),
            pytest.param("3f2a9c", Event("delete", "clients", 23061), id="other-entity"),
            pytest.param("3f2a9c", Event("delete", "guests", 23062), id="other-id"),
        ],
    )
    def test_differs_when_one_part_differs(self, delivery_id: str, event: Event) -> None:
        """Changing any one of delivery, action, entity or ID changes the message_id."""
        assert message_id(delivery_id, event) != message_id("3f2a9c", Event("delete", "guests", 23061))

    @pytest.mark.parametrize(
        ("one", "other"),
        [
            pytest.param(("d", "add", "guests1", 2), ("d", "add", "guests", 12), id="entity-id-boundary"),
            pytest.param(
                ("d", "add_x", "guests", 1), ("d", "add", "x_guests", 1), id="action-entity-boundary"
            ),
            pytest.param(
                ("d1", "add", "guests", 1), ("d", "1add", "guests", 1), id="delivery-action-boundary"
            ),
            pytest.param(("d.add", "guests", "x", 1), ("d", "add", "guests", 1), id="dot-in-delivery"),
        ],
    )
    def test_parts_do_not_run_together(
        self, one: tuple[str, str, str, int], other: tuple[str, str, str, int]
    ) -> None:
        """Values that would read the same if their parts ran together give different message_ids."""
        assert message_id(one[0], Event(*one[1:])) != message_id(other[0], Event(*other[1:]))

    def test_unique_within_a_request(self) -> None:
        """Every message of one request, dead letters included, has its own message_id."""
        payload = parse_payload(
            b'{"Add":{"Guests":[1,2,"x"],"Clients":[1]},"Update":{"Guests":[1]},"Delete":{"Guests":[1,"y"]}}'
        )
        messages = build_messages(payload, DELIVERY, exchange="servio", template=DEFAULT_TEMPLATE)
        assert len(messages) == 6
        assert len({m.message_id for m in messages}) == 6

    @given(st.text(), NAMES, NAMES, st.integers(0, MAX_ID))
    def test_pure_function(self, delivery_id: str, action: str, entity: str, id_: int) -> None:
        """The same four values give the same message_id, through build_event too."""
        event = Event(action, entity, id_)
        delivery = Webhook(delivery_id, "s", RECEIVED)
        assert message_id(delivery_id, event) == message_id(delivery_id, Event(action, entity, id_))
        assert event_message(event, delivery=delivery).message_id == message_id(delivery_id, event)

    @given(
        st.tuples(st.text(), NAMES, NAMES, st.integers(0, MAX_ID)),
        st.tuples(st.text(), NAMES, NAMES, st.integers(0, MAX_ID)),
    )
    def test_differs_when_any_part_differs(
        self, one: tuple[str, str, str, int], other: tuple[str, str, str, int]
    ) -> None:
        """Two different (delivery, action, entity, ID) never share a message_id."""
        same = message_id(one[0], Event(*one[1:])) == message_id(other[0], Event(*other[1:]))
        assert same == (one == other)

    @given(
        st.text(),
        NAMES,
        NAMES,
        st.integers(0, MAX_ID),
        st.sampled_from(["delivery", "action", "entity", "id"]),
    )
    def test_differs_when_one_part_changes(
        self, delivery_id: str, action: str, entity: str, id_: int, changed: str
    ) -> None:
        """Changing just one of the four values changes the message_id."""
        parts: dict[str, Any] = {"delivery": delivery_id, "action": action, "entity": entity, "id": id_}
        parts[changed] = {"delivery": delivery_id + "0", "action": action + "x", "entity": entity + "x"}.get(
            changed, id_ + 1
        )
        before = message_id(delivery_id, Event(action, entity, id_))
        after = message_id(parts["delivery"], Event(parts["action"], parts["entity"], parts["id"]))
        assert before != after


class TestBuildMessages:
    """One request's messages: its events in order, then its dead letters."""

    def test_events_then_dead_letters(self) -> None:
        """Events keep the payload's order; one dead letter follows with every rejected part."""
        payload = parse_payload(b'{"Delete":{"Guests":[3,false]},"Add":{"Guests":[1,true],"Clients":[2]}}')
        messages = build_messages(payload, DELIVERY, exchange="servio", template=DEFAULT_TEMPLATE)
        assert [m.routing_key for m in messages] == [
            "servio.guests.add",
            "servio.clients.add",
            "servio.guests.delete",
            "servio.invalid",
        ]
        assert [orjson.loads(m.body).get("id") for m in messages[:3]] == [1, 2, 3]

    def test_nothing_in_nothing_out(self) -> None:
        """An empty payload gives no message."""
        assert build_messages(Payload((), ()), DELIVERY, exchange="servio", template=DEFAULT_TEMPLATE) == []


class TestDeadLetters:
    """Rejected parts and refused bodies go to <exchange>.invalid, saying why."""

    def test_rejected_parts(self) -> None:
        """A request's rejected parts are one JSON dead letter on the default exchange, each part
        with its path, reason and value."""
        rejections = [
            Rejection("bad_id", ("Add", "Guests", 1), "12a"),
            Rejection("ids_not_list", ("Delete", "Rooms"), 5),
        ]
        (letter,) = build_rejections(rejections, DELIVERY, exchange="servio")
        assert letter.exchange == ""
        assert letter.routing_key == "servio.invalid"
        assert letter.content_type == "application/json"
        assert letter.delivery_mode == 2
        assert letter.app_id == "servio-bridge"
        assert letter.timestamp == RECEIVED_EPOCH
        assert letter.message_id == "3f2a9c.invalid.0"
        assert dict(letter.headers) == {
            "reason": "rejected_parts",
            "source": "Jam_8",
            "delivery_id": "3f2a9c",
            "received_at": "2026-11-28T10:15:02.123456+00:00",
        }
        assert orjson.loads(letter.body) == {
            "reason": "rejected_parts",
            "source": "Jam_8",
            "delivery_id": "3f2a9c",
            "received_at": "2026-11-28T10:15:02.123456+00:00",
            "parts_total": 2,
            "parts": [
                {"path": ["Add", "Guests", 1], "reason": "bad_id", "value": "12a"},
                {"path": ["Delete", "Rooms"], "reason": "ids_not_list", "value": 5},
            ],
        }

    def test_no_rejection_no_letter(self) -> None:
        """Nothing rejected, nothing dead-lettered."""
        assert build_rejections([], DELIVERY, exchange="servio") == []

    def test_invalid_queue_follows_the_exchange(self) -> None:
        """The dead-letter queue is named after the exchange."""
        (letter,) = build_rejections(
            [Rejection("ids_not_list", ("Add", "Guests"), 5)], DELIVERY, exchange="hotel"
        )
        assert letter.routing_key == "hotel.invalid"

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b'{"Add":null,"Update":{"Companies":[ 1148]}', id="cut-short-seed"),
            pytest.param(bytes(range(256)), id="every-byte"),
            pytest.param(b"", id="empty"),
            pytest.param(b"\xff\xfe\x00\r\n", id="binary"),
        ],
    )
    def test_refused_body_kept_byte_for_byte(self, raw: bytes) -> None:
        """A body refused whole is dead-lettered as the raw bytes, application/octet-stream."""
        letter = build_invalid_body(raw, DELIVERY, exchange="servio", reason="not_json", detail="bad")
        assert letter.body == raw
        assert letter.exchange == ""
        assert letter.routing_key == "servio.invalid"
        assert letter.content_type == "application/octet-stream"
        assert letter.delivery_mode == 2
        assert letter.headers["reason"] == "not_json"
        assert letter.headers["source"] == "Jam_8"
        assert letter.headers["delivery_id"] == "3f2a9c"

    def test_every_header_is_bounded(self) -> None:
        """No header value passes 256 bytes of UTF-8, however long what it says."""
        delivery = Webhook("d" * 1000, "é" * 1000, RECEIVED)
        letters = [
            build_invalid_body(b"x", delivery, exchange="s", reason="r" * 1000, detail="\u20ac" * 100_000),
            *build_rejections(
                [Rejection("bad_id", ("k" * 200_000, "Guests", 0), "x")], delivery, exchange="s"
            ),
        ]
        for letter in letters:
            for name, value in letter.headers.items():
                assert len(value.encode()) <= deadletter.HEADER_BYTES, name
                value.encode()  # cut on a character boundary
        assert letters[0].headers["detail"] == "\u20ac" * (deadletter.HEADER_BYTES // 3)

    @pytest.mark.parametrize(
        ("value", "part"),
        [
            pytest.param("x" * 254, {"value": "x" * 254}, id="256-bytes-kept"),
            pytest.param(
                "x" * 255,
                {"value_json": '"' + "x" * 255, "value_bytes": 257, "truncated": True},
                id="257-bytes-cut",
            ),
            pytest.param(
                list(range(1000)),
                {
                    "value_json": orjson.dumps(list(range(1000))).decode()[:256],
                    "value_bytes": len(orjson.dumps(list(range(1000)))),
                    "truncated": True,
                },
                id="long-list-cut",
            ),
            pytest.param(
                BigNumber("18446744073709551616"),
                {"value_json": "18446744073709551616", "value_bytes": 20, "truncated": False},
                id="2^64-exact-digits",
            ),
            pytest.param(
                [1, BigNumber("-1e400")],
                {"value_json": "[1,-1e400]", "value_bytes": 10, "truncated": False},
                id="huge-number-inside",
            ),
            pytest.param(2**64 - 1, {"value": 2**64 - 1}, id="2^64-1-as-a-number"),
        ],
    )
    def test_values_are_bounded(self, value: Any, part: dict[str, Any]) -> None:
        """A value is given whole when its compact JSON is at most 256 bytes and every number in it
        fits 64 bits; otherwise as the text of that JSON, cut to 256 characters."""
        (letter,) = build_rejections(
            [Rejection("bad_id", ("Add", "Guests", 0), value)], DELIVERY, exchange="s"
        )
        assert orjson.loads(letter.body)["parts"] == [
            {"path": ["Add", "Guests", 0], "reason": "bad_id", **part}
        ]

    def test_long_keys_in_paths_are_cut(self) -> None:
        """A key over 64 characters is given as its first 64 and its length."""
        long_key = "k" * 200_000
        (letter,) = build_rejections(
            [Rejection("bad_entity_name", ("Add", long_key), [1])], DELIVERY, exchange="s"
        )
        (part,) = orjson.loads(letter.body)["parts"]
        assert part["path"] == ["Add", {"key_prefix": "k" * 64, "key_length": 200_000}]
        assert len(letter.body) < 1000

    def test_parts_past_the_budget_are_counted_and_the_body_kept(self) -> None:
        """Parts past the letter's budget are counted, not listed, and the raw body is kept whole."""
        raw = b'{"Add":{"Guests":[' + b",".join([b'"' + b"x" * 20 + b'"'] * 30_000) + b"]}}"
        payload = parse_payload(raw)
        (letter,) = build_rejections(payload.rejections, DELIVERY, exchange="s", body=raw)
        doc = orjson.loads(letter.body)
        assert doc["parts_total"] == 30_000
        listed = len(doc["parts"])
        assert 1000 < listed < 30_000
        assert doc["parts_omitted"] == 30_000 - listed
        assert base64.b64decode(doc["body_base64"]) == raw
        assert len(letter.body) <= deadletter.PARTS_BYTES + len(raw) * 4 // 3 + 1000

    def test_one_mebibyte_of_rejected_parts_is_one_bounded_letter(self) -> None:
        """A 1 MiB body made only of rejected parts: one letter, bounded in size, built in bounded
        memory."""
        item = b'"' + b"y" * 8 + b'"'
        raw = b'{"Add":{"Guests":[' + b",".join([item] * 95_000) + b"]}}"
        assert len(raw) <= 1024 * 1024
        payload = parse_payload(raw)
        tracemalloc.start()
        try:
            messages = build_messages(payload, DELIVERY, exchange="s", template=DEFAULT_TEMPLATE, body=raw)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        (letter,) = messages
        assert len(letter.body) < 2 * 1024 * 1024
        assert peak < 16 * 1024 * 1024, peak

    def test_chunks_end_with_the_one_letter(self) -> None:
        """Built in chunks, the dead letter comes last and once; chunks stay at most CHUNK long."""
        raw = b'{"Add":{"Guests":[1,' + b",".join([b"true"] * 2500) + b"]}}"
        payload = parse_payload(raw)
        chunks = list(
            message_chunks(payload, DELIVERY, exchange="s", template=DEFAULT_TEMPLATE, size=1000, body=raw)
        )
        assert len(chunks) >= 4  # the parts are rendered a chunk at a time, between two turns of the loop
        flat = [m for chunk in chunks for m in chunk]
        assert [m.routing_key for m in flat] == ["servio.guests.add", "s.invalid"]
        assert orjson.loads(flat[1].body)["parts_total"] == 2500
        assert flat == build_messages(payload, DELIVERY, exchange="s", template=DEFAULT_TEMPLATE, body=raw)

    @pytest.mark.parametrize("depth", [pytest.param(30, id="30"), pytest.param(60, id="60")])
    def test_deeply_nested_part_is_kept(self, depth: int) -> None:
        """A rejected part nested as deep as the parser accepts is dead-lettered."""
        raw = b'{"Add":{"Guests":[1,' + b"[" * depth + b"]" * depth + b"]}}"
        payload = parse_payload(raw)
        messages = build_messages(payload, DELIVERY, exchange="servio", template=DEFAULT_TEMPLATE)
        assert len(messages) == 2
        (part,) = orjson.loads(messages[1].body)["parts"]
        assert part["value"] == json.loads(b"[" * depth + b"]" * depth)

    def test_deeply_nested_object_part_is_valid_json(self) -> None:
        """A part deeper than orjson writes still comes out, as the start of its JSON."""
        part: Any = {"k": [1, "two", None, True, 2.5]}
        for level in range(400):
            part = [{"n": level, "more": part}] if level % 2 else {"n": level, "more": part}
        (letter,) = build_rejections(
            [Rejection("bad_id", ("Add", "Guests", 0), part)], DELIVERY, exchange="x"
        )
        (written,) = orjson.loads(letter.body)["parts"]
        assert written["reason"] == "bad_id"
        assert written["truncated"] is True
        assert json.dumps(part, separators=(",", ":")).startswith(written["value_json"])

    @settings(deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(["Add", "update ", "DELETE", "Merge", "a.b"]),
            st.none()
            | st.recursive(
                st.none()
                | st.booleans()
                | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=5),
                lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                max_leaves=20,
            ),
        )
    )
    def test_every_parsed_body_can_be_built(self, doc: dict[str, Any]) -> None:
        """Whatever a JSON object holds, its messages are built: one letter holds every part."""
        raw = json.dumps(doc).encode()
        payload = parse_payload(raw)
        messages = build_messages(payload, DELIVERY, exchange="servio", template=DEFAULT_TEMPLATE, body=raw)
        assert len(messages) == len(payload.events) + (1 if payload.rejections else 0)
        if payload.rejections:
            parts = orjson.loads(messages[-1].body)["parts"]
            assert [p["reason"] for p in parts] == [r.reason for r in payload.rejections]
            for written, rejection in zip(parts, payload.rejections, strict=True):
                if "value" in written:
                    assert written["value"] == rejection.value
                elif written["truncated"]:
                    assert len(written["value_json"].encode()) <= 256 < written["value_bytes"]
                else:
                    assert json.loads(written["value_json"]) == plain(rejection.value)


class TestCheckTemplate:
    """A routing-key template has only plain {entity}, {action} and {source} placeholders."""

    @pytest.mark.parametrize(
        "template",
        [
            pytest.param(DEFAULT_TEMPLATE, id="default"),
            pytest.param("Servio.{source}.{entity}.{action}", id="with-source"),
            pytest.param("events", id="no-placeholders"),
            pytest.param("{entity}", id="entity-only"),
        ],
    )
    def test_accepted(self, template: str) -> None:
        """Known placeholders and plain text are fine."""
        check_template(template)

    @pytest.mark.parametrize(
        "template",
        [
            pytest.param("servio.{nope}", id="unknown-placeholder"),
            pytest.param("servio.{}", id="positional"),
            pytest.param("servio.{0}", id="numbered"),
            pytest.param("servio.{entity:>5}", id="format-spec"),
            pytest.param("servio.{entity!r}", id="conversion"),
            pytest.param("servio.{entity.upper}", id="attribute"),
            pytest.param("servio.{entity[0]}", id="index"),
            pytest.param("servio.{entity", id="unclosed-brace"),
            pytest.param("servio.entity}", id="stray-closing-brace"),
            pytest.param("", id="empty"),
        ],
    )
    def test_refused(self, template: str) -> None:
        """Anything but a plain known placeholder raises ValueError."""
        with pytest.raises(ValueError, match=r".+"):
            check_template(template)


RECORD_HEADERS = st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5)


class TestRecord:
    """Spool records give back the very message that was written."""

    @pytest.mark.parametrize(
        "message",
        [
            pytest.param(event_message(Event("delete", "guests", 23061)), id="event"),
            pytest.param(
                build_rejections([Rejection("bad_id", ("Add", "Guests", 0), "x")], DELIVERY, exchange="s")[0],
                id="rejected-part",
            ),
            pytest.param(
                build_invalid_body(bytes(range(256)), DELIVERY, exchange="s", reason="not_json", detail="d"),
                id="raw-body-every-byte",
            ),
        ],
    )
    def test_round_trip(self, message: Outbound) -> None:
        """decode_record(encode_record(m)) equals m, field by field."""
        again = decode_record(encode_record(message))
        assert again == message
        assert again.body == message.body
        assert dict(again.headers) == dict(message.headers)

    @given(
        st.builds(
            Outbound,
            exchange=st.text(),
            routing_key=st.text(),
            body=st.binary(),
            message_id=st.text(),
            timestamp=st.integers(0, 2**63 - 1),
            order_key=st.text(),
            content_type=st.sampled_from(["application/json", "application/octet-stream"]),
            headers=RECORD_HEADERS,
        )
    )
    def test_round_trip_any_message(self, message: Outbound) -> None:
        """Any message, with any binary body, survives the spool unchanged."""
        assert decode_record(encode_record(message)) == message

    @pytest.mark.parametrize(
        "record",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"not json", id="not-json"),
            pytest.param(b"1", id="number"),
            pytest.param(b"null", id="null"),
            pytest.param(b"{}", id="object"),
            pytest.param(b'"12345678"', id="eight-char-string"),
            pytest.param(b"[]", id="empty-list"),
            pytest.param(b"[1,2,3,4,5,6,7,8]", id="eight-numbers"),
            pytest.param(b'["","","",1,"","",{},"","extra"]', id="nine-fields"),
            pytest.param(b'["","","","1","","",{},""]', id="timestamp-string"),
            pytest.param(b'["","","",true,"","",{},""]', id="timestamp-bool"),
            pytest.param(b'["","","",1,"","",[],""]', id="headers-list"),
            pytest.param(b'["","","",1,"","",{"a":1},""]', id="header-not-string"),
            pytest.param(b'["","","",1,"","",{},"\\u0100"]', id="body-not-latin-1"),
        ],
    )
    def test_foreign_record_raises_value_error(self, record: bytes) -> None:
        """A record encode_record never writes raises ValueError."""
        with pytest.raises(ValueError, match=r".+"):
            decode_record(record)


class TestMetadata:
    """A message says what it is (entity, action, or a dead letter's reason) without its body."""

    def test_event_carries_its_names(self) -> None:
        """An event's message carries the event's entity and action."""
        built = event_message(Event("merge", "suites", 7))
        assert (built.entity, built.action, built.reason) == ("suites", "merge", "")

    @pytest.mark.parametrize(
        ("letter", "reason"),
        [
            pytest.param(
                build_rejections([Rejection("bad_id", ("Add", "Guests", 0), "x")], DELIVERY, exchange="s")[0],
                "rejected_parts",
                id="rejected-parts",
            ),
            pytest.param(
                build_invalid_body(b"{", DELIVERY, exchange="s", reason="not_json", detail="d"),
                "not_json",
                id="refused-body",
            ),
        ],
    )
    def test_dead_letter_carries_its_reason(self, letter: Outbound, reason: str) -> None:
        """A dead letter carries the reason its header states, and no names."""
        assert (letter.entity, letter.action, letter.reason) == ("", "", reason)
        assert letter.headers["reason"] == reason

    @given(st.text(max_size=40), NAMES, NAMES, st.integers(0, MAX_ID))
    def test_event_names_survive_the_record(
        self, delivery_id: str, action: str, entity: str, id_: int
    ) -> None:
        """An event read back from the spool has its entity and action, whatever its delivery id."""
        built = event_message(Event(action, entity, id_), delivery=Webhook(delivery_id, "s", RECEIVED))
        again = decode_record(encode_record(built))
        assert (again.entity, again.action, again.reason) == (entity, action, "")

    def test_reason_survives_the_record(self) -> None:
        """A dead letter read back from the spool has its reason."""
        letter = build_invalid_body(b"x", DELIVERY, exchange="s", reason="not_an_object", detail="d")
        assert decode_record(encode_record(letter)).reason == "not_an_object"

    def test_other_message_ids_give_no_names(self) -> None:
        """A message whose id is not an event's reads back with no names."""
        other = Outbound("s", "k", b"{}", message_id="not-an-event", timestamp=0, order_key="k")
        again = decode_record(encode_record(other))
        assert (again.entity, again.action, again.reason) == ("", "", "")

    def test_metadata_is_not_part_of_equality(self) -> None:
        """Two messages equal on the wire are equal, whatever metadata one of them carries."""
        built = event_message(Event("add", "guests", 1))
        bare = Outbound(
            built.exchange, built.routing_key, built.body, built.message_id, built.timestamp, built.order_key
        )
        assert bare == built
