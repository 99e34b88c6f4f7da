"""The operations settings: BRIDGE_STALL_AFTER and BRIDGE_MAX_CONNECTIONS, defaults and refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.settings import Settings


class TestDefaults:
    def test_documented_defaults(self) -> None:
        """With nothing set: a stall after 60 s, at most 1024 open HTTP connections."""
        settings = Settings.from_env({})
        assert settings.stall_after == 60
        assert settings.max_connections == 1024


class TestParsing:
    @pytest.mark.parametrize(
        ("variable", "raw", "attribute", "expected"),
        [
            ("BRIDGE_STALL_AFTER", "90", "stall_after", 90.0),
            ("BRIDGE_STALL_AFTER", "2.5", "stall_after", 2.5),
            ("BRIDGE_MAX_CONNECTIONS", "4", "max_connections", 4),
        ],
        ids=["stall-whole", "stall-fraction", "connections"],
    )
    def test_variable(self, variable: str, raw: str, attribute: str, expected: object) -> None:
        """Each variable lands on its attribute."""
        assert getattr(Settings.from_env({variable: raw}), attribute) == expected


class TestBadValues:
    @pytest.mark.parametrize(
        ("variable", "raw"),
        [
            ("BRIDGE_STALL_AFTER", "soon"),
            ("BRIDGE_STALL_AFTER", "0"),
            ("BRIDGE_STALL_AFTER", "-5"),
            ("BRIDGE_STALL_AFTER", "inf"),
            ("BRIDGE_MAX_CONNECTIONS", "0"),
            ("BRIDGE_MAX_CONNECTIONS", "many"),
            ("BRIDGE_MAX_CONNECTIONS", "2.5"),
        ],
        ids=[
            "stall-word",
            "stall-zero",
            "stall-negative",
            "stall-inf",
            "conn-zero",
            "conn-word",
            "conn-float",
        ],
    )
    def test_refused(self, variable: str, raw: str) -> None:
        """A bad value is a ConfigError naming the variable."""
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({variable: raw})
        assert str(caught.value).startswith(f"{variable}: ")

    def test_exit_2_with_one_line(self, tmp_path: Path) -> None:
        """`serve` with a bad BRIDGE_MAX_CONNECTIONS exits 2 with one line naming it."""
        env = {"BRIDGE_MAX_CONNECTIONS": "-1", "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "serve"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2
        lines = done.stderr.decode().strip().splitlines() + done.stdout.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert "BRIDGE_MAX_CONNECTIONS" in lines[0]
