"""Prometheus metrics, every name starting ``servio_bridge_``, in a registry of each app's own.

Counters and histograms move as things happen (the HTTP middleware, the publisher's observer);
the gauges (spool depth, broker state) are read from the running parts at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.core.names import KNOWN_ACTIONS, KNOWN_ENTITIES
from bridge.core.outbound import Outbound
from bridge.core.refusals import REFUSAL_REASONS, RETRY_CLASSES
from bridge.spool.commit import SYNC_BUCKETS, SyncTimes

PREFIX = "servio_bridge"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Label values come from the outside (a URL's source, an unknown entity name): past this many
# distinct values per metric, new ones are counted as "other" so a flood cannot exhaust memory.
MAX_LABEL_VALUES = 200
OTHER = "other"
# Failure classes and refusal reasons come from the publisher, a short known list: a bound this
# small still keeps an unforeseen flood of new names from growing the registry.
MAX_FAILURE_CLASSES = 16
MAX_REFUSAL_REASONS = 32


@dataclass(frozen=True, slots=True)
class State:
    """The gauges' values at one instant."""

    spool_entries: int
    spool_bytes: int
    spool_oldest: float | None
    broker_connected: bool
    broker_blocked: bool
    ready: bool
    spool_sync: SyncTimes | None = None
    spool_quarantined: int = 0
    drain_stalled: bool = False
    last_confirm: float | None = None
    loop_lag: float = 0.0
    publisher_healthy: bool = True


class Metrics:
    """The bridge's counters and histograms; ``watch`` adds the gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._seen: dict[str, set[str]] = {}
        # Label children by their raw values: ``labels()`` validates and locks on every call.
        self._webhook_children: dict[tuple[int, str], Counter] = {}
        self._route_children: dict[str, Histogram] = {}
        # Wall time of the last confirm of at least one message: what tells a stalled drain apart.
        self.last_confirm: float | None = None
        r = self.registry
        self.webhooks_received = Counter(
            f"{PREFIX}_webhooks_received",
            "Webhook requests answered, by HTTP status and source.",
            ["status", "source"],
            registry=r,
        )
        self.messages_published = Counter(
            f"{PREFIX}_messages_published",
            "Messages confirmed by RabbitMQ, by routing key.",
            ["routing_key"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Dead letters confirmed into <exchange>.invalid, by reason.",
            ["reason"],
            registry=r,
        )
        self.unknown_names = Counter(
            f"{PREFIX}_unknown_names",
            "Messages published under an undocumented action or entity name.",
            ["kind", "name"],
            registry=r,
        )
        self.publish_retries = Counter(
            f"{PREFIX}_publish_retries",
            "Publish attempts that failed and were tried again, by failure class, as they happen.",
            ["class"],
            registry=r,
        )
        self.messages_refused = Counter(
            f"{PREFIX}_messages_refused",
            "Messages RabbitMQ refused for good (sent on as dead letters or quarantined), by reason.",
            ["reason"],
            registry=r,
        )
        self.confirm_latency = Histogram(
            f"{PREFIX}_confirm_latency_seconds",
            "Time from sending a message to RabbitMQ's confirm.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.request_latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

        # Known names have their series from the start: an alert on a rate sees 0, not nothing.
        for failure_class in RETRY_CLASSES:
            self.publish_retries.labels(self.label("class", failure_class, bound=MAX_FAILURE_CLASSES))
        for reason in REFUSAL_REASONS:
            self.messages_refused.labels(self.label("refused", reason, bound=MAX_REFUSAL_REASONS))

    def watch(self, state: Callable[[], State]) -> None:
        """Read the gauges from ``state()`` at every scrape."""
        self.registry.register(_StateCollector(state))

    def label(self, metric: str, value: str, *, bound: int = MAX_LABEL_VALUES) -> str:
        """``value``, or "other" once ``metric`` has seen ``bound`` distinct ones."""
        seen = self._seen.setdefault(metric, set())
        if value in seen:
            return value
        if len(seen) >= bound:
            return OTHER
        seen.add(value)
        return value

    def webhook(self, status: int, source: str) -> None:
        child = self._webhook_children.get((status, source))
        if child is None:
            child = self.webhooks_received.labels(str(status), self.label("source", source))
            if len(self._webhook_children) < MAX_LABEL_VALUES * 4:
                self._webhook_children[(status, source)] = child
        child.inc()

    def request(self, route: str, seconds: float) -> None:
        child = self._route_children.get(route)
        if child is None:
            child = self._route_children[route] = self.request_latency.labels(route)
        child.observe(seconds)

    # -- the publisher's observer ----------------------------------------------------------

    def confirmed(self, message: Outbound, seconds: float) -> None:
        self.confirm_latency.observe(seconds)
        self._count_confirmed(confirm_key(message), 1)
        self.last_confirm = time.time()

    def confirmed_batch(self, counts: Iterable[Sequence[Any]], latencies: Iterable[float]) -> None:
        """A batch confirmed in the publishing process: ``confirm_key`` tuples, each with a count
        as its last item, and every message's confirm latency."""
        for seconds in latencies:
            self.confirm_latency.observe(seconds)
        confirmed = 0
        for *key, n in counts:
            self._count_confirmed(tuple(str(k) for k in key), int(n))
            confirmed += int(n)
        if confirmed > 0:
            self.last_confirm = time.time()

    def _count_confirmed(self, key: tuple[str, ...], n: int) -> None:
        if key[0] == "dead":
            self.dead_letters.labels(self.label("reason", key[1])).inc(n)
            return
        _, routing_key, action, entity = key
        self.messages_published.labels(self.label("routing_key", routing_key)).inc(n)
        if action:
            self.unknown_names.labels("action", self.label("unknown", action)).inc(n)
        if entity:
            self.unknown_names.labels("entity", self.label("unknown", entity)).inc(n)

    def retried(self, failure_class: str = OTHER) -> None:
        """One publish attempt failed and is tried again."""
        self.publish_retries.labels(self.label("class", failure_class, bound=MAX_FAILURE_CLASSES)).inc()

    def refused(self, reason: str, n: int) -> None:
        """``n`` messages were refused by RabbitMQ for good, for ``reason``."""
        self.messages_refused.labels(self.label("refused", reason, bound=MAX_REFUSAL_REASONS)).inc(n)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


def confirm_key(message: Outbound) -> tuple[str, ...]:
    """What a confirmed message counts as: ``("dead", reason)``, or ``("published", routing_key,
    action, entity)`` with action and entity "" unless they are undocumented names."""
    if message.exchange == "":
        return ("dead", message.reason or "unknown")
    return (
        "published",
        message.routing_key,
        "" if message.action in KNOWN_ACTIONS else message.action,
        "" if message.entity in KNOWN_ENTITIES else message.entity,
    )


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], State]) -> None:
        self._state = state

    def describe(self) -> Iterator[Metric]:
        # Nothing to describe up front: the gauges exist only at collect time.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        s = self._state()
        age = 0.0 if s.spool_oldest is None else max(0.0, time.time() - s.spool_oldest)
        yield _gauge(
            "spool_entries", "Messages waiting in the spool for RabbitMQ's confirm.", s.spool_entries
        )
        yield _gauge(
            "spool_bytes", "Bytes the spool holds, as counted against BRIDGE_SPOOL_MAX_BYTES.", s.spool_bytes
        )
        yield _gauge("spool_oldest_age_seconds", "Age of the oldest entry in the spool (0 when empty).", age)
        yield _gauge(
            "broker_connected", "1 while the publishing connection to RabbitMQ is open.", s.broker_connected
        )
        yield _gauge(
            "broker_blocked",
            "1 while RabbitMQ blocks the connection (memory or disk alarm).",
            s.broker_blocked,
        )
        yield _gauge("ready", "1 while /readyz answers 200.", s.ready)
        yield _gauge(
            "spool_quarantined",
            "Entries the broker refused even as dead letters, kept in the spool's quarantine table.",
            s.spool_quarantined,
        )
        yield _gauge(
            "drain_stalled",
            "1 while the oldest spool entry has waited past BRIDGE_STALL_AFTER with the broker "
            "connected and no confirm.",
            s.drain_stalled,
        )
        yield _gauge(
            "last_confirm_timestamp_seconds",
            "Unix time of RabbitMQ's last confirm of a message (0 before the first).",
            s.last_confirm or 0.0,
        )
        yield _gauge(
            "event_loop_lag_seconds",
            "The longest the event loop was late to wake in the last minute: how long it was blocked.",
            s.loop_lag,
        )
        yield _gauge(
            "publisher_healthy",
            "0 once the publishing process repeatedly failed to run (/healthz answers 503).",
            s.publisher_healthy,
        )
        if s.spool_sync is not None:
            yield _sync_histogram(s.spool_sync)


def _sync_histogram(times: SyncTimes) -> HistogramMetricFamily:
    """The spool's fsync times as a Prometheus histogram: cumulative buckets, then +Inf."""
    cumulative, buckets = 0, []
    for bound, count in zip((*map(str, SYNC_BUCKETS), "+Inf"), times.counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(
        f"{PREFIX}_spool_sync_seconds",
        "Time of each fsync of the spool's WAL, as the appends waiting for it saw it. Every webhook "
        "answered 200 waited for one: a slow disk shows here first.",
        buckets=buckets,
        sum_value=times.sum,
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=float(value))
