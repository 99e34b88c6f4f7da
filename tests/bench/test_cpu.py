"""The benchmark's CPU accounting reads what /proc says a process, a thread and the machine spent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.scripts import bench_module

BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end:\n    pass\n"


def cpu() -> ModuleType:
    return bench_module("cpu")


class TestReadFromProc:
    def test_a_process_burning_cpu_is_counted_for_it_its_main_thread_and_the_machine(self) -> None:
        module = cpu()
        # It burns once told to, and says when it is done: the samples are taken around all of it.
        script = "import sys\nsys.stdin.readline()\n" + BURN + "print('done', flush=True)\ntime.sleep(30)\n"
        with subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as burner:
            assert burner.stdin is not None
            assert burner.stdout is not None
            try:
                before = module.sample([burner.pid], [])
                burner.stdin.write("go\n")
                burner.stdin.flush()
                assert burner.stdout.readline().strip() == "done"
                after = module.sample([burner.pid], [])
            finally:
                burner.kill()
        assert after.processes[burner.pid] - before.processes[burner.pid] >= 0.5
        assert after.main_thread - before.main_thread >= 0.5
        assert after.busy - before.busy >= 0.5
        figures = module.per_request(before, after, 1000, 2)
        assert figures["target_us"] >= 500
        assert figures["busy_us"] >= figures["target_us"] - 20  # ticks are 10 ms apart

    def test_a_process_gone_counts_nothing_more(self) -> None:
        module = cpu()
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        assert module.process_seconds(gone.pid) == 0.0

    def test_the_local_rabbitmq_node_is_found(self) -> None:
        """The suite's RabbitMQ runs on this machine: its Erlang VM is what the broker column reads."""
        module = cpu()
        pids = module.broker_pids()
        assert pids
        assert all(Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp" for pid in pids)


class TestMachine:
    def test_busy_leaves_out_idle_io_wait_and_steal(self) -> None:
        """user nice system idle iowait irq softirq steal guest guest_nice, in ticks."""
        module = cpu()
        tick = module.TICK
        ticks = " ".join(str(tick * n) for n in (1, 2, 3, 1000, 50, 4, 5, 7, 0, 0))
        stat = f"cpu  {ticks}\ncpu0 1 2 3\n"
        assert module.machine_seconds(stat) == (15.0, 7.0)


class TestPerRequest:
    def test_each_part_is_its_cpu_over_the_requests(self) -> None:
        module = cpu()
        before = module.CpuSample(
            at=100.0, processes={1: 10.0, 2: 5.0}, main_thread=8.0, broker=50.0, busy=1000.0, steal=3.0
        )
        after = module.CpuSample(
            at=110.0, processes={1: 13.0, 2: 6.0}, main_thread=10.5, broker=52.0, busy=1007.0, steal=3.2
        )
        figures = module.per_request(before, after, 10_000, 2)
        assert figures["target_us"] == 400  # (3 + 1) s over 10,000 requests
        assert figures["main_thread_us"] == 250
        assert figures["broker_us"] == 200
        assert round(figures["rest_us"], 6) == 100  # 7 s busy - 4 - 2
        assert figures["busy_us"] == 700
        assert figures["busy_pct"] == 35  # 7 s of 20 CPU-seconds
        assert round(figures["steal_pct"], 6) == 1
        assert round(figures["max_req_s"]) == 2857  # 2 CPUs / 700 µs

    def test_a_process_gone_before_the_second_sample_counts_nothing(self) -> None:
        """The bridge's publishing process may be replaced mid-run: its CPU is lost, not negative."""
        module = cpu()
        before = module.CpuSample(
            at=0.0, processes={1: 2.0, 2: 9.0}, main_thread=2.0, broker=0.0, busy=20.0, steal=0.0
        )
        after = module.CpuSample(
            at=1.0, processes={1: 3.0, 2: 0.0}, main_thread=3.0, broker=0.0, busy=22.0, steal=0.0
        )
        assert module.per_request(before, after, 1000, 2)["target_us"] == 1000

    def test_no_request_accepted_gives_no_figures(self) -> None:
        module = cpu()
        same = module.CpuSample(at=1.0, processes={1: 1.0}, main_thread=1.0, broker=0.0, busy=1.0, steal=0.0)
        assert module.per_request(same, same, 0, 2) == {}
