"""Settings: one frozen object built from a mapping of BRIDGE_ variables.

Only the CLI passes the real environment; everything else receives a ``Settings``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from bridge.core.message import check_template
from bridge.errors import ConfigError
from bridge.http.tls import build_server_context

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SECRETS = frozenset({"token"})
MIN_TOKEN_LENGTH = 16
_EXCHANGE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the bridge, with defaults that work against a local RabbitMQ."""

    host: str = "0.0.0.0"  # noqa: S104 - a daemon behind Servio's URL listens on all interfaces
    port: int = 8080
    amqp_urls: tuple[str, ...] = ("amqp://guest:guest@localhost:5672/",)
    exchange: str = "servio"
    routing_key: str = "servio.{entity}.{action}"
    spool_dir: Path | None = Path("./spool")
    spool_max_bytes: int = 1 << 30
    max_body: int = 1 << 20
    max_ids: int = 100_000
    token: str = ""
    allow_from: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Seconds a client has to send a request's headers (and to stay idle between requests), and
    # separately its body: a slow or silent client is cut off rather than holding a slot.
    read_timeout: float = 15.0
    max_header_size: int = 8190
    max_concurrent: int = 64
    shutdown_timeout: float = 10.0
    publish_timeout: float = 10.0
    declare_queues: bool = True
    log_format: str = "json"
    # Seconds the oldest spool entry may wait, with the broker connected and no confirm, before
    # /readyz and the metrics say drain_stalled.
    stall_after: float = 60.0
    # Open HTTP connections; past it new ones wait in the kernel's backlog.
    max_connections: int = 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from BRIDGE_ variables; unset or empty means the default.

        Raises:
            ConfigError: a value is malformed; it names the variable.
        """
        d = cls()

        def get(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(name, f"{exc} (got {_shown(name, raw)!r})") from None

        spool = env.get("BRIDGE_SPOOL_DIR")
        tls_cert, tls_key = _tls_files(env)
        return cls(
            host=get("BRIDGE_HOST", str, d.host),
            port=get("BRIDGE_PORT", _port, d.port),
            amqp_urls=get("BRIDGE_AMQP_URL", _amqp_urls, d.amqp_urls),
            exchange=get("BRIDGE_EXCHANGE", _exchange, d.exchange),
            routing_key=get("BRIDGE_ROUTING_KEY", _template, d.routing_key),
            # Set but empty means "no spool": publish before answering (PRODUCT.md's 503 case).
            spool_dir=d.spool_dir if spool is None else (Path(spool) if spool.strip() else None),
            spool_max_bytes=get("BRIDGE_SPOOL_MAX_BYTES", _positive_int, d.spool_max_bytes),
            max_body=get("BRIDGE_MAX_BODY", _positive_int, d.max_body),
            max_ids=get("BRIDGE_MAX_IDS", _positive_int, d.max_ids),
            token=get("BRIDGE_TOKEN", _token, d.token),
            allow_from=get("BRIDGE_ALLOW_FROM", _networks, d.allow_from),
            trusted_proxies=get("BRIDGE_TRUSTED_PROXIES", _networks, d.trusted_proxies),
            tls_cert=tls_cert,
            tls_key=tls_key,
            read_timeout=get("BRIDGE_READ_TIMEOUT", _positive_seconds, d.read_timeout),
            max_header_size=get("BRIDGE_MAX_HEADER_SIZE", _header_size, d.max_header_size),
            max_concurrent=get("BRIDGE_MAX_CONCURRENT", _positive_int, d.max_concurrent),
            shutdown_timeout=get("BRIDGE_SHUTDOWN_TIMEOUT", _seconds, d.shutdown_timeout),
            publish_timeout=get("BRIDGE_PUBLISH_TIMEOUT", _seconds, d.publish_timeout),
            declare_queues=get("BRIDGE_DECLARE_QUEUES", _bool, d.declare_queues),
            log_format=get("BRIDGE_LOG_FORMAT", _log_format, d.log_format),
            stall_after=get("BRIDGE_STALL_AFTER", _positive_seconds, d.stall_after),
            max_connections=get("BRIDGE_MAX_CONNECTIONS", _positive_int, d.max_connections),
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.public().items())
        return f"Settings({shown})"

    def public(self) -> dict[str, object]:
        """The settings as plain values, secrets redacted, for logs and ``check``."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "amqp_urls":
                value = list(redact_url_list(value))
            elif f.name in SECRETS:
                value = "***" if value else ""
            elif isinstance(value, Path):
                value = str(value)
            elif f.name in ("allow_from", "trusted_proxies"):
                value = [str(network) for network in value]
            out[f.name] = value
        return out


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``.

    Reads the text up to the last ``@`` rather than ``urlsplit``'s netloc: a password with an
    unescaped ``/``, ``?`` or ``#``, or a URL with no scheme, would otherwise be shown whole.
    """
    head, at, rest = url.rpartition("@")
    if not at:
        return url
    scheme, sep, userinfo = head.partition("://")
    if not sep:
        scheme, userinfo = "", head
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return url
    return f"{scheme}{sep}{user}:***@{rest}"


def redact_url_list(urls: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(redact_url(url) for url in urls)


def _shown(name: str, raw: str) -> str:
    if name == "BRIDGE_TOKEN":
        return "***"
    return ",".join(redact_url(u) for u in raw.split(",")) if name == "BRIDGE_AMQP_URL" else raw


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ValueError("must be a port number 0-65535") from None
    if not 0 <= port <= 65535:
        raise ValueError("must be a port number 0-65535")
    return port


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number of seconds >= 0")
    return value


def _positive_seconds(raw: str) -> float:
    value = _seconds(raw)
    if value == 0:
        raise ValueError("must be greater than 0 seconds")
    return value


def _header_size(raw: str) -> int:
    value = _positive_int(raw)
    # Below this a normal request line with a token no longer fits; far above it is a memory lever.
    if not 1024 <= value <= 65536:
        raise ValueError("must be between 1024 and 65536 bytes")
    return value


def _token(raw: str) -> str:
    # Visible ASCII only: it must survive a URL query and an Authorization header unchanged.
    if not all("!" <= ch <= "~" for ch in raw):
        raise ValueError("must be printable ASCII without spaces")
    # Short enough to guess is no fence; it would also make log redaction blot out common words.
    if len(raw) < MIN_TOKEN_LENGTH:
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters")
    return raw


def _networks(raw: str) -> tuple[Network, ...]:
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IPv4 or IPv6 address or CIDR ({exc})") from None
    return tuple(networks)


def _tls_files(env: Mapping[str, str]) -> tuple[Path | None, Path | None]:
    """Both TLS files or neither; each must be readable and the two must belong together.

    Raises:
        ConfigError: names the variable that is missing, unreadable or wrong.
    """
    cert_raw = env.get("BRIDGE_TLS_CERT", "").strip()
    key_raw = env.get("BRIDGE_TLS_KEY", "").strip()
    if not cert_raw and not key_raw:
        return None, None
    if not cert_raw:
        raise ConfigError("BRIDGE_TLS_CERT", "must be set when BRIDGE_TLS_KEY is (both or neither)")
    if not key_raw:
        raise ConfigError("BRIDGE_TLS_KEY", "must be set when BRIDGE_TLS_CERT is (both or neither)")
    cert, key = Path(cert_raw), Path(key_raw)
    for name, path in (("BRIDGE_TLS_CERT", cert), ("BRIDGE_TLS_KEY", key)):
        if not path.is_file():
            raise ConfigError(name, f"{str(path)!r} is not a file")
        if not os.access(path, os.R_OK):
            raise ConfigError(name, f"{str(path)!r} is not readable")
    try:
        build_server_context(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            "BRIDGE_TLS_CERT", f"{str(cert)!r} and BRIDGE_TLS_KEY are not a matching PEM pair ({exc})"
        ) from None
    except OSError as exc:
        raise ConfigError("BRIDGE_TLS_CERT", f"cannot read the TLS files ({exc})") from None
    return cert, key


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("must be true or false")


def _log_format(raw: str) -> str:
    if raw.lower() not in ("json", "console"):
        raise ValueError("must be json or console")
    return raw.lower()


def _exchange(raw: str) -> str:
    if not _EXCHANGE.fullmatch(raw):
        raise ValueError("must be 1-200 of A-Z a-z 0-9 _ . : -")
    if raw.startswith("amq."):
        raise ValueError("names starting with amq. are reserved by RabbitMQ")
    return raw


def _template(raw: str) -> str:
    check_template(raw)
    return raw


def _amqp_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    if not urls:
        raise ValueError("must name at least one amqp:// URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError(f"{redact_url(url)!r} is not an amqp:// or amqps:// URL with a host")
        try:
            parts.port  # noqa: B018 - property access validates the port
        except ValueError:
            raise ValueError(f"{redact_url(url)!r} has a bad port") from None
    return urls
