"""Servio's parsing rules: a webhook body -> its events and its rejected parts.

Pure: no I/O, no clock, no logging. ``parse_payload`` takes the raw bytes Servio sent (decoded by
``body``) and returns every (action, entity, ID) event in publishing order plus every part it
rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.core.body import (
    MAX_DEPTH,
    Repeat,
    decode_exactly,
    json_type,
    nesting_depth,
    servio_shaped,
    utf8_body,
)
from bridge.core.names import KNOWN_ACTIONS
from bridge.errors import InvalidBody, TooLarge

MAX_ID = 2**63 - 1
DEFAULT_MAX_IDS = 100_000
# Names become words of a routing key and of a message_id: keep them to one safe word.
_NAME = re.compile(r"[a-z0-9_]{1,64}")
_DIGITS = re.compile(r"[0-9]{1,32}")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in Servio: an ``action`` on the ``entity`` with this ``id``."""

    action: str
    entity: str
    id: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A malformed part of an otherwise valid body, kept as a dead letter.

    ``path`` locates the part in the body as Servio sent it (keys as written, list indexes).
    """

    reason: str
    path: tuple[str | int, ...]
    value: Any


@dataclass(frozen=True, slots=True)
class Payload:
    """What one webhook body says: the events in publishing order and the rejected parts."""

    events: tuple[Event, ...]
    rejections: tuple[Rejection, ...]


def decode_body(raw: bytes, *, charset: str | None = None) -> dict[str, Any]:
    """Decode a webhook body into its top-level JSON object, at most ``MAX_DEPTH`` deep.

    Raises:
        InvalidBody: the bytes are not JSON, the JSON is not an object, or it nests too deep.
    """
    doc, _, _ = _decode(utf8_body(raw, charset))
    return doc


def _decode(data: bytes) -> tuple[dict[str, Any], tuple[Repeat, ...], bool]:
    """The object, its repeated keys as rejected parts, and whether every number is exact.

    orjson first (a tenth of the cost); the exact decoder only when orjson cannot say: a number it
    refuses, or fewer keys than colons (a repeated key, or a colon inside a string).
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if message.startswith("depth limit exceeded"):
            raise InvalidBody("too_deep", f"body nests deeper than {MAX_DEPTH} levels") from None
        if not message.startswith("number"):
            raise InvalidBody("not_json", f"body is not valid JSON: {exc}") from None
        return decode_exactly(data)
    if not isinstance(doc, dict):
        raise InvalidBody("not_an_object", f"body is JSON {json_type(doc)}, not an object")
    # Every key is followed by one colon outside strings: as many keys as colons means no key was
    # repeated (orjson keeps the last silently) and no colon sits in a string.
    if _count_keys(doc) != data.count(b":"):
        return decode_exactly(data)
    return doc, (), False


def _count_keys(doc: dict[str, Any]) -> int:
    """Keys in every object of ``doc``.

    Raises:
        InvalidBody: ``doc`` nests deeper than ``MAX_DEPTH``.
    """
    if servio_shaped(doc):
        return len(doc) + sum(len(section) for section in doc.values() if isinstance(section, dict))
    if nesting_depth(doc) > MAX_DEPTH:
        raise InvalidBody("too_deep", f"body nests deeper than {MAX_DEPTH} levels")
    keys = 0
    stack: list[Any] = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            keys += len(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return keys


def parse_payload(raw: bytes, *, max_ids: int = DEFAULT_MAX_IDS, charset: str | None = None) -> Payload:
    """Split a Servio webhook body into events, rejecting malformed parts one by one.

    ``charset`` is the Content-Type's: it says only whether a body without a BOM is UTF-16.

    Raises:
        InvalidBody: the body as a whole is not a JSON object, or nests too deep.
        TooLarge: the body lists more than ``max_ids`` IDs and rejected parts.
    """
    data = utf8_body(raw, charset)
    doc, repeats, exact = _decode(data)
    payload = split_events(doc, max_ids=max_ids, repeats=_duplicate_keys(repeats))
    if payload.rejections and not exact and _LONG_NUMBER.search(data):
        # orjson reads an integer past 2^64 as a float; such a number can only be in a rejected
        # part, whose dead letter must keep its digits.
        doc, repeats, _ = decode_exactly(data)
        payload = split_events(doc, max_ids=max_ids, repeats=_duplicate_keys(repeats))
    return payload


def _duplicate_keys(repeats: tuple[Repeat, ...]) -> tuple[Rejection, ...]:
    return tuple(Rejection("duplicate_key", path, value) for path, value in repeats)


_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def count_ids(doc: dict[str, Any]) -> int:
    """How many ID slots (valid or not) the ID lists of a decoded body hold."""
    return sum(
        len(ids)
        for section in doc.values()
        if isinstance(section, dict)
        for ids in section.values()
        if isinstance(ids, list)
    )


def split_events(
    doc: dict[str, Any], *, max_ids: int = DEFAULT_MAX_IDS, repeats: tuple[Rejection, ...] = ()
) -> Payload:
    """Apply Servio's parsing rules to a decoded body (see PRODUCT.md, "Parsing rules");
    ``repeats`` are its repeated keys, rejected parts too.

    Raises:
        TooLarge: the body lists more than ``max_ids`` IDs and rejected parts; counted before any
            event is built.
    """
    if (count := count_ids(doc) + len(repeats)) > max_ids:
        raise _too_many(count, max_ids)
    rejections: list[Rejection] = []
    in_lists = 0
    # action -> entity -> ids, both in order of first appearance; Add/Update/Delete lead.
    sections: dict[str, dict[str, list[int]]] = {name: {} for name in KNOWN_ACTIONS}
    for key, value in doc.items():
        action = normalize_name(key)
        if action is None:
            rejections.append(Rejection("bad_action_name", (key,), value))
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            rejections.append(Rejection("section_not_object", (key,), value))
            continue
        entities = sections.setdefault(action, {})
        for entity_key, ids in value.items():
            entity = normalize_name(entity_key)
            if entity is None:
                rejections.append(Rejection("bad_entity_name", (key, entity_key), ids))
                continue
            if ids is None:
                continue
            if not isinstance(ids, list):
                rejections.append(Rejection("ids_not_list", (key, entity_key), ids))
                continue
            bucket = entities.setdefault(entity, [])
            for index, item in enumerate(ids):
                parsed = parse_id(item)
                if parsed is None:
                    in_lists += 1
                    rejections.append(Rejection("bad_id", (key, entity_key, index), item))
                else:
                    bucket.append(parsed)
    # Parts outside ID lists (names, shapes) were not in the first count.
    if (count := count + len(rejections) - in_lists) > max_ids:
        raise _too_many(count, max_ids)
    rejections.extend(repeats)
    events: list[Event] = []
    seen: set[Event] = set()
    for action, entities in sections.items():
        for entity, ids in entities.items():
            for id_ in ids:
                event = Event(action, entity, id_)
                if event not in seen:
                    seen.add(event)
                    events.append(event)
    return Payload(tuple(events), tuple(rejections))


def _too_many(count: int, max_ids: int) -> TooLarge:
    return TooLarge(
        "too_many_ids", f"body lists {count} IDs and rejected parts, over BRIDGE_MAX_IDS ({max_ids})"
    )


def normalize_name(key: str) -> str | None:
    """Servio's key as a routing-key word: trimmed, lower-cased; None if not ``[a-z0-9_]{1,64}``."""
    try:
        return _NAMES[key]
    except KeyError:
        pass
    name = key.strip()
    # Only ASCII is lower-cased: "\u212alients" (a Kelvin sign) must not become "klients".
    result = name.lower() if name.isascii() and _NAME.fullmatch(name.lower()) else None
    if len(_NAMES) < _NAMES_KEPT and len(key) <= 128:
        _NAMES[key] = result
    return result


# The same dozen keys come in every body ("Add", "Guests", "Update ", ...): their answers are kept,
# up to a bound in number and length, so a sender inventing keys cannot grow it.
_NAMES: dict[str, str | None] = {}
_NAMES_KEPT = 1024


def parse_id(value: Any) -> int | None:
    """An ID as an int, or None: non-negative int up to 2^63-1, or a string of ASCII digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_ID else None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
        return number if number <= MAX_ID else None
    return None
