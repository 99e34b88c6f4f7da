"""Who may post a webhook: the address allow-list first, then the shared token.

Both are checked at the request's edge before the handler runs, so a refused request's body is never
read, spooled or dead-lettered. Servio can only send a URL, so the token rides in ``?token=``;
``Authorization: Bearer`` is accepted too. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Iterable, Sequence

from aiohttp import hdrs, web

from bridge.errors import Forbidden, Unauthorized
from bridge.logs import bind
from bridge.settings import Network, Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Everything under this prefix is guarded, matched route or not: a scanner learns nothing.
GUARDED_PREFIX = "/webhooks"


def build_guard(settings: Settings) -> Callable[[web.Request], None]:
    """The check enforcing BRIDGE_ALLOW_FROM, BRIDGE_TRUSTED_PROXIES and BRIDGE_TOKEN.

    The returned function raises ``Forbidden`` or ``Unauthorized`` for a request under
    ``/webhooks`` that may not post; the request edge calls it before the handler runs.
    """
    token_digest = _digest(settings.token) if settings.token else None

    def guard(request: web.Request) -> None:
        if settings.allow_from:
            client = client_address(
                _peer(request), request.headers.getall(hdrs.X_FORWARDED_FOR, []), settings.trusted_proxies
            )
            if client is None or not _within(client, settings.allow_from):
                bind(client=str(client), refused="address")
                raise Forbidden("address_not_allowed", "this address may not post webhooks")
        if token_digest is not None:
            presented = presented_tokens(
                request.query.getall("token", []), request.headers.getall(hdrs.AUTHORIZATION, [])
            )
            if not presented:
                bind(refused="token_missing")
                raise Unauthorized("token_missing", "a token is required (?token= or Bearer)")
            if not token_matches(presented, token_digest):
                bind(refused="token_wrong")
                raise Unauthorized("token_wrong", "the token is wrong")

    return guard


def presented_tokens(query_tokens: Sequence[str], authorizations: Sequence[str]) -> list[str]:
    """Every token the request carries: each ``?token=`` value and each Bearer credential."""
    tokens = list(query_tokens)
    for value in authorizations:
        scheme, _, credential = value.strip().partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            tokens.append(credential.strip())
    return tokens


def token_matches(presented: Iterable[str], digest: bytes) -> bool:
    """True if any presented token is the configured one; each compared in constant time.

    Both sides are hashed first, so the comparison takes the same time whatever the lengths.
    """
    matched = False
    for token in presented:
        matched |= hmac.compare_digest(_digest(token), digest)
    return matched


def client_address(
    peer: Address | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[Network]
) -> Address | None:
    """The client's address: the direct peer, or, when the peer is a trusted proxy, the right-most
    X-Forwarded-For address that is not itself a trusted proxy. None when it cannot be told.
    """
    if peer is None or not _within(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    client: Address | None = peer
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            # A hop our own proxy chain wrote cannot be garbage; refuse rather than guess.
            return None
        client = address
        if not _within(address, trusted_proxies):
            break
    return client


def parse_address(text: str) -> Address | None:
    """An IP address as a proxy writes it: bare, ``[v6]``, ``[v6]:port`` or ``v4:port``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return _unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def _peer(request: web.Request) -> Address | None:
    peername = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not peername:
        return None
    return parse_address(str(peername[0]))


def _within(address: Address, networks: Iterable[Network]) -> bool:
    return any(address in network for network in networks)


def _unmapped(address: Address) -> Address:
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; the allow-list speaks IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
