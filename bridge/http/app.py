"""The aiohttp application: webhook endpoints, health, JSON errors, one log line per request."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from bridge.core.deadletter import build_invalid_body
from bridge.core.message import CHUNK, DEFAULT_SOURCE, build_messages, message_chunks
from bridge.core.outbound import Outbound, Webhook
from bridge.core.payload import Payload, parse_payload
from bridge.errors import InvalidBody, RequestError, TooLarge, Unavailable
from bridge.http.guard import GUARDED_PREFIX, build_guard
from bridge.http.limits import Admission, read_body
from bridge.http.ops import RETRY_AFTER, RUNTIME, WEBHOOK_PREFIX, Runtime, liveness_answer
from bridge.http.sequencer import Sequencer
from bridge.logs import bind, end_request, request_line, start_request
from bridge.settings import Settings
from bridge.sink import Sink

SETTINGS = web.AppKey("settings", Settings)
ADMISSION = web.AppKey("admission", Admission)
SEQUENCER = web.AppKey("sequencer", Sequencer)
OPENAPI = resources.files("bridge").joinpath("openapi.json")
SOURCE_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"
# Bodies up to this many bytes are parsed on the loop (Servio's are a few hundred; 64 KiB parse in
# a few ms); larger ones in a thread.
PARSE_ON_LOOP = 64 * 1024
# Largest bodies in progress at once: each of 100,000 IDs peaks at ~110 MB, and the deploy files
# give the process 512 MiB (docs/spool.md, "Memory").
BODIES_IN_PROGRESS = 1

log = structlog.get_logger("bridge.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(settings: Settings, sink: Sink) -> web.Application:
    """The HTTP API of PRODUCT.md; storage and lifecycle are the caller's (``service``)."""
    app = web.Application(
        client_max_size=settings.max_body,
        middlewares=[build_edge(settings)],
    )
    app[SETTINGS] = settings
    app[ADMISSION] = Admission(settings.max_concurrent, budget=BODIES_IN_PROGRESS * settings.max_body)
    app[SEQUENCER] = Sequencer(sink)
    app.router.add_post("/webhooks/servio", receive_webhook)
    app.router.add_post("/webhooks/servio/{source:" + SOURCE_PATTERN + "}", receive_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    return app


async def receive_webhook(request: web.Request) -> web.Response:
    """Split one Servio body into messages and answer only once they are all safe."""
    settings = request.app[SETTINGS]
    sequencer = request.app[SEQUENCER]
    source = request.match_info.get("source", DEFAULT_SOURCE)
    # 128 random bits from the process's own generator (seeded from the OS): unique, and without
    # the system call per request that os.urandom or uuid4 makes.
    delivery_id = f"{random.getrandbits(128):032x}"
    bind(delivery_id=delivery_id, source=source)
    raw = await read_body(request, max_body=settings.max_body, read_timeout=settings.read_timeout)
    # Arrival is when the body is complete; the ticket taken with it keeps the spool in that order.
    delivery = Webhook(delivery_id, source, datetime.now(UTC))
    ticket = sequencer.take()
    try:
        async with request.app[ADMISSION].admit(len(raw)):
            try:
                if len(raw) <= PARSE_ON_LOOP:
                    payload = parse_payload(raw, max_ids=settings.max_ids, charset=request.charset)
                else:
                    # A large body takes up to ~0.2 s to parse: in a thread, the interpreter's
                    # switch interval lets the loop answer others (and /healthz) meanwhile.
                    payload = await asyncio.to_thread(
                        parse_payload, raw, max_ids=settings.max_ids, charset=request.charset
                    )
            except (InvalidBody, TooLarge) as exc:
                # Refused after it was received whole: the raw bytes are kept as a dead letter.
                letter = build_invalid_body(
                    raw, delivery, exchange=settings.exchange, reason=exc.code, detail=exc.detail
                )
                await sequencer.accept(ticket, [letter])
                bind(rejected=1, messages=0)
                return _json(
                    {
                        "status": "rejected",
                        "error": exc.code,
                        "detail": exc.detail,
                        "delivery_id": delivery.delivery_id,
                    },
                    status=exc.status,
                )
            if len(payload.events) + len(payload.rejections) <= CHUNK:
                messages = build_messages(
                    payload, delivery, exchange=settings.exchange, template=settings.routing_key, body=raw
                )
            else:
                messages = await _build_in_chunks(payload, delivery, settings, raw)
            if messages:
                await sequencer.accept(ticket, messages)
    finally:
        sequencer.release(ticket)
    bind(messages=len(payload.events), rejected=len(payload.rejections))
    return _json(
        {
            "status": "accepted",
            "delivery_id": delivery.delivery_id,
            "messages": len(payload.events),
            "rejected": len(payload.rejections),
        }
    )


async def _build_in_chunks(
    payload: Payload, delivery: Webhook, settings: Settings, raw: bytes
) -> list[Outbound]:
    """``build_messages`` for a large webhook, letting other requests run between two chunks."""
    messages: list[Outbound] = []
    for chunk in message_chunks(
        payload, delivery, exchange=settings.exchange, template=settings.routing_key, body=raw
    ):
        messages.extend(chunk)
        await asyncio.sleep(0)
    return messages


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers; with operations installed, 503 when it
    cannot do its job (``bridge.http.ops.liveness_answer``), so an orchestrator restarts it."""
    ops = request.app.get(RUNTIME)
    if ops is None:
        return _json({"status": "ok"})
    body, status = liveness_answer(ops)
    return _json(body, status=status)


async def openapi(_request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this HTTP API, as kept in the package."""
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")


def build_edge(settings: Settings) -> Middleware:
    """The one middleware: everything around every request, in the order it must happen.

    It clears the request's log context, runs the guard (before any body is read), turns webhooks
    away once shutdown began (503 + ``Connection: close``) and counts those in flight, maps
    refusals to JSON bodies (503 with Retry-After), answers an unexpected exception with a 500,
    then records the request's metrics and writes its one log line, never with the query string.
    One layer rather than five: each aiohttp middleware is another coroutine and wrapper per request.
    """
    guard = build_guard(settings)

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        # Keep-alive requests share a task and so its context: each one starts clean.
        context = start_request()
        ops = request.app.get(RUNTIME)
        path = request.path
        status = 500
        try:
            response = await _guarded(request, handler, guard, ops, path)
            status = response.status
            return response
        except ConnectionError:
            # The client went away mid-request: nobody to answer, nothing went wrong here.
            status = 499
            raise
        except web.HTTPException as exc:  # a redirect: aiohttp answers it
            status = exc.status
            raise
        except Exception:
            log.exception("request_failed", method=request.method, path=path)
            return _json(
                {"status": "error", "error": "internal_error", "detail": "internal error"}, status=500
            )
        finally:
            if ops is not None:
                resource = request.match_info.route.resource
                ops.metrics.request(
                    resource.canonical if resource is not None else "unmatched", time.perf_counter() - started
                )
                if resource is not None and path.startswith(WEBHOOK_PREFIX):
                    ops.metrics.webhook(status, request.match_info.get("source", DEFAULT_SOURCE))
            request_line(
                "bridge.http",
                "request",
                {
                    "method": request.method,
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
            end_request(context)

    return edge


async def _guarded(
    request: web.Request,
    handler: Handler,
    guard: Callable[[web.Request], None],
    ops: Runtime | None,
    path: str,
) -> web.StreamResponse:
    """The handler behind the guard and the shutdown gate; refusals as JSON bodies."""
    try:
        if path.startswith(GUARDED_PREFIX):
            guard(request)
            if ops is not None and path.startswith(WEBHOOK_PREFIX):
                if ops.gate.closed:
                    return _json(
                        {
                            "status": "error",
                            "error": "shutting_down",
                            "detail": "the bridge is shutting down",
                        },
                        status=503,
                        headers={"Retry-After": str(RETRY_AFTER), "Connection": "close"},
                    )
                ops.gate.enter()
                try:
                    return await handler(request)
                finally:
                    ops.gate.leave()
        return await handler(request)
    except RequestError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
        return _json(
            {"status": "error", "error": exc.code, "detail": exc.detail}, status=exc.status, headers=headers
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _json(
            {"status": "error", "error": code, "detail": exc.reason}, status=exc.status, headers=headers
        )


def _json(
    body: dict[str, object], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # orjson: a quarter of the cost of web.json_response's json.dumps.
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )
