"""Consume ``servio.guests.delete`` safely: a starting point for a CRM, a door-lock system, ...

    pip install aio-pika
    AMQP_URL=amqp://servio:servio@localhost:5672/ python examples/consume_guest_deletes.py

What makes it safe (docs/consuming.md explains each):

- manual acks: a message is acked only after it was handled, so a crash means a redelivery,
  never a loss;
- a prefetch window: at most PREFETCH unacked messages in flight;
- dedup on ``message_id``: the bridge delivers at least once and re-publishes with the same
  message_id, so a message already handled is acked and skipped (an in-memory LRU, plus a
  SQLite file with DEDUP_DB so that it survives restarts);
- poison messages (not JSON, fields missing, not a guest deletion) and messages whose handling
  failed MAX_ATTEMPTS times go to the dead-letter exchange with the reason in a header, and are
  then acked: they never block the queue and are never lost.

Settings by environment variable or option (``--help``): AMQP_URL, QUEUE, DEAD_LETTER_EXCHANGE,
DEAD_LETTER_QUEUE, PREFETCH, MAX_ATTEMPTS, DEDUP_DB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

log = logging.getLogger("consume_guest_deletes")

POISON_REASON = "x-poison-reason"


@dataclass(frozen=True, slots=True)
class Config:
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    queue: str = "servio.guests.delete"
    dead_letter_exchange: str = "servio.dlx"
    dead_letter_queue: str = "servio.dead"
    prefetch: int = 20
    max_attempts: int = 3
    dedup_db: Path | None = None

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
        """Options win over environment variables, which win over the defaults."""
        env = os.environ if env is None else env
        d = cls()
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
        parser.add_argument("--amqp-url", default=env.get("AMQP_URL", d.amqp_url))
        parser.add_argument("--queue", default=env.get("QUEUE", d.queue))
        parser.add_argument(
            "--dead-letter-exchange", default=env.get("DEAD_LETTER_EXCHANGE", d.dead_letter_exchange)
        )
        parser.add_argument("--dead-letter-queue", default=env.get("DEAD_LETTER_QUEUE", d.dead_letter_queue))
        parser.add_argument("--prefetch", type=int, default=int(env.get("PREFETCH", d.prefetch)))
        parser.add_argument("--max-attempts", type=int, default=int(env.get("MAX_ATTEMPTS", d.max_attempts)))
        parser.add_argument("--dedup-db", type=Path, default=env.get("DEDUP_DB") or None)
        args = parser.parse_args(argv)
        return cls(
            amqp_url=args.amqp_url,
            queue=args.queue,
            dead_letter_exchange=args.dead_letter_exchange,
            dead_letter_queue=args.dead_letter_queue,
            prefetch=args.prefetch,
            max_attempts=args.max_attempts,
            dedup_db=args.dedup_db,
        )


@dataclass(frozen=True, slots=True)
class GuestDeleted:
    """What one message says: Servio deleted (cancelled) this guest."""

    id: int
    source: str
    delivery_id: str
    received_at: datetime


class Poison(ValueError):
    """A message that no retry can make handleable."""


def parse_guest_deleted(body: bytes) -> GuestDeleted:
    """The event in a message body (see docs/message.schema.json).

    Raises:
        Poison: not JSON, not an object, a field missing or of the wrong type, or not a guest deletion.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Poison(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Poison("body is not a JSON object")
    missing = sorted({"entity", "action", "id", "source", "delivery_id", "received_at"} - doc.keys())
    if missing:
        raise Poison(f"missing fields: {', '.join(missing)}")
    if (doc["entity"], doc["action"]) != ("guests", "delete"):
        raise Poison(f"not a guest deletion: {doc['entity']!r} {doc['action']!r}")
    guest_id = doc["id"]
    if not isinstance(guest_id, int) or isinstance(guest_id, bool) or guest_id < 0:
        raise Poison(f"id is not a non-negative integer: {guest_id!r}")
    try:
        received_at = datetime.fromisoformat(doc["received_at"])
    except (TypeError, ValueError):
        raise Poison(f"received_at is not an ISO 8601 time: {doc['received_at']!r}") from None
    return GuestDeleted(guest_id, str(doc["source"]), str(doc["delivery_id"]), received_at)


class Dedup:
    """message_ids already handled: the last ``size`` in memory, all of them in SQLite if given."""

    def __init__(self, path: Path | None = None, size: int = 100_000) -> None:
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS handled"
                " (message_id TEXT PRIMARY KEY, at TEXT DEFAULT CURRENT_TIMESTAMP)"
            )

    def seen(self, message_id: str) -> bool:
        if message_id in self._recent:
            self._recent.move_to_end(message_id)
            return True
        if self._db is None:
            return False
        row = self._db.execute("SELECT 1 FROM handled WHERE message_id = ?", (message_id,)).fetchone()
        return row is not None

    def remember(self, message_id: str) -> None:
        self._recent[message_id] = None
        self._recent.move_to_end(message_id)
        while len(self._recent) > self._size:
            self._recent.popitem(last=False)
        if self._db is not None:
            with self._db:
                self._db.execute("INSERT OR IGNORE INTO handled (message_id) VALUES (?)", (message_id,))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


Handler = Callable[[GuestDeleted], Awaitable[None]]


async def delete_guest_from_crm(event: GuestDeleted) -> None:
    """Your business logic goes here; make it idempotent too (deleting twice is fine)."""
    log.info("deleting guest %s (source %s, received %s)", event.id, event.source, event.received_at)


class Consumer:
    """Takes messages off one queue and gives each to ``handler`` at most once per message_id."""

    def __init__(self, config: Config, handler: Handler, dedup: Dedup) -> None:
        self._config = config
        self._handler = handler
        self._dedup = dedup
        self._dead_letters: AbstractExchange | None = None
        # message_ids being handled right now: with a prefetch window, a duplicate can arrive
        # while its first copy is still in the handler.
        self._in_flight: dict[str, asyncio.Event] = {}

    async def start(self, channel: AbstractChannel) -> None:
        """Set the prefetch, make sure the dead-letter path exists, start consuming."""
        await channel.set_qos(prefetch_count=self._config.prefetch)
        # The same objects (names, types, arguments) as deploy/rabbitmq/definitions.json, so that
        # declaring them is a no-op there, and creates them where only the bridge declared its own.
        self._dead_letters = await channel.declare_exchange(
            self._config.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead = await channel.declare_queue(
            self._config.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(self._dead_letters, "")
        # The queue itself is the bridge's (or the definitions'): fail loudly if it is not there.
        queue = await channel.get_queue(self._config.queue, ensure=True)
        await queue.consume(self.on_message)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        mid = message.message_id or "sha256:" + hashlib.sha256(message.body).hexdigest()
        while (first := self._in_flight.get(mid)) is not None:
            await first.wait()
        if self._dedup.seen(mid):
            log.info("duplicate %s skipped", mid)
            await message.ack()
            return
        done = self._in_flight[mid] = asyncio.Event()
        try:
            await self._handle(message, mid)
        finally:
            del self._in_flight[mid]
            done.set()

    async def _handle(self, message: AbstractIncomingMessage, mid: str) -> None:
        try:
            event = parse_guest_deleted(message.body)
        except Poison as exc:
            await self._dead_letter(message, mid, f"poison: {exc}")
            return
        try:
            await self._handler(event)
        except Exception as exc:  # noqa: BLE001 - any failure of the handler is retried, then dead-lettered
            attempts = _delivery_count(message) + 1
            if attempts >= self._config.max_attempts:
                await self._dead_letter(message, mid, f"handler failed {attempts} times: {exc!r}")
            else:
                log.warning("handling %s failed (attempt %d): %r; requeued", mid, attempts, exc)
                await message.nack(requeue=True)
            return
        # Remember before acking: a crash in between redelivers a message already remembered,
        # which is then skipped; a crash before remembering redelivers it to an idempotent handler.
        self._dedup.remember(mid)
        await message.ack()

    async def _dead_letter(self, message: AbstractIncomingMessage, mid: str, reason: str) -> None:
        """Publish a copy with the reason (confirmed by the broker), then ack the original.

        Remembered like a handled message, so a duplicate of it is not dead-lettered twice.
        """
        assert self._dead_letters is not None
        log.error("dead-lettering %s: %s", message.message_id, reason)
        headers: dict[str, Any] = dict(message.headers or {})
        headers[POISON_REASON] = reason[:1000]
        headers["x-original-queue"] = self._config.queue
        headers["x-original-routing-key"] = message.routing_key or ""
        await self._dead_letters.publish(
            aio_pika.Message(
                message.body,
                headers=headers,
                content_type=message.content_type,
                message_id=message.message_id,
                app_id=message.app_id,
                timestamp=message.timestamp,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=message.routing_key or "",
        )
        self._dedup.remember(mid)
        await message.ack()


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """Earlier failed deliveries, as counted by a quorum queue (0 on the first delivery)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


async def consume(config: Config, handler: Handler, stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set; reconnects on its own if the broker goes away."""
    dedup = Dedup(config.dedup_db)
    connection = await aio_pika.connect_robust(
        config.amqp_url, client_properties={"connection_name": "guest-deletes"}
    )
    try:
        channel = await connection.channel(publisher_confirms=True)
        await Consumer(config, handler, dedup).start(channel)
        log.info("consuming %s", config.queue)
        await stop.wait()
    finally:
        await connection.close()
        dedup.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = Config.from_args()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await consume(config, delete_guest_from_crm, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
