"""Only Servio gets in: the token, the address allow-list and X-Forwarded-For from trusted proxies."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.http.app import build_app
from bridge.settings import Settings
from tests.app.recording_sink import RecordingSink

TOKEN = "s3cret-token-0123456789"  # noqa: S105 - a made-up token of this test
BODY = b'{"Add":{"Clients":[12766],"Companies":null,"Guests":null},"Update":null,"Delete":null}'
ClientFactory = Callable[..., Any]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Start the app with the given settings overrides; returns (client, sink)."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**overrides: Any) -> tuple[TestClient[Any, Any], RecordingSink]:
        sink = RecordingSink()
        app = build_app(Settings(spool_dir=None, **overrides), sink)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client, sink

    yield make
    for client in clients:
        await client.close()


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


class TestToken:
    @pytest.mark.parametrize(
        ("params", "headers", "error"),
        [
            pytest.param({}, {}, "token_missing", id="missing"),
            pytest.param({"token": "wrong-token-0123456789"}, {}, "token_wrong", id="wrong-query"),
            pytest.param({"token": ""}, {}, "token_wrong", id="empty-query"),
            pytest.param(
                {}, {"Authorization": "Bearer wrong-token-0123456789"}, "token_wrong", id="wrong-bearer"
            ),
            pytest.param({}, {"Authorization": f"Basic {TOKEN}"}, "token_missing", id="other-scheme"),
            pytest.param({"token": TOKEN[:-1]}, {}, "token_wrong", id="prefix-of-token"),
            pytest.param({"token": TOKEN + "x"}, {}, "token_wrong", id="token-plus-one"),
        ],
    )
    async def test_refused_with_401_and_nothing_kept(
        self, make_client: ClientFactory, params: dict[str, str], headers: dict[str, str], error: str
    ) -> None:
        """A missing or wrong token gets a JSON 401 and nothing of the request is kept."""
        client, sink = await make_client(token=TOKEN)
        response = await client.post("/webhooks/servio/Jam_8", data=BODY, params=params, headers=headers)
        assert response.status == 401
        assert (await response.json())["error"] == error
        assert TOKEN not in await response.text()
        assert sink.kept == []

    @pytest.mark.parametrize(
        ("params", "headers"),
        [
            pytest.param({"token": TOKEN}, {}, id="query"),
            pytest.param({}, {"Authorization": f"Bearer {TOKEN}"}, id="bearer"),
            pytest.param({}, {"Authorization": f"bearer   {TOKEN}"}, id="bearer-lower-case"),
            pytest.param(
                {"token": "wrong-token-0123456789"}, {"Authorization": f"Bearer {TOKEN}"}, id="either"
            ),
        ],
    )
    async def test_accepted_in_either_form(
        self, make_client: ClientFactory, params: dict[str, str], headers: dict[str, str]
    ) -> None:
        """The token is accepted as ?token= and as a Bearer credential."""
        client, sink = await make_client(token=TOKEN)
        response = await client.post("/webhooks/servio", data=BODY, params=params, headers=headers)
        assert response.status == 200, await response.text()
        assert [m.routing_key for m in sink.kept] == ["servio.clients.add"]

    async def test_no_token_setting_means_no_auth(self, make_client: ClientFactory) -> None:
        """With BRIDGE_TOKEN empty any request is let through."""
        client, _ = await make_client()
        assert (await client.post("/webhooks/servio", data=BODY)).status == 200

    async def test_unknown_webhook_paths_are_guarded_too(self, make_client: ClientFactory) -> None:
        """A scanner without the token learns nothing about which webhook paths exist."""
        client, _ = await make_client(token=TOKEN)
        assert (await client.post("/webhooks/servio/bad!label", data=BODY)).status == 401
        assert (await client.get("/webhooks/servio")).status == 401

    async def test_health_and_openapi_need_no_token(self, make_client: ClientFactory) -> None:
        """Probes and the API document are not webhooks."""
        client, _ = await make_client(token=TOKEN)
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/openapi.json")).status == 200

    async def test_refused_before_the_body_is_read(self, make_client: ClientFactory) -> None:
        """The 401 comes while the client is still owing most of its body."""
        client, sink = await make_client(token=TOKEN)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            b"POST /webhooks/servio HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + BODY[:20]
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=2)
        writer.close()
        assert status_line.split()[1] == b"401"
        assert sink.kept == []


class TestAllowList:
    @pytest.mark.parametrize(
        ("allow_from", "status"),
        [
            pytest.param(("10.0.0.0/8",), 403, id="outside"),
            pytest.param(("::1/128",), 403, id="ipv6-only"),
            pytest.param(("10.0.0.0/8", "127.0.0.0/8"), 200, id="inside-second"),
            pytest.param(("127.0.0.1/32",), 200, id="exact-host"),
        ],
    )
    async def test_direct_peer_checked_against_cidrs(
        self, make_client: ClientFactory, allow_from: tuple[str, ...], status: int
    ) -> None:
        """The peer's address must be in BRIDGE_ALLOW_FROM (IPv4 or IPv6 CIDRs), else 403."""
        client, sink = await make_client(allow_from=nets(*allow_from))
        response = await client.post("/webhooks/servio", data=BODY)
        assert response.status == status
        assert len(sink.kept) == (1 if status == 200 else 0)

    async def test_address_refused_before_token_is_looked_at(self, make_client: ClientFactory) -> None:
        """Outsiders get 403 even with the right token, so they cannot probe for it."""
        client, _ = await make_client(token=TOKEN, allow_from=nets("10.0.0.0/8"))
        response = await client.post("/webhooks/servio", data=BODY, params={"token": TOKEN})
        assert response.status == 403
        assert (await response.json())["error"] == "address_not_allowed"

    @pytest.mark.parametrize(
        ("trusted", "forwarded_for", "status"),
        [
            pytest.param(("127.0.0.0/8",), "203.0.113.7", 200, id="trusted-proxy-allowed-client"),
            pytest.param(("127.0.0.0/8",), "198.51.100.1", 403, id="trusted-proxy-outside-client"),
            pytest.param((), "203.0.113.7", 403, id="no-trusted-proxies"),
            pytest.param(("10.0.0.0/8",), "203.0.113.7", 403, id="peer-not-a-trusted-proxy"),
            pytest.param(("127.0.0.0/8",), "203.0.113.7, 198.51.100.9", 403, id="spoofed-left-entry"),
            pytest.param(("127.0.0.0/8",), "198.51.100.9, 203.0.113.7", 200, id="right-most-counts"),
            pytest.param(("127.0.0.0/8", "10.0.0.0/8"), "203.0.113.7, 10.1.2.3", 200, id="proxy-chain"),
            pytest.param(("127.0.0.0/8",), "203.0.113.7, not-an-ip", 403, id="garbage-hop"),
            pytest.param(("127.0.0.0/8",), "[2001:db8::7]:4711", 200, id="ipv6-with-port"),
        ],
    )
    async def test_forwarded_for_believed_only_from_trusted_proxies(
        self, make_client: ClientFactory, trusted: tuple[str, ...], forwarded_for: str, status: int
    ) -> None:
        """X-Forwarded-For names the client only when the direct peer is in BRIDGE_TRUSTED_PROXIES."""
        client, _ = await make_client(
            allow_from=nets("203.0.113.0/24", "2001:db8::/32"), trusted_proxies=nets(*trusted)
        )
        response = await client.post(
            "/webhooks/servio", data=BODY, headers={"X-Forwarded-For": forwarded_for}
        )
        assert response.status == status
