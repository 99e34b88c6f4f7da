"""The token string appears in nothing the real process writes: logs, errors, spool, messages."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from bench.proxy import free_port
from tests.conftest import bind_all

TOKEN = "e2e-Secret/Token+0123456789"  # noqa: S105 - a made-up token of this test; has URL-escaped chars
BODY = b'{"Add":{"Guests":[1,"x"]},"Update":null,"Delete":null}'


async def raw(port: int, data: bytes) -> None:
    """Send bytes that break HTTP on purpose; whatever comes back is ignored."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()


class TestTokenNeverWritten:
    @pytest.mark.slow
    @pytest.mark.timeout(60)
    async def test_token_absent_from_output_spool_and_messages(
        self, tmp_path: Path, exchange_name: str, amqp_channel: AbstractChannel
    ) -> None:
        """Right, wrong and malformed requests carrying the token leave no trace of it anywhere."""
        everything = await bind_all(amqp_channel, exchange_name)
        port = free_port()
        env = {
            **os.environ,
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(port),
            "BRIDGE_EXCHANGE": exchange_name,
            "BRIDGE_DECLARE_QUEUES": "false",
            "BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
            "BRIDGE_TOKEN": TOKEN,
            "BRIDGE_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "BRIDGE_LOG_FORMAT": "json",
        }
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(  # noqa: ASYNC220 - started once, then only signalled
                [sys.executable, "-m", "bridge", "serve"], env=env, stdout=stdout, stderr=stderr
            )
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                for _ in range(100):
                    try:
                        async with session.get(f"{base}/healthz") as health:
                            if health.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
                statuses = []
                for params, headers in [
                    ({"token": TOKEN}, {}),
                    ({}, {"Authorization": f"Bearer {TOKEN}"}),
                    ({"token": TOKEN + "x"}, {}),
                    ({}, {"Authorization": f"Bearer {TOKEN[:-1]}"}),
                ]:
                    async with session.post(
                        f"{base}/webhooks/servio", data=BODY, params=params, headers=headers
                    ) as response:
                        statuses.append(response.status)
                async with session.post(
                    f"{base}/webhooks/servio", data=b"not json", params={"token": TOKEN}
                ) as response:
                    statuses.append(response.status)
            assert statuses == [200, 200, 401, 401, 400]
            await raw(
                port, f"POST /webhooks/servio?token={TOKEN} HTTP/1.1\r\nX: {'a' * 20000}\r\n\r\n".encode()
            )
            await raw(port, f"P\x01ST /webhooks/servio?token={TOKEN} HTTP/1.1\r\n\r\n".encode())
            await raw(
                port, f"POST /webhooks/servio HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\x00\r\n\r\n".encode()
            )
            messages = await everything.wait_for(2)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 20)
        written = [out.read_bytes(), err.read_bytes()]
        written += [p.read_bytes() for p in (tmp_path / "spool").rglob("*") if p.is_file()]
        written += [m.body for m in messages] + [repr(m.headers).encode() for m in messages]
        assert b"request" in written[0] + written[1], "the process logged nothing at all"
        for forms in (TOKEN, TOKEN.replace("/", "%2F").replace("+", "%2B")):
            assert all(forms.encode() not in blob for blob in written)
