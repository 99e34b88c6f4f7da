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
