"""From raw rounds to medians, ratios, the issue's targets (PASS/FAIL) and Markdown tables."""

from __future__ import annotations

import statistics
from typing import Any

TARGETS = ("ceiling", "naive", "bridge")
GOALS = {
    "req_s_ratio": 1.5,
    "p99_ms": 10.0,
    "e2e_ratio": 1.2,
    "fanout_ratio": 0.8,
    "peak_rss_mb": 150.0,
    "outage_rss_growth_mb": 10.0,
}


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every figure, and the median of each round's bridge/naive and bridge/pipelined ratio."""
    medians: dict[str, dict[str, float | None]] = {}
    for target in TARGETS:
        figures = {f for r in rounds for f in r.get(target, {})}
        medians[target] = {f: median_of([r[target].get(f) for r in rounds if target in r]) for f in figures}
    medians["pipelined"] = {"msg_s": median_of([r.get("pipelined_msg_s") for r in rounds])}
    disks = [r["disk"] for r in rounds if "disk" in r]
    medians["disk"] = {
        "p99_ms": median_of([d["p99_ms"] for d in disks]),
        "max_ms": max((d["max_ms"] for d in disks), default=None),
        "stalls": sum(d["stalls"] for d in disks),
        "seconds": sum(d["seconds"] for d in disks),
    }

    def ratio(a: str, b: str, figure: str, b_figure: str | None = None) -> float | None:
        values: list[float | None] = []
        for r in rounds:
            top = r.get(a, {}).get(figure)
            bottom = r.get("pipelined_msg_s") if b == "pipelined" else r.get(b, {}).get(b_figure or figure)
            values.append(top / bottom if top is not None and bottom else None)
        return median_of(values)

    ratios = {
        "req_s_ratio": ratio("bridge", "naive", "req_s"),
        "e2e_ratio": ratio("bridge", "naive", "e2e_msg_s"),
        "fanout_ratio": ratio("bridge", "pipelined", "fanout_msg_s"),
        "naive_fanout_ratio": ratio("naive", "pipelined", "fanout_msg_s"),
        "bridge_of_ceiling": ratio("bridge", "ceiling", "req_s"),
        "naive_of_ceiling": ratio("naive", "ceiling", "req_s"),
    }
    return {"medians": medians, "ratios": ratios}


def verdicts(summary: dict[str, Any], outage: dict[str, Any] | None, *, fanout: int) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured and PASS or FAIL."""
    ratios, bridge = summary["ratios"], summary["medians"]["bridge"]
    rows = [
        ("accepted req/s, bridge / naive", ratios["req_s_ratio"], ">=", GOALS["req_s_ratio"], "x"),
        ("p99 answer latency, bridge", bridge.get("p99_ms"), "<=", GOALS["p99_ms"], " ms"),
        ("end-to-end msg/s, bridge / naive", ratios["e2e_ratio"], ">=", GOALS["e2e_ratio"], "x"),
        (
            "10,000-ID fan-out, bridge / pipelined publish",
            ratios["fanout_ratio"],
            ">=",
            GOALS["fanout_ratio"],
            "x",
        ),
        ("peak RSS, bridge", bridge.get("peak_rss_mb"), "<=", GOALS["peak_rss_mb"], " MB"),
    ]
    if outage is not None:
        growth = outage.get("rss_growth_mb")
        rows.append(("RSS growth during the outage", growth, "<=", GOALS["outage_rss_growth_mb"], " MB"))
    out = []
    for name, value, op, goal, unit in rows:
        ok = value is not None and (value >= goal if op == ">=" else value <= goal)
        out.append({"target": name, "measured": value, "goal": f"{op} {goal:g}{unit}", "pass": ok})
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def markdown(
    summary: dict[str, Any],
    checks: list[dict[str, Any]],
    outage: dict[str, Any] | None,
    *,
    connections: int = 32,
) -> str:
    med = summary["medians"]
    lines = [
        "| target | accepted req/s | p50 ms | p99 ms | end-to-end msg/s | fan-out msg/s "
        "| peak RSS MB | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in TARGETS:
        m = med[target]
        lines.append(
            f"| {target} | {_fmt(m.get('req_s'))} | {_fmt(m.get('p50_ms'), 1)} | {_fmt(m.get('p99_ms'), 1)} "
            f"| {_fmt(m.get('e2e_msg_s'))} | {_fmt(m.get('fanout_msg_s'))} | {_fmt(m.get('peak_rss_mb'), 1)} "
            f"| {_fmt(m.get('lost'))} |"
        )
    lines.append(f"| pipelined publish | | | | | {_fmt(med['pipelined']['msg_s'])} | | |")
    lines += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
    for check in checks:
        unit = "x" if "/" in check["target"] else ""
        lines.append(
            f"| {check['target']} | {_fmt(check['measured'], 2)}{unit} | {check['goal']} "
            f"| {'PASS' if check['pass'] else 'FAIL'} |"
        )
    r = summary["ratios"]
    lines += [
        "",
        f"Of the HTTP ceiling: bridge {_fmt(r['bridge_of_ceiling'], 2)}x, "
        f"naive {_fmt(r['naive_of_ceiling'], 2)}x; "
        f"naive fan-out / pipelined publish {_fmt(r['naive_fanout_ratio'], 2)}x.",
    ]
    ceiling_p99 = med["ceiling"].get("p99_ms")
    if ceiling_p99 is not None:
        beyond = ceiling_p99 > GOALS["p99_ms"]
        lines += [
            "",
            f"p99 of the HTTP ceiling, which only reads and answers: {_fmt(ceiling_p99, 1)} ms"
            + (
                f", over the {GOALS['p99_ms']:g} ms goal: no handler on this stack meets it"
                " on the machine as it was."
                if beyond
                else "."
            ),
        ]
    lines += _cpu_lines(med, connections)
    bridge = med["bridge"]
    if bridge.get("sync_fsyncs"):
        lines += [
            "",
            f"The bridge's own spool fsyncs during its load (servio_bridge_spool_sync_seconds): "
            f"{_fmt(bridge['sync_fsyncs'])} of them, half under {_fmt(bridge.get('sync_p50_le_ms'), 1)} ms "
            f"and 99% under {_fmt(bridge.get('sync_p99_le_ms'), 1)} ms (bucket bounds), "
            f"{_fmt(bridge.get('sync_over_5ms_pct'), 1)}% over 5 ms and "
            f"{_fmt(bridge.get('sync_over_10ms_pct'), 1)}% over 10 ms. Each answer waited for one.",
        ]
    disk = med["disk"]
    if disk["seconds"]:
        lines += [
            "",
            f"The spool's disk before each round (one 4 KiB append + fdatasync at a time): median p99 "
            f"{_fmt(disk['p99_ms'], 2)} ms, worst {_fmt(disk['max_ms'])} ms, {disk['stalls']} fsyncs over "
            f"10 ms in {disk['seconds']:g} s. A stall holds every answer waiting for its group commit.",
        ]
    if outage is not None:
        lines += [
            "",
            f"Outage ({outage['seconds']:g} s of load, broker unreachable): RSS "
            f"{_fmt(outage['rss_first_mb'], 1)} -> {_fmt(outage['rss_last_mb'], 1)} MB "
            f"(min {_fmt(outage['rss_min_mb'], 1)}, max {_fmt(outage['rss_max_mb'], 1)}), spool "
            f"{_fmt(outage['spool_first'])} -> {_fmt(outage['spool_last'])} entries; "
            f"{_fmt(outage['accepted'])} accepted, drained in {_fmt(outage['drain_s'], 1)} s once the broker "
            f"came back, lost {_fmt(outage['lost'])}.",
        ]
    return "\n".join(lines)


def _cpu_lines(med: dict[str, Any], connections: int) -> list[str]:
    """Where each target's CPU went, per request, and what the bridge's cost allows at most."""
    measured = [t for t in TARGETS if med[t].get("cpu_busy_us") is not None]
    if not measured:
        return []
    lines = [
        "",
        "CPU per accepted request during the load, in µs (from /proc): the target's processes, its "
        "event loop's thread, RabbitMQ, the rest of the machine (the load generator, mostly); how "
        "busy all CPUs were; and the rate the machine could carry at that cost with every CPU busy.",
        "",
        "| target | its processes | its event loop | RabbitMQ | the rest | machine busy | steal "
        "| could carry req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in measured:
        m = med[target]
        lines.append(
            f"| {target} | {_fmt(m.get('cpu_target_us'))} | {_fmt(m.get('cpu_main_thread_us'))} "
            f"| {_fmt(m.get('cpu_broker_us'))} | {_fmt(m.get('cpu_rest_us'))} "
            f"| {_fmt(m.get('cpu_busy_pct'))}% | {_fmt(m.get('cpu_steal_pct'), 1)}% "
            f"| {_fmt(m.get('cpu_max_req_s'))} |"
        )
    carry = med["bridge"].get("cpu_max_req_s")
    if carry is not None:
        # Little's law: with every connection always waiting, the mean answer is connections / rate.
        needed = connections / (GOALS["p99_ms"] / 1000)
        lines += [
            "",
            f"A p99 of {GOALS['p99_ms']:g} ms at {connections} connections needs a mean answer under "
            f"{GOALS['p99_ms']:g} ms (unless a few answers are far slower than all the rest), so more "
            f"than {_fmt(needed)} req/s (the mean answer is connections / rate); at the CPU the bridge's "
            f"pipeline spent per request, the machine could carry at most {_fmt(carry)} req/s.",
        ]
    return lines
