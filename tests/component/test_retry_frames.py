"""Retries reach the listening process as they happen: counted each, logged rate-limited."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from structlog.testing import capture_logs

from bridge.amqp.frames import Retry
from bridge.amqp.process import ProcessPublisher
from bridge.settings import Settings


class Observed:
    def __init__(self) -> None:
        self.retries: list[str] = []

    def confirmed_batch(self, counts: Iterable[Sequence[Any]], latencies: Iterable[float]) -> None:
        pass

    def retried(self, failure_class: str = "other") -> None:
        self.retries.append(failure_class)

    def refused(self, reason: str, n: int) -> None:
        pass


class TestRetryFrames:
    def test_each_retry_is_counted_and_logged_once_per_class_within_ten_seconds(self) -> None:
        """Five retry frames of one class and one of another: six counts, one warning per class
        (the first), each with the number of retries since the last line."""
        observed = Observed()
        publisher = ProcessPublisher(Settings(amqp_urls=("amqp://x/",), routing_key="k"), observer=observed)
        with capture_logs() as logs:
            for _ in range(5):
                publisher._handle(Retry("closed", "FRAME_ERROR"))
            publisher._handle(Retry("nacked", "nack"))
        assert observed.retries == ["closed"] * 5 + ["nacked"]
        lines = [(e["failure_class"], e["retries"]) for e in logs if e["event"] == "publish_retrying"]
        assert lines == [("closed", 1), ("nacked", 1)]
        assert all(e["log_level"] == "warning" for e in logs if e["event"] == "publish_retrying")
