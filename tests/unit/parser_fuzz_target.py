"""An atheris target for the pure parser: any bytes either parse, or raise one of our refusals.

Run by ``test_parser_fuzzing.py`` in a subprocess (atheris owns the process while it fuzzes).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from datetime import UTC, datetime

    from bridge.core.deadletter import build_invalid_body
    from bridge.core.message import build_messages
    from bridge.core.outbound import Webhook
    from bridge.core.payload import parse_payload
    from bridge.errors import InvalidBody, TooLarge

DELIVERY = Webhook("fuzz", "fuzz", datetime(2026, 1, 1, tzinfo=UTC))


def one_input(data: bytes) -> None:
    """Anything but a planned refusal escapes and is a finding; a refusal keeps the raw bytes."""
    try:
        payload = parse_payload(data, max_ids=1000)
    except (InvalidBody, TooLarge) as exc:
        letter = build_invalid_body(data, DELIVERY, exchange="x", reason=exc.code, detail=exc.detail)
        if letter.body != data:
            raise AssertionError("a dead letter must keep the raw bytes") from None
        return
    build_messages(payload, DELIVERY, exchange="x", template="servio.{entity}.{action}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
