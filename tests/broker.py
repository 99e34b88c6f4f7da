"""A RabbitMQ node of a test's own, so a test can kill it (SIGKILL) without touching the shared one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from bench.proxy import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class BrokerNode:
    """``rabbitmq-server`` with its own node name, ports, data directory and Erlang cookie.

    ``kill()`` sends SIGKILL to the node; ``start()`` again recovers from the same directory.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = f"bridgetest-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        self.env = {
            **os.environ,
            "HOME": str(base),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [SERVER],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.base,
        )
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker node exited: {(self.base / 'server.out').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"broker node did not listen within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the whole node (its process group): no clean shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def ctl(self, *args: str) -> str:
        """Run rabbitmqctl against this node."""
        result = subprocess.run(
            [CTL, "-n", self.name, *args], env=self.env, capture_output=True, timeout=60, check=True
        )
        return result.stdout.decode()

    def stop(self) -> None:
        self.kill()
