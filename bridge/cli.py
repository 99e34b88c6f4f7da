"""The ``servio-bridge`` command; the only place that reads the real environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import orjson
import structlog

from bridge import __version__
from bridge.errors import ConfigError
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
        _report_bad_setting(exc, env)
        return exc.exit_code
    configure_logging(settings.log_format, secrets=(settings.token,))
    if args.command == "serve":
        from bridge.service import run

        structlog.get_logger("bridge.cli").info("starting", version=__version__, settings=settings.public())
        return run(settings)
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
    return parser


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
