"""Side by side: the HTTP ceiling, the naive bridge and servio-bridge under the same load.

    python bench/compare.py [--rounds 3] [--seconds 10] [--json results.json] [--outage 60]

Each round starts every target as a process of its own, in turn, drives it with wrk (or the
Python generator) at 32 connections, counts what reached a queue bound to ``#``, times a
10,000-ID fan-out, and reads the peak RSS; then aio-pika's own pipelined publish is timed as the
fan-out's yardstick. Figures are medians over rounds, ratios the median of each round's ratio.
Everything goes to 127.0.0.1 and every RabbitMQ object it declares is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import targets
import uvloop
from broker import Broker, pipelined_publish
from cpu import broker_pids, per_request, sample
from disk import describe, fsync_probe, spool_syncs, sync_buckets
from load import PATH, LoadResult, run_load, wrk_available
from proxy import TcpProxy, free_port
from report import markdown, summarise, verdicts

MB = 1024 * 1024
E2E_TIMEOUT = 120.0


def fanout_body(ids: int) -> bytes:
    return json.dumps({"Add": None, "Update": {"Guests": list(range(1, ids + 1))}, "Delete": None}).encode()


async def fanout(base_url: str, broker: Broker, queue: str, ids: int) -> dict[str, float | None]:
    """One webhook with ``ids`` IDs: seconds to its answer, and until every message is in ``queue``."""
    body = fanout_body(ids)
    started = time.time()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=E2E_TIMEOUT)) as http,
        http.post(base_url + PATH, data=body) as response,
    ):
        await response.read()
        status = response.status
    answered = time.time()
    if status != 200:
        raise RuntimeError(f"the fan-out webhook got {status}")
    done = await broker.wait_for(queue, ids, timeout=E2E_TIMEOUT)
    await broker.purge(queue)
    if done is None:
        return {"fanout_answer_ms": (answered - started) * 1000, "fanout_s": None, "fanout_msg_s": None}
    return {
        "fanout_answer_ms": (answered - started) * 1000,
        "fanout_s": done - started,
        "fanout_msg_s": ids / (done - started),
    }


async def measure(
    target: targets.Target, broker: Broker, queue: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    """Start ``target``, load it, follow its messages into ``queue``, fan out, stop it."""
    await target.start()
    try:
        brokers = broker_pids()
        syncs_before = await metrics_text(target)
        before = sample(target.pids(), brokers)
        load = await run_load(
            target.base_url, seconds=args.seconds, connections=args.connections, python_load=args.python_load
        )
        cpu = per_request(before, sample(before.processes, brokers), load.accepted, os.cpu_count() or 1)
        syncs = spool_syncs(sync_buckets(syncs_before), sync_buckets(await metrics_text(target)))
        figures: dict[str, Any] = {
            "req_s": load.accepted_per_s,
            "p50_ms": load.p50_ms,
            "p99_ms": load.p99_ms,
            "accepted": load.accepted_messages,
            "non2xx": load.non2xx,
            "errors": load.errors,
            **{f"cpu_{name}": value for name, value in cpu.items()},
            **{f"sync_{name}": value for name, value in syncs.items()},
        }
        if queue is not None:
            figures.update(await follow(broker, queue, load))
            await broker.purge(queue)
            figures.update(await fanout(target.base_url, broker, queue, args.fanout))
        figures["peak_rss_mb"] = target.peak_rss() / MB
    finally:
        figures_exit = await target.stop()
    figures["exit_code"] = figures_exit
    return figures


async def metrics_text(target: targets.Target) -> str:
    """The target's /metrics, or "" when it has none (the ceiling and the naive bridge)."""
    if target.name != "bridge":
        return ""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(target.base_url + "/metrics") as response,
    ):
        return await response.text()


async def follow(broker: Broker, queue: str, load: LoadResult) -> dict[str, Any]:
    """End-to-end: from the load's start until every accepted message is in ``queue``."""
    done = await broker.wait_for(queue, load.accepted_messages, timeout=E2E_TIMEOUT)
    delivered = await broker.settled_count(queue)
    e2e = None if done is None else load.accepted_messages / (done - load.started)
    return {
        "e2e_msg_s": e2e,
        "e2e_s": None if done is None else done - load.started,
        "delivered": delivered,
        "lost": max(0, load.accepted_messages - delivered),
    }


def spool_entries(spool_dir: Path) -> int | None:
    path = spool_dir / "spool.sqlite3"
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
    except sqlite3.Error:
        return None


async def outage(args: argparse.Namespace, broker: Broker, prefix: str, tmp: Path) -> dict[str, Any]:
    """Load the bridge for ``args.outage`` seconds with the broker unreachable; sample RSS; let it drain."""
    exchange = f"{prefix}.outage"
    queue = await broker.counting_queue(exchange, bridge_style=True)
    broker.forget_later(queues=(f"{exchange}.unrouted", f"{exchange}.invalid"))
    proxy_port = free_port()
    amqp = args.amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy_port}")
    spool_dir = tmp / "outage-spool"
    target = targets.bridge(
        free_port(), tmp / "outage.log", amqp_url=amqp, exchange=exchange, spool_dir=spool_dir
    )
    proxy = TcpProxy(5672, port=proxy_port)
    samples: list[tuple[float, int, int | None]] = []
    await target.start()
    try:
        loading = asyncio.create_task(
            run_load(
                target.base_url,
                seconds=args.outage,
                connections=args.connections,
                python_load=args.python_load,
            )
        )
        while not loading.done():
            await asyncio.wait([loading], timeout=1.0)
            samples.append((time.time(), target.rss(), await asyncio.to_thread(spool_entries, spool_dir)))
        load = loading.result()
        await proxy.accept()
        reopened = time.time()
        done = await broker.wait_for(queue, load.accepted_messages, timeout=max(E2E_TIMEOUT, args.outage * 4))
        delivered = await broker.settled_count(queue)
        await broker.purge(queue)
        peak = target.peak_rss()
    finally:
        await target.stop()
        await proxy.close()
    rss = [s[1] / MB for s in samples]
    third = max(1, len(rss) // 3)
    return {
        "seconds": args.outage,
        "accepted": load.accepted_messages,
        "req_s": load.accepted_per_s,
        "p99_ms": load.p99_ms,
        "rss_first_mb": rss[0],
        "rss_last_mb": rss[-1],
        "rss_min_mb": min(rss),
        "rss_max_mb": max(rss),
        # Median of the last third of the samples against the first third: the trend, not a spike.
        "rss_growth_mb": sorted(rss[-third:])[third // 2] - sorted(rss[:third])[third // 2],
        "peak_rss_mb": peak / MB,
        "spool_first": samples[0][2],
        "spool_last": samples[-1][2],
        "samples": [{"t": t - samples[0][0], "rss_mb": r / MB, "spool": s} for t, r, s in samples],
        "drain_s": None if done is None else done - reopened,
        "delivered": delivered,
        "lost": max(0, load.accepted_messages - delivered),
    }


def machine(rabbitmq_version: str) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "rabbitmq": rabbitmq_version,
    }


async def main(args: argparse.Namespace) -> int:
    prefix = f"servio-bench-{uuid.uuid4().hex[:8]}"
    broker = Broker(args.amqp_url, queue_type=args.queue_type)
    await broker.open()
    tool = "python" if args.python_load or not wrk_available() else "wrk"
    info = machine(broker.server_version)
    print(
        f"load: {tool}{'' if tool == 'wrk' or args.python_load else ' (wrk is not installed)'}, "
        f"{args.connections} connections, {args.seconds:g} s x {args.rounds} rounds; "
        f"fan-out {args.fanout} IDs; "
        f"{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, RabbitMQ {info['rabbitmq']}",
        flush=True,
    )
    rounds: list[dict[str, Any]] = []
    outage_result = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
            tmp = Path(tmp_name)
            naive_ex, bridge_ex = f"{prefix}.naive", f"{prefix}.bridge"
            naive_q = await broker.counting_queue(naive_ex, bridge_style=False)
            bridge_q = await broker.counting_queue(bridge_ex, bridge_style=True)
            broker.forget_later(queues=(f"{bridge_ex}.unrouted", f"{bridge_ex}.invalid"))
            for n in range(1, args.rounds + 1):
                result: dict[str, Any] = {"disk": await asyncio.to_thread(fsync_probe, tmp / "disk")}
                print(f"round {n} disk: {describe(result['disk'])}", flush=True)
                runs = [
                    (targets.ceiling(free_port(), tmp / f"ceiling-{n}.log"), None),
                    (
                        targets.naive(
                            free_port(),
                            tmp / f"naive-{n}.log",
                            amqp_url=args.amqp_url,
                            exchange=naive_ex,
                        ),
                        naive_q,
                    ),
                    (
                        targets.bridge(
                            free_port(),
                            tmp / f"bridge-{n}.log",
                            amqp_url=args.amqp_url,
                            exchange=bridge_ex,
                            spool_dir=tmp / f"spool-{n}",
                        ),
                        bridge_q,
                    ),
                ]
                for target, queue in runs:
                    if args.only and target.name not in args.only:
                        continue
                    result[target.name] = await measure(target, broker, queue, args)
                    print(f"round {n} {target.name}: {_line(result[target.name])}", flush=True)
                if not args.only or "pipelined" in args.only:
                    result["pipelined_msg_s"] = await pipelined_publish(
                        broker, f"{prefix}.pipelined", messages=args.fanout, in_flight=args.in_flight
                    )
                    print(f"round {n} pipelined publish: {result['pipelined_msg_s']:,.0f} msg/s", flush=True)
                rounds.append(result)
            if args.outage:
                outage_result = await outage(args, broker, prefix, tmp)
    finally:
        await broker.close()
    summary = summarise(rounds)
    checks = verdicts(summary, outage_result, fanout=args.fanout)
    print()
    print(markdown(summary, checks, outage_result, connections=args.connections))
    if args.json:
        document = {
            "machine": info,
            "settings": {k: v for k, v in vars(args).items() if k != "json"} | {"load": tool},
            "rounds": rounds,
            **summary,
            "checks": checks,
            "outage": outage_result,
        }
        write_json(Path(args.json), document)
    return 0


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def _line(figures: dict[str, Any]) -> str:
    parts = [
        f"{figures['req_s']:,.0f} req/s",
        f"p50 {figures['p50_ms']:.1f} ms",
        f"p99 {figures['p99_ms']:.1f} ms",
    ]
    if figures.get("e2e_msg_s") is not None:
        parts.append(f"e2e {figures['e2e_msg_s']:,.0f} msg/s")
    if "lost" in figures:
        parts.append(f"lost {figures['lost']}")
    if figures.get("fanout_msg_s") is not None:
        parts.append(f"fan-out {figures['fanout_msg_s']:,.0f} msg/s")
    parts.append(f"peak RSS {figures['peak_rss_mb']:.1f} MB")
    return ", ".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; figures are medians (3)")
    parser.add_argument("--seconds", type=float, default=10, help="load per target per round (10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (32)")
    parser.add_argument("--fanout", type=int, default=10_000, help="IDs in the fan-out webhook (10000)")
    parser.add_argument(
        "--in-flight", type=int, default=256, help="unconfirmed publishes of the baseline (256)"
    )
    parser.add_argument("--python-load", action="store_true", help="the Python load generator even with wrk")
    parser.add_argument(
        "--outage", type=float, default=0, help="also load the bridge this long with no broker"
    )
    parser.add_argument(
        "--queue-type", choices=("classic", "quorum"), default="classic", help="of the counting queue"
    )
    parser.add_argument(
        "--amqp-url", default=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--json", help="write every raw figure to this file")
    parser.add_argument(
        "--only",
        type=lambda v: v.split(","),
        default=[],
        help="measure only these of ceiling,naive,bridge,pipelined (comma-separated; all by default)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse_args())))
