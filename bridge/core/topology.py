"""The RabbitMQ objects the bridge declares, as plain values (pure).

The publisher declares them; the deploy definitions are checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.core.message import render_routing_key
from bridge.core.names import KNOWN_KEYS
from bridge.core.outbound import invalid_queue

QUORUM = {"x-queue-type": "quorum"}


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    type: str
    arguments: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue and the (exchange, routing key) pairs bound to it."""

    name: str
    arguments: dict[str, str] = field(default_factory=lambda: dict(QUORUM))
    bindings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]


def unrouted_name(exchange: str) -> str:
    return f"{exchange}.unrouted"


def known_binding_keys(template: str) -> tuple[str, ...]:
    """The ten documented routing keys, once each; a {source} word binds any source (``*``)."""
    keys = (render_routing_key(template, entity=e, action=a, source="*") for e, a in KNOWN_KEYS)
    return tuple(dict.fromkeys(keys))


def build_topology(exchange: str, template: str, *, declare_queues: bool) -> Topology:
    """Exchange with its alternate exchange, unrouted and invalid queues, and the known queues."""
    unrouted = unrouted_name(exchange)
    exchanges = (
        ExchangeSpec(unrouted, "fanout"),
        ExchangeSpec(exchange, "topic", {"alternate-exchange": unrouted}),
    )
    queues = [
        QueueSpec(unrouted, bindings=((unrouted, ""),)),
        QueueSpec(invalid_queue(exchange)),
    ]
    if declare_queues:
        queues.extend(QueueSpec(key, bindings=((exchange, key),)) for key in known_binding_keys(template))
    return Topology(exchanges, tuple(queues))
