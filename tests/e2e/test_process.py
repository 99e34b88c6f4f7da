"""The real ``servio-bridge serve`` process: start, post, consume, SIGTERM, exit code."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from tests.conftest import AMQP_URL, bind_all
from tests.e2e.process import BridgeProcess
from tests.seed import EXPECTED, seed_payloads


class TestServe:
    async def test_start_post_consume_sigterm(
        self,
        processes: list[BridgeProcess],
        tmp_path: Path,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """Seed payloads posted to the real process reach RabbitMQ; SIGTERM exits 0; every line is JSON."""
        everything = await bind_all(amqp_channel, exchange_name)
        bridge = BridgeProcess(
            {"BRIDGE_AMQP_URL": AMQP_URL, "BRIDGE_EXCHANGE": exchange_name, "BRIDGE_SPOOL_DIR": ""},
            cwd=tmp_path,
        )
        processes.append(bridge)
        bridge.wait_for_event("broker_connected")
        expected = []
        async with aiohttp.ClientSession(bridge.base_url) as http:
            for seed, keys in zip(seed_payloads(), EXPECTED, strict=True):
                async with http.post(f"/webhooks/servio/{seed.source}", data=seed.body) as response:
                    assert response.status == (400 if keys is None else 200)
                expected.extend(keys or [])
            async with http.get("/healthz") as response:
                assert response.status == 200
        messages = await everything.wait_for(len(expected))
        assert [(m.routing_key, orjson.loads(m.body)["id"]) for m in messages] == expected
        bridge.signal(signal.SIGTERM)
        assert bridge.wait() == 0
        events = bridge.events()
        assert all("event" in e for e in events)
        names = [e["event"] for e in events]
        assert names.index("listening") < names.index("shutting_down") < names.index("stopped")
        requests = [e for e in events if e["event"] == "request" and e["path"].startswith("/webhooks")]
        assert len(requests) == len(expected) + 2
        assert all(len(r["delivery_id"]) == 32 for r in requests)

    async def test_sigint_also_stops_cleanly(self, processes: list[BridgeProcess], tmp_path: Path) -> None:
        """SIGINT (Ctrl-C) stops the daemon with exit code 0, even with no broker reachable."""
        bridge = BridgeProcess(
            {"BRIDGE_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/", "BRIDGE_SPOOL_DIR": ""}, cwd=tmp_path
        )
        processes.append(bridge)
        bridge.wait_for_event("listening")
        bridge.signal(signal.SIGINT)
        assert bridge.wait() == 0


class TestBadSettings:
    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("BRIDGE_PORT", "eighty"),
            ("BRIDGE_ROUTING_KEY", "servio.{hotel}.{action}"),
            ("BRIDGE_AMQP_URL", "http://guest:s3cret@localhost/"),
            ("BRIDGE_LOG_FORMAT", "xml"),
        ],
        ids=["port-not-a-number", "unknown-placeholder", "not-amqp-url", "unknown-log-format"],
    )
    def test_exit_2_with_one_line_naming_it(self, tmp_path: Path, variable: str, value: str) -> None:
        """A bad setting stops start-up: exit code 2, one line naming the variable, no traceback."""
        result = subprocess.run(
            [sys.executable, "-m", "bridge", "serve"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", variable: value},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2
        assert result.stdout == b""
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        line = json.loads(lines[0])
        assert line["variable"] == variable
        assert line["event"] == "bad_setting"
        assert "Traceback" not in result.stderr.decode()
        assert "s3cret" not in result.stderr.decode()
