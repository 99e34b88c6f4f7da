"""How the disk under the spool fsyncs right now: the floor under any answer that waits for one.

One 4 KiB append and ``fdatasync`` at a time, for a few seconds, in the directory the bridge's
spool uses. A stall here (the shared disk busy with someone else's writes) holds every webhook
waiting for its group commit, so the p99 answer latency cannot be below what this shows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

STALL_MS = 10.0


def fsync_probe(directory: Path, seconds: float = 3.0) -> dict[str, Any]:
    """fdatasync latencies (ms) of ``seconds`` of appends in ``directory``; the file is removed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * 4096
    latencies: list[float] = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            os.write(fd, block)
            started = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    latencies.sort()
    n = len(latencies)
    stalls = [x for x in latencies if x > STALL_MS]
    return {
        "fsyncs": n,
        "p50_ms": latencies[n // 2],
        "p99_ms": latencies[min(n - 1, int(n * 0.99))],
        "max_ms": latencies[-1],
        "stalls": len(stalls),
        "stalled_ms": sum(stalls),
        "seconds": seconds,
    }


def describe(probe: dict[str, Any]) -> str:
    return (
        f"fdatasync p50 {probe['p50_ms']:.2f} ms, p99 {probe['p99_ms']:.2f} ms, "
        f"max {probe['max_ms']:.0f} ms; {probe['stalls']} over {STALL_MS:g} ms "
        f"({probe['stalled_ms']:.0f} ms in all) in {probe['seconds']:g} s"
    )


SYNC_METRIC = "servio_bridge_spool_sync_seconds"


def sync_buckets(metrics_text: str) -> dict[float, float]:
    """The spool's fsync histogram in a /metrics text: upper bound (s, inf for +Inf) -> cumulative count."""
    buckets: dict[float, float] = {}
    prefix = SYNC_METRIC + '_bucket{le="'
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            bound, _, value = line[len(prefix) :].partition('"} ')
            buckets[float(bound)] = float(value)
    return buckets


def spool_syncs(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """The bridge's own fsyncs between two reads of its histogram: how many, the bucket bound
    (ms) under which half and 99% of them fell, and the share over 5 and 10 ms."""
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return {}

    def bound_of(share: float) -> float:
        return next(b for b, c in zip(bounds, cumulative, strict=True) if c >= share * total) * 1000

    def over(ms: float) -> float:
        under = max((c for b, c in zip(bounds, cumulative, strict=True) if b * 1000 <= ms), default=0.0)
        return 100 * (total - under) / total

    return {
        "fsyncs": int(total),
        "p50_le_ms": bound_of(0.5),
        "p99_le_ms": bound_of(0.99),
        "over_5ms_pct": over(5),
        "over_10ms_pct": over(10),
    }
