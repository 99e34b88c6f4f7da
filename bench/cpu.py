"""Where the CPU went while a target was under load, per accepted request, read from /proc.

The answer latency at a fixed number of connections follows the rate, and on a machine of two
CPUs the rate follows the CPU every part of the pipeline spends per request: the target's own
processes, RabbitMQ's, and the rest (the load generator above all). A sample is taken just before
and just after the load; the difference, divided by the requests accepted, says which part cost
what, and how many requests a second the machine could carry at that cost with every CPU busy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
# The Erlang VM's program name: the processes of a local RabbitMQ node.
BROKER_COMM = "beam.smp"


@dataclass(frozen=True)
class CpuSample:
    at: float
    processes: dict[int, float]  # CPU seconds of each of the target's processes
    main_thread: float  # of the target's first process's main thread (the event loop)
    broker: float
    busy: float  # the machine's CPU seconds, all CPUs, idle, I/O wait and steal left out
    steal: float  # seconds the hypervisor gave the machine's CPUs to others


def _stat_seconds(path: str) -> float:
    """utime + stime of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat, in seconds; 0 once
    the process is gone."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def process_seconds(pid: int) -> float:
    """CPU seconds of a process, all its threads; 0 once it is gone."""
    return _stat_seconds(f"/proc/{pid}/stat")


def thread_seconds(pid: int, tid: int) -> float:
    return _stat_seconds(f"/proc/{pid}/task/{tid}/stat")


def machine_seconds(stat: str | None = None) -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, summed over its CPUs, from the
    text of /proc/stat (read now when not given)."""
    text = Path("/proc/stat").read_text() if stat is None else stat
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


def broker_pids() -> list[int]:
    """The local processes running an Erlang VM: RabbitMQ's node (none if it runs elsewhere)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == BROKER_COMM:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def sample(pids: Iterable[int], brokers: Iterable[int]) -> CpuSample:
    """CPU seconds so far of each of ``pids`` (the first one's main thread apart), of ``brokers``
    together, and of the machine."""
    pids = list(pids)
    busy, steal = machine_seconds()
    return CpuSample(
        at=time.monotonic(),
        processes={pid: process_seconds(pid) for pid in pids},
        main_thread=thread_seconds(pids[0], pids[0]) if pids else 0.0,
        broker=sum(process_seconds(pid) for pid in brokers),
        busy=busy,
        steal=steal,
    )


def per_request(before: CpuSample, after: CpuSample, requests: int, cpus: int) -> dict[str, float]:
    """µs of CPU per request of each part between two samples, and how busy the machine was.

    ``target_us`` counts the processes of ``before``; ``rest_us`` is what the machine spent outside
    them and the broker (the load generator, mostly). ``max_req_s`` is the rate the machine could
    carry at ``busy_us`` per request with all ``cpus`` busy.
    """
    if requests <= 0:
        return {}
    elapsed = after.at - before.at
    # A process gone by the second sample reads 0: what it spent is lost, never negative.
    target = sum(max(0.0, after.processes.get(pid, 0.0) - spent) for pid, spent in before.processes.items())
    broker = after.broker - before.broker
    busy = after.busy - before.busy

    def us(seconds: float) -> float:
        return seconds / requests * 1e6

    return {
        "target_us": us(target),
        "main_thread_us": us(after.main_thread - before.main_thread),
        "broker_us": us(broker),
        "rest_us": us(max(0.0, busy - target - broker)),
        "busy_us": us(busy),
        "busy_pct": 100 * busy / (elapsed * cpus) if elapsed > 0 else 0.0,
        "steal_pct": 100 * (after.steal - before.steal) / (elapsed * cpus) if elapsed > 0 else 0.0,
        "max_req_s": cpus / (busy / requests) if busy > 0 else 0.0,
    }
