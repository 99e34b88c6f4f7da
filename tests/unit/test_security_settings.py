"""The security settings: parsed strictly, named when wrong, the token never shown."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.settings import Settings

TOKEN = "tok-0123456789abcdef"  # noqa: S105 - a made-up token of this test


class TestToken:
    def test_redacted_in_repr_and_public(self) -> None:
        """The token is *** wherever settings are shown, and so is the broker password."""
        settings = Settings.from_env({"BRIDGE_TOKEN": TOKEN, "BRIDGE_AMQP_URL": "amqp://u:pw-secret@h:5672/"})
        assert settings.token == TOKEN
        shown = repr(settings) + str(settings.public())
        assert TOKEN not in shown
        assert "pw-secret" not in shown
        assert settings.public()["token"] == "***"  # noqa: S105 - the redaction marker, not a password

    @pytest.mark.parametrize(
        "raw", ["short", "has a space inside it!!", "tab\there-0123456789"], ids=["short", "space", "tab"]
    )
    def test_bad_token_named_but_not_echoed(self, raw: str) -> None:
        """A token that is too short or not URL-safe stops start-up without printing it."""
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"BRIDGE_TOKEN": raw})
        assert caught.value.variable == "BRIDGE_TOKEN"
        assert raw not in str(caught.value)


class TestNetworks:
    def test_ipv4_and_ipv6_cidrs(self) -> None:
        """BRIDGE_ALLOW_FROM and BRIDGE_TRUSTED_PROXIES take comma-separated IPv4/IPv6 CIDRs."""
        settings = Settings.from_env(
            {"BRIDGE_ALLOW_FROM": "10.0.0.0/8, 2001:db8::/32,192.0.2.7", "BRIDGE_TRUSTED_PROXIES": "::1"}
        )
        assert settings.allow_from == (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("2001:db8::/32"),
            ipaddress.ip_network("192.0.2.7/32"),
        )
        assert settings.trusted_proxies == (ipaddress.ip_network("::1/128"),)

    @pytest.mark.parametrize("variable", ["BRIDGE_ALLOW_FROM", "BRIDGE_TRUSTED_PROXIES"])
    @pytest.mark.parametrize(
        "raw", ["10.0.0.1/8", "example.com", "10.0.0.0/33"], ids=["host-bits", "name", "prefix"]
    )
    def test_bad_cidr_named(self, variable: str, raw: str) -> None:
        """A CIDR with host bits set, a host name or a bad prefix stops start-up naming the variable."""
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({variable: raw})
        assert caught.value.variable == variable


class TestLimits:
    def test_defaults_and_overrides(self) -> None:
        """BRIDGE_MAX_IDS defaults to 100,000; the new limits are read from their variables."""
        assert Settings.from_env({}).max_ids == 100_000
        settings = Settings.from_env(
            {
                "BRIDGE_MAX_IDS": "7",
                "BRIDGE_READ_TIMEOUT": "2.5",
                "BRIDGE_MAX_HEADER_SIZE": "4096",
                "BRIDGE_MAX_CONCURRENT": "3",
            }
        )
        assert (
            settings.max_ids,
            settings.read_timeout,
            settings.max_header_size,
            settings.max_concurrent,
        ) == (
            7,
            2.5,
            4096,
            3,
        )

    @pytest.mark.parametrize(
        ("variable", "raw"),
        [("BRIDGE_MAX_IDS", "0"), ("BRIDGE_READ_TIMEOUT", "0"), ("BRIDGE_MAX_HEADER_SIZE", "100")],
    )
    def test_bad_limit_named(self, variable: str, raw: str) -> None:
        """A limit of zero (or a header size too small for a request line) is refused."""
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({variable: raw})
        assert caught.value.variable == variable


class TestTlsFiles:
    @pytest.mark.parametrize(
        ("given", "named"),
        [("BRIDGE_TLS_CERT", "BRIDGE_TLS_KEY"), ("BRIDGE_TLS_KEY", "BRIDGE_TLS_CERT")],
    )
    def test_both_or_neither(self, tmp_path: Path, given: str, named: str) -> None:
        """One TLS file without the other names the missing variable."""
        path = tmp_path / "x.pem"
        path.write_text("x")
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({given: str(path)})
        assert caught.value.variable == named

    def test_missing_file_named(self, tmp_path: Path) -> None:
        """A TLS path that is not a file names its variable."""
        key = tmp_path / "k.pem"
        key.write_text("x")
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"BRIDGE_TLS_CERT": str(tmp_path / "nope.pem"), "BRIDGE_TLS_KEY": str(key)})
        assert caught.value.variable == "BRIDGE_TLS_CERT"
