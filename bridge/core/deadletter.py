"""Dead letters: what the bridge could not publish as events, kept whole in ``<exchange>.invalid``.

Pure. A request's rejected parts make one letter (``RejectedParts``), a body refused whole makes
one letter of its raw bytes; every letter is bounded, whatever the body, so the broker takes it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from bridge.core.body import BigNumber
from bridge.core.outbound import JSON, RAW, Outbound, Webhook, compact_json, invalid_queue, received_at_text
from bridge.core.payload import Rejection

# Bounds of a dead letter, so that any body of at most BRIDGE_MAX_BODY makes one letter the broker
# takes: each header value, each value and key of a rejected part, and the list of parts (past it,
# parts are counted and the raw body kept instead).
HEADER_BYTES = 256
VALUE_BYTES = 256
KEY_CHARS = 64
PARTS_BYTES = 256 * 1024
REJECTED_PARTS = "rejected_parts"
# A string this short is at most VALUE_BYTES as JSON, whatever it escapes (6 bytes a character).
_SHORT_TEXT = (VALUE_BYTES - 2) // 6


def build_rejections(
    rejections: Sequence[Rejection], webhook: Webhook, *, exchange: str, body: bytes | None = None
) -> list[Outbound]:
    """The one dead letter of a request's rejected parts ([] when there are none)."""
    if not rejections:
        return []
    parts = RejectedParts()
    parts.add(rejections)
    return [parts.letter(webhook, exchange=exchange, body=body)]


class RejectedParts:
    """The rejected parts of one request, rendered into its one dead letter a few at a time.

    Each part is bounded (``render_part``), and so is the list: parts past ``PARTS_BYTES`` are
    counted, not listed, and the letter keeps the raw body instead, so nothing is lost.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._bytes = 0
        self._full = False
        self.total = 0

    def add(self, rejections: Iterable[Rejection]) -> None:
        for rejection in rejections:
            self.total += 1
            if not self._full:
                self.add_rendered(render_part(rejection), counted=True)

    def add_rendered(self, part: bytes, *, counted: bool = False) -> None:
        """A part already rendered (as a letter holds it), e.g. one that redrive leaves as it was."""
        if not counted:
            self.total += 1
        if self._full or self._bytes + len(part) + 1 > PARTS_BYTES:
            self._full = True
            return
        self._parts.append(part)
        self._bytes += len(part) + 1

    def letter(self, webhook: Webhook, *, exchange: str, body: bytes | None) -> Outbound:
        head: dict[str, Any] = {
            "reason": REJECTED_PARTS,
            "source": webhook.source,
            "delivery_id": webhook.delivery_id,
            "received_at": received_at_text(webhook),
            "parts_total": self.total,
        }
        kept = b""
        if omitted := self.total - len(self._parts):
            head["parts_omitted"] = omitted
            if body is not None:
                # Base64 needs no escaping: joined as bytes, not copied through a JSON encoder.
                kept = b'"body_base64":"' + base64.b64encode(body) + b'",'
        encoded = orjson.dumps(head)
        letter = b"".join((encoded[:-1], b",", kept, b'"parts":[', b",".join(self._parts), b"]}"))
        return _dead_letter(webhook, exchange, letter, JSON, REJECTED_PARTS, 0)


def render_part(rejection: Rejection) -> bytes:
    """One rejected part as the dead letter lists it: its path, its reason and its value.

    The value is given whole when its compact JSON is at most ``VALUE_BYTES`` and every number in
    it fits 64 bits (so any JSON reader gets it right); otherwise as ``value_json``, the text of
    that JSON cut to ``VALUE_BYTES`` (a number past 64 bits keeps its every digit), with
    ``value_bytes`` its whole length. A key past ``KEY_CHARS`` in the path is given as its start.
    """
    part: dict[str, Any] = {"path": [_path_element(p) for p in rejection.path], "reason": rejection.reason}
    value = rejection.value
    if _plainly_short(value):
        part["value"] = value
    else:
        try:
            # A BigNumber is not a dataclass to write as an object here: refused, written below.
            text = orjson.dumps(value, option=orjson.OPT_PASSTHROUGH_DATACLASS)
            exact = True
        except orjson.JSONEncodeError:
            # A number past 64 bits, or deeper than orjson writes.
            text = _dumps_deep(value)
            exact = False
        if exact and len(text) <= VALUE_BYTES:
            part["value"] = value
        else:
            part["value_json"] = text[:VALUE_BYTES].decode("utf-8", "ignore")
            part["value_bytes"] = len(text)
            part["truncated"] = len(text) > VALUE_BYTES
    return compact_json(part)


def _plainly_short(value: Any) -> bool:
    """A scalar whose JSON is at most VALUE_BYTES and read right by any JSON reader, told without
    encoding it."""
    kind = type(value)
    if value is None or kind is bool or kind is float:
        return True
    if kind is str:
        return len(value) <= _SHORT_TEXT
    return kind is int and -(2**63) <= value < 2**64


def _path_element(element: str | int) -> str | int | dict[str, Any]:
    if isinstance(element, str) and len(element) > KEY_CHARS:
        return {"key_prefix": element[:KEY_CHARS], "key_length": len(element)}
    return element


def _dumps_deep(value: Any) -> bytes:
    """Compact JSON like ``orjson.dumps``, for decoded JSON of any depth (no recursion) and any
    number (``BigNumber`` as written)."""
    out: list[bytes] = []
    # Bytes on the stack are punctuation already encoded; decoded JSON never holds bytes.
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, list):
            out.append(b"[")
            stack.append(b"]")
            for index in reversed(range(len(item))):
                stack.append(item[index])
                if index:
                    stack.append(b",")
        elif isinstance(item, dict):
            out.append(b"{")
            stack.append(b"}")
            entries = list(item.items())
            for index in reversed(range(len(entries))):
                key, child = entries[index]
                stack.append(child)
                stack.append(orjson.dumps(key) + b":")
                if index:
                    stack.append(b",")
        elif isinstance(item, BigNumber):
            out.append(item.text.encode())
        elif type(item) is int:
            out.append(str(item).encode())  # orjson writes 64 bits at most
        else:
            out.append(orjson.dumps(item))
    return b"".join(out)


def build_invalid_body(raw: bytes, webhook: Webhook, *, exchange: str, reason: str, detail: str) -> Outbound:
    """The dead letter for a body refused whole: the raw bytes as received."""
    return _dead_letter(webhook, exchange, raw, RAW, reason, 0, detail=detail)


def _dead_letter(
    webhook: Webhook,
    exchange: str,
    body: bytes,
    content_type: str,
    reason: str,
    index: int,
    **extra: str,
) -> Outbound:
    headers = {
        name: bound_header(value)
        for name, value in {
            "reason": reason,
            "source": webhook.source,
            "delivery_id": webhook.delivery_id,
            "received_at": received_at_text(webhook),
            **extra,
        }.items()
    }
    return Outbound(
        exchange="",
        routing_key=invalid_queue(exchange),
        body=body,
        message_id=f"{webhook.delivery_id}.invalid.{index}",
        timestamp=int(webhook.received_at.timestamp()),
        # Dead letters carry no order between themselves; a unique key lets them pipeline.
        order_key=f"{webhook.delivery_id}.invalid.{index}",
        content_type=content_type,
        headers=headers,
        reason=headers["reason"],
    )


def bound_header(text: str) -> str:
    """``text`` cut to at most ``HEADER_BYTES`` of UTF-8, on a character boundary."""
    if len(text) <= HEADER_BYTES // 4:
        return text
    data = text.encode("utf-8", "replace")
    return text if len(data) <= HEADER_BYTES else data[:HEADER_BYTES].decode("utf-8", "ignore")
