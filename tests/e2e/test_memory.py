"""Memory under the heaviest input: 64 bodies of BRIDGE_MAX_BODY at once stay inside the 512 MiB the
deploy files give the process, with room to spare.

No broker is reachable (a refused port), so nothing drains and what is measured is the listening
process taking the bodies in; the publishing process reads the spool in batches bounded in count
and bytes, whatever the bodies were.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from bench.proxy import free_port
from tests.e2e.process import BridgeProcess

pytestmark = pytest.mark.slow

MAX_BODY = 1 << 20
# The Kubernetes limit in deploy/kubernetes/statefulset.yaml is 512 MiB: a quarter of it is left
# for the publishing process, the spool's page cache accounting and whatever the runtime adds.
PEAK_BOUND = 384 * 1024 * 1024


def worst_bodies() -> dict[str, bytes]:
    """Bodies of at most 1 MiB, each the worst of its shape for the listener's memory."""
    ids = orjson.dumps({"Add": {"Guests": list(range(100_000))}})
    rejected = orjson.dumps({"Add": {"Guests": [True] * 100_000}})
    wide = orjson.dumps({f"k{n}": {"Guests": [n]} for n in range(30_000)})
    deep = b'{"Add":' + b"[" * 500_000 + b"]" * 500_000 + b"}"
    bodies = {"ids": ids, "rejected": rejected, "wide": wide, "deep": deep}
    assert all(len(body) <= MAX_BODY for body in bodies.values()), {k: len(v) for k, v in bodies.items()}
    return bodies


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory, in bytes (VmHWM of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class TestMemory:
    async def test_64_heaviest_bodies_at_once_fit_the_deployed_limit(
        self, tmp_path: Path, processes: list[BridgeProcess]
    ) -> None:
        """64 bodies of 1 MiB of each heavy shape at once: every answer is 200, 400 or 503 (never a
        crash or a 500), and the listener's peak resident memory stays under 384 MiB."""
        bridge = BridgeProcess(
            {
                "BRIDGE_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
                "BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
                "BRIDGE_MAX_BODY": str(MAX_BODY),
            },
            cwd=tmp_path,
        )
        processes.append(bridge)
        await bridge.event("listening")
        statuses: dict[str, list[int]] = {}
        async with aiohttp.ClientSession(bridge.base_url) as http:

            async def post(body: bytes) -> int:
                async with http.post("/webhooks/servio/x", data=body) as response:
                    await response.read()
                    return response.status

            for shape, body in worst_bodies().items():
                statuses[shape] = list(await asyncio.gather(*(post(body) for _ in range(64))))
            async with http.get("/healthz") as health:
                assert health.status == 200
        peak = peak_rss(bridge.proc.pid)
        print(f"listener peak RSS {peak / 2**20:.0f} MiB; answers {statuses}")
        failures = [e for e in bridge.events() if e.get("event") == "request_failed"]
        for shape, answers in statuses.items():
            assert set(answers) <= {200, 400, 503}, (shape, answers, failures[:1])
            assert 200 in answers or 400 in answers, (shape, answers)
        assert peak < PEAK_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
