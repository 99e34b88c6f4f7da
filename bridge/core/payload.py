"""The Servio webhook body and the rules that split it into events.

Pure: no I/O, no clock, no logging. ``parse_payload`` takes the raw bytes Servio sent and
returns every (action, entity, ID) event in publishing order plus every part it rejected.
"""

from __future__ import annotations

import json
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


def decode_body(raw: bytes, *, charset: str | None = None) -> dict[str, Any]:
    """Decode a webhook body into its top-level JSON object, at most ``MAX_DEPTH`` deep.

    Raises:
        InvalidBody: the bytes are not JSON, the JSON is not an object, or it nests too deep.
    """
    doc, _, _ = _decode(utf8_body(raw, charset))
    return doc


def utf8_body(raw: bytes, charset: str | None = None) -> bytes:
    """The body as UTF-8 without a byte order mark: UTF-16 (by its BOM or ``charset``) re-encoded.

    Raises:
        InvalidBody: a UTF-16 body that does not decode.
    """
    if raw.startswith(_UTF8_BOM):
        return raw[len(_UTF8_BOM) :]
    codec = _utf16_codec(raw, charset)
    if codec is None:
        return raw
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise InvalidBody("not_json", f"body is not valid UTF-16: {exc.reason}") from None
    return text.removeprefix("\ufeff").encode()


_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_CHARSETS = {"utf-16": "", "utf16": "", "utf-16le": "utf-16-le", "utf-16be": "utf-16-be"}


def _utf16_codec(raw: bytes, charset: str | None) -> str | None:
    if raw.startswith(b"\xff\xfe"):
        return "utf-16-le"
    if raw.startswith(b"\xfe\xff"):
        return "utf-16-be"
    if not charset:
        return None
    codec = _UTF16_CHARSETS.get(charset.strip().lower())
    if codec == "":
        # No BOM to say the byte order: a JSON text starts with an ASCII character, so the
        # first byte is 0 in big-endian order only.
        codec = "utf-16-be" if raw[:1] == b"\x00" else "utf-16-le"
    return codec


def _decode(data: bytes) -> tuple[dict[str, Any], tuple[Rejection, ...], bool]:
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
        return _decode_exactly(data)
    if not isinstance(doc, dict):
        raise InvalidBody("not_an_object", f"body is JSON {_json_type(doc)}, not an object")
    # Every key is followed by one colon outside strings: as many keys as colons means no key was
    # repeated (orjson keeps the last silently) and no colon sits in a string.
    if _count_keys(doc) != data.count(b":"):
        return _decode_exactly(data)
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


@dataclass(frozen=True, slots=True)
class BigNumber:
    """A JSON number no float or 64-bit integer holds (1e400, a 400-digit integer), as sent."""

    text: str


class _Repeated(dict[str, Any]):
    """A decoded object with a repeated key: the first of each key, and the repeats in order."""

    __slots__ = ("repeats",)
    repeats: list[tuple[str, Any]]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    repeated = _Repeated()
    repeated.repeats = []
    for key, value in pairs:
        if key in repeated:
            repeated.repeats.append((key, value))
        else:
            repeated[key] = value
    return repeated


def _exact_int(text: str) -> int | BigNumber:
    if len(text) <= 20:
        number = int(text)
        if -(2**63) <= number < 2**64:
            return number
    # Beyond 64 bits: kept as written (a float would lose digits; int() of 5000 digits refuses).
    return BigNumber(text)


def _exact_float(text: str) -> float | BigNumber:
    number = float(text)
    return BigNumber(text) if number in (_INFINITY, -_INFINITY) else number


_INFINITY = float("inf")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_exactly(data: bytes) -> tuple[dict[str, Any], tuple[Rejection, ...], bool]:
    """The exact decoder: sees every key of every object, and every number as written."""
    try:
        doc = json.loads(
            data.decode(),
            object_pairs_hook=_object,
            parse_int=_exact_int,
            parse_float=_exact_float,
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        raise InvalidBody("too_deep", f"body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError among them
        raise InvalidBody("not_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidBody("not_an_object", f"body is JSON {_json_type(doc)}, not an object")
    if nesting_depth(doc) > MAX_DEPTH:
        raise InvalidBody("too_deep", f"body nests deeper than {MAX_DEPTH} levels")
    return doc, _repeats(doc), True


def _repeats(doc: dict[str, Any]) -> tuple[Rejection, ...]:
    """Every repeated key in ``doc``, in document order, with its path.

    Raises:
        InvalidBody: a string holds a lone surrogate (orjson, which refuses them, may not have
            read that far).
    """
    found: list[Rejection] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(doc, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            children: list[tuple[Any, tuple[str | int, ...]]] = []
            for key, child in value.items():
                _check_text(key)
                children.append((child, (*path, key)))
            for key, child in getattr(value, "repeats", ()):
                found.append(Rejection("duplicate_key", (*path, key), child))
                children.append((child, (*path, key)))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend((child, (*path, index)) for index, child in reversed(list(enumerate(value))))
        elif isinstance(value, str):
            _check_text(value)
    return tuple(found)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise InvalidBody("not_json", "body is not valid JSON: a string holds a lone surrogate") from None


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


def parse_payload(raw: bytes, *, max_ids: int = DEFAULT_MAX_IDS, charset: str | None = None) -> Payload:
    """Split a Servio webhook body into events, rejecting malformed parts one by one.

    ``charset`` is the Content-Type's: it says only whether a body without a BOM is UTF-16.

    Raises:
        InvalidBody: the body as a whole is not a JSON object, or nests too deep.
        TooLarge: the body lists more than ``max_ids`` IDs and rejected parts.
    """
    data = utf8_body(raw, charset)
    doc, repeats, exact = _decode(data)
    payload = split_events(doc, max_ids=max_ids, repeats=repeats)
    if payload.rejections and not exact and _LONG_NUMBER.search(data):
        # orjson reads an integer past 2^64 as a float; such a number can only be in a rejected
        # part, whose dead letter must keep its digits.
        doc, repeats, _ = _decode_exactly(data)
        payload = split_events(doc, max_ids=max_ids, repeats=repeats)
    return payload


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
