"""The benchmark reads the bridge's own fsync times from its /metrics, between two scrapes."""

from __future__ import annotations

from types import ModuleType

import pytest

from bridge.metrics import Metrics, State
from bridge.spool.commit import SYNC_BUCKETS, SyncTimes
from tests.scripts import bench_module


def disk() -> ModuleType:
    return bench_module("disk")


def exposition(counts: list[int]) -> str:
    """/metrics as the bridge renders it, with these fsyncs per bucket."""
    metrics = Metrics()
    times = SyncTimes(tuple(counts), 0.001 * sum(counts))
    metrics.watch(lambda: State(0, 0, None, True, False, True, spool_sync=times))
    return metrics.render().decode()


def counts(**per_bound: int) -> list[int]:
    """Counts per bucket, keyed ``ms<bound in µs>`` or ``inf``."""
    out = [0] * (len(SYNC_BUCKETS) + 1)
    for key, n in per_bound.items():
        index = len(SYNC_BUCKETS) if key == "inf" else SYNC_BUCKETS.index(int(key[2:]) / 1e6)
        out[index] = n
    return out


class TestSpoolSyncs:
    def test_what_happened_between_two_scrapes(self) -> None:
        module = disk()
        before = module.sync_buckets(exposition(counts(us500=10, us1000=10)))
        # Since: 50 more under 0.5 ms, 30 under 2 ms, 18 under 10 ms, 2 under 50 ms.
        after = module.sync_buckets(exposition(counts(us500=60, us1000=10, us2000=30, us10000=18, us50000=2)))
        figures = module.spool_syncs(before, after)
        assert figures["fsyncs"] == 100
        assert figures["p50_le_ms"] == 0.5
        assert figures["p99_le_ms"] == 50
        assert figures["over_5ms_pct"] == pytest.approx(20)
        assert figures["over_10ms_pct"] == pytest.approx(2)

    def test_fsyncs_past_every_bound_are_inf(self) -> None:
        module = disk()
        figures = module.spool_syncs({}, module.sync_buckets(exposition(counts(us1000=1, inf=1))))
        assert figures["fsyncs"] == 2
        assert figures["p99_le_ms"] == float("inf")
        assert figures["over_10ms_pct"] == 50

    def test_no_fsync_or_no_histogram_gives_no_figures(self) -> None:
        module = disk()
        same = module.sync_buckets(exposition(counts(us500=3)))
        assert module.spool_syncs(same, same) == {}
        assert module.sync_buckets("# nothing here\n") == {}
        assert module.spool_syncs({}, {}) == {}
