"""Outbound messages: routing key, body, AMQP properties, message_id, dead letters, spool records."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import message
from bridge.message import (
    Delivery,
    Outbound,
    build_event,
    build_invalid_body,
    build_messages,
    build_rejections,
    check_template,
    decode_record,
    encode_record,
    message_id,
    render_routing_key,
)
from bridge.payload import Event, Payload, Rejection, parse_payload

DEFAULT_TEMPLATE = "servio.{entity}.{action}"
RECEIVED = datetime(2026, 11, 28, 10, 15, 2, 123456, tzinfo=UTC)
# 2026-11-28T10:15:02Z counted by calendar, not by datetime.timestamp().
RECEIVED_EPOCH = calendar.timegm((2026, 11, 28, 10, 15, 2, 0, 0, 0))
DELIVERY = Delivery("3f2a9c", "Jam_8", RECEIVED)
MAX_ID = 2**63 - 1
NAMES = st.from_regex(r"[a-z0-9_]{1,64}", fullmatch=True)


def event_message(event: Event, template: str = DEFAULT_TEMPLATE, delivery: Delivery = DELIVERY) -> Outbound:
    return build_event(event, delivery, exchange="servio", template=template)


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
        elsewhere = Delivery("d", "s", RECEIVED.astimezone(timezone(timedelta(hours=3))))
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
        delivery = Delivery("d", "s", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
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
        delivery = Delivery("d", "s", RECEIVED.replace(microsecond=999_999))
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
        assert len(messages) == 7
        assert len({m.message_id for m in messages}) == 7

    @given(st.text(), NAMES, NAMES, st.integers(0, MAX_ID))
    def test_pure_function(self, delivery_id: str, action: str, entity: str, id_: int) -> None:
        """The same four values give the same message_id, through build_event too."""
        event = Event(action, entity, id_)
        delivery = Delivery(delivery_id, "s", RECEIVED)
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
        """Events keep the payload's order; dead letters follow, one per rejection."""
        payload = parse_payload(b'{"Delete":{"Guests":[3]},"Add":{"Guests":[1,true],"Clients":[2]}}')
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

    def test_rejected_part(self) -> None:
        """A rejected part is a JSON dead letter with reason, path and value, on the default exchange."""
        rejection = Rejection("bad_id", ("Add", "Guests", 1), "12a")
        (letter,) = build_rejections([rejection], DELIVERY, exchange="servio")
        assert letter.exchange == ""
        assert letter.routing_key == "servio.invalid"
        assert letter.content_type == "application/json"
        assert letter.delivery_mode == 2
        assert letter.app_id == "servio-bridge"
        assert letter.timestamp == RECEIVED_EPOCH
        assert letter.headers["reason"] == "bad_id"
        assert letter.headers["source"] == "Jam_8"
        assert letter.headers["delivery_id"] == "3f2a9c"
        body = orjson.loads(letter.body)
        assert body["reason"] == "bad_id"
        assert body["path"] == ["Add", "Guests", 1]
        assert body["value"] == "12a"

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

    def test_each_rejection_its_own_letter(self) -> None:
        """Rejections give one dead letter each, with distinct message_ids."""
        rejections = [Rejection("bad_id", ("Add", "Guests", i), -i) for i in range(3)]
        letters = build_rejections(rejections, DELIVERY, exchange="servio")
        assert [orjson.loads(letter.body)["value"] for letter in letters] == [0, -1, -2]
        assert len({letter.message_id for letter in letters}) == 3

    @pytest.mark.parametrize("depth", [pytest.param(30, id="30"), pytest.param(60, id="60")])
    def test_deeply_nested_part_is_kept(self, depth: int) -> None:
        """A rejected part nested as deep as the parser accepts is dead-lettered whole."""
        raw = b'{"Add":{"Guests":[1,' + b"[" * depth + b"]" * depth + b"]}}"
        payload = parse_payload(raw)
        messages = build_messages(payload, DELIVERY, exchange="servio", template=DEFAULT_TEMPLATE)
        assert len(messages) == 2
        value = orjson.loads(messages[1].body)["value"]
        levels = 0
        while value != []:
            (value,) = value
            levels += 1
        assert levels == depth - 1

    def test_deeply_nested_object_part_is_valid_json(self) -> None:
        """A deep part of objects and lists comes out as JSON equal to the part."""
        part: Any = {"k": [1, "two", None, True, 2.5]}
        for level in range(400):
            part = [{"n": level, "more": part}] if level % 2 else {"n": level, "more": part}
        (letter,) = build_rejections(
            [Rejection("bad_id", ("Add", "Guests", 0), part)], DELIVERY, exchange="x"
        )
        body = orjson.loads(letter.body)
        assert body["value"] == part
        assert body["reason"] == "bad_id"

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
        """Whatever a JSON object holds, its messages are built and each dead letter holds its part."""
        raw = json.dumps(doc).encode()
        payload = parse_payload(raw)
        messages = build_messages(payload, DELIVERY, exchange="servio", template=DEFAULT_TEMPLATE)
        assert len(messages) == len(payload.events) + len(payload.rejections)
        letters = messages[len(payload.events) :]
        for letter, rejection in zip(letters, payload.rejections, strict=True):
            assert orjson.loads(letter.body)["value"] == rejection.value


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
