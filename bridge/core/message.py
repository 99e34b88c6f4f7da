"""The outbound RabbitMQ message: routing key, body, properties and a stable message_id.

Pure: the clock and the delivery id come in through ``Delivery``. The spool stores messages
as records made here, so a re-publish after a restart is byte-for-byte the first publish.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.core.payload import BigNumber, Event, Payload, Rejection

APP_ID = "servio-bridge"
JSON = "application/json"
RAW = "application/octet-stream"
PERSISTENT = 2
PLACEHOLDERS = frozenset({"entity", "action", "source"})
DEFAULT_SOURCE = "default"
# Messages built or encoded between two turns of the event loop: a 10,000-ID webhook would
# otherwise hold every other request for the whole of it (~100 ms here).
CHUNK = 1000
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


@dataclass(frozen=True, slots=True)
class Delivery:
    """One accepted webhook request: who sent it (``source``), its id, and when it arrived."""

    delivery_id: str
    source: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message ready to publish. ``exchange`` "" is the default exchange (dead letters).

    ``order_key`` groups messages whose relative order must survive retries.
    """

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    timestamp: int
    order_key: str
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    app_id: str = APP_ID
    delivery_mode: int = PERSISTENT


def received_at_text(delivery: Delivery) -> str:
    """The arrival time as ISO 8601 in UTC with microseconds (``…+00:00``)."""
    received = delivery.received_at
    if received.tzinfo is not UTC:
        received = received.astimezone(UTC)
    return received.isoformat(timespec="microseconds")


def check_template(template: str) -> None:
    """Accept a routing-key template with only known, plain placeholders.

    Raises:
        ValueError: an unknown placeholder, a format spec, or a broken brace.
    """
    if not template:
        raise ValueError("must not be empty")
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{name}}} (known: {known})")
        if spec or conv:
            raise ValueError(f"placeholder {{{name}}} takes no format spec or conversion")


def render_routing_key(template: str, *, entity: str, action: str, source: str) -> str:
    """The routing key for one event, lower-case."""
    key = (template, entity, action, source)
    try:
        return _ROUTING_KEYS[key]
    except KeyError:
        pass
    rendered = template.format(entity=entity, action=action, source=source).lower()
    if len(_ROUTING_KEYS) < _ROUTING_KEYS_KEPT:
        _ROUTING_KEYS[key] = rendered
    return rendered


# The same few (entity, action, source) come in every webhook: their keys are kept, up to a bound,
# so senders inventing names or sources cannot grow it.
_ROUTING_KEYS: dict[tuple[str, str, str, str], str] = {}
_ROUTING_KEYS_KEPT = 1024


def message_id(delivery_id: str, event: Event) -> str:
    """Unique per (delivery, entity, action, ID) and the same on every re-publish."""
    return f"{delivery_id}.{event.action}.{event.entity}.{event.id}"


def build_messages(
    payload: Payload, delivery: Delivery, *, exchange: str, template: str, body: bytes | None = None
) -> list[Outbound]:
    """Every message one webhook produces: its events in order, then the one dead letter of its
    rejected parts (``body`` is the raw body, kept in it when not every part can be listed)."""
    return [
        message
        for chunk in message_chunks(
            payload,
            delivery,
            exchange=exchange,
            template=template,
            size=max(len(payload.events), len(payload.rejections), 1),
            body=body,
        )
        for message in chunk
    ]


def message_chunks(
    payload: Payload,
    delivery: Delivery,
    *,
    exchange: str,
    template: str,
    size: int = CHUNK,
    body: bytes | None = None,
) -> Iterator[list[Outbound]]:
    """``build_messages`` in lists of at most ``size`` (its dead letter last), so that a caller on
    the event loop can let other requests run between two of them; while the rejected parts are
    rendered, ``size`` at a time, the lists between are empty."""
    stamp = _stamp(delivery)
    events = payload.events
    for start in range(0, len(events), size):
        yield [
            build_event(event, delivery, exchange=exchange, template=template, stamp=stamp)
            for event in events[start : start + size]
        ]
    rejections = payload.rejections
    if rejections:
        parts = RejectedParts()
        for start in range(0, len(rejections), size):
            parts.add(rejections[start : start + size])
            if start + size < len(rejections):
                yield []
        yield [parts.letter(delivery, exchange=exchange, body=body)]


@dataclass(frozen=True, slots=True)
class _Stamp:
    """A delivery's arrival time as messages carry it, worked out once for all of its events."""

    text: str
    seconds: int


def _stamp(delivery: Delivery) -> _Stamp:
    return _Stamp(received_at_text(delivery), int(delivery.received_at.timestamp()))


def build_event(
    event: Event, delivery: Delivery, *, exchange: str, template: str, stamp: _Stamp | None = None
) -> Outbound:
    """The message for one event."""
    if stamp is None:
        stamp = _stamp(delivery)
    body = _compact_json(
        {
            "entity": event.entity,
            "action": event.action,
            "id": event.id,
            "source": delivery.source,
            "delivery_id": delivery.delivery_id,
            "received_at": stamp.text,
        }
    )
    return Outbound(
        exchange=exchange,
        routing_key=render_routing_key(
            template, entity=event.entity, action=event.action, source=delivery.source
        ),
        body=body,
        message_id=message_id(delivery.delivery_id, event),
        timestamp=stamp.seconds,
        order_key=f"{event.entity}:{event.id}",
    )


def invalid_queue(exchange: str) -> str:
    """The dead-letter queue for an exchange."""
    return f"{exchange}.invalid"


def build_rejections(
    rejections: Sequence[Rejection], delivery: Delivery, *, exchange: str, body: bytes | None = None
) -> list[Outbound]:
    """The one dead letter of a request's rejected parts ([] when there are none)."""
    if not rejections:
        return []
    parts = RejectedParts()
    parts.add(rejections)
    return [parts.letter(delivery, exchange=exchange, body=body)]


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

    def letter(self, delivery: Delivery, *, exchange: str, body: bytes | None) -> Outbound:
        head: dict[str, Any] = {
            "reason": REJECTED_PARTS,
            "source": delivery.source,
            "delivery_id": delivery.delivery_id,
            "received_at": received_at_text(delivery),
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
        return _dead_letter(delivery, exchange, letter, JSON, REJECTED_PARTS, 0)


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
    return _compact_json(part)


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


def build_invalid_body(
    raw: bytes, delivery: Delivery, *, exchange: str, reason: str, detail: str
) -> Outbound:
    """The dead letter for a body refused whole: the raw bytes as received."""
    return _dead_letter(delivery, exchange, raw, RAW, reason, 0, detail=detail)


def _dead_letter(
    delivery: Delivery,
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
            "source": delivery.source,
            "delivery_id": delivery.delivery_id,
            "received_at": received_at_text(delivery),
            **extra,
        }.items()
    }
    return Outbound(
        exchange="",
        routing_key=invalid_queue(exchange),
        body=body,
        message_id=f"{delivery.delivery_id}.invalid.{index}",
        timestamp=int(delivery.received_at.timestamp()),
        # Dead letters carry no order between themselves; a unique key lets them pipeline.
        order_key=f"{delivery.delivery_id}.invalid.{index}",
        content_type=content_type,
        headers=headers,
    )


def bound_header(text: str) -> str:
    """``text`` cut to at most ``HEADER_BYTES`` of UTF-8, on a character boundary."""
    if len(text) <= HEADER_BYTES // 4:
        return text
    data = text.encode("utf-8", "replace")
    return text if len(data) <= HEADER_BYTES else data[:HEADER_BYTES].decode("utf-8", "ignore")


def encode_record(message: Outbound) -> bytes:
    """The message as bytes for the spool."""
    return _compact_json(
        [
            message.exchange,
            message.routing_key,
            message.message_id,
            message.timestamp,
            message.order_key,
            message.content_type,
            dict(message.headers),
            message.body.decode("latin-1"),
        ]
    )


def _compact_json(value: Any) -> bytes:
    """``orjson.dumps(value)`` in a bytes object of its own size.

    orjson's result keeps a 4 KiB allocation behind it whatever its length: a 10,000-ID webhook
    held 80 MB of messages and records instead of 5 MB.
    """
    return memoryview(orjson.dumps(value)).tobytes()


def decode_record(record: bytes) -> Outbound:
    """A message back from the spool.

    Raises:
        ValueError: the record is not one that ``encode_record`` wrote.
    """
    fields: Any = orjson.loads(record)
    # A spool file damaged in place can hold any JSON: refuse what encode_record cannot write.
    if not isinstance(fields, list) or len(fields) != 8:
        raise ValueError("record is not a list of 8 fields")
    exchange, routing_key, mid, timestamp, order_key, content_type, headers, body = fields
    texts = (exchange, routing_key, mid, order_key, content_type, body)
    if not all(isinstance(text, str) for text in texts):
        raise ValueError("record has a non-string field")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise ValueError("record timestamp is not an integer")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("record headers are not a mapping of strings")
    return Outbound(
        exchange=exchange,
        routing_key=routing_key,
        body=body.encode("latin-1"),
        message_id=mid,
        timestamp=timestamp,
        order_key=order_key,
        content_type=content_type,
        headers=headers,
    )
