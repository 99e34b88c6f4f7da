"""The Servio webhook body and the rules that split it into events.

Pure: no I/O, no clock, no logging. ``parse_payload`` takes the raw bytes Servio sent and
returns every (action, entity, ID) event in publishing order plus every part it rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.errors import InvalidBody, TooLarge

KNOWN_ACTIONS = ("add", "update", "delete")
KNOWN_ENTITIES = ("clients", "guests", "companies", "rooms")
MAX_ID = 2**63 - 1
# Servio's bodies are 3 deep. Rejected parts are re-encoded into dead letters, and orjson refuses
# to encode past 254 levels, so a deeper body is refused whole (its raw bytes kept) up front.
MAX_DEPTH = 64
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

    @property
    def unknown_names(self) -> tuple[str, ...]:
        """Action and entity names Servio did not document, as forwarded (for metrics)."""
        seen: dict[str, None] = {}
        for event in self.events:
            if event.action not in KNOWN_ACTIONS:
                seen[f"action:{event.action}"] = None
            if event.entity not in KNOWN_ENTITIES:
                seen[f"entity:{event.entity}"] = None
        return tuple(seen)


def decode_body(raw: bytes) -> dict[str, Any]:
    """Decode a webhook body into its top-level JSON object, at most ``MAX_DEPTH`` deep.

    Raises:
        InvalidBody: the bytes are not JSON, the JSON is not an object, or it nests too deep.
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise InvalidBody("too_deep", f"body nests deeper than {MAX_DEPTH} levels") from None
        raise InvalidBody("not_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidBody("not_an_object", f"body is JSON {_json_type(doc)}, not an object")
    if not servio_shaped(doc) and nesting_depth(doc) > MAX_DEPTH:
        raise InvalidBody("too_deep", f"body nests deeper than {MAX_DEPTH} levels")
    return doc


def servio_shaped(doc: dict[str, Any]) -> bool:
    """True when ``doc`` nests no deeper than Servio's bodies do (an object of objects of arrays of
    scalars, or less), so at most 3 levels: the common case, told without walking a stack."""
    for section in doc.values():
        if isinstance(section, dict):
            for ids in section.values():
                if isinstance(ids, list):
                    for item in ids:
                        if isinstance(item, (dict, list)):
                            return False
                elif isinstance(ids, dict):
                    return False
        elif isinstance(section, list):
            return False
    return True


def nesting_depth(doc: Any) -> int:
    """How many arrays and objects deep ``doc`` goes (a scalar is 0); iterative, so any depth is safe."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_payload(raw: bytes, *, max_ids: int = DEFAULT_MAX_IDS) -> Payload:
    """Split a Servio webhook body into events, rejecting malformed parts one by one.

    Raises:
        InvalidBody: the body as a whole is not a JSON object, or nests too deep.
        TooLarge: the body lists more than ``max_ids`` IDs.
    """
    return split_events(decode_body(raw), max_ids=max_ids)


def count_ids(doc: dict[str, Any]) -> int:
    """How many ID slots (valid or not) the ID lists of a decoded body hold."""
    return sum(
        len(ids)
        for section in doc.values()
        if isinstance(section, dict)
        for ids in section.values()
        if isinstance(ids, list)
    )


def split_events(doc: dict[str, Any], *, max_ids: int = DEFAULT_MAX_IDS) -> Payload:
    """Apply Servio's parsing rules to a decoded body (see PRODUCT.md, "Parsing rules").

    Raises:
        TooLarge: the body lists more than ``max_ids`` IDs; counted before any event is built.
    """
    if (count := count_ids(doc)) > max_ids:
        raise TooLarge("too_many_ids", f"body lists {count} IDs, over BRIDGE_MAX_IDS ({max_ids})")
    rejections: list[Rejection] = []
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
                    rejections.append(Rejection("bad_id", (key, entity_key, index), item))
                else:
                    bucket.append(parsed)
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


def normalize_name(key: str) -> str | None:
    """Servio's key as a routing-key word: trimmed, lower-cased; None if not ``[a-z0-9_]{1,64}``."""
    try:
        return _NAMES[key]
    except KeyError:
        pass
    name = key.strip().lower()
    result = name if _NAME.fullmatch(name) else None
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


def _json_type(doc: Any) -> str:
    if isinstance(doc, list):
        return "array"
    if isinstance(doc, str):
        return "string"
    if doc is None:
        return "null"
    if isinstance(doc, bool):
        return "boolean"
    return "number"
