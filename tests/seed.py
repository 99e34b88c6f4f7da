"""The payloads of Servio's own webhook page, exactly as printed there (stray spaces included)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SEED_FILE = Path(__file__).resolve().parent / "data" / "servio-webhook-settings.txt"
_LINE = re.compile(r"INFO main - (?P<source>Jam_\d+):(?P<body>.*)$")


@dataclass(frozen=True)
class SeedPayload:
    source: str
    body: bytes
    line: int


def seed_payloads() -> list[SeedPayload]:
    """Every logged webhook of the seed page: the label Servio printed and the raw body after it."""
    found = []
    for number, text in enumerate(SEED_FILE.read_text(encoding="utf-8").splitlines(), start=1):
        match = _LINE.search(text)
        if match:
            found.append(SeedPayload(match["source"], match["body"].encode(), number))
    return found


# Worked out by hand from the page: (routing key, id) in publishing order; None = cut short.
EXPECTED: list[list[tuple[str, int]] | None] = [
    [("servio.clients.add", 12766)],
    [("servio.clients.update", 12766)],
    None,  # ..."Guests" :null}  -- the top-level object is never closed
    [("servio.guests.add", 23061)],
    [("servio.guests.update", 23061)],
    [("servio.guests.delete", 23061)],
    [("servio.companies.add", 1148)],
    None,  # ..."Delete":null  -- the top-level object is never closed
    [("servio.rooms.update", 160)],
]
