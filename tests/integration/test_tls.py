"""TLS without a proxy: BRIDGE_TLS_CERT and BRIDGE_TLS_KEY make the listener HTTPS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.errors import ConfigError
from bridge.settings import Settings
from tests.conftest import bind_all
from tests.integration.serving import serving

BODY = b'{"Add":null,"Update":{"Rooms":[160]},"Delete":null}'


def self_signed(directory: Path, name: str = "bridge") -> tuple[Path, Path]:
    """A fresh EC key and a self-signed certificate for 127.0.0.1, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class TestTls:
    async def test_webhook_over_https_with_self_signed_certificate(
        self, tmp_path: Path, exchange_name: str, amqp_channel: AbstractChannel
    ) -> None:
        """With both TLS settings the listener speaks HTTPS, and the webhook is published."""
        everything = await bind_all(amqp_channel, exchange_name)
        cert, key = self_signed(tmp_path)
        settings = Settings.from_env(
            {
                "BRIDGE_HOST": "127.0.0.1",
                "BRIDGE_PORT": "0",
                "BRIDGE_EXCHANGE": exchange_name,
                "BRIDGE_SPOOL_DIR": "",
                "BRIDGE_DECLARE_QUEUES": "false",
                "BRIDGE_TLS_CERT": str(cert),
                "BRIDGE_TLS_KEY": str(key),
            }
        )
        trust = ssl.create_default_context(cafile=str(cert))
        async with serving(settings) as (host, port), aiohttp.ClientSession() as session:
            url = f"https://{host}:{port}/webhooks/servio"
            async with session.post(url, data=BODY, ssl=trust) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"http://{host}:{port}/webhooks/servio", data=BODY) as plain:
                    await plain.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.post(url, data=BODY, ssl=ssl.create_default_context()) as untrusted:
                    await untrusted.read()
        messages = await everything.wait_for(1)
        assert [m.routing_key for m in messages] == ["servio.rooms.update"]

    def test_mismatched_pair_stops_start_up(self, tmp_path: Path) -> None:
        """A certificate with another certificate's key is a bad setting, named, not a runtime error."""
        cert, _ = self_signed(tmp_path, "one")
        _, other_key = self_signed(tmp_path, "two")
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"BRIDGE_TLS_CERT": str(cert), "BRIDGE_TLS_KEY": str(other_key)})
        assert caught.value.variable == "BRIDGE_TLS_CERT"
