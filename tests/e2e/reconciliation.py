"""The reconciliation of 200 answers against what reached a queue: nothing lost, few duplicates."""

from __future__ import annotations

import orjson
from aio_pika.abc import AbstractIncomingMessage


def delivered_ids(messages: list[AbstractIncomingMessage]) -> list[int]:
    return [int(orjson.loads(m.body)["id"]) for m in messages]


def reconcile(accepted: set[int], messages: list[AbstractIncomingMessage]) -> tuple[int, int]:
    """(lost, duplicates): IDs answered 200 that never arrived, and extra copies that did."""
    ids = delivered_ids(messages)
    lost = len(accepted - set(ids))
    return lost, len(ids) - len(set(ids))
