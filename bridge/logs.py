"""Logging: structlog for our events, and every stdlib logger routed through the same renderer.

With the json format each line the process writes is one JSON object with an ``event`` key,
aiohttp's and aio-pika's lines included.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import quote

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# Credentials as a request carries them, whoever's they are: a query token and a Bearer header.
_QUERY_TOKEN = re.compile(r"([?&;]token=)[^&;\s\"'#]*", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[^\s\"',;]+", re.IGNORECASE)


def configure_logging(
    fmt: str = "json",
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) in ``fmt`` (json or console).

    Every line passes through ``redact`` last, so no logger (aiohttp's included, tracebacks
    included) can write one of ``secrets``, a ``?token=`` value or a Bearer credential.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        tracebacks: Processor = structlog.processors.dict_tracebacks
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        tracebacks = _keep
    handler = logging.StreamHandler(stream or sys.stderr)
    _OUTPUT.configure(handler, secrets)
    # Our own events skip the stdlib round trip (a LogRecord and a formatter per line): rendered
    # by structlog, redacted, written to the same stream under the handler's lock.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            tracebacks,
            renderer,
        ],
        logger_factory=_DirectLogger,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = RedactingFormatter(
        secrets,
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            tracebacks,
            renderer,
        ],
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aio-pika narrates every declare at INFO; its warnings and errors still come through.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Our own "request" line replaces aiohttp's access log, which would print query strings
    # (and so a ?token=) verbatim.
    logging.getLogger("aiohttp.access").disabled = True
    logging.captureWarnings(True)
    # Crashes outside any logger (a thread, the main thread) still come out as one JSON line.
    crash_log = logging.getLogger("bridge.crash")
    sys.excepthook = lambda kind, exc, tb: crash_log.critical("uncaught_exception", exc_info=(kind, exc, tb))
    threading.excepthook = lambda args: crash_log.critical(
        "uncaught_exception",
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
        extra={"thread": args.thread.name if args.thread else None},
    )


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter, with ``redact`` applied to each finished line."""

    def __init__(self, secrets: Iterable[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secrets = tuple(s for s in secrets if s)
        self._forms = _secret_forms(self.secrets)

    def format(self, record: logging.LogRecord) -> str:
        return _redact(super().format(record), self._forms)


def redact(line: str, secrets: Iterable[str] = ()) -> str:
    """``line`` with each secret (as written or URL-encoded), query token and Bearer credential as ***."""
    return _redact(line, _secret_forms(secrets))


def _secret_forms(secrets: Iterable[str]) -> tuple[str, ...]:
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= {secret, quote(secret, safe=""), quote(secret), _dumps(secret)[1:-1], repr(secret)[1:-1]}
    # Longest first: a form that contains another is replaced whole.
    return tuple(sorted(forms, key=len, reverse=True))


def _redact(line: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        line = line.replace(form, "***")
    return _BEARER.sub(r"\1***", _QUERY_TOKEN.sub(r"\1***", line))


class _Output:
    """Where our own events' lines go: the root handler's stream, under that handler's lock."""

    def __init__(self) -> None:
        self.handler: logging.StreamHandler[TextIO] | None = None
        self.forms: tuple[str, ...] = ()

    def configure(self, handler: logging.StreamHandler[TextIO], secrets: Iterable[str]) -> None:
        self.handler = handler
        self.forms = _secret_forms(secrets)

    def write(self, line: str) -> None:
        handler = self.handler
        if handler is None:
            return
        line = _redact(line, self.forms)
        with handler.lock or contextlib.nullcontext():
            try:
                handler.stream.write(line + "\n")
                handler.flush()
            except (OSError, ValueError):  # pragma: no cover - a closed stderr: nowhere to say so
                pass


_OUTPUT = _Output()


class _DirectLogger:
    """structlog's logger for our events: one finished line to ``_OUTPUT``. Cached loggers keep
    this object, so ``configure_logging`` again (tests) swaps what ``_OUTPUT`` writes to."""

    def __init__(self, name: str = "", *_args: Any) -> None:
        self.name = name

    def msg(self, line: str) -> None:
        _OUTPUT.write(line)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _add_logger_name(logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    event_dict["logger"] = getattr(logger, "name", "")
    return event_dict


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=repr).decode()


def _keep(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    return event_dict
