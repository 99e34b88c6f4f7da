"""Publishing in a child process: the drain's AMQP work runs on the other core, not the listener's.

``ProcessPublisher`` is what the drain sees in the listening process; it asks ``python -m
bridge.amqp.worker`` for the batch after the last one, and the child reads that batch from the spool
itself (a read-only connection), publishes it with an ``AmqpPublisher`` and answers with the span
it published once every message is confirmed. The child runs at the lowest CPU priority (nice 19): when
webhooks and publishing compete for the CPU, answering goes first, the backlog waits on disk, and
it drains as soon as the CPU is free (or, under load that never lets up, the spool's bound turns
webhooks away with 503 rather than the answers slowing down). The child only reads the spool
(the listener alone appends and removes), dies with its parent (``PR_SET_PDEATHSIG``), and
reports the connection's state so /readyz and /metrics stay in the listening process. Frames are a
4-byte length and JSON.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from bridge.amqp.publisher import AmqpPublisher
from bridge.core.message import Outbound, decode_record
from bridge.core.topology import build_topology
from bridge.errors import BrokerError, BrokerUnavailable, SpoolCorrupt
from bridge.metrics import confirm_key
from bridge.settings import Settings
from bridge.spool.drain import Published
from bridge.spool.store import FILE_NAME, Span, SpoolReader

log = structlog.get_logger("bridge.amqp.worker")
_LENGTH = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1
STATE_POLL = 0.1
# Back-off between two starts of the publishing process: doubled per failure in a row, capped.
RESPAWN_DELAY = 0.5
RESPAWN_DELAY_MAX = 5.0
# A child that ran this long was a success: the next failure starts the back-off from the bottom.
RESPAWN_STABLE = 30.0
# Unhealthy (/healthz 503) after this many failures in a row, or this long without a running child.
RESPAWN_FAILURES = 5
RESPAWN_DOWN_MAX = 30.0
# A child that keeps running this long makes a failing run healthy again.
RESPAWN_RECOVERED = 5.0
# The child's CPU priority: the lowest, so answering webhooks always goes first.
NICE = 19
# Records read for one batch, at most (always at least one): bounds the child's memory whatever
# the spool holds.
BATCH_BYTES = 16 * 1024 * 1024
# Retries are logged at most once per this many seconds per failure class, with the count since.
RETRY_LOG_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the child needs of the settings; sent over its socket, never on its command line."""

    amqp_urls: tuple[str, ...]
    exchange: str
    routing_key: str
    declare_queues: bool
    publish_timeout: float
    log_format: str
    secrets: tuple[str, ...]
    spool_path: str

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            settings.amqp_urls,
            settings.exchange,
            settings.routing_key,
            settings.declare_queues,
            settings.publish_timeout,
            settings.log_format,
            (settings.token,) if settings.token else (),
            str((settings.spool_dir / FILE_NAME).resolve()) if settings.spool_dir is not None else "",
        )


async def _send(writer: asyncio.StreamWriter, frame: dict[str, Any]) -> None:
    payload = orjson.dumps(frame)
    writer.write(_LENGTH.pack(len(payload)) + payload)
    await writer.drain()


def _send_now(writer: asyncio.StreamWriter, frame: dict[str, Any]) -> None:
    """``_send`` without waiting for the buffer to drain: for small frames sent from callbacks."""
    payload = orjson.dumps(frame)
    writer.write(_LENGTH.pack(len(payload)) + payload)


async def _receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    try:
        size = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0]
        frame: dict[str, Any] = orjson.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return frame


class ProcessPublisher:
    """The drain's ``SpanPublisher``: publishing happens in a child process, kept running by
    ``supervise``."""

    def __init__(self, config: WorkerConfig, *, observer: BatchObserver | None = None) -> None:
        self._config = config
        self._observer = observer
        self._writer: asyncio.StreamWriter | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._started = asyncio.Event()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._connected = False
        self._blocked = False
        self._closed = False
        # Per failure class: when a retry was last logged, and the retries since.
        self._retry_logged: dict[str, float] = {}
        self._retries_unlogged: collections.Counter[str] = collections.Counter()
        self._failures = 0  # starts in a row that failed or ended within RESPAWN_STABLE
        self._up_since: float | None = None  # monotonic; None while no child runs
        self._down_since = time.monotonic()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def blocked(self) -> bool:
        return self._blocked

    @property
    def healthy(self) -> bool:
        """False once the child failed to start or run ``RESPAWN_FAILURES`` times in a row, or none
        has run for ``RESPAWN_DOWN_MAX`` s: nothing is published, a restart of the process may help."""
        now = time.monotonic()
        if self._up_since is not None:
            return self._failures < RESPAWN_FAILURES or now - self._up_since >= RESPAWN_RECOVERED
        return self._failures < RESPAWN_FAILURES and now - self._down_since <= RESPAWN_DOWN_MAX

    async def supervise(self) -> None:
        """Run the child, and start a new one with back-off whenever it exits or cannot be
        started (e.g. EMFILE), until cancelled (``close`` stops it)."""
        self._down_since = time.monotonic()
        while not self._closed:
            try:
                ran = await self._run_child()
            except OSError as exc:
                self._failures += 1
                log.error("worker_spawn_failed", error=str(exc), failures=self._failures)
            else:
                if self._closed:
                    return
                self._failures = 1 if ran >= RESPAWN_STABLE else self._failures + 1
            delay = min(RESPAWN_DELAY_MAX, RESPAWN_DELAY * 2 ** (self._failures - 1))
            await asyncio.sleep(delay)

    async def _run_child(self) -> float:
        """Start one child and serve it until it exits; the seconds it ran.

        Raises:
            OSError: it could not be started (no file descriptors, no memory, no executable).
        """
        parent, child = socket.socketpair()
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(parent.close)
            with child:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bridge.amqp.worker",
                    str(child.fileno()),
                    pass_fds=(child.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                )
            self._process = process
            cleanup.pop_all()
        try:
            reader, self._writer = await asyncio.open_unix_connection(sock=parent)
        except OSError:
            parent.close()
            process.kill()
            await process.wait()
            raise
        started = time.monotonic()
        try:
            await _send(self._writer, {"config": asdict(self._config), "parent": os.getpid()})
            self._up_since = time.monotonic()
            self._started.set()
            while (frame := await _receive(reader)) is not None:
                self._handle(frame)
        except ConnectionError as exc:  # the child died before it took its configuration
            log.error("worker_unreachable", error=str(exc))
        finally:
            self._started.clear()
            self._up_since = None
            self._down_since = time.monotonic()
            self._connected = self._blocked = False
            for reply in self._replies.values():
                if not reply.done():
                    reply.set_exception(BrokerUnavailable("the publishing process exited"))
            self._replies.clear()
        if self._closed:
            return time.monotonic() - started
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        code = await process.wait()
        self._writer.close()
        log.error("worker_exited", exit_code=code, ran_seconds=round(time.monotonic() - started, 3))
        return time.monotonic() - started

    def _handle(self, frame: dict[str, Any]) -> None:
        if "state" in frame:
            connected, blocked = frame["state"]
            if blocked != self._blocked:
                if blocked:
                    log.warning("broker_blocked", hint="RabbitMQ has a memory or disk alarm")
                else:
                    log.info("broker_unblocked")
            self._connected, self._blocked = connected, blocked
        elif "retry" in frame:
            self._retried(str(frame["retry"].get("class", "other")), str(frame["retry"].get("error", "")))
        elif (reply := self._replies.pop(frame.get("id", -1), None)) is not None and not reply.done():
            reply.set_result(frame)

    def _retried(self, failure_class: str, error: str) -> None:
        """Count a retry as it happens; log it at most once per ``RETRY_LOG_EVERY`` per class."""
        if self._observer is not None:
            self._observer.retried(failure_class)
        self._retries_unlogged[failure_class] += 1
        now = time.monotonic()
        if now - self._retry_logged.get(failure_class, -RETRY_LOG_EVERY) >= RETRY_LOG_EVERY:
            log.warning(
                "publish_retrying",
                failure_class=failure_class,
                retries=self._retries_unlogged.pop(failure_class),
                error=error,
            )
            self._retry_logged[failure_class] = now

    async def publish_after(
        self, after: int, limit: int, *, deadline: float | None = None, window: int | None = None
    ) -> Published:
        """Have the child read and publish the (up to ``limit``) spool entries after seq ``after``,
        at most ``window`` unconfirmed at once (its publisher's own window when None).

        The listener neither reads nor passes records on, and the child counts what it confirmed
        for the metrics: the drain costs the listener a request, an answer and the span's delete.

        Raises:
            BrokerUnavailable: the child could not publish them (it retries until ``deadline``).
            SpoolCorrupt: the spool cannot be read, or a record is not one ``encode_record`` wrote.
        """
        within = None if deadline is None else max(0.0, deadline - time.monotonic())
        async with asyncio.timeout(within):
            await self._started.wait()
        assert self._writer is not None
        self._next_id += 1
        reply = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = reply
        try:
            await _send(
                self._writer,
                {"id": self._next_id, "after": after, "limit": limit, "within": within, "window": window},
            )
        except OSError as exc:  # the child died since it started; supervise starts another
            self._replies.pop(self._next_id, None)
            raise BrokerUnavailable(f"the publishing process is gone: {exc!r}") from None
        answer = await reply
        if self._observer is not None:
            self._observer.confirmed_batch(answer["counts"], answer["latencies"])
            for reason, n in answer.get("refused", ()):
                self._observer.refused(reason, n)
        if answer.get("corrupt") is not None:
            raise SpoolCorrupt(answer["corrupt"])
        if answer["error"] is not None:
            raise BrokerUnavailable(answer["error"])
        quarantined = tuple((int(seq), str(reason)) for seq, reason in answer.get("quarantine", ()))
        return Published(Span(*answer["span"]), quarantined)

    async def close(self) -> None:
        """Ask the child to close its connection and exit; kill it if it does not within 5 s."""
        self._closed = True
        if self._writer is not None and self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await _send(self._writer, {"close": True})
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()


# -- the child --------------------------------------------------------------------------------


class _Tally:
    """The child's observer: what one publish call confirmed and refused, sent back with its
    answer; each retry is told to the parent as it happens (``send``)."""

    def __init__(
        self,
        send: Callable[[dict[str, Any]], None] | None = None,
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
            self._send({"retry": {"class": failure_class, "error": self._last_error()}})

    def refused(self, reason: str, n: int) -> None:
        self.refused_counts[reason] += n


class BatchObserver(Protocol):
    """What the listening process is told of each batch (its metrics)."""

    def confirmed_batch(self, counts: Iterable[Sequence[Any]], latencies: Iterable[float]) -> None: ...

    def retried(self, failure_class: str = "other") -> None: ...

    def refused(self, reason: str, n: int) -> None: ...


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies: no orphan keeps publishing after a kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


async def _serve(fd: int) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    first = await _receive(reader)
    if first is None:
        return
    _die_with_parent(first["parent"])
    os.nice(NICE)
    # JSON made the tuples lists.
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in first["config"].items()}
    config = WorkerConfig(**fields)
    from bridge.logs import configure_logging

    configure_logging(config.log_format, secrets=config.secrets)
    # One batch at a time comes from the drain, so one tally, reset per batch, is its account.
    tally = _Tally(lambda frame: _send_now(writer, frame), lambda: publisher.last_error)
    publisher = AmqpPublisher(
        config.amqp_urls,
        build_topology(config.exchange, config.routing_key, declare_queues=config.declare_queues),
        name="servio-bridge drain",
        confirm_timeout=config.publish_timeout,
        connect_timeout=min(5.0, config.publish_timeout),
        observer=tally,
        log_blocked=False,
    )
    # Start-up's objects live as long as the process: full collections (~35 ms each here, every
    # few seconds while publishing) no longer walk them.
    gc.freeze()
    supervising = asyncio.create_task(publisher.supervise())
    reporting = asyncio.create_task(_report_state(publisher, writer))
    reading = _Reading(Path(config.spool_path))
    publishing: set[asyncio.Task[None]] = set()
    try:
        # Frames are read while a batch publishes: "close" must stop a publish that retries
        # through an outage, within the parent's shutdown budget.
        while (frame := await _receive(reader)) is not None and "close" not in frame:
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
        reader: Any = self._reader  # the spool's reader before and after it gave seqs and took max_bytes
        try:
            span, rows = reader.read(after, limit, max_bytes=BATCH_BYTES)
        except TypeError:
            span, rows = reader.read(after, limit)
        return span, [row if isinstance(row, tuple) else (span.first + i, row) for i, row in enumerate(rows)]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


async def _publish(
    publisher: AmqpPublisher,
    tally: _Tally,
    reading: _Reading,
    frame: dict[str, Any],
    writer: asyncio.StreamWriter,
) -> None:
    tally.reset()
    deadline = None if frame["within"] is None else time.monotonic() + frame["within"]
    error = corrupt = None
    span = Span(frame["after"], frame["after"], 0, 0)
    quarantine: list[list[Any]] = []
    try:
        span, rows = reading.read(frame["after"], frame["limit"])
        messages = [decode_record(record) for _seq, record in rows]
    except SpoolCorrupt as exc:
        corrupt = str(exc)
    except ValueError as exc:
        corrupt = f"spool entry cannot be decoded: {exc}"
    else:
        try:
            if messages:
                refusals = await publisher.publish(messages, deadline=deadline, window=frame.get("window"))
                quarantine = [[rows[r.index][0], r.reason] for r in refusals or ()]
        except BrokerError as exc:
            error = str(exc)
        except Exception as exc:  # the parent waits for an answer, whatever happened
            log.exception("publish_failed", error=repr(exc))
            error = f"publishing failed: {exc!r}"
    reply = {
        "id": frame["id"],
        "span": [span.first, span.last, span.count, span.record_bytes],
        "latencies": tally.latencies,
        "counts": [[*key, n] for key, n in tally.counts.items()],
        "retries": tally.retries,
        "refused": [[reason, n] for reason, n in tally.refused_counts.items()],
        "quarantine": quarantine,
        "error": error,
        "corrupt": corrupt,
    }
    await _send(writer, reply)


async def _report_state(publisher: AmqpPublisher, writer: asyncio.StreamWriter) -> None:
    last = None
    while True:
        state = (publisher.connected, publisher.blocked)
        if state != last:
            await _send(writer, {"state": state})
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
