"""Re-parsing dead letters with today's parser (pure)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from bridge.cli.redrive import reparse

HEADERS = {"delivery_id": "d1", "source": "Jam_1", "received_at": "2026-11-28T10:15:02.123456+00:00"}


def part(path: list[Any], value: Any) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps({"reason": "bad_id", "path": path, "value": value, **HEADERS})
    return body, {**HEADERS, "reason": "bad_id", "path": orjson.dumps(path).decode()}


class TestReparse:
    @pytest.mark.parametrize(
        ("body", "headers", "expected"),
        [
            (b'{"Add":{"Guests":[1,"2"]}}', HEADERS, ["d1.add.guests.1", "d1.add.guests.2"]),
            (*part(["Update", "Rooms", 3], "160"), ["d1.update.rooms.160"]),
            (*part(["Delete", "Clients"], [5]), ["d1.delete.clients.5"]),
            (*part(["Add "], {"Guests": [9]}), ["d1.add.guests.9"]),
        ],
        ids=["whole-body", "one-id", "id-list", "section"],
    )
    def test_accepted_now_gives_the_original_ids(
        self, body: bytes, headers: dict[str, str], expected: list[str]
    ) -> None:
        """What now parses gets the message_ids it would have had on arrival (stable across redrives)."""
        messages = reparse(
            body, headers, exchange="servio", template="servio.{entity}.{action}", letter_id="x"
        )
        assert [m.message_id for m in messages] == expected
        assert all(orjson.loads(m.body)["source"] == "Jam_1" for m in messages)

    @pytest.mark.parametrize(
        ("body", "headers"),
        [
            (b"{", HEADERS),
            (b"{}", HEADERS),
            part(["Add", "Guests", 0], "x"),
            part(["Add", "Guests", 0], True),
        ],
        ids=["still-not-json", "nothing-in-it", "bad-id", "bool-id"],
    )
    def test_still_refused_gives_nothing(self, body: bytes, headers: dict[str, str]) -> None:
        """A letter that still yields no event is left alone (an empty list)."""
        assert (
            reparse(body, headers, exchange="servio", template="servio.{entity}.{action}", letter_id="x")
            == []
        )

    def test_parts_still_refused_become_letters_of_their_own(self) -> None:
        """A body now partly accepted: its events, plus its still-bad parts under ids of their own."""
        messages = reparse(
            b'{"Add":{"Guests":[1,true]}}',
            HEADERS,
            exchange="s",
            template="s.{entity}.{action}",
            letter_id="d1.invalid.0",
        )
        assert [(m.routing_key, m.message_id) for m in messages] == [
            ("s.guests.add", "d1.add.guests.1"),
            ("s.invalid", "d1.invalid.0.0"),
        ]

    def test_not_a_bridge_letter(self) -> None:
        """A message without the bridge's headers is refused as such."""
        with pytest.raises(ValueError, match="not a servio-bridge dead letter"):
            reparse(b"{}", {}, exchange="s", template="s.{entity}.{action}", letter_id="x")


def letter(*parts: dict[str, Any], **extra: Any) -> tuple[bytes, dict[str, str]]:
    """A dead letter of rejected parts as the bridge writes it: one per request."""
    body = orjson.dumps(
        {"reason": "rejected_parts", **HEADERS, "parts_total": len(parts), **extra, "parts": list(parts)}
    )
    return body, {**HEADERS, "reason": "rejected_parts"}


def reparsed(body: bytes, headers: dict[str, str]) -> list[Any]:
    return reparse(body, headers, exchange="s", template="s.{entity}.{action}", letter_id="d1.invalid.0")


class TestReparseOneLetterPerRequest:
    """The letter holding every rejected part of a request: what now parses goes out, the rest stays."""

    def test_parts_that_parse_now_are_published_and_the_rest_kept(self) -> None:
        """Parts accepted now give their events; those still refused go on in one letter of their own."""
        still_bad = {"path": ["Add", "Guests", 1], "reason": "bad_id", "value": "x"}
        messages = reparsed(
            *letter(
                {"path": ["Update", "Rooms", 0], "reason": "bad_id", "value": "160"},
                still_bad,
                {"path": ["Delete", "Clients"], "reason": "ids_not_list", "value": [5, 6]},
            )
        )
        assert [(m.routing_key, m.message_id) for m in messages] == [
            ("s.rooms.update", "d1.update.rooms.160"),
            ("s.clients.delete", "d1.delete.clients.5"),
            ("s.clients.delete", "d1.delete.clients.6"),
            ("s.invalid", "d1.invalid.0.0"),
        ]
        kept = orjson.loads(messages[-1].body)
        assert kept["parts"] == [still_bad]
        assert kept["parts_total"] == 1
        assert messages[-1].headers["reason"] == "rejected_parts"

    @pytest.mark.parametrize(
        "part",
        [
            pytest.param({"path": ["Add", "Guests", 0], "reason": "bad_id", "value": True}, id="still-bad"),
            pytest.param(
                {"path": ["Add", "Guests"], "reason": "duplicate_key", "value": [1]}, id="repeated-key"
            ),
            pytest.param(
                {
                    "path": ["Add", "Guests", 0],
                    "reason": "bad_id",
                    "value_json": "18446744073709551616",
                    "value_bytes": 20,
                    "truncated": False,
                },
                id="value-as-json-text",
            ),
            pytest.param(
                {
                    "path": [{"key_prefix": "A", "key_length": 100}, "Guests", 0],
                    "reason": "bad_id",
                    "value": 1,
                },
                id="cut-key",
            ),
        ],
    )
    def test_nothing_parses_nothing_changes(self, part: dict[str, Any]) -> None:
        """A letter none of whose parts gives an event is left alone (repeats and cut parts included)."""
        assert reparsed(*letter(part)) == []

    def test_letter_with_the_raw_body_reparses_the_body(self) -> None:
        """A letter that kept the raw body (parts omitted) is redriven from that body."""
        raw = b'{"Add":{"Guests":[7,"8"]}}'
        body, headers = letter(
            {"path": ["Add", "Guests", 1], "reason": "bad_id", "value": "8"},
            parts_omitted=5,
            body_base64=base64.b64encode(raw).decode(),
        )
        messages = reparsed(body, headers)
        assert [m.message_id for m in messages] == ["d1.add.guests.7", "d1.add.guests.8"]
