"""Events -> outbound messages: routing key, body, properties and a stable message_id.

Pure: the clock and the delivery id come in through ``Webhook``. The spool stores messages as
records (``record``), so a re-publish after a restart is byte-for-byte the first publish.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass

from bridge.core.deadletter import RejectedParts
from bridge.core.outbound import (
    Outbound,
    Webhook,
    compact_json,
    received_at_text,
)
from bridge.core.payload import Event, Payload

PLACEHOLDERS = frozenset({"entity", "action", "source"})
DEFAULT_SOURCE = "default"
# Messages built or encoded between two turns of the event loop: a 10,000-ID webhook would
# otherwise hold every other request for the whole of it (~100 ms here).
CHUNK = 1000


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
    """Unique per (webhook, entity, action, ID) and the same on every re-publish."""
    return f"{delivery_id}.{event.action}.{event.entity}.{event.id}"


def build_messages(
    payload: Payload, webhook: Webhook, *, exchange: str, template: str, body: bytes | None = None
) -> list[Outbound]:
    """Every message one webhook produces: its events in order, then the one dead letter of its
    rejected parts (``body`` is the raw body, kept in it when not every part can be listed)."""
    return [
        message
        for chunk in message_chunks(
            payload,
            webhook,
            exchange=exchange,
            template=template,
            size=max(len(payload.events), len(payload.rejections), 1),
            body=body,
        )
        for message in chunk
    ]


def message_chunks(
    payload: Payload,
    webhook: Webhook,
    *,
    exchange: str,
    template: str,
    size: int = CHUNK,
    body: bytes | None = None,
) -> Iterator[list[Outbound]]:
    """``build_messages`` in lists of at most ``size`` (its dead letter last), so that a caller on
    the event loop can let other requests run between two of them; while the rejected parts are
    rendered, ``size`` at a time, the lists between are empty."""
    stamp = _stamp(webhook)
    events = payload.events
    for start in range(0, len(events), size):
        yield [
            build_event(event, webhook, exchange=exchange, template=template, stamp=stamp)
            for event in events[start : start + size]
        ]
    rejections = payload.rejections
    if rejections:
        parts = RejectedParts()
        for start in range(0, len(rejections), size):
            parts.add(rejections[start : start + size])
            if start + size < len(rejections):
                yield []
        yield [parts.letter(webhook, exchange=exchange, body=body)]


@dataclass(frozen=True, slots=True)
class _Stamp:
    """A webhook's arrival time as messages carry it, worked out once for all of its events."""

    text: str
    seconds: int


def _stamp(webhook: Webhook) -> _Stamp:
    return _Stamp(received_at_text(webhook), int(webhook.received_at.timestamp()))


def build_event(
    event: Event, webhook: Webhook, *, exchange: str, template: str, stamp: _Stamp | None = None
) -> Outbound:
    """The message for one event."""
    if stamp is None:
        stamp = _stamp(webhook)
    body = compact_json(
        {
            "entity": event.entity,
            "action": event.action,
            "id": event.id,
            "source": webhook.source,
            "delivery_id": webhook.delivery_id,
            "received_at": stamp.text,
        }
    )
    return Outbound(
        exchange=exchange,
        routing_key=render_routing_key(
            template, entity=event.entity, action=event.action, source=webhook.source
        ),
        body=body,
        message_id=message_id(webhook.delivery_id, event),
        timestamp=stamp.seconds,
        order_key=f"{event.entity}:{event.id}",
        entity=event.entity,
        action=event.action,
    )
