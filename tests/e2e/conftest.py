"""Fixtures for tests that run the real ``servio-bridge`` process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.process import BridgeProcess


@pytest.fixture
def processes() -> Iterator[list[BridgeProcess]]:
    """Processes a test starts; any still running at the end are killed."""
    started: list[BridgeProcess] = []
    yield started
    for proc in started:
        proc.stop()


Launch = Callable[[dict[str, str]], Awaitable[BridgeProcess]]


@pytest.fixture
def launch(tmp_path: Path, processes: list[BridgeProcess]) -> Launch:
    """Start ``servio-bridge serve`` in tmp_path with these BRIDGE_ settings; return once it
    listens. Killed at the end of the test if still running."""

    async def start(settings: dict[str, str]) -> BridgeProcess:
        bridge = BridgeProcess(settings, cwd=tmp_path)
        processes.append(bridge)
        await bridge.event("listening")
        return bridge

    return start
