"""The operator's commands as a user runs them: check, send, spool stats, redrive."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from bench.proxy import free_port
from tests.conftest import AMQP_URL, bind_all
from tests.e2e.process import BridgeProcess
from tests.seed import EXPECTED, seed_payloads

pytestmark = pytest.mark.slow


def cli(
    *args: str, env: dict[str, str], cwd: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``python -m bridge ARGS`` with only these BRIDGE_ settings."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=full,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def rows(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


class TestHelp:
    def test_help_lists_every_command(self, tmp_path: Path) -> None:
        """``--help`` names serve, check, send, spool and redrive."""
        result = cli("--help", env={}, cwd=tmp_path)
        assert result.returncode == 0
        text = result.stdout.decode()
        for command in ("serve", "check", "send", "spool", "redrive"):
            assert f"    {command} " in text, command


class TestCheck:
    def test_unreachable_broker_fails(self, tmp_path: Path) -> None:
        """No reachable broker: exit 1, and the line for the broker says fail."""
        url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/"
        result = cli("check", env={"BRIDGE_AMQP_URL": url, "BRIDGE_SPOOL_DIR": str(tmp_path)}, cwd=tmp_path)
        assert result.returncode == 1
        found = {r["check"]: r for r in rows(result)}
        assert found["broker"]["status"] == "fail"
        assert found["spool"]["status"] == "ok"
        assert "s3cret" not in result.stdout.decode() + result.stderr.decode()

    def test_healthy_installation_passes(self, tmp_path: Path, exchange_name: str) -> None:
        """Reachable broker (one dead node beside it is only a warning), writable spool: exit 0."""
        dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        env = {"BRIDGE_AMQP_URL": f"{dead},{AMQP_URL}", "BRIDGE_SPOOL_DIR": str(tmp_path / "new" / "spool")}
        env["BRIDGE_EXCHANGE"] = exchange_name
        result = cli("check", "--format", "table", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stdout
        lines = result.stdout.decode().splitlines()
        assert [line.split()[:2] for line in lines] == [
            ["ok", "settings"],
            ["warn", "broker"],
            ["warn", "broker"],  # the exchange is not declared yet: serve declares it
            ["ok", "spool"],
        ]
        assert not (tmp_path / "new").exists()

    @pytest.mark.parametrize("problem", ["spool-is-a-file", "bad-setting"])
    def test_other_failures(self, tmp_path: Path, problem: str) -> None:
        """A spool path that cannot be a directory fails (exit 1); a bad setting fails as such (exit 2)."""
        (tmp_path / "file").write_text("x")
        env = {"BRIDGE_AMQP_URL": AMQP_URL, "BRIDGE_SPOOL_DIR": str(tmp_path / "file" / "spool")}
        if problem == "bad-setting":
            env["BRIDGE_PORT"] = "eighty"
        result = cli("check", env=env, cwd=tmp_path)
        (failed,) = [r for r in rows(result) if r["status"] == "fail"]
        if problem == "bad-setting":
            assert (result.returncode, failed["check"], failed["variable"]) == (2, "settings", "BRIDGE_PORT")
        else:
            assert (result.returncode, failed["check"]) == (1, "spool")


class TestSend:
    async def test_every_seed_payload_end_to_end(
        self,
        processes: list[BridgeProcess],
        tmp_path: Path,
        amqp_channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        """``send`` posts each seed body to the running bridge: exit 0, messages arrive; cut-short: exit 1."""
        everything = await bind_all(amqp_channel, exchange_name)
        env = {
            "BRIDGE_AMQP_URL": AMQP_URL,
            "BRIDGE_EXCHANGE": exchange_name,
            "BRIDGE_DECLARE_QUEUES": "false",
        }
        bridge = BridgeProcess({**env, "BRIDGE_SPOOL_DIR": str(tmp_path / "spool")}, cwd=tmp_path)
        processes.append(bridge)
        port = bridge.base_url.rsplit(":", 1)[1]
        expected: list[tuple[str, int]] = []
        for seed, keys in zip(seed_payloads(), EXPECTED, strict=True):
            body = tmp_path / f"{seed.line}.json"
            body.write_bytes(seed.body)
            result = await asyncio.to_thread(
                cli, "send", "--source", seed.source, str(body), env={"BRIDGE_PORT": port}, cwd=tmp_path
            )
            (answer,) = rows(result)
            if keys is None:
                assert (result.returncode, answer["http_status"]) == (1, 400)
            else:
                assert (result.returncode, answer["http_status"]) == (0, 200), result
                assert answer["answer"]["messages"] == len(keys)
                expected.extend(keys)
        piped = await asyncio.to_thread(
            cli,
            "send",
            "--url",
            f"{bridge.base_url}/webhooks/servio/stdin",
            "-",
            env={},
            cwd=tmp_path,
            stdin=b'{"Delete":{"Rooms":[7]}}',
        )
        assert piped.returncode == 0
        expected.append(("servio.rooms.delete", 7))
        messages = await everything.wait_for(len(expected))
        assert [(m.routing_key, orjson.loads(m.body)["id"]) for m in messages] == expected
        bridge.signal(signal.SIGTERM)
        assert await asyncio.to_thread(bridge.wait) == 0

    def test_no_bridge_listening_fails(self, tmp_path: Path) -> None:
        """Nothing listening on the port: exit 1 with a line on stderr."""
        (tmp_path / "b.json").write_bytes(b"{}")
        result = cli("send", str(tmp_path / "b.json"), env={"BRIDGE_PORT": str(free_port())}, cwd=tmp_path)
        assert result.returncode == 1
        assert b"no answer" in result.stderr


class TestSpoolStats:
    async def test_reads_the_spool_of_a_running_bridge(
        self, processes: list[BridgeProcess], tmp_path: Path
    ) -> None:
        """While the bridge holds the spool (broker down), ``spool stats`` shows its depth, read-only."""
        spool = tmp_path / "spool"
        dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        env = {"BRIDGE_AMQP_URL": dead, "BRIDGE_SPOOL_DIR": str(spool)}
        # The spool cannot drain with no broker: do not wait the default 10 s for it at the end.
        bridge = BridgeProcess({**env, "BRIDGE_SHUTDOWN_TIMEOUT": "0.5"}, cwd=tmp_path)
        processes.append(bridge)
        port = bridge.base_url.rsplit(":", 1)[1]
        (tmp_path / "b.json").write_bytes(b'{"Add":{"Guests":[1,2,3]}}')
        sent = await asyncio.to_thread(
            cli, "send", str(tmp_path / "b.json"), env={"BRIDGE_PORT": port}, cwd=tmp_path
        )
        assert sent.returncode == 0
        result = await asyncio.to_thread(cli, "spool", "stats", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        (stats,) = rows(result)
        assert (stats["exists"], stats["entries"]) == (True, 3)
        assert stats["bytes"] > 0
        assert stats["oldest_age_seconds"] >= 0
        bridge.signal(signal.SIGTERM)
        assert await asyncio.to_thread(bridge.wait) == 0


def dead_letter(body: bytes, delivery_id: str, *, path: list[Any] | None = None) -> aio_pika.Message:
    """A dead letter as the bridge writes one (whole body, or one part when ``path`` is given)."""
    received = datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC).isoformat(timespec="microseconds")
    headers: dict[str, Any] = {"source": "Jam_9", "delivery_id": delivery_id, "received_at": received}
    if path is None:
        headers.update(reason="not_json", detail="refused by an older parser")
        content_type = "application/octet-stream"
    else:
        headers.update(reason="bad_id", path=json.dumps(path))
        content_type = "application/json"
    return aio_pika.Message(
        body,
        headers=headers,
        content_type=content_type,
        message_id=f"{delivery_id}.invalid.0",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class TestRedrive:
    async def test_republishes_what_now_parses(
        self, tmp_path: Path, amqp_channel: AbstractChannel, exchange_name: str
    ) -> None:
        """Dead letters today's parser accepts are published with their original ids; the rest stays."""
        everything = await bind_all(amqp_channel, exchange_name)
        invalid = f"{exchange_name}.invalid"
        await amqp_channel.declare_queue(invalid, durable=True, arguments={"x-queue-type": "quorum"})
        part = {"reason": "bad_id", "path": ["Update", "Rooms", 0], "source": "Jam_9", "delivery_id": "d2"}
        letters = [
            dead_letter(b'{"Add":{"Guests":[41]}}', "d1"),
            dead_letter(orjson.dumps({**part, "value": "160"}), "d2", path=["Update", "Rooms", 0]),
            dead_letter(
                orjson.dumps({**part, "value": "x", "delivery_id": "d3"}), "d3", path=["Update", "Rooms", 0]
            ),
        ]
        for letter in letters:
            await amqp_channel.default_exchange.publish(letter, invalid)
        env = {
            "BRIDGE_AMQP_URL": AMQP_URL,
            "BRIDGE_EXCHANGE": exchange_name,
            "BRIDGE_DECLARE_QUEUES": "false",
        }

        first = await asyncio.to_thread(cli, "redrive", env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        (report,) = rows(first)
        assert (report["examined"], report["redriven"], report["published"], report["left"]) == (3, 2, 2, 1)
        messages = await everything.wait_for(2)
        got = [(m.routing_key, orjson.loads(m.body)["id"], m.message_id) for m in messages]
        assert got == [
            ("servio.guests.add", 41, "d1.add.guests.41"),
            ("servio.rooms.update", 160, "d2.update.rooms.160"),
        ]
        assert {orjson.loads(m.body)["source"] for m in messages} == {"Jam_9"}

        second = await asyncio.to_thread(cli, "redrive", env=env, cwd=tmp_path)
        (again,) = rows(second)
        assert (again["examined"], again["redriven"], again["left"]) == (1, 0, 1)
        kept = await amqp_channel.get_queue(invalid)
        message = await kept.get(no_ack=True, fail=True)
        assert message is not None
        assert orjson.loads(message.body)["value"] == "x"
        assert message.headers["delivery_id"] == "d3"
        assert await kept.get(no_ack=True, fail=False) is None
        assert len(await everything.settle(0.3)) == 2
