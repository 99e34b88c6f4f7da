"""The publishing process always answers its parent, so the drain never waits for nothing."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from bridge.errors import BrokerUnavailable
from bridge.message import Outbound, encode_record
from bridge.worker import _publish, _receive, _Tally


class Raising:
    """A publisher that fails as told."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    async def publish(self, messages: list[Outbound], *, deadline: float | None = None) -> None:
        self.calls += 1
        raise self.exc


async def answer_to(publisher: Any, records: list[bytes]) -> dict[str, Any]:
    parent, child = socket.socketpair()
    reader, parent_writer = await asyncio.open_unix_connection(sock=parent)
    _, writer = await asyncio.open_unix_connection(sock=child)
    try:
        frame = {"id": 7, "records": [r.decode() for r in records], "within": 1.0}
        await _publish(publisher, _Tally(), frame, writer)
        answer = await asyncio.wait_for(_receive(reader), 5)
    finally:
        for end in (writer, parent_writer):
            end.close()
            await end.wait_closed()
    assert answer is not None
    return answer


def record() -> bytes:
    return encode_record(
        Outbound(
            exchange="servio",
            routing_key="servio.guests.add",
            body=b'{"action":"add","entity":"guests","id":1}',
            message_id="d.add.guests.1",
            timestamp=0,
            order_key="guests.1",
        )
    )


class TestTheChildAlwaysAnswers:
    async def test_a_broker_error_is_answered_as_an_error(self) -> None:
        answer = await answer_to(Raising(BrokerUnavailable("down")), [record()])
        assert answer["id"] == 7
        assert answer["error"] == "down"
        assert answer["corrupt"] is None

    async def test_an_unexpected_exception_is_answered_too(self) -> None:
        """Anything else a publish raises still comes back as an error the drain retries on."""
        publisher = Raising(ValueError("surprise"))
        answer = await answer_to(publisher, [record()])
        assert publisher.calls == 1
        assert answer["id"] == 7
        assert "surprise" in answer["error"]

    async def test_a_record_that_does_not_decode_is_answered_as_corrupt(self) -> None:
        publisher = Raising(AssertionError("never called"))
        answer = await answer_to(publisher, [b'["not", "a record"]'])
        assert publisher.calls == 0
        assert answer["corrupt"]
        assert answer["error"] is None
