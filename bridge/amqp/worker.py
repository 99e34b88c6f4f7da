"""The publishing process: the drain's AMQP work on the other core, not the listener's.

``python -m bridge.amqp.worker FD`` serves its parent (``bridge.amqp.process.ProcessPublisher``)
on a socketpair, in ``bridge.amqp.frames``: it reads each batch asked for from the spool itself (a
read-only connection; the listener alone appends and removes), publishes it and answers with
the span once every message is confirmed. It runs at the lowest CPU priority (nice 19): when
webhooks and publishing compete for the CPU, answering goes first, the backlog waits on disk,
and it drains as soon as the CPU is free (or, under load that never lets up, the spool's bound
turns webhooks away with 503 rather than the answers slowing down). It dies with its parent
(``PR_SET_PDEATHSIG``) and reports the connection's state as it changes.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from bridge.amqp.frames import Answer, Ask, Frame, Retry, Start, State, receive, send, send_now
from bridge.amqp.publisher import AmqpPublisher, build_publisher
from bridge.core.outbound import Outbound
from bridge.core.record import decode_record
from bridge.core.refusals import Refusal
from bridge.errors import BrokerError, SpoolCorrupt
from bridge.metrics import confirm_key
from bridge.spool.reader import Span, SpoolReader
from bridge.spool.schema import FILE_NAME

log = structlog.get_logger("bridge.amqp.worker")
_PR_SET_PDEATHSIG = 1
STATE_POLL = 0.1
# The child's CPU priority: the lowest, so answering webhooks always goes first.
NICE = 19
# Records read for one batch, at most (always at least one): bounds the child's memory whatever
# the spool holds.
BATCH_BYTES = 16 * 1024 * 1024


class BatchPublisher(Protocol):
    """What the child publishes a batch with (``AmqpPublisher``)."""

    async def publish(
        self, messages: Sequence[Outbound], *, deadline: float | None = None, window: int | None = None
    ) -> Sequence[Refusal] | None: ...


class _Tally:
    """The child's observer: what one publish call confirmed and refused, sent back with its
    answer; each retry is told to the parent as it happens (``send``)."""

    def __init__(
        self,
        send: Callable[[Frame], None] | None = None,
        last_error: Callable[[], str] = lambda: "",
    ) -> None:
        self._send = send
        self._last_error = last_error
        self.latencies: list[float] = []
        self.counts: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.refused_counts: collections.Counter[str] = collections.Counter()
        self.retries = 0

    def reset(self) -> None:
        self.latencies, self.counts, self.retries = [], collections.Counter(), 0
        self.refused_counts = collections.Counter()

    def confirmed(self, message: Outbound, seconds: float) -> None:
        self.latencies.append(seconds)
        self.counts[confirm_key(message)] += 1

    def retried(self, failure_class: str = "other") -> None:
        self.retries += 1
        if self._send is not None:
            self._send(Retry(failure_class, self._last_error()))

    def refused(self, reason: str, n: int) -> None:
        self.refused_counts[reason] += n


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies: no orphan keeps publishing after a kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


async def _serve(fd: int) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    first = await receive(reader)
    if not isinstance(first, Start):
        return
    _die_with_parent(first.parent)
    os.nice(NICE)
    settings = first.settings
    from bridge.logs import configure_logging

    configure_logging(settings.log_format, secrets=(settings.token,) if settings.token else ())
    # One batch at a time comes from the drain, so one tally, reset per batch, is its account.
    tally = _Tally(lambda frame: send_now(writer, frame), lambda: publisher.last_error)
    publisher = build_publisher(settings, name="servio-bridge drain", observer=tally, log_blocked=False)
    # Start-up's objects live as long as the process: full collections, every few seconds while
    # publishing, no longer walk them (docs/benchmarks.md).
    gc.freeze()
    supervising = asyncio.create_task(publisher.supervise())
    reporting = asyncio.create_task(_report_state(publisher, writer))
    assert settings.spool_dir is not None, "the publishing process runs only with a spool"
    reading = _Reading(settings.spool_dir / FILE_NAME)
    publishing: set[asyncio.Task[None]] = set()
    try:
        # Frames are read while a batch publishes: "close" must stop a publish that retries
        # through an outage, within the parent's shutdown budget.
        while isinstance(frame := await receive(reader), Ask):
            task = asyncio.create_task(_publish(publisher, tally, reading, frame, writer))
            publishing.add(task)
            task.add_done_callback(publishing.discard)
    finally:
        for task in (*publishing, supervising, reporting):
            task.cancel()
        await publisher.close()
        reading.close()
        writer.close()


class _Reading:
    """The child's read-only connection to the spool, opened on the first batch asked for."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._reader: SpoolReader | None = None

    def read(self, after: int, limit: int) -> tuple[Span, list[tuple[int, bytes]]]:
        """Up to ``limit`` entries after ``after``, at most ``BATCH_BYTES`` of them (at least one)."""
        if self._reader is None:
            self._reader = SpoolReader(self._path)
        return self._reader.read(after, limit, max_bytes=BATCH_BYTES)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


async def _publish(
    publisher: BatchPublisher,
    tally: _Tally,
    reading: _Reading,
    ask: Ask,
    writer: asyncio.StreamWriter,
) -> None:
    tally.reset()
    deadline = None if ask.within is None else time.monotonic() + ask.within
    error = corrupt = None
    span = Span(ask.after, ask.after, 0, 0)
    quarantine: tuple[tuple[int, str], ...] = ()
    try:
        span, rows = reading.read(ask.after, ask.limit)
        messages = [decode_record(record) for _seq, record in rows]
    except SpoolCorrupt as exc:
        corrupt = str(exc)
    except ValueError as exc:
        corrupt = f"spool entry cannot be decoded: {exc}"
    else:
        try:
            if messages:
                refusals = await publisher.publish(messages, deadline=deadline, window=ask.window)
                quarantine = tuple((rows[r.index][0], r.reason) for r in refusals or ())
        except BrokerError as exc:
            error = str(exc)
        except Exception as exc:  # the parent waits for an answer, whatever happened
            log.exception("publish_failed", error=repr(exc))
            error = f"publishing failed: {exc!r}"
    answer = Answer(
        ask.id,
        span,
        latencies=tuple(tally.latencies),
        counts=tuple((*key, n) for key, n in tally.counts.items()),
        retries=tally.retries,
        refused=tuple(tally.refused_counts.items()),
        quarantine=quarantine,
        error=error,
        corrupt=corrupt,
    )
    await send(writer, answer)


async def _report_state(publisher: AmqpPublisher, writer: asyncio.StreamWriter) -> None:
    last = None
    while True:
        state = (publisher.connected, publisher.blocked)
        if state != last:
            await send(writer, State(*state))
            last = state
        await asyncio.sleep(STATE_POLL)


def main(argv: Sequence[str]) -> int:
    """``python -m bridge.amqp.worker FD``: serve the parent on the socket FD until it says close."""
    import uvloop

    # SIGTERM/SIGINT go to the whole process group on a terminal: the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    uvloop.run(_serve(int(argv[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
