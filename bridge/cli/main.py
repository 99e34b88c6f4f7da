"""The ``servio-bridge`` command; the only place that reads the real environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import structlog

from bridge import __version__
from bridge.errors import BrokerError, ConfigError, SpoolError
from bridge.logs import configure_logging
from bridge.settings import Settings


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Parse the command line, run the command, return the exit code."""
    env = os.environ if env is None else env
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        if args.command == "check":
            _print(
                [{"check": "settings", "status": "fail", "detail": str(exc), "variable": exc.variable}], args
            )
        else:
            _report_bad_setting(exc, env)
        return exc.exit_code
    configure_logging(settings.log_format, secrets=(settings.token,))
    if args.command == "serve":
        from bridge.service import run

        structlog.get_logger("bridge.cli.main").info(
            "starting", version=__version__, settings=settings.public()
        )
        return run(settings)
    if args.command == "check":
        return _check(settings, args)
    if args.command == "send":
        return _send(settings, args, env)
    if args.command == "spool":
        if args.spool_command == "quarantine":
            return _spool_quarantine(settings, args)
        return _spool_stats(settings, args)
    if args.command == "redrive":
        return _redrive(settings, args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse refuses first
    return 2  # pragma: no cover


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servio-bridge",
        description="Servio HMS webhooks in, one confirmed RabbitMQ message per event out. "
        "Settings come from BRIDGE_ environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the webhook listener and publisher until SIGTERM")
    check = commands.add_parser(
        "check",
        help="check settings, broker and spool directory; exit 0 only if the bridge can run",
        description="Checks the settings, that RabbitMQ accepts a connection (each node of "
        "BRIDGE_AMQP_URL; the topology passively), and that the spool directory is writable. "
        "Exit 0: ok; 1: a check failed; 2: a bad setting. Changes nothing.",
    )
    _add_format(check)
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per broker node (default 5)")
    send = commands.add_parser(
        "send",
        help="post a Servio webhook body to a running bridge (tests an installation)",
        description="POSTs FILE (or standard input for -) as Servio would, prints the bridge's JSON "
        "answer, exits 0 on a 2xx answer, 1 otherwise. Adds ?token=$BRIDGE_TOKEN when set.",
    )
    send.add_argument("file", metavar="FILE", help="the body, or - for standard input")
    send.add_argument(
        "--url", help="webhook URL (default http://127.0.0.1:$BRIDGE_PORT/webhooks/servio[/SOURCE])"
    )
    send.add_argument("--source", help="the {source} label to post under")
    send.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)"
    )
    spool = commands.add_parser(
        "spool", help="look at the spool and its quarantine (safe while the bridge runs)"
    )
    spool_commands = spool.add_subparsers(dest="spool_command", metavar="SPOOL_COMMAND", required=True)
    stats = spool_commands.add_parser(
        "stats", help="entries, bytes, oldest entry waiting for RabbitMQ, and entries quarantined"
    )
    _add_format(stats)
    quarantine = spool_commands.add_parser(
        "quarantine",
        help="entries even <exchange>.invalid refused: list them, or publish them again",
        description="The spool keeps what RabbitMQ refused even as a dead letter in a quarantine "
        "table. `list` reads it (read-only); `redrive` publishes each entry again with confirms and "
        "removes only the confirmed ones (exit 1 if any is left). Both are safe while the bridge runs.",
    )
    quarantine_commands = quarantine.add_subparsers(
        dest="quarantine_command", metavar="QUARANTINE_COMMAND", required=True
    )
    for name, text in (
        ("list", "seq, when, reason, routing key and message_id of each quarantined entry"),
        ("redrive", "publish each quarantined entry again; remove it once RabbitMQ confirmed it"),
    ):
        command = quarantine_commands.add_parser(name, help=text)
        command.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    redrive = commands.add_parser(
        "redrive",
        help="re-parse <exchange>.invalid with today's parser; publish what now parses",
        description="Takes each dead letter off <exchange>.invalid: what today's parser accepts is "
        "published (same message_ids as at arrival) and acknowledged; the rest is put back unchanged.",
    )
    redrive.add_argument("--limit", type=int, help="at most this many dead letters (default: all there now)")
    _add_format(redrive)
    return parser


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="one JSON line per row (default) or a table",
    )


def _print(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    if getattr(args, "format", "json") == "json":
        for row in rows:
            sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")
    else:
        for row in rows:
            sys.stdout.write("  ".join(f"{k}={v}" for k, v in row.items()) + "\n")
    sys.stdout.flush()


def _check(settings: Settings, args: argparse.Namespace) -> int:
    from bridge.cli.check import exit_code, run_checks

    results = asyncio.run(run_checks(settings, per_node=args.timeout))
    if args.format == "table":
        for r in results:
            facts = "  ".join(f"{k}={v}" for k, v in r.facts.items())
            sys.stdout.write(f"{r.status:<5} {r.check:<9} {r.detail}  {facts}".rstrip() + "\n")
    else:
        _print([r.as_dict() for r in results], args)
    return exit_code(results)


def _send(settings: Settings, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import aiohttp
    from yarl import URL

    from bridge.cli.send import send_body, webhook_url, with_token

    token = env.get("BRIDGE_TOKEN", "").strip() or None
    if args.url:
        url = str(with_token(URL(args.url), token))
    else:
        url = webhook_url(settings.port, args.source, token)
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        sys.stderr.write(f"servio-bridge send: cannot read {args.file}: {exc.strerror or exc}\n")
        return 1
    try:
        status, answer = asyncio.run(send_body(url, body, within=args.timeout))
    except (aiohttp.ClientError, TimeoutError) as exc:
        shown = URL(url).without_query_params("token") if "token" in URL(url).query else URL(url)
        sys.stderr.write(f"servio-bridge send: no answer from {shown}: {exc!r}\n")
        return 1
    sys.stdout.write(orjson.dumps({"http_status": status, "answer": answer}).decode() + "\n")
    return 0 if 200 <= status < 300 else 1


def _spool_stats(settings: Settings, args: argparse.Namespace) -> int:
    from bridge.spool.reader import read_spool_stats

    if settings.spool_dir is None:
        _print([{"spool": None, "detail": "no spool (BRIDGE_SPOOL_DIR is empty)"}], args)
        return 0
    try:
        stats = read_spool_stats(settings.spool_dir)
    except SpoolError as exc:
        sys.stderr.write(f"servio-bridge spool stats: {exc}\n")
        return exc.exit_code
    row: dict[str, object] = {"spool": str(settings.spool_dir), "exists": stats is not None}
    entries, size, oldest = (stats.entries, stats.bytes, stats.oldest) if stats else (0, 0, None)
    row.update(entries=entries, bytes=size, max_bytes=settings.spool_max_bytes)
    row["quarantined"] = stats.quarantined if stats else 0
    row["oldest"] = None if oldest is None else datetime.fromtimestamp(oldest, UTC).isoformat()
    row["oldest_age_seconds"] = None if oldest is None else round(max(0.0, time.time() - oldest), 3)
    _print([row], args)
    return 0


def _spool_quarantine(settings: Settings, args: argparse.Namespace) -> int:
    from bridge.core.record import decode_record
    from bridge.spool.reader import read_quarantine

    name = f"servio-bridge spool quarantine {args.quarantine_command}"
    if settings.spool_dir is None:
        sys.stderr.write(f"{name}: no spool (BRIDGE_SPOOL_DIR is empty)\n")
        return 1
    rows: list[dict[str, object]] = []
    try:
        if args.quarantine_command == "redrive":
            from bridge.cli.quarantine import redrive_quarantine

            report = asyncio.run(redrive_quarantine(settings, settings.spool_dir))
            rows.append({"examined": report.examined, "published": report.published, "left": report.left})
            rows.extend({"error": error} for error in report.errors)
        else:
            for entry in read_quarantine(settings.spool_dir):
                routing_key: str | None = None
                message_id: str | None = None
                with contextlib.suppress(ValueError):  # listed all the same, by seq and reason
                    message = decode_record(entry.record)
                    routing_key, message_id = message.routing_key, message.message_id
                rows.append(
                    {
                        "seq": entry.seq,
                        "quarantined": datetime.fromtimestamp(entry.quarantined, UTC).isoformat(),
                        "reason": entry.reason,
                        "routing_key": routing_key,
                        "message_id": message_id,
                    }
                )
    except SpoolError as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        return exc.exit_code
    if args.json:
        _print(rows, args)
    else:
        for row in rows:
            sys.stdout.write("  ".join(f"{k}={v}" for k, v in row.items()) + "\n")
        if not rows:
            sys.stdout.write("nothing quarantined\n")
    left = rows[0].get("left", 0) if args.quarantine_command == "redrive" else 0
    return 1 if left else 0


def _redrive(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from bridge.cli.redrive import redrive

    try:
        report = asyncio.run(redrive(settings, limit=args.limit))
    except BrokerError as exc:
        sys.stderr.write(f"servio-bridge redrive: {exc}\n")
        return 1
    _print([{"queue": f"{settings.exchange}.invalid", **asdict(report)}], args)
    return 0


def _report_bad_setting(exc: ConfigError, env: Mapping[str, str]) -> None:
    """One line naming the variable: JSON unless the operator asked for console logs."""
    if env.get("BRIDGE_LOG_FORMAT", "").strip().lower() == "console":
        print(f"servio-bridge: bad setting {exc.variable}: {exc.problem}", file=sys.stderr)
        return
    line = {
        "event": "bad_setting",
        "level": "error",
        "variable": exc.variable,
        "problem": exc.problem,
    }
    sys.stderr.write(orjson.dumps(line).decode() + "\n")
    logging.shutdown()
