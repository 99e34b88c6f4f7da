"""What counts against a message RabbitMQ will not take, and what becomes of it (pure).

A publish that fails is retried, but a message the broker refuses *for good* must not hold the
ones behind it: once its failures of one class reach that class's budget, it is refused, goes to
``<exchange>.invalid`` as a ``broker_refused`` dead letter, and if even that letter is refused for
good it is handed back to the caller (the spool's quarantine). See docs/spool.md, "When RabbitMQ
refuses a message".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from bridge.core.outbound import Outbound

BROKER_REFUSED = "broker_refused"
LETTER_SUFFIX = ".refused"
# A short string on the wire holds 255 bytes; the letter's own headers stay well inside a frame.
SHORT_STRING = 255
ERROR_BYTES = 512
# The classes of failure, as retry counters and logs name them (a bounded set).
CLOSED = "closed"  # the broker closed the channel or connection over what was sent
RETURNED = "returned"  # basic.return: routed nowhere, mandatory
NACKED = "nacked"  # basic.nack
TIMEOUT = "timeout"  # no confirm in time: never counted against a message
UNAVAILABLE = "unavailable"  # no connection, or it was lost: never counted against a message
# Reasons a message is refused before it is sent: it cannot be put on the wire as it is.
TOO_LARGE = "too_large"  # its content header frame would not fit the negotiated frame_max
INVALID_FIELD = "invalid_field"  # a field AMQP cannot carry (a short string over 255 bytes)
RETRY_CLASSES = (CLOSED, RETURNED, NACKED, TIMEOUT, UNAVAILABLE)
# What a refusal is counted as: the class whose budget ran out, or why it could not be sent.
REFUSAL_REASONS = (CLOSED, RETURNED, NACKED, TOO_LARGE, INVALID_FIELD)


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How many failures of each class make a message refused for good.

    ``closed`` counts only closes while the message was alone in flight, each on a fresh channel
    after the topology was declared again; ``returned`` counts returns, each followed by a
    declare; ``nacked`` needs that many nacks spread over at least ``nacked_for`` seconds, since a
    quorum queue nacks for a while during a leader election.
    """

    closed: int = 3
    returned: int = 3
    nacked: int = 5
    nacked_for: float = 30.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Message ``index`` of a publish call was refused for good, even as a dead letter."""

    index: int
    reason: str
    error: str


@dataclass(slots=True)
class _Entry:
    message: Outbound
    letter: bool = False  # already the broker_refused dead letter of the original
    counts: dict[str, int] = field(default_factory=dict)
    first_nack: float | None = None


class Ledger:
    """One publish call's account of its messages: what is still to be confirmed, what each
    failure class has cost each message, and what was refused."""

    def __init__(self, messages: Sequence[Outbound], budget: RetryBudget, invalid_queue: str) -> None:
        self._entries = [_Entry(m) for m in messages]
        self._budget = budget
        self._invalid_queue = invalid_queue
        self.pending: list[int] = list(range(len(messages)))
        # Unconfirmed when the broker closed a channel with several in flight: sent one at a
        # time until each is confirmed or refused, so the one the broker objects to is found.
        self.suspects: set[int] = set()
        self.quarantined: list[Refusal] = []

    def message(self, index: int) -> Outbound:
        return self._entries[index].message

    def confirmed(self, index: int) -> None:
        self.pending.remove(index)
        self.suspects.discard(index)

    def suspect(self, index: int) -> None:
        self.suspects.add(index)

    def spent(self, index: int, failure_class: str, now: float) -> bool:
        """Count a failure of ``failure_class`` against message ``index`` (alone in flight, for
        ``CLOSED``); True once that class's budget is spent and the message is to be refused."""
        entry = self._entries[index]
        count = entry.counts.get(failure_class, 0) + 1
        entry.counts[failure_class] = count
        budget = self._budget
        if failure_class == NACKED:
            if entry.first_nack is None:
                entry.first_nack = now
            return count >= budget.nacked and now - entry.first_nack >= budget.nacked_for
        if failure_class == RETURNED:
            return count >= budget.returned
        if failure_class == CLOSED:
            return count >= budget.closed
        return False  # timeouts and lost connections say nothing about the message

    def refuse(self, index: int, reason: str, error: str) -> None:
        """Refuse message ``index`` for good: its dead letter takes its place, or, if it was that
        letter already, it is quarantined."""
        entry = self._entries[index]
        self.suspects.discard(index)
        if entry.letter:
            self.pending.remove(index)
            self.quarantined.append(Refusal(index, reason, error))
            return
        letter = refused_letter(entry.message, self._invalid_queue, error)
        self._entries[index] = _Entry(letter, letter=True)


def refused_letter(message: Outbound, invalid_queue: str, error: str) -> Outbound:
    """The ``broker_refused`` dead letter of ``message``: its body unchanged, bounded headers
    saying where it was going and why it could not."""
    message_id = cut(message.message_id, SHORT_STRING - len(LETTER_SUFFIX)) + LETTER_SUFFIX
    return replace(
        message,
        exchange="",
        routing_key=invalid_queue,
        message_id=message_id,
        order_key=message_id,
        headers={
            "reason": BROKER_REFUSED,
            "original_exchange": cut(message.exchange, SHORT_STRING),
            "original_routing_key": cut(message.routing_key, SHORT_STRING),
            "error": cut(error, ERROR_BYTES),
        },
    )


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` bytes of UTF-8, never splitting a character."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")
