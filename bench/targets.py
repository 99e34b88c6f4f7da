"""The three things under load, each a process of its own: started, measured, stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def proc_status(pid: int, field_name: str) -> int:
    """A ``kB`` line of /proc/<pid>/status in bytes (VmHWM: peak RSS, VmRSS: RSS now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


@dataclass
class Target:
    """One server under test: ``command`` and ``env`` on ``port``; stderr goes to ``log``."""

    name: str
    command: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(self.env)
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                self.command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    async def start(self, timeout: float = 30.0) -> None:
        """Start the process and return once its port accepts connections."""
        self.proc = self._spawn()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout}s: {self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peak_rss(self) -> int:
        """Peak RSS of the process plus that of each child it has now (the bridge's publisher)."""
        return sum(proc_status(pid, "VmHWM") for pid in self.pids())

    def rss(self) -> int:
        return sum(proc_status(pid, "VmRSS") for pid in self.pids())

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [self.pid, *(int(c) for c in children)]

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return await asyncio.to_thread(self.proc.wait)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def ceiling(port: int, log: Path) -> Target:
    return Target("ceiling", [sys.executable, str(BENCH / "ceiling.py"), "--port", str(port)], port, log)


def naive(port: int, log: Path, *, amqp_url: str, exchange: str) -> Target:
    command = [
        sys.executable,
        str(BENCH / "naive.py"),
        "--port",
        str(port),
        "--amqp-url",
        amqp_url,
        "--exchange",
        exchange,
    ]
    return Target("naive", command, port, log)


def bridge(port: int, log: Path, *, amqp_url: str, exchange: str, spool_dir: Path) -> Target:
    env = {
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_AMQP_URL": amqp_url,
        "BRIDGE_EXCHANGE": exchange,
        "BRIDGE_SPOOL_DIR": str(spool_dir),
        "BRIDGE_DECLARE_QUEUES": "false",
        "BRIDGE_LOG_FORMAT": "json",
    }
    return Target("bridge", [sys.executable, "-m", "bridge", "serve"], port, log, env)
