"""The real bridge app (real publisher, real RabbitMQ) behind aiohttp's test server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.service import RUNTIME, build_service
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
                # Start-up connects in the background; tests that use the topology wait for it.
                for _ in range(200):
                    if app[RUNTIME].publisher.connected:
                        break
                    await asyncio.sleep(0.025)
                assert app[RUNTIME].publisher.connected, "bridge did not connect to RabbitMQ"
            yield client

    return start
