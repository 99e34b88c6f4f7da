"""Re-parsing dead letters with today's parser (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bridge.redrive import reparse

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
