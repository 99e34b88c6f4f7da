"""What a confirmed message counts as in the metrics, told from the message alone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.core.deadletter import build_invalid_body
from bridge.core.message import build_event
from bridge.core.names import KNOWN_KEYS
from bridge.core.outbound import Outbound, Webhook
from bridge.core.payload import Event
from bridge.core.record import decode_record, encode_record
from bridge.metrics import confirm_key

WEBHOOK = Webhook("d", "Jam_8", datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC))
TEMPLATE = "servio.{entity}.{action}"


def event(action: str, entity: str) -> Outbound:
    return build_event(Event(action, entity, 1), WEBHOOK, exchange="servio", template=TEMPLATE)


class TestConfirmKey:
    """Events count by routing key and undocumented names; dead letters by reason."""

    @pytest.mark.parametrize(("entity", "action"), KNOWN_KEYS, ids=[f"{e}-{a}" for e, a in KNOWN_KEYS])
    def test_documented_names_are_not_counted_as_unknown(self, entity: str, action: str) -> None:
        """Every documented (entity, action) counts as published with no unknown name."""
        assert confirm_key(event(action, entity)) == ("published", f"servio.{entity}.{action}", "", "")

    @pytest.mark.parametrize(
        ("action", "entity", "expected"),
        [
            pytest.param("add", "suites", ("", "suites"), id="unknown-entity"),
            pytest.param("merge", "clients", ("merge", ""), id="unknown-action"),
            pytest.param("merge", "suites", ("merge", "suites"), id="both-unknown"),
        ],
    )
    def test_undocumented_names_are_named(self, action: str, entity: str, expected: tuple[str, str]) -> None:
        """An undocumented action or entity is named in the key, in the spool's copy too."""
        built = event(action, entity)
        for message in (built, decode_record(encode_record(built))):
            assert confirm_key(message)[2:] == expected

    def test_the_body_is_not_read(self) -> None:
        """A body that says something else does not change the key: the message's names do."""
        built = event("merge", "suites")
        lying = Outbound(
            built.exchange,
            built.routing_key,
            b'{"action":"add","entity":"guests"}',
            built.message_id,
            built.timestamp,
            built.order_key,
            entity=built.entity,
            action=built.action,
        )
        assert confirm_key(lying) == ("published", "servio.suites.merge", "merge", "suites")

    def test_dead_letter_counts_by_reason(self) -> None:
        """A dead letter counts under its reason, also as read back from the spool."""
        letter = build_invalid_body(b"{", WEBHOOK, exchange="servio", reason="not_json", detail="d")
        assert confirm_key(letter) == ("dead", "not_json")
        assert confirm_key(decode_record(encode_record(letter))) == ("dead", "not_json")
