"""Coverage-guided fuzzing of the parser with atheris: no input makes it raise anything unplanned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris ships wheels for Linux x86_64 only")
TARGET = Path(__file__).with_name("parser_fuzz_target.py")
ROOT = Path(__file__).resolve().parents[2]


class TestParserUnderAtheris:
    @pytest.mark.timeout(90)
    def test_thousands_of_inputs_without_a_crash(self, tmp_path: Path) -> None:
        """A bounded atheris run over parse_payload and build_messages ends without a finding."""
        seeds = tmp_path / "corpus"
        seeds.mkdir()
        (seeds / "seed").write_bytes(b'{"Add":{"Clients":[12766],"Guests":null},"Update ":{"Rooms":["160"]}}')
        result = subprocess.run(
            [sys.executable, str(TARGET), "-runs=5000", "-max_len=512", "-max_total_time=40", str(seeds)],
            cwd=ROOT,
            capture_output=True,
            timeout=80,
            check=False,
        )
        output = result.stderr.decode(errors="replace")
        assert result.returncode == 0, output[-3000:]
        assert "Done 5000 runs" in output or "DONE" in output, output[-3000:]
