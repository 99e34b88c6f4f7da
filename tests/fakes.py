"""Small hand-written fakes for the seams (``Publisher``), used where the broker is not the subject."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.errors import BrokerError, BrokerUnavailable
from bridge.message import Outbound


class FakePublisher:
    """Records what it is asked to publish; ``fail_with`` makes every publish fail."""

    def __init__(self) -> None:
        self.published: list[Outbound] = []
        self.fail_with: BrokerError | None = None

    @property
    def connected(self) -> bool:
        return self.fail_with is None

    async def publish(self, messages: Sequence[Outbound], *, deadline: float | None = None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.published.extend(messages)

    def break_down(self) -> None:
        self.fail_with = BrokerUnavailable("broker is down (fake)")
