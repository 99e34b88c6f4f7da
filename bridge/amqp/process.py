"""The drain's publisher in the listening process: a child process does the AMQP work.

``ProcessPublisher`` starts ``python -m bridge.amqp.worker`` (the child, see there), keeps it
running with back-off, asks it for the batch after the last one and hands its answers (the span
published, the counts for the metrics) to the drain. The child's reports of the connection's
state keep /readyz and /metrics in this process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import structlog

from bridge.amqp.frames import Answer, Ask, Close, Frame, Retry, Start, State, receive, send
from bridge.errors import BrokerUnavailable, SpoolCorrupt
from bridge.settings import Settings
from bridge.spool.drain import Published

log = structlog.get_logger("bridge.amqp.worker")
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
# Retries are logged at most once per this many seconds per failure class, with the count since.
RETRY_LOG_EVERY = 10.0


class BatchObserver(Protocol):
    """What the listening process is told of each batch (its metrics)."""

    def confirmed_batch(self, counts: Iterable[Sequence[Any]], latencies: Iterable[float]) -> None: ...

    def retried(self, failure_class: str = "other") -> None: ...

    def refused(self, reason: str, n: int) -> None: ...


class ProcessPublisher:
    """The drain's ``SpanPublisher``: publishing happens in a child process, kept running by
    ``supervise``."""

    def __init__(self, settings: Settings, *, observer: BatchObserver | None = None) -> None:
        self._settings = settings
        self._observer = observer
        self._writer: asyncio.StreamWriter | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._started = asyncio.Event()
        self._replies: dict[int, asyncio.Future[Answer]] = {}
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
            await send(self._writer, Start(_resolved(self._settings), os.getpid()))
            self._up_since = time.monotonic()
            self._started.set()
            while (frame := await receive(reader)) is not None:
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

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, State):
            connected, blocked = frame.connected, frame.blocked
            if blocked != self._blocked:
                if blocked:
                    log.warning("broker_blocked", hint="RabbitMQ has a memory or disk alarm")
                else:
                    log.info("broker_unblocked")
            self._connected, self._blocked = connected, blocked
        elif isinstance(frame, Retry):
            self._retried(frame.failure_class, frame.error)
        elif isinstance(frame, Answer):
            reply = self._replies.pop(frame.id, None)
            if reply is not None and not reply.done():
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
            await send(self._writer, Ask(self._next_id, after, limit, within, window))
        except OSError as exc:  # the child died since it started; supervise starts another
            self._replies.pop(self._next_id, None)
            raise BrokerUnavailable(f"the publishing process is gone: {exc!r}") from None
        answer = await reply
        if self._observer is not None:
            self._observer.confirmed_batch(answer.counts, answer.latencies)
            for reason, n in answer.refused:
                self._observer.refused(reason, n)
        if answer.corrupt is not None:
            raise SpoolCorrupt(answer.corrupt)
        if answer.error is not None:
            raise BrokerUnavailable(answer.error)
        return Published(answer.span, answer.quarantine)

    async def close(self) -> None:
        """Ask the child to close its connection and exit; kill it if it does not within 5 s."""
        self._closed = True
        if self._writer is not None and self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await send(self._writer, Close())
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()


def _resolved(settings: Settings) -> Settings:
    """``settings`` with the spool directory absolute, whatever the child's working directory."""
    if settings.spool_dir is None:
        return settings
    return dataclasses.replace(settings, spool_dir=settings.spool_dir.resolve())
