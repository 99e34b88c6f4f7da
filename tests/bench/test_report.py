"""The benchmark's report: the ceiling's p99 against the goal, the CPU table, the spool's fsyncs."""

from __future__ import annotations

from tests.scripts import bench_module


def text(ceiling_p99: float = 9.0, bridge: dict[str, float] | None = None, connections: int = 32) -> str:
    """The report of one round with these figures."""
    module = bench_module("report")
    rounds = [
        {
            "ceiling": {"req_s": 6000.0, "p99_ms": ceiling_p99},
            "naive": {"req_s": 1500.0, "p99_ms": 40.0},
            "bridge": {"req_s": 2500.0, "p99_ms": 21.0, **(bridge or {})},
        }
    ]
    summary = module.summarise(rounds)
    markdown: str = module.markdown(
        summary, module.verdicts(summary, None, fanout=10_000), None, connections=connections
    )
    return markdown


class TestCeilingLatency:
    def test_a_ceiling_over_the_goal_is_said_to_put_it_out_of_reach(self) -> None:
        out = text(12.0)
        assert "p99 of the HTTP ceiling, which only reads and answers: 12.0 ms, over the 10 ms goal" in out

    def test_a_ceiling_under_the_goal_is_only_reported(self) -> None:
        out = text(2.6)
        assert "p99 of the HTTP ceiling, which only reads and answers: 2.6 ms." in out
        assert "over the 10 ms goal" not in out


class TestCpu:
    def test_the_cpu_table_and_the_rate_the_goal_needs(self) -> None:
        out = text(
            bridge={
                "cpu_target_us": 569.0,
                "cpu_main_thread_us": 386.0,
                "cpu_broker_us": 162.0,
                "cpu_rest_us": 64.0,
                "cpu_busy_us": 795.0,
                "cpu_busy_pct": 82.0,
                "cpu_steal_pct": 2.1,
                "cpu_max_req_s": 2516.0,
            },
            connections=64,
        )
        assert "| bridge | 569 | 386 | 162 | 64 | 82% | 2.1% | 2,516 |" in out
        assert "| ceiling |" not in out.split("CPU per accepted request")[1]  # no figures, no row
        # 64 connections / 10 ms.
        assert "so more than 6,400 req/s" in out
        assert "the machine could carry at most 2,516 req/s" in out

    def test_the_bridges_own_fsyncs(self) -> None:
        out = text(
            bridge={
                "sync_fsyncs": 1224.0,
                "sync_p50_le_ms": 2.0,
                "sync_p99_le_ms": 10.0,
                "sync_over_5ms_pct": 7.8,
                "sync_over_10ms_pct": 0.4,
            }
        )
        assert (
            "The bridge's own spool fsyncs during its load (servio_bridge_spool_sync_seconds): 1,224 of "
            "them, half under 2.0 ms and 99% under 10.0 ms (bucket bounds), 7.8% over 5 ms and 0.4% over "
            "10 ms."
        ) in out

    def test_no_cpu_figures_no_cpu_table(self) -> None:
        out = text()
        assert "CPU per accepted request" not in out
        assert "could carry at most" not in out
        assert "own spool fsyncs" not in out
