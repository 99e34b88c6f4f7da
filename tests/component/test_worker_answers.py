"""The publishing process always answers its parent, so the drain never waits for nothing."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from bridge.amqp.frames import Answer, Ask, receive
from bridge.amqp.worker import _publish, _Reading, _Tally
from bridge.core.outbound import Outbound
from bridge.core.record import encode_record
from bridge.errors import BrokerUnavailable
from bridge.spool.reader import Span
from bridge.spool.store import Spool


class Raising:
    """A publisher that fails as told."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    async def publish(
        self, messages: list[Outbound], *, deadline: float | None = None, window: int | None = None
    ) -> None:
        self.calls += 1
        raise self.exc


async def answer_to(
    publisher: Any, records: list[bytes], directory: Path, *, window: int | None = None
) -> Answer:
    """What the child answers when asked for the batch of a spool that holds ``records``."""
    spool = Spool(directory, max_bytes=1 << 20)
    spool.open()
    parent, child = socket.socketpair()
    reader, parent_writer = await asyncio.open_unix_connection(sock=parent)
    _, writer = await asyncio.open_unix_connection(sock=child)
    reading = _Reading(spool.path)
    try:
        await spool.append(records)
        await _publish(publisher, _Tally(), reading, Ask(7, 0, 100, 1.0, window), writer)
        answer = await asyncio.wait_for(receive(reader), 5)
    finally:
        reading.close()
        for end in (writer, parent_writer):
            end.close()
            await end.wait_closed()
        spool.close()
    assert isinstance(answer, Answer)
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
    async def test_a_broker_error_is_answered_as_an_error(self, tmp_path: Path) -> None:
        answer = await answer_to(Raising(BrokerUnavailable("down")), [record()], tmp_path)
        assert answer.id == 7
        assert answer.error == "down"
        assert answer.corrupt is None

    async def test_an_unexpected_exception_is_answered_too(self, tmp_path: Path) -> None:
        """Anything else a publish raises still comes back as an error the drain retries on."""
        publisher = Raising(ValueError("surprise"))
        answer = await answer_to(publisher, [record()], tmp_path)
        assert publisher.calls == 1
        assert answer.id == 7
        assert "surprise" in answer.error

    async def test_a_record_that_does_not_decode_is_answered_as_corrupt(self, tmp_path: Path) -> None:
        publisher = Raising(AssertionError("never called"))
        answer = await answer_to(publisher, [b'["not", "a record"]'], tmp_path)
        assert publisher.calls == 0
        assert answer.corrupt
        assert answer.error is None


class Recording:
    """A publisher that keeps what it was given."""

    def __init__(self) -> None:
        self.batches: list[list[Outbound]] = []
        self.windows: list[int | None] = []

    async def publish(
        self, messages: list[Outbound], *, deadline: float | None = None, window: int | None = None
    ) -> None:
        self.batches.append(messages)
        self.windows.append(window)


class TestTheChildReadsTheSpool:
    async def test_it_publishes_the_batch_it_read_and_answers_its_span(self, tmp_path: Path) -> None:
        publisher = Recording()
        records = [record(), record(), record()]
        answer = await answer_to(publisher, records, tmp_path)
        assert answer.error is None
        assert answer.corrupt is None
        assert answer.span == Span(1, 3, 3, sum(len(r) for r in records))
        assert [encode_record(m) for m in publisher.batches[0]] == records

    async def test_it_publishes_with_the_window_the_drain_asked_for(self, tmp_path: Path) -> None:
        publisher = Recording()
        await answer_to(publisher, [record()], tmp_path / "busy", window=32)
        await answer_to(publisher, [record()], tmp_path / "quiet")
        assert publisher.windows == [32, None]

    async def test_an_empty_spool_is_an_empty_span_and_no_publish(self, tmp_path: Path) -> None:
        publisher = Recording()
        answer = await answer_to(publisher, [], tmp_path)
        assert answer.span == Span(0, 0, 0, 0)
        assert answer.error is None
        assert publisher.batches == []
