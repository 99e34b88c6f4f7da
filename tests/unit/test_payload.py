"""Servio's webhook body split into (action, entity, ID) events, by the parsing rules of PRODUCT.md."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.body import BigNumber, nesting_depth, servio_shaped
from bridge.core.payload import (
    Event,
    Payload,
    Rejection,
    decode_body,
    normalize_name,
    parse_id,
    parse_payload,
    split_events,
)
from bridge.errors import InvalidBody, TooLarge

MAX_ID = 2**63 - 1
SEED = Path(__file__).resolve().parents[1] / "data" / "servio-webhook-settings.txt"
Triple = tuple[str, str, int]


def parse(doc: Any) -> Payload:
    """Parse ``doc`` as Servio would send it: JSON bytes."""
    return parse_payload(json.dumps(doc).encode())


def decoded(literal: bytes) -> Any:
    """A JSON value as the parser keeps it: numbers no float or 64-bit integer holds, as written."""
    value = json.loads(literal)
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return BigNumber(literal.decode())
    return value


def triples(payload: Payload) -> list[Triple]:
    return [(event.action, event.entity, event.id) for event in payload.events]


class TestKeys:
    """Top-level and entity keys: case-insensitive, surrounding white space ignored."""

    @pytest.mark.parametrize(
        ("action_key", "entity_key"),
        [
            pytest.param("Add", "Guests", id="as-documented"),
            pytest.param("add", "guests", id="lower"),
            pytest.param("ADD", "GUESTS", id="upper"),
            pytest.param("aDd", "gUeStS", id="mixed"),
            pytest.param("Add ", "Guests", id="trailing-space-like-seed-update"),
            pytest.param(" Add", " Guests ", id="spaces-both-sides"),
            pytest.param("\tAdd\n", "\r\nGuests\t", id="tabs-and-newlines"),
        ],
    )
    def test_spelling_of_keys_does_not_matter(self, action_key: str, entity_key: str) -> None:
        """Any case and surrounding white space name the same action and entity."""
        payload = parse({action_key: {entity_key: [23061]}})
        assert triples(payload) == [("add", "guests", 23061)]
        assert payload.rejections == ()

    @pytest.mark.parametrize(
        "doc",
        [
            pytest.param({}, id="empty-object"),
            pytest.param({"Add": None, "Update": None, "Delete": None}, id="all-sections-null"),
            pytest.param({"Add": {}}, id="empty-section"),
            pytest.param({"Add": {"Clients": None, "Companies": None, "Guests": None}}, id="all-lists-null"),
            pytest.param({"Update": {"Rooms": None}}, id="rooms-null"),
            pytest.param({"Delete": {"Guests": []}}, id="empty-list"),
            pytest.param({"Update ": None}, id="null-section-with-space"),
        ],
    )
    def test_null_or_missing_means_nothing(self, doc: dict[str, Any]) -> None:
        """A null or missing section or list gives no event and no rejection."""
        assert parse(doc) == Payload((), ())

    def test_null_list_beside_real_one(self) -> None:
        """ "Rooms": null next to a list of clients publishes just the clients."""
        doc = {"Update": {"Rooms": None, "Clients": [1405], "Companies": None, "Guests": None}}
        payload = parse(doc)
        assert triples(payload) == [("update", "clients", 1405)]
        assert payload.rejections == ()

    def test_missing_sections_are_nothing(self) -> None:
        """A body with only Delete publishes only deletes."""
        assert triples(parse({"Delete": {"Guests": [7]}})) == [("delete", "guests", 7)]


class TestIds:
    """An ID is a non-negative integer up to 2^63-1 or a string of ASCII digits."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(0, 0, id="zero"),
            pytest.param(12766, 12766, id="int"),
            pytest.param(MAX_ID, MAX_ID, id="int-2^63-1"),
            pytest.param("12766", 12766, id="digit-string"),
            pytest.param("0", 0, id="digit-string-zero"),
            pytest.param("007", 7, id="digit-string-leading-zeros"),
            pytest.param(str(MAX_ID), MAX_ID, id="digit-string-2^63-1"),
        ],
    )
    def test_valid_id_is_published_as_int(self, value: Any, expected: int) -> None:
        """Integers and digit strings come out as the integer."""
        payload = parse({"Add": {"Guests": [value]}})
        assert triples(payload) == [("add", "guests", expected)]
        assert type(payload.events[0].id) is int
        assert payload.rejections == ()

    @pytest.mark.parametrize(
        "literal",
        [
            pytest.param(b"true", id="true"),
            pytest.param(b"false", id="false"),
            pytest.param(b"12.0", id="float-12.0"),
            pytest.param(b"1e3", id="float-1e3"),
            pytest.param(b"0.5", id="float-fraction"),
            pytest.param(b"-1", id="negative"),
            pytest.param(b"-0.0", id="negative-zero-float"),
            pytest.param(b"-9223372036854775808", id="most-negative-int64"),
            pytest.param(b"9223372036854775808", id="int-2^63"),
            pytest.param(b"18446744073709551615", id="int-2^64-1"),
            pytest.param(b"18446744073709551616", id="int-2^64"),
            pytest.param(b"100000000000000000000000000000", id="int-10^29"),
            pytest.param(b"{}", id="empty-object"),
            pytest.param(b'{"id":1}', id="object"),
            pytest.param(b"[]", id="empty-list"),
            pytest.param(b"[1]", id="list"),
            pytest.param(b"null", id="null-in-list"),
            pytest.param(b'""', id="empty-string"),
            pytest.param(b'"12a"', id="digits-then-letter"),
            pytest.param(b'" 12"', id="leading-space"),
            pytest.param(b'"12 "', id="trailing-space"),
            pytest.param(b'"12\\n"', id="trailing-newline"),
            pytest.param(b'"-1"', id="negative-string"),
            pytest.param(b'"+1"', id="plus-string"),
            pytest.param(b'"1.5"', id="float-string"),
            pytest.param(b'"1_000"', id="underscore-string"),
            pytest.param(b'"0x1f"', id="hex-string"),
            pytest.param('"١٢"'.encode(), id="arabic-indic-digits"),
            pytest.param(b'"\\u0661\\u0662"', id="arabic-indic-digits-escaped"),
            pytest.param(b'"\\uff11\\uff12"', id="fullwidth-digits"),
            pytest.param('"²"'.encode(), id="superscript-two"),
            pytest.param(b'"9223372036854775808"', id="digit-string-2^63"),
            pytest.param(b'"99999999999999999999999999999999999999"', id="long-digit-string"),
        ],
    )
    def test_invalid_id_is_rejected_alone(self, literal: bytes) -> None:
        """Each non-ID gives one bad_id rejection at its path; its valid siblings are kept."""
        raw = b'{"Add":{"Guests":[11,' + literal + b",22]}}"
        payload = parse_payload(raw)
        assert triples(payload) == [("add", "guests", 11), ("add", "guests", 22)]
        assert payload.rejections == (Rejection("bad_id", ("Add", "Guests", 1), decoded(literal)),)

    def test_path_keeps_keys_as_written(self) -> None:
        """The rejection path holds the keys exactly as Servio wrote them, and the list index."""
        payload = parse({"Delete ": {" GUESTS": [1, 2, "x"]}})
        assert payload.rejections == (Rejection("bad_id", ("Delete ", " GUESTS", 2), "x"),)
        assert triples(payload) == [("delete", "guests", 1), ("delete", "guests", 2)]

    def test_every_bad_id_is_its_own_rejection(self) -> None:
        """Several bad IDs in one list give one rejection each, in list order."""
        payload = parse({"Add": {"Clients": [True, 5, -3, "6", 7.5, None]}})
        assert triples(payload) == [("add", "clients", 5), ("add", "clients", 6)]
        assert [(r.reason, r.path, r.value) for r in payload.rejections] == [
            ("bad_id", ("Add", "Clients", 0), True),
            ("bad_id", ("Add", "Clients", 2), -3),
            ("bad_id", ("Add", "Clients", 4), 7.5),
            ("bad_id", ("Add", "Clients", 5), None),
        ]

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(0, 0, id="zero"),
            pytest.param(MAX_ID, MAX_ID, id="max"),
            pytest.param(MAX_ID + 1, None, id="max-plus-one"),
            pytest.param(-1, None, id="negative"),
            pytest.param(True, None, id="true"),
            pytest.param(False, None, id="false"),
            pytest.param(3.0, None, id="float"),
            pytest.param("42", 42, id="digits"),
            pytest.param("\uff14\uff12", None, id="fullwidth"),
            pytest.param(b"42", None, id="bytes"),
            pytest.param(None, None, id="none"),
        ],
    )
    def test_parse_id(self, value: Any, expected: int | None) -> None:
        """parse_id returns the int for an ID and None for anything else."""
        assert parse_id(value) == expected


class TestShapes:
    """A part of the wrong shape is rejected alone, with a reason; the rest is published."""

    @pytest.mark.parametrize(
        "ids",
        [
            pytest.param(5, id="number"),
            pytest.param("1,2", id="comma-string"),
            pytest.param("12", id="digit-string"),
            pytest.param({"a": 1}, id="object"),
            pytest.param(True, id="true"),
        ],
    )
    def test_list_that_is_not_a_list(self, ids: Any) -> None:
        """An entity whose IDs are not a list gives one ids_not_list rejection."""
        payload = parse({"Add": {"Guests": ids, "Clients": [9]}})
        assert payload.rejections == (Rejection("ids_not_list", ("Add", "Guests"), ids),)
        assert triples(payload) == [("add", "clients", 9)]

    @pytest.mark.parametrize(
        "section",
        [
            pytest.param([1], id="list"),
            pytest.param(5, id="number"),
            pytest.param("Guests", id="string"),
            pytest.param(False, id="false"),
        ],
    )
    def test_section_that_is_not_an_object(self, section: Any) -> None:
        """An action whose value is not an object gives one section_not_object rejection."""
        payload = parse({"Add": section, "Delete": {"Guests": [3]}})
        assert payload.rejections == (Rejection("section_not_object", ("Add",), section),)
        assert triples(payload) == [("delete", "guests", 3)]

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("Gu.ests", id="dot"),
            pytest.param("a#b", id="hash"),
            pytest.param("guests*", id="star"),
            pytest.param("gu ests", id="inner-space"),
            pytest.param("gu-ests", id="dash"),
            pytest.param("", id="empty"),
            pytest.param("   ", id="only-spaces"),
            pytest.param("x" * 65, id="65-chars"),
            pytest.param("gu\u0435sts", id="cyrillic-e"),
            pytest.param("\u212alients", id="kelvin-sign-lowers-to-ascii-k"),
            pytest.param("GUEST\u0130", id="dotted-capital-i-lowers-to-i"),
        ],
    )
    def test_bad_entity_name(self, name: str) -> None:
        """An entity key that is not one safe routing-key word is rejected with its IDs."""
        payload = parse({"Add": {name: [1, 2], "Guests": [3]}})
        assert payload.rejections == (Rejection("bad_entity_name", ("Add", name), [1, 2]),)
        assert triples(payload) == [("add", "guests", 3)]

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("A.dd", id="dot"),
            pytest.param("a#b", id="hash"),
            pytest.param("add*", id="star"),
            pytest.param("", id="empty"),
            pytest.param("x" * 65, id="65-chars"),
            pytest.param("add.guests", id="dotted-words"),
        ],
    )
    def test_bad_action_name(self, name: str) -> None:
        """An action key that is not one safe routing-key word is rejected with its section."""
        section = {"Guests": [1]}
        payload = parse({name: section, "Update": {"Rooms": [160]}})
        assert payload.rejections == (Rejection("bad_action_name", (name,), section),)
        assert triples(payload) == [("update", "rooms", 160)]

    def test_name_of_64_chars_is_forwarded(self) -> None:
        """The longest allowed name, 64 characters, is a name."""
        name = "y" * 64
        assert triples(parse({name.upper(): {"Guests": [1]}})) == [(name, "guests", 1)]

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            pytest.param("Guests", "guests", id="title"),
            pytest.param(" Update ", "update", id="spaces"),
            pytest.param("snake_case_2", "snake_case_2", id="underscore-digit"),
            pytest.param("a.b", None, id="dot"),
            pytest.param("a*", None, id="star"),
            pytest.param("", None, id="empty"),
            pytest.param("z" * 65, None, id="too-long"),
        ],
    )
    def test_normalize_name(self, key: str, expected: str | None) -> None:
        """normalize_name trims and lower-cases, or refuses what is not [a-z0-9_]{1,64}."""
        assert normalize_name(key) == expected


class TestRepeats:
    """Within one request a repeated (entity, action, ID) is published once."""

    def test_repeat_within_one_list(self) -> None:
        """The same ID twice in one list, once as a string, is one event."""
        assert triples(parse({"Add": {"Guests": [5, 6, 5, "5"]}})) == [
            ("add", "guests", 5),
            ("add", "guests", 6),
        ]

    def test_repeat_across_spellings_of_entity(self) -> None:
        """ "Guests" and " guests" are one entity: a shared ID is published once."""
        payload = parse({"Delete": {"Guests": [1, 2], " guests": [2, 3]}})
        assert triples(payload) == [("delete", "guests", 1), ("delete", "guests", 2), ("delete", "guests", 3)]

    def test_repeat_across_spellings_of_action(self) -> None:
        """ "Add" and "add" are one action: a shared ID is published once."""
        payload = parse({"Add": {"Guests": [1]}, "add": {"Guests": [1, 2]}})
        assert triples(payload) == [("add", "guests", 1), ("add", "guests", 2)]

    def test_same_id_under_other_action_or_entity_is_not_a_repeat(self) -> None:
        """One ID added and deleted, or a guest and a client with one ID, are distinct events."""
        payload = parse({"Add": {"Guests": [1], "Clients": [1]}, "Delete": {"Guests": [1]}})
        assert triples(payload) == [("add", "guests", 1), ("add", "clients", 1), ("delete", "guests", 1)]


class TestOrder:
    """Add, then Update, then Delete; entities in the order received; IDs in list order."""

    def test_actions_in_fixed_order_whatever_the_body_says(self) -> None:
        """Delete written first is still published after Add and Update."""
        doc = {"Delete": {"Guests": [3]}, "Update": {"Guests": [2]}, "Add": {"Guests": [1]}}
        assert triples(parse(doc)) == [("add", "guests", 1), ("update", "guests", 2), ("delete", "guests", 3)]

    def test_entities_in_order_received(self) -> None:
        """Entities keep the order of their keys in the body."""
        doc = {"Add": {"Rooms": [1], "Guests": [2], "Companies": [3], "Clients": [4]}}
        assert [event.entity for event in parse(doc).events] == ["rooms", "guests", "companies", "clients"]

    def test_ids_in_list_order(self) -> None:
        """IDs keep their list order, not numeric order."""
        assert [e.id for e in parse({"Delete": {"Clients": [30, 10, "20", 0]}}).events] == [30, 10, 20, 0]

    def test_unknown_actions_after_known_in_order_received(self) -> None:
        """Unknown actions follow Add, Update, Delete, in the order the body has them."""
        doc = {
            "Merge": {"Clients": [1]},
            "Delete": {"Guests": [2]},
            "Archive": {"Guests": [3]},
            "Add": {"Guests": [4]},
        }
        assert triples(parse(doc)) == [
            ("add", "guests", 4),
            ("delete", "guests", 2),
            ("merge", "clients", 1),
            ("archive", "guests", 3),
        ]


class TestUnknownNames:
    """Unknown action or entity keys are forwarded lower-cased."""

    def test_unknown_entity(self) -> None:
        """An undocumented entity is published under its lower-cased name."""
        payload = parse({"Add": {"Suites": [7]}})
        assert triples(payload) == [("add", "suites", 7)]

    def test_unknown_action(self) -> None:
        """An undocumented action is published under its lower-cased, trimmed name."""
        payload = parse({" MERGE ": {"Clients": [1]}})
        assert triples(payload) == [("merge", "clients", 1)]

    def test_unknown_name_with_wrong_shape_is_rejected(self) -> None:
        """An unknown action is forwarded only if shaped like a section."""
        payload = parse({"Merge": [1, 2]})
        assert payload == Payload((), (Rejection("section_not_object", ("Merge",), [1, 2]),))


class TestInvalidBody:
    """A body that is not a JSON object is refused whole."""

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b"[" * 50_000 + b"]" * 50_000, id="50000-nested-arrays"),
            pytest.param(b'{"Add":' + b"[" * 50_000 + b"]" * 50_000 + b"}", id="50000-nested-in-object"),
            pytest.param(b'{"Add":{"Guests":[' + b"[" * 70 + b"]" * 70 + b"]}}", id="72-deep-id"),
        ],
    )
    def test_too_deep(self, raw: bytes) -> None:
        """Bodies nested past 64 levels raise InvalidBody too_deep, whatever the decoder allows."""
        with pytest.raises(InvalidBody) as caught:
            parse_payload(raw)
        assert caught.value.code == "too_deep"
        assert caught.value.status == 400

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"   ", id="blank"),
            pytest.param(b"{", id="cut-short"),
            pytest.param(b"Add=12766", id="form-encoded"),
            pytest.param(b"{'Add': null}", id="single-quotes"),
            pytest.param(b'{"Add":null}}', id="trailing-brace"),
            pytest.param(b'{"Add":NaN}', id="nan"),
            pytest.param(b'{"Add":Infinity}', id="infinity-literal"),
            pytest.param(b'{"Add":{"Guests":[-Infinity]}}', id="minus-infinity-literal"),
            pytest.param(b"\xef\xbb\xbf", id="only-a-bom"),
            pytest.param(b"\xef\xbb\xbf\xef\xbb\xbf{}", id="two-boms"),
            pytest.param(b'\xff\xfe{"Add":null}', id="not-utf8"),
            pytest.param(b'{"Add":"\\ud800"}', id="lone-surrogate"),
        ],
    )
    def test_not_json(self, raw: bytes) -> None:
        """Bytes that are not JSON raise InvalidBody not_json."""
        with pytest.raises(InvalidBody) as caught:
            parse_payload(raw)
        assert caught.value.code == "not_json"
        assert caught.value.status == 400

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b"[]", id="empty-array"),
            pytest.param(b'[{"Add":null}]', id="array-of-object"),
            pytest.param(b'"Add"', id="string"),
            pytest.param(b"12766", id="number"),
            pytest.param(b"1.5", id="float"),
            pytest.param(b"null", id="null"),
            pytest.param(b"true", id="true"),
            pytest.param(b"false", id="false"),
        ],
    )
    def test_not_an_object(self, raw: bytes) -> None:
        """JSON that is not an object raises InvalidBody not_an_object."""
        with pytest.raises(InvalidBody) as caught:
            parse_payload(raw)
        assert caught.value.code == "not_an_object"
        assert caught.value.status == 400

    def test_empty_object(self) -> None:
        """{} is a valid body with nothing in it."""
        assert parse_payload(b"{}") == Payload((), ())

    def test_white_space_around_object(self) -> None:
        """White space around the object is still JSON."""
        assert triples(parse_payload(b' \r\n{"Add":{"Guests":[1]}}\n ')) == [("add", "guests", 1)]

    def test_decode_body_returns_the_object(self) -> None:
        """decode_body hands back the object as decoded."""
        assert decode_body(b'{"Add":{"Guests":[1]}}') == {"Add": {"Guests": [1]}}

    def test_split_events_takes_a_decoded_object(self) -> None:
        """split_events applies the same rules to an already decoded body."""
        payload = split_events({"add ": {"Guests": ["8", 8, "x"]}})
        assert triples(payload) == [("add", "guests", 8)]
        assert payload.rejections == (Rejection("bad_id", ("add ", "Guests", 2), "x"),)


class TestDuplicateKeys:
    """A key repeated inside one object is a rejected part of its own, never silently dropped."""

    def test_repeated_entity_key(self) -> None:
        """The first list is used; the repeat is a duplicate_key part at its path, with its value."""
        payload = parse_payload(b'{"Add":{"Guests":[1],"Guests":[2]}}')
        assert triples(payload) == [("add", "guests", 1)]
        assert payload.rejections == (Rejection("duplicate_key", ("Add", "Guests"), [2]),)

    def test_repeated_action_key(self) -> None:
        """A repeated top-level key: the repeat's whole section is the rejected part."""
        payload = parse_payload(b'{"Delete":{"Rooms":[5]},"Delete":{"Rooms":[6]},"Add":{"Clients":[7]}}')
        assert triples(payload) == [("add", "clients", 7), ("delete", "rooms", 5)]
        assert payload.rejections == (Rejection("duplicate_key", ("Delete",), {"Rooms": [6]}),)

    def test_repeat_inside_a_rejected_value(self) -> None:
        """A repeat deep inside a part that is rejected anyway is reported with its full path too."""
        payload = parse_payload(b'{"Add":{"Guests":[1,{"id":2,"id":3}]}}')
        assert triples(payload) == [("add", "guests", 1)]
        assert payload.rejections == (
            Rejection("bad_id", ("Add", "Guests", 1), {"id": 2}),
            Rejection("duplicate_key", ("Add", "Guests", 1, "id"), 3),
        )

    def test_every_repeat_counts(self) -> None:
        """Three of the same key: two repeats, two parts."""
        payload = parse_payload(b'{"Add":{"Guests":[1],"Guests":[2],"Guests":[3]}}')
        assert [r.path for r in payload.rejections] == [("Add", "Guests"), ("Add", "Guests")]
        assert [r.value for r in payload.rejections] == [[2], [3]]

    def test_spellings_are_not_repeats(self) -> None:
        """Keys that differ as written are different keys (they name the same entity and merge)."""
        payload = parse_payload(b'{"Add":{"Guests":[1],"guests ":[2]}}')
        assert triples(payload) == [("add", "guests", 1), ("add", "guests", 2)]
        assert payload.rejections == ()

    def test_colons_inside_strings_do_not_hide_a_repeat(self) -> None:
        """Colons in string values do not make a repeat pass unseen."""
        payload = parse_payload(b'{"Add":{"Guests":["a:b",1],"Guests":[2]}}')
        assert triples(payload) == [("add", "guests", 1)]
        assert [r.reason for r in payload.rejections] == ["bad_id", "duplicate_key"]

    def test_repeats_count_against_max_ids(self) -> None:
        """Repeats are rejected parts, and rejected parts count against BRIDGE_MAX_IDS."""
        with pytest.raises(TooLarge):
            parse_payload(b'{"Add":{"Guests":[1],"Guests":[2],"Guests":[3]}}', max_ids=2)


class TestNumbers:
    """A number JSON allows but no ID can be rejects that part, not the whole body."""

    @pytest.mark.parametrize(
        "literal",
        [
            pytest.param(b"1e400", id="1e400"),
            pytest.param(b"-1e400", id="minus-1e400"),
            pytest.param(b"9" * 400, id="400-digit-integer"),
            pytest.param(b"-" + b"9" * 400, id="minus-400-digit-integer"),
            pytest.param(b"1" + b"0" * 5000, id="5001-digit-integer"),
        ],
    )
    def test_huge_number_is_one_rejected_part(self, literal: bytes) -> None:
        """The huge number is a bad_id part holding its text as sent; its siblings are published."""
        payload = parse_payload(b'{"Add":{"Guests":[1,' + literal + b',2]},"Delete":{"Rooms":[3]}}')
        assert triples(payload) == [("add", "guests", 1), ("add", "guests", 2), ("delete", "rooms", 3)]
        assert payload.rejections == (Rejection("bad_id", ("Add", "Guests", 1), BigNumber(literal.decode())),)

    @pytest.mark.parametrize(
        ("literal", "value"),
        [
            pytest.param(b"18446744073709551616", BigNumber("18446744073709551616"), id="2^64"),
            pytest.param(b"-9223372036854775809", BigNumber("-9223372036854775809"), id="below-int64"),
            pytest.param(b"18446744073709551615", 2**64 - 1, id="2^64-1"),
            pytest.param(b"9223372036854775808", 2**63, id="2^63"),
        ],
    )
    def test_integers_past_2_63_keep_their_digits(self, literal: bytes, value: Any) -> None:
        """Integers past 2^63 are kept exactly (never as a float): as an int up to 2^64-1, else as text."""
        payload = parse_payload(b'{"Add":{"Guests":[' + literal + b"]}}")
        assert payload.rejections == (Rejection("bad_id", ("Add", "Guests", 0), value),)
        kept = payload.rejections[0].value
        assert type(kept) is type(value)

    def test_huge_number_as_a_section(self) -> None:
        """A huge number where a section belongs is that section rejected, not the body."""
        payload = parse_payload(b'{"Add":1e400,"Delete":{"Rooms":[3]}}')
        assert triples(payload) == [("delete", "rooms", 3)]
        assert payload.rejections == (Rejection("section_not_object", ("Add",), BigNumber("1e400")),)


class TestEncodings:
    """A UTF-8 byte order mark is ignored and UTF-16 is decoded; anything else not JSON is refused."""

    BODY = '{"Add":{"Guests":[1]},"Update ":{"Rooms":["160"]}}'
    EXPECTED: ClassVar[list[Triple]] = [("add", "guests", 1), ("update", "rooms", 160)]

    @pytest.mark.parametrize(
        ("raw", "charset"),
        [
            pytest.param(b"\xef\xbb\xbf" + BODY.encode(), None, id="utf-8-bom"),
            pytest.param(b"\xef\xbb\xbf" + BODY.encode(), "utf-8", id="utf-8-bom-utf-8-charset"),
            pytest.param(BODY.encode("utf-16"), None, id="utf-16-bom"),
            pytest.param(b"\xff\xfe" + BODY.encode("utf-16-le"), None, id="utf-16le-bom"),
            pytest.param(b"\xfe\xff" + BODY.encode("utf-16-be"), None, id="utf-16be-bom"),
            pytest.param(BODY.encode("utf-16-le"), "utf-16", id="charset-utf-16-little-endian"),
            pytest.param(BODY.encode("utf-16-be"), "utf-16", id="charset-utf-16-big-endian"),
            pytest.param(BODY.encode("utf-16-le"), "utf-16le", id="charset-utf-16le"),
            pytest.param(BODY.encode("utf-16-be"), "UTF-16BE", id="charset-utf-16be"),
            pytest.param(b"\xff\xfe" + BODY.encode("utf-16-le"), "utf-16le", id="charset-utf-16le-with-bom"),
        ],
    )
    def test_decoded(self, raw: bytes, charset: str | None) -> None:
        """The same events whatever the encoding."""
        assert triples(parse_payload(raw, charset=charset)) == self.EXPECTED

    @pytest.mark.parametrize(
        ("raw", "charset"),
        [
            pytest.param(BODY.encode("utf-16-le"), None, id="utf-16-without-bom-or-charset"),
            pytest.param(b"\xff\xfe" + BODY.encode("utf-16-le")[:-1], None, id="utf-16-odd-length"),
            pytest.param(
                b"\xff\xfe" + b"\x00\xd8" + BODY.encode("utf-16-le"), None, id="utf-16-lone-surrogate"
            ),
            pytest.param(BODY.encode("utf-32"), None, id="utf-32"),
            pytest.param(BODY.encode("latin-1") + b"\xe9", "latin-1", id="latin-1"),
        ],
    )
    def test_still_refused(self, raw: bytes, charset: str | None) -> None:
        """Anything else that is not JSON in UTF-8 or UTF-16 is refused as not_json."""
        with pytest.raises(InvalidBody) as caught:
            parse_payload(raw, charset=charset)
        assert caught.value.code == "not_json"


class TestMaxIds:
    """Rejected parts count against BRIDGE_MAX_IDS, with the IDs."""

    def test_rejected_parts_outside_lists_count(self) -> None:
        """Bad names and sections count, beside the IDs: one over the bound is refused."""
        raw = b'{"a.b":1,"c.d":2,"Add":{"Guests":[1]}}'
        assert len(parse_payload(raw, max_ids=3).rejections) == 2
        with pytest.raises(TooLarge):
            parse_payload(raw, max_ids=2)


def _seed_bodies() -> dict[str, bytes]:
    """Each logged body of the seed page, keyed by its log time: the bytes after "Jam_N:"."""
    line = re.compile(rb"^ \d{4}-\d\d-\d\d (\d\d:\d\d:\d\d,\d{3}) INFO main - Jam_\d+:(.*)$")
    bodies = {}
    for text in SEED.read_bytes().splitlines():
        match = line.match(text)
        if match:
            bodies[match[1].decode()] = match[2]
    return bodies


SEED_BODIES = _seed_bodies()
# Read off the seed page by hand.
SEED_EVENTS: dict[str, list[Triple]] = {
    "16:38:18,149": [("add", "clients", 12766)],
    "16:38:23,727": [("update", "clients", 12766)],
    "16:25:03,915": [("add", "guests", 23061)],
    "16:25:06,086": [("update", "guests", 23061)],
    "16:25:37,882": [("delete", "guests", 23061)],
    "16:39:51,286": [("add", "companies", 1148)],
    "09:30:01,923": [("update", "rooms", 160)],
}
# The page cut these two short: each lacks its closing brace.
SEED_CUT_SHORT = ["16:39:14,928", "16:40:09,021"]


class TestSeedPage:
    """Every body on Servio's own webhook page, exactly as printed."""

    def test_page_has_the_nine_bodies(self) -> None:
        """All nine log lines are read, so none of them goes untested."""
        assert sorted(SEED_BODIES) == sorted([*SEED_EVENTS, *SEED_CUT_SHORT])

    def test_bodies_keep_the_stray_spaces(self) -> None:
        """The raw bytes include the page's stray spaces ("Update ", "Companies" :null, [ 1148])."""
        assert b'"Update ":null' in SEED_BODIES["16:38:18,149"]
        assert b'"Companies" :null' in SEED_BODIES["16:38:23,727"]
        assert b'"Companies":[ 1148]' in SEED_BODIES["16:40:09,021"]

    @pytest.mark.parametrize("logged_at", list(SEED_EVENTS))
    def test_complete_body(self, logged_at: str) -> None:
        """A complete body gives exactly its events and no rejection."""
        payload = parse_payload(SEED_BODIES[logged_at])
        assert triples(payload) == SEED_EVENTS[logged_at]
        assert payload.rejections == ()

    @pytest.mark.parametrize("logged_at", SEED_CUT_SHORT)
    def test_body_cut_short(self, logged_at: str) -> None:
        """A body cut short on the page is not JSON."""
        with pytest.raises(InvalidBody) as caught:
            parse_payload(SEED_BODIES[logged_at])
        assert caught.value.code == "not_json"

    def test_cut_short_body_completed_gives_its_events(self) -> None:
        """With its closing brace, the longest seed body gives one update then seven deletes."""
        payload = parse_payload(SEED_BODIES["16:39:14,928"] + b"}")
        deleted = [2414, 3430, 12691, 12698, 12726, 12743, 12766]
        assert triples(payload) == [("update", "clients", 1405)] + [("delete", "clients", i) for i in deleted]


# ---- Hypothesis: plausible Servio bodies in random spellings ------------------------------------

ACTIONS = ["Add", "Update", "Delete", "Merge"]
ENTITIES = ["Clients", "Guests", "Companies", "Rooms", "Suites"]
ACTION_RANK = {"add": 0, "update": 1, "delete": 2}
PAD = st.sampled_from(["", " ", "  ", "\t", "\n", " \r\n"])
BAD_NAMES = st.sampled_from(["Gu.ests", "a#b", "", "guests*", "x" * 65, "add.guests"])


def spelled(name: str) -> st.SearchStrategy[str]:
    """``name`` in random letter case with random white space around it."""
    flags = st.lists(st.booleans(), min_size=len(name), max_size=len(name))
    return st.builds(
        lambda ups, left, right: (
            left + "".join(c.upper() if u else c.lower() for c, u in zip(name, ups, strict=True)) + right
        ),
        flags,
        PAD,
        PAD,
    )


VALID_ITEMS: st.SearchStrategy[tuple[Any, int | None]] = st.one_of(
    st.integers(0, MAX_ID).map(lambda n: (n, n)),
    st.integers(0, 5000).map(lambda n: (n, n)),  # small IDs, so repeats happen
    st.integers(0, MAX_ID).map(lambda n: (str(n), n)),
    st.tuples(st.integers(0, 5000), st.integers(1, 3)).map(lambda t: ("0" * t[1] + str(t[0]), t[0])),
)
INVALID_ITEMS: st.SearchStrategy[tuple[Any, int | None]] = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), -1),
    st.integers(2**63, 2**64 - 1),
    st.none(),
    st.text().filter(lambda s: not re.fullmatch(r"[0-9]{1,32}", s)),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.sampled_from(["id", "Guests"]), st.integers(0, 9), max_size=2),
).map(lambda v: (v, None))
NOT_LISTS = st.one_of(
    st.integers(), st.text(), st.booleans(), st.dictionaries(st.text(max_size=3), st.integers())
)


@st.composite
def servio_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], dict[tuple[str, str], list[int]], int]:
    """A body, the valid IDs per (action, entity) in order written, and the count of bad parts."""
    doc: dict[str, Any] = {}
    valid: dict[tuple[str, str], list[int]] = {}
    bad = 0
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["section", "section", "section", "null", "not_object", "bad_name"]))
        action = draw(st.sampled_from(ACTIONS))
        key = draw(BAD_NAMES) if kind == "bad_name" else draw(spelled(action))
        if key in doc:
            continue
        if kind == "null":
            doc[key] = None
            continue
        if kind == "not_object":
            doc[key] = draw(st.one_of(st.lists(st.integers(0, 9), max_size=3), st.integers(), st.text()))
            bad += 1
            continue
        section, section_valid, section_bad = draw(sections(action.lower()))
        doc[key] = section
        if kind == "bad_name":
            # The whole section is one rejected part; nothing inside it is looked at.
            bad += 1
            continue
        bad += section_bad
        for pair, ids in section_valid.items():
            valid.setdefault(pair, []).extend(ids)
    return doc, valid, bad


@st.composite
def sections(draw: st.DrawFn, action: str) -> tuple[dict[str, Any], dict[tuple[str, str], list[int]], int]:
    """One action's object, its valid IDs per (action, entity), and its count of bad parts."""
    section: dict[str, Any] = {}
    valid: dict[tuple[str, str], list[int]] = {}
    bad = 0
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["list", "list", "list", "null", "not_list", "bad_name"]))
        entity = draw(st.sampled_from(ENTITIES))
        key = draw(BAD_NAMES) if kind == "bad_name" else draw(spelled(entity))
        if key in section:
            continue
        if kind == "null":
            section[key] = None
        elif kind == "not_list":
            section[key] = draw(NOT_LISTS)
            bad += 1
        else:
            items = draw(st.lists(st.one_of(VALID_ITEMS, INVALID_ITEMS), max_size=8))
            section[key] = [value for value, _ in items]
            if kind == "bad_name":
                bad += 1
                continue
            ids = [parsed for _, parsed in items if parsed is not None]
            bad += len(items) - len(ids)
            valid.setdefault((action, entity.lower()), []).extend(ids)
    return section, valid, bad


# Each body is dozens of draws: fewer examples keep the unit run fast while still mixing every kind.
BODIES = settings(max_examples=50, deadline=None)


class TestProperties:
    """Invariants over many plausible bodies."""

    @BODIES
    @given(servio_bodies())
    def test_every_valid_id_appears_exactly_once(
        self, case: tuple[dict[str, Any], dict[tuple[str, str], list[int]], int]
    ) -> None:
        """Each valid ID appears once per (action, entity), in order of first mention."""
        doc, valid, _ = case
        payload = parse(doc)
        counts = Counter(triples(payload))
        assert all(count == 1 for count in counts.values())
        published: dict[tuple[str, str], list[int]] = {}
        for action, entity, id_ in triples(payload):
            published.setdefault((action, entity), []).append(id_)
        expected = {pair: list(dict.fromkeys(ids)) for pair, ids in valid.items() if ids}
        assert published == expected

    @BODIES
    @given(servio_bodies())
    def test_nothing_invalid_is_published(
        self, case: tuple[dict[str, Any], dict[tuple[str, str], list[int]], int]
    ) -> None:
        """Every event has a plain int ID in range and one-word lower-case names."""
        payload = parse(case[0])
        for event in payload.events:
            assert type(event.id) is int
            assert 0 <= event.id <= MAX_ID
            assert re.fullmatch(r"[a-z0-9_]{1,64}", event.action)
            assert re.fullmatch(r"[a-z0-9_]{1,64}", event.entity)

    @BODIES
    @given(servio_bodies())
    def test_one_rejection_per_bad_part(
        self, case: tuple[dict[str, Any], dict[tuple[str, str], list[int]], int]
    ) -> None:
        """The number of rejections is the number of malformed parts put in."""
        doc, _, bad = case
        assert len(parse(doc).rejections) == bad

    @BODIES
    @given(servio_bodies())
    def test_known_actions_lead_in_order(
        self, case: tuple[dict[str, Any], dict[tuple[str, str], list[int]], int]
    ) -> None:
        """Add events come before Update, Update before Delete, and unknown actions last."""
        ranks = [ACTION_RANK.get(event.action, 3) for event in parse(case[0]).events]
        assert ranks == sorted(ranks)

    @given(st.binary())
    def test_arbitrary_bytes_raise_only_invalid_body(self, raw: bytes) -> None:
        """Any bytes either parse or raise InvalidBody."""
        try:
            parse_payload(raw)
        except InvalidBody as exc:
            code = exc.code
        else:
            code = "parsed"
        assert code in ("parsed", "not_json", "not_an_object")

    @settings(deadline=None)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text()
            | st.sampled_from(ACTIONS + ENTITIES),
            lambda children: (
                st.lists(children)
                | st.dictionaries(st.sampled_from(ACTIONS + ENTITIES) | st.text(), children)
            ),
        )
    )
    def test_arbitrary_json_raises_only_invalid_body(self, value: Any) -> None:
        """Any JSON value either parses into events with valid IDs or raises InvalidBody."""
        raw = json.dumps(value).encode()
        if not isinstance(value, dict):
            with pytest.raises(InvalidBody) as caught:
                parse_payload(raw)
            assert caught.value.code == "not_an_object"
            return
        payload = parse_payload(raw)
        assert all(isinstance(event, Event) and 0 <= event.id <= MAX_ID for event in payload.events)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=30,
)


class TestServioShape:
    """The shortcut that spares walking a body Servio-shaped bodies for its depth."""

    @settings(deadline=None)
    @given(st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=4))
    def test_said_only_of_bodies_three_deep_at_most(self, doc: dict[str, Any]) -> None:
        """Whatever the body, the shortcut never passes one deeper than 3 levels."""
        if servio_shaped(doc):
            assert nesting_depth(doc) <= 3

    def test_said_of_the_documented_body_and_not_of_a_deeper_one(self) -> None:
        assert servio_shaped({"Add": {"Clients": [12766], "Guests": None}, "Update": None, "Delete": None})
        assert not servio_shaped({"Add": {"Guests": [[1]]}})
        assert not servio_shaped({"Add": {"Guests": {"x": 1}}})
        assert not servio_shaped({"Add": [1]})
