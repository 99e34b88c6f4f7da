"""Slow clients holding connections (slowloris) do not stop a normal webhook from being answered."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from bridge.service import LINGERING_TIME
from bridge.settings import Settings
from tests.conftest import bind_all
from tests.integration.serving import serving

BODY = b'{"Add":{"Guests":[23061]},"Update":null,"Delete":null}'
SLOW = 200


async def trickle(host: str, port: int, head: bytes, drip: bytes, stop: asyncio.Event) -> bool:
    """Send ``head`` then one ``drip`` every 0.2 s until ``stop``, as a slowloris client does.

    Returns True when the bridge cut the connection off first.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head)
        while not stop.is_set():
            writer.write(drip)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(4096), timeout=0.2) == b"":
                    return True
        return False
    except ConnectionError:
        return True
    finally:
        writer.close()


class TestSlowClients:
    @pytest.mark.timeout(60)
    async def test_normal_webhook_answered_quickly_among_slow_clients(
        self, exchange_name: str, amqp_channel: AbstractChannel
    ) -> None:
        """With 200 connections trickling headers or bodies, a normal webhook is still answered fast,
        and every slow connection is cut off once BRIDGE_READ_TIMEOUT has passed."""
        everything = await bind_all(amqp_channel, exchange_name)
        settings = Settings(
            host="127.0.0.1",
            port=0,
            exchange=exchange_name,
            spool_dir=None,
            declare_queues=False,
            read_timeout=1.0,
        )
        async with serving(settings) as (host, port):
            stop = asyncio.Event()
            slow = [
                trickle(host, port, b"POST /webhooks/servio HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", stop)
                for _ in range(SLOW // 2)
            ] + [
                trickle(
                    host,
                    port,
                    b"POST /webhooks/servio HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{",
                    b" ",
                    stop,
                )
                for _ in range(SLOW // 2)
            ]
            tasks = [asyncio.create_task(c) for c in slow]
            await asyncio.sleep(0.5)
            latencies = []
            async with aiohttp.ClientSession() as session:
                for _ in range(10):
                    started = time.monotonic()
                    async with session.post(f"http://{host}:{port}/webhooks/servio", data=BODY) as response:
                        assert response.status == 200
                    latencies.append(time.monotonic() - started)
            # Headers: cut at the read timeout; bodies: 408 at the read timeout, closed after lingering.
            done, _ = await asyncio.wait(tasks, timeout=1.0 + LINGERING_TIME + 2.0)
            stop.set()
            cut_off = sum(1 for t in done if t.result())
            await asyncio.gather(*tasks)
        await everything.wait_for(10)
        assert cut_off == SLOW
        print(f"slow clients: {SLOW}; webhook latency max {max(latencies) * 1000:.1f} ms, {cut_off} cut off")
        assert max(latencies) < 0.5
