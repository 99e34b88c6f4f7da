"""``check``: is this installation able to run? Settings, broker, spool directory, one result each.

Made for scripts and container health checks: it changes nothing (no declare, no spool lock).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bridge.amqp.broker import probe
from bridge.core.outbound import invalid_queue
from bridge.core.topology import unrouted_name
from bridge.settings import Settings, redact_url

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: str
    status: str
    detail: str
    facts: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "status": self.status, "detail": self.detail, **self.facts}


async def run_checks(settings: Settings, *, per_node: float = 5.0) -> list[CheckResult]:
    """Every check after the settings (which parsed, or there would be no ``settings``)."""
    results = [CheckResult("settings", OK, "all BRIDGE_ settings parse")]
    results.extend(await check_brokers(settings, per_node=per_node))
    results.append(check_spool_dir(settings.spool_dir))
    return results


async def check_brokers(settings: Settings, *, per_node: float) -> list[CheckResult]:
    """One result per node; an unreachable node fails only when no other node is reachable."""
    exchange = settings.exchange
    probes = await asyncio.gather(
        *(
            probe(
                url,
                exchanges=(exchange, unrouted_name(exchange)),
                queues=(unrouted_name(exchange), invalid_queue(exchange)),
                within=per_node,
            )
            for url in settings.amqp_urls
        )
    )
    any_up = any(p.reachable for p in probes)
    results = []
    for url, found in zip(settings.amqp_urls, probes, strict=True):
        facts: dict[str, object] = {"url": redact_url(url)}
        if not found.reachable:
            results.append(CheckResult("broker", WARN if any_up else FAIL, found.detail, facts))
        elif found.missing:
            facts["missing"] = list(found.missing)
            detail = "reachable; topology not declared yet (serve declares it at start)"
            results.append(CheckResult("broker", WARN, detail, facts))
        else:
            results.append(CheckResult("broker", OK, "reachable, topology in place", facts))
    return results


def check_spool_dir(directory: Path | None) -> CheckResult:
    """The spool directory takes a file and an fsync (or can be created), without the spool's lock."""
    if directory is None:
        return CheckResult("spool", SKIP, "no spool (BRIDGE_SPOOL_DIR is empty): webhooks wait for RabbitMQ")
    facts: dict[str, object] = {"path": str(directory)}
    target = directory
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        return CheckResult("spool", FAIL, f"{target} is not a directory", facts)
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".servio-bridge-check-") as probe_file:
            probe_file.write(b"check")
            probe_file.flush()
            os.fsync(probe_file.fileno())
    except OSError as exc:
        return CheckResult("spool", FAIL, f"cannot write in {target}: {exc.strerror or exc}", facts)
    facts["free_bytes"] = shutil.disk_usage(target).free
    if target != directory:
        return CheckResult("spool", OK, f"will be created (in {target}, which is writable)", facts)
    return CheckResult("spool", OK, "writable", facts)


def exit_code(results: list[CheckResult]) -> int:
    """0 unless a check failed."""
    return 1 if any(r.status == FAIL for r in results) else 0
