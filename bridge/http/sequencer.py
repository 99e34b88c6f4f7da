"""Hand requests' messages to the sink in the order their bodies were complete.

A ticket is taken when a body is complete, with its ``received_at``; a request hands its messages
to the sink only once every earlier ticket has handed its own or was released (refused, failed,
went away). So the sink's append order is ``received_at`` order, while requests still parse and
build at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bridge.core.message import CHUNK
from bridge.core.outbound import Outbound
from bridge.sink import Sink


class Sequencer:
    """Tickets in order of completed bodies; ``accept`` passes messages to ``sink`` in ticket order."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._issued = 0
        self._turn = 0  # the lowest ticket not yet handed or released
        self._released: set[int] = set()
        self._waiting: dict[int, asyncio.Future[None]] = {}

    def take(self) -> int:
        """The next ticket: call when the body is complete, beside the clock read of received_at."""
        ticket = self._issued
        self._issued += 1
        return ticket

    async def accept(self, ticket: int, messages: Sequence[Outbound]) -> None:
        """``sink.accept(messages)`` once every earlier ticket has gone; releases ``ticket``.

        Raises:
            Unavailable: as ``sink.accept`` does.
        """
        if ticket != self._turn:
            future = asyncio.get_running_loop().create_future()
            self._waiting[ticket] = future
            try:
                await future
            finally:
                del self._waiting[ticket]
        if len(messages) <= CHUNK:
            # A sink takes a batch this small in its first step, before it waits for the disk or
            # the broker: the next ticket may go as soon as that step ran, so appends still share
            # one fsync. A larger batch is encoded between turns of the loop, so the next waits.
            asyncio.get_running_loop().call_soon(self.release, ticket)
            await self._sink.accept(messages)
        else:
            try:
                await self._sink.accept(messages)
            finally:
                self.release(ticket)

    def release(self, ticket: int) -> None:
        """``ticket`` hands nothing (more): later tickets need not wait for it. Idempotent."""
        if ticket < self._turn:
            return
        self._released.add(ticket)
        while self._turn in self._released:
            self._released.remove(self._turn)
            self._turn += 1
        waiter = self._waiting.get(self._turn)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
