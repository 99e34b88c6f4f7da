"""Redrive: give the dead letters in ``<exchange>.invalid`` another go with today's parser.

A dead letter that now parses is published as the events the bridge would have published
when it arrived (same delivery_id, so the same message_ids: a second redrive, or a crash
between publish and ack, only makes duplicates consumers already drop), then acknowledged.
The rest is put back unchanged at the tail of the queue (never nacked with requeue: a quorum
queue's delivery limit would in the end drop it).
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from bridge.amqp.broker import DeadLetter, DeadLetterQueue
from bridge.amqp.publisher import build_publisher
from bridge.core.deadletter import REJECTED_PARTS, RejectedParts, build_rejections
from bridge.core.message import DEFAULT_SOURCE, build_event
from bridge.core.outbound import JSON, Outbound, Webhook, invalid_queue
from bridge.core.payload import Event, Payload, parse_payload, split_events
from bridge.errors import InvalidBody
from bridge.settings import Settings


@dataclass(frozen=True, slots=True)
class RedriveReport:
    examined: int = 0
    redriven: int = 0
    published: int = 0
    left: int = 0


def reparse(
    body: bytes, headers: Mapping[str, str], *, exchange: str, template: str, letter_id: str
) -> list[Outbound]:
    """What today's parser makes of one dead letter: its events (and its parts still refused,
    as new dead letters); [] when it still yields no event.

    Raises:
        ValueError: the message is not a dead letter this bridge wrote.
    """
    try:
        delivery = Webhook(
            headers["delivery_id"],
            headers.get("source", DEFAULT_SOURCE),
            datetime.fromisoformat(headers["received_at"]),
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a servio-bridge dead letter: {exc!r}") from None
    if headers.get("reason") == REJECTED_PARTS:
        return _reparse_letter(body, delivery, exchange=exchange, template=template, letter_id=letter_id)
    # A letter of one part (``path`` header) or a whole body, as earlier releases wrote them.
    payload = _reparse_part(body) if "path" in headers else _reparse_body(body)
    if payload is None or not payload.events:
        return []
    messages = [build_event(e, delivery, exchange=exchange, template=template) for e in payload.events]
    # Parts still refused get ids of their own, distinct from the letter they came from.
    for index, letter in enumerate(build_rejections(payload.rejections, delivery, exchange=exchange)):
        unique = f"{letter_id}.{index}"
        messages.append(dataclasses.replace(letter, message_id=unique, order_key=unique))
    return messages


def _reparse_body(body: bytes) -> Payload | None:
    try:
        return parse_payload(body)
    except InvalidBody:
        return None


def _reparse_letter(
    body: bytes, delivery: Webhook, *, exchange: str, template: str, letter_id: str
) -> list[Outbound]:
    """The events of the parts that parse now, and one letter of those still refused, under an id
    of its own; [] when no part gives an event."""
    try:
        letter: Any = orjson.loads(body)
        parts = letter["parts"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return []
    if not isinstance(parts, list):
        return []
    if isinstance(letter.get("body_base64"), str):
        # Parts were omitted from this letter: the raw body it kept holds them all.
        try:
            raw = base64.b64decode(letter["body_base64"], validate=True)
        except ValueError:
            return []
        payload = _reparse_body(raw)
        if payload is None or not payload.events:
            return []
        events: list[Event] = list(payload.events)
        kept = RejectedParts()
        kept.add(payload.rejections)
    else:
        events = []
        seen: set[Event] = set()
        kept = RejectedParts()
        for part in parts:
            parsed = _reparse_listed_part(part)
            if parsed is None or not parsed.events:
                kept.add_rendered(orjson.dumps(part))
                continue
            fresh = [event for event in parsed.events if event not in seen]
            seen.update(fresh)
            events.extend(fresh)
            kept.add(parsed.rejections)
    if not events:
        return []
    messages = [build_event(e, delivery, exchange=exchange, template=template) for e in events]
    if kept.total:
        unique = f"{letter_id}.0"
        rest = kept.letter(delivery, exchange=exchange, body=None)
        messages.append(dataclasses.replace(rest, message_id=unique, order_key=unique))
    return messages


def _reparse_listed_part(part: Any) -> Payload | None:
    """A part of a letter as it would parse today, where it was; None when it cannot be rebuilt
    (its value or a key was cut) or should not be (a repeated key stays refused in its body)."""
    if not isinstance(part, dict) or "value" not in part or part.get("reason") == "duplicate_key":
        return None
    return _split_at(part.get("path"), part["value"])


def _reparse_part(body: bytes) -> Payload | None:
    """Rebuild the smallest body that holds the part where it was, and split that."""
    try:
        part: Any = orjson.loads(body)
        path, value = part["path"], part["value"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return _split_at(path, value)


def _split_at(path: Any, value: Any) -> Payload | None:
    if not isinstance(path, list) or not 1 <= len(path) <= 3 or not all(isinstance(p, str) for p in path[:2]):
        return None
    if len(path) == 1:
        doc = {path[0]: value}
    elif len(path) == 2:
        doc = {path[0]: {path[1]: value}}
    else:
        doc = {path[0]: {path[1]: [value]}}
    return split_events(doc)


async def redrive(
    settings: Settings, *, limit: int | None = None, confirm_within: float = 30.0
) -> RedriveReport:
    """Redrive up to ``limit`` dead letters (default: as many as the queue held at the start).

    Raises:
        BrokerError: RabbitMQ could not be reached, or did not confirm within ``confirm_within`` s.
    """
    publisher = build_publisher(settings, name="servio-bridge redrive")
    queue_name = invalid_queue(settings.exchange)
    report = RedriveReport()
    try:
        await publisher.connect()
        async with DeadLetterQueue(settings.amqp_urls, queue_name) as queue:
            todo = queue.size if limit is None else min(limit, queue.size)
            for _ in range(todo):
                letter = await queue.take()
                if letter is None:
                    break
                try:
                    messages = reparse(
                        letter.body,
                        letter.headers,
                        exchange=settings.exchange,
                        template=settings.routing_key,
                        letter_id=letter.message_id or f"redrive.{report.examined}",
                    )
                except ValueError:
                    messages = []
                if messages:
                    report = dataclasses.replace(
                        report, redriven=report.redriven + 1, published=report.published + len(messages)
                    )
                else:
                    messages = [_unchanged(letter, queue_name)]
                    report = dataclasses.replace(report, left=report.left + 1)
                await publisher.publish(messages, deadline=time.monotonic() + confirm_within)
                await letter.ack()
                report = dataclasses.replace(report, examined=report.examined + 1)
    finally:
        await publisher.close()
    return report


def _unchanged(letter: DeadLetter, queue: str) -> Outbound:
    key = letter.message_id or f"redrive.kept.{time.monotonic_ns()}"
    return Outbound(
        exchange="",
        routing_key=queue,
        body=letter.body,
        message_id=key,
        timestamp=letter.timestamp if letter.timestamp is not None else int(time.time()),
        order_key=key,
        content_type=letter.content_type or JSON,
        headers=letter.headers,
    )
