"""One publish attempt's account: what is in flight, confirmed, held back, refused or failed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bridge.amqp.seams import PublishObserver
from bridge.amqp.wire import holds_back, outcome
from bridge.core.outbound import Outbound


class Batch:
    """One ``publish`` attempt's account, settled by the confirms as they arrive.

    Positions index ``entries``, each an (index in the ledger, message) pair.
    """

    def __init__(
        self, entries: list[tuple[int, Outbound]], observer: PublishObserver | None, solo_until: int = -1
    ) -> None:
        self.entries = entries
        self.confirmed = [False] * len(entries)
        self.inflight: dict[int, float] = {}  # position -> when it was sent
        self.keys: set[str] = set()
        self.held: set[str] = set()  # order keys of messages nacked or returned in this attempt
        self.errors: dict[int, BaseException] = {}
        self.unsendable: list[tuple[int, str, str]] = []
        self.failure: BaseException | None = None  # the first failure of any kind
        self.broken: BaseException | None = None  # one that ends the attempt (not a nack or return)
        self.solo_until = solo_until
        self._observer = observer
        self._progress = asyncio.Event()

    def limit(self, position: int, window: int) -> int:
        """How many may be in flight when sending ``position``: one while suspects are sent."""
        if position <= self.solo_until or any(p <= self.solo_until for p in self.inflight):
            return 1
        return window

    def track(self, position: int, confirmation: asyncio.Future[Any]) -> None:
        sent = time.monotonic()
        self.inflight[position] = sent
        self.keys.add(self.entries[position][1].order_key)
        confirmation.add_done_callback(lambda future: self._settle(position, future, sent))

    def _settle(self, position: int, future: asyncio.Future[Any], sent: float) -> None:
        if self.inflight.pop(position, None) is None:
            return
        message = self.entries[position][1]
        self.keys.discard(message.order_key)
        self._progress.set()
        if future.cancelled():
            self.fail(asyncio.CancelledError())
            return
        result = outcome(future, message)
        if result is not None:
            self.errors[position] = result
            if holds_back(result):
                self.held.add(message.order_key)
                if self.failure is None:
                    self.failure = result
            else:
                self.fail(result)
        else:
            self.confirmed[position] = True
            if self._observer is not None:
                self._observer.confirmed(message, time.monotonic() - sent)

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        if self.broken is None:
            self.broken = exc
        self._progress.set()

    async def wait_settled(self, within: float) -> None:
        """Wait up to ``within`` seconds for every message in flight to be confirmed or refused."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.inflight:
                    self._progress.clear()
                    await self._progress.wait()

    async def wait_progress(self, within: float) -> bool:
        """Wait up to ``within`` seconds for a confirm or a failure; False on timeout."""
        if self._progress.is_set():
            self._progress.clear()
            return True
        try:
            async with asyncio.timeout(within):
                await self._progress.wait()
        except TimeoutError:
            return False
        self._progress.clear()
        return True
