"""TLS for the listener when no reverse proxy terminates it: one server context from two PEM files."""

from __future__ import annotations

import ssl
from pathlib import Path


def build_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context for ``cert`` (chain) and its private ``key``, TLS 1.2 or newer.

    Raises:
        ssl.SSLError: the files are not a matching PEM certificate and key.
        OSError: a file cannot be read.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # An encrypted key would make OpenSSL prompt on the terminal; a daemon must fail instead.
    context.load_cert_chain(certfile=cert, keyfile=key, password=_no_passphrase)
    return context


def _no_passphrase() -> bytes:
    return b""
