"""``send``: post a Servio body to a running bridge, as Servio would, to test an installation."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from yarl import URL


def webhook_url(port: int, source: str | None, token: str | None) -> str:
    """The local bridge's webhook URL, with ``?token=`` when a token is given."""
    url = URL.build(scheme="http", host="127.0.0.1", port=port, path="/webhooks/servio")
    if source:
        url = url / source
    return str(with_token(url, token))


def with_token(url: URL, token: str | None) -> URL:
    """``url`` with ``?token=`` added, unless it has one or there is no token."""
    if not token or "token" in url.query:
        return url
    return url.update_query(token=token)


async def send_body(url: str, body: bytes, *, within: float) -> tuple[int, Any]:
    """POST ``body``; the HTTP status and the decoded JSON answer (or its text).

    Raises:
        aiohttp.ClientError, TimeoutError: the bridge could not be reached or did not answer.
    """
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as session,
        session.post(url, data=body, headers={"Content-Type": "application/json"}) as response,
    ):
        raw = await response.read()
        try:
            return response.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return response.status, raw.decode("utf-8", "replace")
