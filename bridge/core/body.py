"""The exact reading of a webhook body: its text encoding, every number as written, every
repeated key, and its depth.

Pure. ``payload`` reads the common body with orjson and comes here when orjson cannot say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bridge.errors import InvalidBody

# Servio's bodies are 3 deep. Rejected parts are re-encoded into dead letters, and orjson refuses
# to encode past 254 levels, so a deeper body is refused whole (its raw bytes kept) up front.
MAX_DEPTH = 64
# A repeated key of a decoded body: where it is, and the value that was repeated.
Repeat = tuple[tuple[str | int, ...], Any]


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


def decode_exactly(data: bytes) -> tuple[dict[str, Any], tuple[Repeat, ...], bool]:
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
        raise InvalidBody("not_an_object", f"body is JSON {json_type(doc)}, not an object")
    if nesting_depth(doc) > MAX_DEPTH:
        raise InvalidBody("too_deep", f"body nests deeper than {MAX_DEPTH} levels")
    return doc, _repeats(doc), True


def _repeats(doc: dict[str, Any]) -> tuple[Repeat, ...]:
    """Every repeated key in ``doc``, in document order, with its path.

    Raises:
        InvalidBody: a string holds a lone surrogate (orjson, which refuses them, may not have
            read that far).
    """
    found: list[Repeat] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(doc, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            children: list[tuple[Any, tuple[str | int, ...]]] = []
            for key, child in value.items():
                _check_text(key)
                children.append((child, (*path, key)))
            for key, child in getattr(value, "repeats", ()):
                found.append(((*path, key), child))
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


def json_type(doc: Any) -> str:
    if isinstance(doc, list):
        return "array"
    if isinstance(doc, str):
        return "string"
    if doc is None:
        return "null"
    if isinstance(doc, bool):
        return "boolean"
    return "number"
