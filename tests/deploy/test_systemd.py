"""deploy/systemd/servio-bridge.service: a unit systemd accepts, hardened, with the spool as state."""

from __future__ import annotations

import shutil
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest

from bridge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "servio-bridge.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (a key may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep or not key.strip():
            raise ValueError(f"line {number} is not key=value inside a section: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


class TestUnitFile:
    def test_it_parses_as_an_ini_file(self) -> None:
        """The file reads as sections of key=value (configparser, keys may repeat)."""
        parser = ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign] # systemd keys are case-sensitive
        parser.read_string(UNIT.read_text())
        assert {"Unit", "Service", "Install"} <= set(parser.sections())

    def test_it_runs_serve_with_the_spool_as_state(self, unit: dict[str, dict[str, list[str]]]) -> None:
        """ExecStart is `servio-bridge serve`; BRIDGE_SPOOL_DIR is under its StateDirectory."""
        service = unit["Service"]
        assert service["ExecStart"][0].endswith("servio-bridge serve")
        states = service["StateDirectory"][0].split()
        spool = next(v.split("=", 1)[1] for v in service["Environment"] if v.startswith("BRIDGE_SPOOL_DIR="))
        assert spool.removeprefix("/var/lib/") in states

    def test_it_is_hardened(self, unit: dict[str, dict[str, list[str]]]) -> None:
        """A dynamic user, a read-only system, no privileges, no capabilities."""
        service = unit["Service"]
        assert service["DynamicUser"] == ["yes"]
        assert service["ProtectSystem"] == ["strict"]
        assert service["NoNewPrivileges"] == ["yes"]
        assert service["CapabilityBoundingSet"] == [""]
        assert service["ProtectHome"] == ["yes"]

    def test_a_bad_setting_is_not_restarted_forever(self, unit: dict[str, dict[str, list[str]]]) -> None:
        """The exit code of a bad setting stops the restart loop: restarting cannot fix it."""
        assert str(ConfigError.exit_code) in unit["Service"]["RestartPreventExitStatus"][0].split()

    def test_stop_timeout_outlasts_the_drain(self, unit: dict[str, dict[str, list[str]]]) -> None:
        """systemd waits longer than the default BRIDGE_SHUTDOWN_TIMEOUT before SIGKILL."""
        assert float(unit["Service"]["TimeoutStopSec"][0]) > 10


def systemd_verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here; the ini checks above still ran")
    # verify also checks that ExecStart exists: point it at this venv's entry point.
    installed = Path(sys.executable).parent / "servio-bridge"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("/opt/servio-bridge/bin/servio-bridge", str(installed)))
    return subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False, timeout=60
    )


class TestSystemdAnalyze:
    def test_systemd_analyze_verify_is_silent(self, tmp_path: Path) -> None:
        """`systemd-analyze verify` finds nothing to say (unknown keys, bad values)."""
        result = systemd_verify(UNIT.read_text(), tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", result.stderr

    def test_systemd_analyze_speaks_up_on_a_bad_value(self, tmp_path: Path) -> None:
        """A value systemd cannot parse is reported, so silence means something."""
        result = systemd_verify(UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=maybe"), tmp_path)
        assert "ProtectHome" in result.stderr or "protect home" in result.stderr.lower()
