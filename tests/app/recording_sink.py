"""A sink that keeps what it accepts in a list: the app tests' stand-in for spool and broker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bridge.core.outbound import Outbound


class RecordingSink:
    """Accepts everything at once, or waits for ``release`` when built with ``hold=True``."""

    def __init__(self, *, hold: bool = False) -> None:
        self.kept: list[Outbound] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    @property
    def ready(self) -> bool:
        return True

    async def accept(self, messages: Sequence[Outbound]) -> None:
        await self.release.wait()
        self.kept.extend(messages)
