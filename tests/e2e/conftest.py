"""Fixtures for tests that run the real ``servio-bridge`` process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.process import BridgeProcess


@pytest.fixture
def processes() -> Iterator[list[BridgeProcess]]:
    """Processes a test starts; any still running at the end are killed."""
    started: list[BridgeProcess] = []
    yield started
    for proc in started:
        proc.stop()
