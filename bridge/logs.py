"""Logging: structlog for our events, and every stdlib logger routed through the same renderer.

With the json format each line the process writes is one JSON object with an ``event`` key,
aiohttp's and aio-pika's lines included.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
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
_TIMESTAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


def configure_logging(
    fmt: str = "json",
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) in ``fmt`` (json or console).

    Every line is redacted last, so no logger (aiohttp's included, tracebacks
    included) can write one of ``secrets``, a ``?token=`` value or a Bearer credential.
    """
    shared: list[Processor] = [
        _merge_request_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _TIMESTAMP,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        tracebacks: Processor = structlog.processors.dict_tracebacks
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        tracebacks = _keep
    handler = _Handler(stream or sys.stderr)
    _OUTPUT.configure(handler, secrets, fast=fmt == "json", level=level)
    # Our own events skip the stdlib round trip (a LogRecord and a formatter per line): rendered
    # by structlog, redacted, written to the same stream under the handler's lock.
    structlog.configure(
        processors=[
            _merge_request_context,
            structlog.processors.add_log_level,
            _add_logger_name,
            _TIMESTAMP,
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
    """structlog's formatter, each finished line redacted."""

    def __init__(self, secrets: Iterable[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secrets = tuple(s for s in secrets if s)
        self._forms = _secret_forms(self.secrets)

    def format(self, record: logging.LogRecord) -> str:
        return _redact(super().format(record), self._forms)


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
    # Most lines hold neither word; this test is a twentieth of what a case-blind regex search costs.
    lowered = line.lower()
    if "token=" not in lowered and "bearer" not in lowered:
        return line
    return _BEARER.sub(r"\1***", _QUERY_TOKEN.sub(r"\1***", line))


class _Output:
    """Where our own events' lines go: the root handler's stream, under that handler's lock.

    On a thread running an event loop, lines wait for the end of the loop's current iteration and
    then leave in one write: the lines of many requests answered together cost one system call
    (stderr is unbuffered under PYTHONUNBUFFERED, as in most containers). Anywhere else (threads,
    start-up, shutdown) a line is written at once. Lines keep their order: the stdlib handler
    writes out what waits here before each line of its own (``_Handler``).
    """

    def __init__(self) -> None:
        self.handler: logging.StreamHandler[TextIO] | None = None
        self.forms: tuple[str, ...] = ()
        self.fast = False
        self.level = logging.INFO
        self._waiting: list[str] = []

    def configure(
        self, handler: logging.StreamHandler[TextIO], secrets: Iterable[str], *, fast: bool, level: int
    ) -> None:
        self.flush()
        self.handler = handler
        self.forms = _secret_forms(secrets)
        self.fast = fast
        self.level = level

    def write(self, line: str) -> None:
        handler = self.handler
        if handler is None:
            return
        line = _redact(line, self.forms) + "\n"
        with handler.lock or contextlib.nullcontext():
            if self._waiting:
                self._waiting.append(line)
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._write(handler, line)
                return
            self._waiting.append(line)
            loop.call_soon(self.flush)

    def flush(self) -> None:
        handler = self.handler
        if handler is None:
            return
        with handler.lock or contextlib.nullcontext():
            self.write_waiting(handler)

    def write_waiting(self, handler: logging.StreamHandler[TextIO]) -> None:
        """Write what waits (the caller holds the handler's lock)."""
        if self._waiting:
            lines, self._waiting = self._waiting, []
            self._write(handler, "".join(lines))

    @staticmethod
    def _write(handler: logging.StreamHandler[TextIO], text: str) -> None:
        try:
            handler.stream.write(text)
            handler.flush()
        except (OSError, ValueError):  # pragma: no cover - a closed stderr: nowhere to say so
            pass


class _Handler(logging.StreamHandler[TextIO]):
    """The root handler: before a line of its own, the lines waiting in ``_OUTPUT``."""

    def emit(self, record: logging.LogRecord) -> None:
        _OUTPUT.write_waiting(self)  # handle() holds our lock
        super().emit(record)


_OUTPUT = _Output()


class _DirectLogger:
    """structlog's logger for our events: one finished line to ``_OUTPUT``. Cached loggers keep
    this object, so ``configure_logging`` again (tests) swaps what ``_OUTPUT`` writes to."""

    def __init__(self, name: str = "", *_args: Any) -> None:
        self.name = name

    def msg(self, line: str) -> None:
        _OUTPUT.write(line)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def request_line(logger: str, event: str, fields: dict[str, Any]) -> None:
    """One INFO line of ``logger`` with the bound context, as structlog would render it in the json
    format, without its processor chain: the line every request writes, so the one that counts."""
    if not _OUTPUT.fast:
        structlog.get_logger(logger).info(event, **fields)
        return
    if _OUTPUT.level > logging.INFO:
        return
    context = _REQUEST.get()
    line = dict(context) if context else {}
    line.update(fields)
    line["event"] = event
    line["level"] = "info"
    line["logger"] = logger
    _OUTPUT.write(_dumps(_TIMESTAMP(None, "info", line)))


# What every line written while a request is handled carries (its delivery_id, source, ...): one
# dict per request in one context variable. structlog's bind/clear/get_contextvars keep a context
# variable per key and walk the whole context on each clear and read: 13 us per request against
# 2 us this way (docs/benchmarks.md, "Liveness and structure").
_REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request", default=None)
RequestToken = contextvars.Token[dict[str, Any] | None]


def start_request() -> RequestToken:
    """Give the current task a fresh request context (keep-alive requests share a task, and so
    its context); ``end_request`` with the token drops it."""
    return _REQUEST.set({})


def end_request(token: RequestToken) -> None:
    """Drop the request's log context: what the task logs next is not about that request."""
    _REQUEST.reset(token)


def bind(**fields: Any) -> None:
    """Add ``fields`` to every line of the request being handled (nothing outside a request)."""
    context = _REQUEST.get()
    if context is not None:
        context.update(fields)


def _merge_request_context(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    context = _REQUEST.get()
    if context:
        for key, value in context.items():
            event_dict.setdefault(key, value)
    return event_dict


def _add_logger_name(logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    event_dict["logger"] = getattr(logger, "name", "")
    return event_dict


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=repr).decode()


def _keep(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    return event_dict
