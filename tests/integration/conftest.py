"""The real bridge app (real publisher, real RabbitMQ) behind aiohttp's test server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.http.ops import RUNTIME
from bridge.service import build_service
from bridge.settings import Settings
from tests.conftest import AMQP_URL

BridgeFactory = Callable[..., AbstractAsyncContextManager[TestClient[Any, Any]]]


@pytest.fixture
def bridge(exchange_name: str) -> BridgeFactory:
    """Start the bridge on this test's exchange; keyword arguments override settings."""

    @asynccontextmanager
    async def start(*, connected: bool = True, **overrides: Any) -> AsyncIterator[TestClient[Any, Any]]:
        values: dict[str, Any] = {
            "amqp_urls": (AMQP_URL,),
            "exchange": exchange_name,
            "spool_dir": None,
            "declare_queues": False,
            "publish_timeout": 5.0,
        }
        values.update(overrides)
        app = build_service(Settings(**values))
        async with TestClient(TestServer(app)) as client:
            if connected:
                await wait_connected(app)
            yield client

    return start


async def wait_connected(app: web.Application, timeout: float = 10.0) -> None:
    """Start-up connects in the background; tests that use the topology wait for it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not app[RUNTIME].publisher.connected:
        assert loop.time() < end, "bridge did not connect to RabbitMQ"
        await asyncio.sleep(0.025)
