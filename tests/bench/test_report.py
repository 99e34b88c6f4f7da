"""The benchmark's report says when the 10 ms goal is beyond even the HTTP ceiling."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text(ceiling_p99: float) -> str:
    module = report()
    rounds = [
        {
            "ceiling": {"req_s": 6000.0, "p99_ms": ceiling_p99},
            "naive": {"req_s": 1500.0, "p99_ms": 40.0},
            "bridge": {"req_s": 2500.0, "p99_ms": 21.0},
        }
    ]
    summary = module.summarise(rounds)
    markdown: str = module.markdown(summary, module.verdicts(summary, None, fanout=10_000), None)
    return markdown


class TestCeilingLatency:
    def test_a_ceiling_over_the_goal_is_said_to_put_it_out_of_reach(self) -> None:
        out = text(12.0)
        assert "p99 of the HTTP ceiling, which only reads and answers: 12.0 ms, over the 10 ms goal" in out

    def test_a_ceiling_under_the_goal_is_only_reported(self) -> None:
        out = text(2.6)
        assert "p99 of the HTTP ceiling, which only reads and answers: 2.6 ms." in out
        assert "over the 10 ms goal" not in out
