"""The side-by-side benchmark still runs: a smoke-size run, checked for completeness, never for speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU = ("cpu_target_us", "cpu_main_thread_us", "cpu_busy_us", "cpu_max_req_s")
FIGURES = {
    "ceiling": ("req_s", "p50_ms", "p99_ms", "peak_rss_mb", *CPU),
    "naive": ("req_s", "p50_ms", "p99_ms", "e2e_msg_s", "fanout_msg_s", "peak_rss_mb", "lost", *CPU),
    "bridge": (
        "req_s",
        "p50_ms",
        "p99_ms",
        "e2e_msg_s",
        "fanout_msg_s",
        "peak_rss_mb",
        "lost",
        *CPU,
        "sync_fsyncs",
    ),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "compare.py"),
        *("--rounds", "1", "--seconds", "1", "--fanout", "200", "--outage", "1"),
        *("--python-load", "--json", str(out)),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document: dict[str, Any] = json.loads(out.read_text())
    return document


@pytest.mark.slow
@pytest.mark.timeout(120)
class TestBenchSmoke:
    def test_every_target_has_every_figure(self, results: dict[str, Any]) -> None:
        """Each round holds every figure of the ceiling, the naive bridge and servio-bridge."""
        (round_,) = results["rounds"]
        for target, figures in FIGURES.items():
            missing = [f for f in figures if round_[target].get(f) is None]
            assert not missing, f"{target} lacks {missing}"
        assert round_["pipelined_msg_s"] > 0

    def test_no_accepted_message_is_lost(self, results: dict[str, Any]) -> None:
        """Every webhook either bridge answered 200 reached the queue, in the run and after the outage."""
        (round_,) = results["rounds"]
        assert round_["bridge"]["accepted"] > 0
        assert round_["bridge"]["lost"] == 0
        assert round_["naive"]["lost"] == 0
        assert results["outage"]["lost"] == 0

    def test_the_summary_has_each_target_checked(self, results: dict[str, Any]) -> None:
        """The medians, the ratios and one verdict per target of the issue are written out."""
        assert set(results["medians"]) >= {"ceiling", "naive", "bridge", "pipelined"}
        assert all(value is not None for value in results["ratios"].values())
        assert len(results["checks"]) == 6
        assert all(isinstance(check["pass"], bool) for check in results["checks"])

    def test_the_outage_kept_the_backlog_on_disk(self, results: dict[str, Any]) -> None:
        """With the broker unreachable the spool grew and RSS was sampled every second."""
        outage = results["outage"]
        assert outage["accepted"] > 0
        assert outage["spool_last"] > 0
        assert outage["samples"]
