"""Small hand-written fakes for the seams (``Publisher``), used where the broker is not the subject."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.core.outbound import Outbound
from bridge.core.refusals import Refusal
from bridge.errors import BrokerError, BrokerUnavailable


class FakePublisher:
    """Records what it is asked to publish; ``fail_with`` makes every publish fail, and
    ``refuse_routing_key`` has messages with that key refused for good, even as dead letters."""

    def __init__(self) -> None:
        self.published: list[Outbound] = []
        self.fail_with: BrokerError | None = None
        self.refuse_routing_key: str | None = None

    @property
    def connected(self) -> bool:
        return self.fail_with is None

    async def publish(self, messages: Sequence[Outbound], *, deadline: float | None = None) -> list[Refusal]:
        if self.fail_with is not None:
            raise self.fail_with
        refused = [
            Refusal(index, "nacked", "refused (fake)")
            for index, message in enumerate(messages)
            if message.routing_key == self.refuse_routing_key
        ]
        self.published.extend(m for m in messages if m.routing_key != self.refuse_routing_key)
        return refused

    def break_down(self) -> None:
        self.fail_with = BrokerUnavailable("broker is down (fake)")
