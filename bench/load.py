"""The load of webhooks, for the benchmark and the tests alike: wrk when it is installed, else
``Load``, the Python generator (in a process of its own when the benchmark runs it).

Either way each request is one Servio guest update with one fresh ID, so every 2xx answer means
exactly one message that must reach the queue. Run as a script, this module is the generator and
prints one JSON line with what ``LoadResult`` holds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

SOURCE = "bench"
PATH = f"/webhooks/servio/{SOURCE}"
IDS_PER_REQUEST = 1
MARK = "BENCH_RESULT "
GENERATOR = str(Path(__file__).resolve())

# One guest update per request, shaped as Servio sends it; the ID differs per request and thread.
WRK_SCRIPT = """
local counter = 0
local threads = 0

function setup(thread)
    thread:set("tid", threads)
    threads = threads + 1
end

function init(args)
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
end

function request()
    counter = counter + 1
    local id = (tid or 0) * 100000000 + counter
    local body = string.format(
        '{"Add":null,"Update":{"Guests":[%d],"Clients":null,"Companies":null,"Rooms":null},"Delete":null}',
        id)
    return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_RESULT {"requests":%d,"duration_s":%f,"non2xx":%d,"errors":%d,"p50_ms":%f,"p99_ms":%f}\\n',
        summary.requests, summary.duration / 1e6, e.status,
        e.connect + e.read + e.write + e.timeout,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """What one load run saw: ``started`` is wall-clock time (comparable across processes)."""

    tool: str
    started: float
    duration_s: float
    requests: int
    non2xx: int
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def accepted(self) -> int:
        """Requests answered 2xx (wrk counts a status over 399 as an error, 3xx never comes)."""
        return self.requests - self.non2xx

    @property
    def accepted_messages(self) -> int:
        return self.accepted * IDS_PER_REQUEST

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.duration_s if self.duration_s > 0 else 0.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def body_for(id_: int) -> bytes:
    return json.dumps(
        {
            "Add": None,
            "Update": {"Guests": [id_], "Clients": None, "Companies": None, "Rooms": None},
            "Delete": None,
        }
    ).encode()


async def run_load(base_url: str, *, seconds: float, connections: int, python_load: bool) -> LoadResult:
    """Drive ``base_url`` for ``seconds`` at ``connections``; wrk unless ``python_load``."""
    if python_load or not wrk_available():
        return await _run_python(base_url, seconds=seconds, connections=connections)
    return await _run_wrk(base_url, seconds=seconds, connections=connections)


async def _run_wrk(base_url: str, *, seconds: float, connections: int) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "servio.lua"
        script.write_text(WRK_SCRIPT)
        command = [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base_url + PATH,
        ]
        started = time.time()
        out = await _output(command, timeout=seconds + 60)
    return LoadResult(tool="wrk", started=started, **_marked(out))


async def _run_python(base_url: str, *, seconds: float, connections: int) -> LoadResult:
    command = [
        sys.executable,
        GENERATOR,
        "--url",
        base_url,
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
    ]
    out = await _output(command, timeout=seconds + 60)
    return LoadResult(tool="python", **_marked(out))


async def _output(command: list[str], *, timeout: float) -> str:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return out.decode()


def _marked(out: str) -> dict[str, float]:
    for line in out.splitlines():
        if line.startswith(MARK):
            result: dict[str, float] = json.loads(line[len(MARK) :])
            return result
    raise RuntimeError(f"the load generator printed no result:\n{out[-2000:]}")


# -- the Python generator ----------------------------------------------------------------------


@dataclass
class Load:
    """Posts one guest update per webhook, each with a fresh ID, over keep-alive connections;
    remembers which IDs were answered 200, what else was answered, and each answer's latency."""

    base_url: str
    source: str = "load"
    accepted: set[int] = field(default_factory=set)
    refused: int = 0  # answered, but not 200
    failed: int = 0  # no answer at all
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def post_one(self, http: aiohttp.ClientSession, id_: int) -> None:
        sent = time.perf_counter()
        try:
            url = f"{self.base_url}/webhooks/servio/{self.source}"
            async with http.post(url, data=body_for(id_)) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.failed += 1
            await asyncio.sleep(0.02)  # the bridge is down: do not spin
            return
        self.latencies.append(time.perf_counter() - sent)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.accepted.add(id_)
        else:
            self.refused += 1

    async def run(
        self, *, count: int | None = None, seconds: float | None = None, concurrency: int = 8
    ) -> None:
        """Post ``count`` webhooks, or as many as fit in ``seconds``, ``concurrency`` at a time."""
        loop = asyncio.get_running_loop()
        end = None if seconds is None else loop.time() + seconds
        remaining = count

        async def worker(http: aiohttp.ClientSession) -> None:
            nonlocal remaining
            while True:
                if end is not None and loop.time() > end:
                    return
                if remaining is not None:
                    if remaining <= 0:
                        return
                    remaining -= 1
                await self.post_one(http, next(self._ids))

        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            await asyncio.gather(*(worker(http) for _ in range(concurrency)))


async def generate(base_url: str, *, seconds: float, connections: int) -> dict[str, float]:
    """``Load`` for ``seconds`` at ``connections``, as the figures ``LoadResult`` holds."""
    load = Load(base_url, source=SOURCE)
    started = time.time()
    t0 = time.perf_counter()
    await load.run(seconds=seconds, concurrency=connections)
    duration = time.perf_counter() - t0
    latencies = sorted(load.latencies)
    return {
        "started": started,
        "duration_s": duration,
        "requests": len(latencies),
        "non2xx": load.refused,
        "errors": load.failed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


def main() -> None:
    parser = argparse.ArgumentParser(description="The Python load generator (used when wrk is missing).")
    parser.add_argument("--url", required=True, help="the bridge's base URL")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency of the bridge
        run = asyncio.run
    result = run(generate(args.url, seconds=args.seconds, connections=args.connections))
    print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
