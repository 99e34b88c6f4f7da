"""The frames between the listening process and its publishing child, as typed values.

Each frame is pickled behind a 4-byte length on a socketpair only the parent and the child it
started hold: both ends run the same code, and ``Settings`` (paths, networks) travels as it is.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass

from bridge.settings import Settings
from bridge.spool.reader import Span

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Start:
    """Parent to child, first: the settings to publish with, and the parent to die with."""

    settings: Settings
    parent: int


@dataclass(frozen=True, slots=True)
class Ask:
    """Parent to child: publish the (up to ``limit``) spool entries after seq ``after``."""

    id: int
    after: int
    limit: int
    within: float | None  # seconds left until the drain's deadline
    window: int | None  # at most this many unconfirmed; the publisher's own when None


@dataclass(frozen=True, slots=True)
class Close:
    """Parent to child: close the connection and exit."""


@dataclass(frozen=True, slots=True)
class State:
    """Child to parent, on every change: the connection's state, for /readyz and /metrics."""

    connected: bool
    blocked: bool


@dataclass(frozen=True, slots=True)
class Retry:
    """Child to parent, as it happens: a publish attempt failed and is tried again."""

    failure_class: str
    error: str


@dataclass(frozen=True, slots=True)
class Answer:
    """Child to parent: what became of ``Ask`` ``id``.

    ``counts`` holds ``confirm_key`` tuples each followed by its count; ``quarantine`` the
    (seq, reason) of entries refused even as dead letters; ``error`` a publish that failed (the
    drain retries), ``corrupt`` a spool that cannot be read.
    """

    id: int
    span: Span
    latencies: tuple[float, ...] = ()
    counts: tuple[tuple[str | int, ...], ...] = ()
    retries: int = 0
    refused: tuple[tuple[str, int], ...] = ()
    quarantine: tuple[tuple[int, str], ...] = ()
    error: str | None = None
    corrupt: str | None = None


Frame = Start | Ask | Close | State | Retry | Answer


def encode(frame: Frame) -> bytes:
    payload = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


async def send(writer: asyncio.StreamWriter, frame: Frame) -> None:
    writer.write(encode(frame))
    await writer.drain()


def send_now(writer: asyncio.StreamWriter, frame: Frame) -> None:
    """``send`` without waiting for the buffer to drain: for small frames sent from callbacks."""
    writer.write(encode(frame))


async def receive(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, None once the other end is gone."""
    try:
        size = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0]
        payload = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    # Only the parent and the child it started hold this socketpair, running the same code.
    frame: Frame = pickle.loads(payload)  # noqa: S301
    return frame
