"""The spool's record of a message: the bytes a spool entry holds, and the message back from them.

Pure. The format is fixed (a spool written by an earlier release must drain): a compact JSON
list of 8 fields, the body as Latin-1 text. It has no field for a message's ``entity``,
``action`` or ``reason``: they are read back from what it does hold (``metadata``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from bridge.core.outbound import Outbound, compact_json


def encode_record(message: Outbound) -> bytes:
    """The message as bytes for the spool."""
    return compact_json(
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
    action, entity, reason = metadata(exchange, mid, headers)
    return Outbound(
        exchange=exchange,
        routing_key=routing_key,
        body=body.encode("latin-1"),
        message_id=mid,
        timestamp=timestamp,
        order_key=order_key,
        content_type=content_type,
        headers=headers,
        entity=entity,
        action=action,
        reason=reason,
    )


def metadata(exchange: str, mid: str, headers: Mapping[str, str]) -> tuple[str, str, str]:
    """A recorded message's (action, entity, reason), as the message was built with them: a dead
    letter's reason is its ``reason`` header, an event's names are in its message_id."""
    if exchange == "":
        return "", "", headers.get("reason", "")
    match = _EVENT_ID.search(mid)
    return ("", "", "") if match is None else (match[1], match[2], "")


# An event's message_id is "{delivery_id}.{action}.{entity}.{id}" (``message.message_id``). Names
# are single words without dots, so the last three dots part them, whatever the delivery id holds.
_EVENT_ID = re.compile(r"\.([a-z0-9_]{1,64})\.([a-z0-9_]{1,64})\.[0-9]{1,19}\Z")
