"""The aiohttp application: webhook endpoints, health, JSON errors, one log line per request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources

import orjson
import structlog
from aiohttp import web

from bridge.errors import InvalidBody, RequestError, TooLarge, Unavailable
from bridge.guard import build_guard
from bridge.limits import Gate, read_body
from bridge.message import DEFAULT_SOURCE, Delivery, build_invalid_body, build_messages
from bridge.payload import parse_payload
from bridge.settings import Settings
from bridge.sink import Sink

SETTINGS = web.AppKey("settings", Settings)
SINK = web.AppKey("sink", Sink)
GATE = web.AppKey("gate", Gate)
OPENAPI = resources.files("bridge").joinpath("openapi.json")
SOURCE_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"

log = structlog.get_logger("bridge.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(settings: Settings, sink: Sink) -> web.Application:
    """The HTTP API of PRODUCT.md; storage and lifecycle are the caller's (``service``)."""
    app = web.Application(
        client_max_size=settings.max_body,
        # The guard runs inside error_middleware (refusals become JSON) and before the handler
        # (a refused body is never read).
        middlewares=[request_log_middleware, error_middleware, build_guard(settings)],
    )
    app[SETTINGS] = settings
    app[SINK] = sink
    app[GATE] = Gate(settings.max_concurrent)
    app.router.add_post("/webhooks/servio", receive_webhook)
    app.router.add_post("/webhooks/servio/{source:" + SOURCE_PATTERN + "}", receive_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    return app


async def receive_webhook(request: web.Request) -> web.Response:
    """Split one Servio body into messages and answer only once they are all safe."""
    settings = request.app[SETTINGS]
    sink = request.app[SINK]
    source = request.match_info.get("source", DEFAULT_SOURCE)
    delivery = Delivery(uuid.uuid4().hex, source, datetime.now(UTC))
    structlog.contextvars.bind_contextvars(delivery_id=delivery.delivery_id, source=source)
    raw = await read_body(request, max_body=settings.max_body, read_timeout=settings.read_timeout)
    async with request.app[GATE].turn():
        try:
            payload = parse_payload(raw, max_ids=settings.max_ids)
        except (InvalidBody, TooLarge) as exc:
            # Refused after it was received whole: the raw bytes are kept as a dead letter.
            letter = build_invalid_body(
                raw, delivery, exchange=settings.exchange, reason=exc.code, detail=exc.detail
            )
            await sink.accept([letter])
            structlog.contextvars.bind_contextvars(rejected=1, messages=0)
            return _json(
                {
                    "status": "rejected",
                    "error": exc.code,
                    "detail": exc.detail,
                    "delivery_id": delivery.delivery_id,
                },
                status=exc.status,
            )
        messages = build_messages(
            payload, delivery, exchange=settings.exchange, template=settings.routing_key
        )
        if messages:
            await sink.accept(messages)
    structlog.contextvars.bind_contextvars(messages=len(payload.events), rejected=len(payload.rejections))
    return _json(
        {
            "status": "accepted",
            "delivery_id": delivery.delivery_id,
            "messages": len(payload.events),
            "rejected": len(payload.rejections),
        }
    )


async def healthz(_request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return _json({"status": "ok"})


async def openapi(_request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this HTTP API, as kept in the package."""
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as a JSON body; 503 carries Retry-After."""
    try:
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


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request, with the delivery_id bound by the handler; never the query string."""
    started = time.perf_counter()
    # Keep-alive requests share a task and so its context: start each one clean.
    structlog.contextvars.clear_contextvars()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ConnectionError:
        # The client went away mid-request: nobody to answer, nothing went wrong here.
        status = 499
        raise
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        return _json({"status": "error", "error": "internal_error", "detail": "internal error"}, status=500)
    finally:
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        structlog.contextvars.clear_contextvars()


def _json(
    body: dict[str, object], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # orjson: a quarter of the cost of web.json_response's json.dumps.
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )
