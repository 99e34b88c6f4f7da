"""The real ``servio-bridge serve`` process, started, watched and stopped by a test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


class BridgeProcess:
    """``python -m bridge serve`` with the given BRIDGE_ settings; its stderr read line by line."""

    def __init__(self, env: dict[str, str], *, cwd: Path, args: tuple[str, ...] = ("serve",)) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        full_env.update({"BRIDGE_HOST": "127.0.0.1", "BRIDGE_PORT": "0", **env})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        """Every line written so far, parsed as JSON (a line that is not JSON fails the test)."""
        with self._lock:
            lines = list(self.lines)
        return [json.loads(line) for line in lines]

    def wait_for_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for event in self.events():
                if event.get("event") == name:
                    return event
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} event; exit={self.proc.poll()} output={self.lines[-20:]}")

    async def event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """``wait_for_event`` for async tests: the event loop keeps running (e.g. a proxy in it)."""
        return await asyncio.to_thread(self.wait_for_event, name, timeout)

    @property
    def base_url(self) -> str:
        address = self.wait_for_event("listening")["addresses"][0]
        return f"http://{address}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code; a process still running after ``timeout`` fails the test with its last lines."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with self._lock:
                tail = self.lines[-40:]
            raise AssertionError(f"still running after {timeout} s; last lines: {tail}") from None
        self._close_pipes()
        return code

    def stop(self) -> None:
        """Kill the process if it still runs (test clean-up), and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
