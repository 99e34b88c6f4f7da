"""Settings built from BRIDGE_ variables: defaults, parsing, refusals that name the variable, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.settings import Settings, redact_url

PASSWORD = "s3cr3t-Pw"  # noqa: S105 - a made-up password the tests look for in output


class TestDefaults:
    """With nothing set, every setting has the default of PRODUCT.md."""

    def test_empty_mapping(self) -> None:
        """An empty environment gives the documented defaults."""
        settings = Settings.from_env({})
        assert settings.host == "0.0.0.0"
        assert settings.port == 8080
        assert settings.amqp_urls == ("amqp://guest:guest@localhost:5672/",)
        assert settings.exchange == "servio"
        assert settings.routing_key == "servio.{entity}.{action}"
        assert settings.spool_dir == Path("./spool")
        assert settings.spool_max_bytes == 1073741824
        assert settings.max_body == 1048576
        assert settings.shutdown_timeout == 10
        assert settings.declare_queues is True
        assert settings.log_format == "json"

    def test_same_as_constructor_defaults(self) -> None:
        """from_env({}) and Settings() agree."""
        assert Settings.from_env({}) == Settings()

    @pytest.mark.parametrize("blank", [pytest.param("", id="empty"), pytest.param("   ", id="spaces")])
    def test_blank_value_means_default(self, blank: str) -> None:
        """A variable set to nothing is as if unset."""
        env = {"BRIDGE_PORT": blank, "BRIDGE_EXCHANGE": blank, "BRIDGE_DECLARE_QUEUES": blank}
        assert Settings.from_env(env) == Settings()

    def test_unrelated_variables_ignored(self) -> None:
        """Variables that are not BRIDGE_ settings change nothing."""
        assert Settings.from_env({"PORT": "1", "AMQP_URL": "x", "BRIDGE_PORTS": "y"}) == Settings()


class TestParsing:
    """Each variable is read into its setting."""

    @pytest.mark.parametrize(
        ("variable", "raw", "attribute", "expected"),
        [
            pytest.param("BRIDGE_HOST", "127.0.0.1", "host", "127.0.0.1", id="host"),
            pytest.param("BRIDGE_PORT", "9090", "port", 9090, id="port"),
            pytest.param("BRIDGE_PORT", " 9090 ", "port", 9090, id="port-with-spaces"),
            pytest.param("BRIDGE_PORT", "65535", "port", 65535, id="port-highest"),
            pytest.param(
                "BRIDGE_AMQP_URL",
                "amqps://bridge:pw@rabbit.example:5671/hotel",
                "amqp_urls",
                ("amqps://bridge:pw@rabbit.example:5671/hotel",),
                id="amqps-url",
            ),
            pytest.param(
                "BRIDGE_AMQP_URL",
                "amqp://u:p@node1:5672/, amqp://u:p@node2:5672/,amqp://u:p@node3/",
                "amqp_urls",
                ("amqp://u:p@node1:5672/", "amqp://u:p@node2:5672/", "amqp://u:p@node3/"),
                id="comma-separated-urls",
            ),
            pytest.param("BRIDGE_EXCHANGE", "hotel-events.v1", "exchange", "hotel-events.v1", id="exchange"),
            pytest.param(
                "BRIDGE_ROUTING_KEY",
                "Servio.{source}.{entity}.{action}",
                "routing_key",
                "Servio.{source}.{entity}.{action}",
                id="routing-key",
            ),
            pytest.param(
                "BRIDGE_SPOOL_DIR",
                "/var/lib/servio-bridge",
                "spool_dir",
                Path("/var/lib/servio-bridge"),
                id="spool",
            ),
            pytest.param("BRIDGE_SPOOL_MAX_BYTES", "1024", "spool_max_bytes", 1024, id="spool-max-bytes"),
            pytest.param("BRIDGE_MAX_BODY", "2048", "max_body", 2048, id="max-body"),
            pytest.param("BRIDGE_SHUTDOWN_TIMEOUT", "2.5", "shutdown_timeout", 2.5, id="shutdown-timeout"),
            pytest.param("BRIDGE_SHUTDOWN_TIMEOUT", "0", "shutdown_timeout", 0.0, id="shutdown-timeout-zero"),
            pytest.param("BRIDGE_PUBLISH_TIMEOUT", "3", "publish_timeout", 3.0, id="publish-timeout"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "false", "declare_queues", False, id="declare-false"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "FALSE", "declare_queues", False, id="declare-FALSE"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "0", "declare_queues", False, id="declare-0"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "no", "declare_queues", False, id="declare-no"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "off", "declare_queues", False, id="declare-off"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "true", "declare_queues", True, id="declare-true"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "1", "declare_queues", True, id="declare-1"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "Yes", "declare_queues", True, id="declare-yes"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "on", "declare_queues", True, id="declare-on"),
            pytest.param("BRIDGE_LOG_FORMAT", "console", "log_format", "console", id="log-console"),
            pytest.param("BRIDGE_LOG_FORMAT", "JSON", "log_format", "json", id="log-JSON"),
        ],
    )
    def test_variable(self, variable: str, raw: str, attribute: str, expected: object) -> None:
        """The variable's value lands, parsed, in its setting; the others keep their defaults."""
        settings = Settings.from_env({variable: raw})
        assert getattr(settings, attribute) == expected
        others = {k: v for k, v in settings.public().items() if k != attribute}
        defaults = {k: v for k, v in Settings().public().items() if k != attribute}
        assert others == defaults

    @pytest.mark.parametrize("raw", [pytest.param("", id="empty"), pytest.param("  ", id="spaces")])
    def test_empty_spool_dir_means_no_spool(self, raw: str) -> None:
        """BRIDGE_SPOOL_DIR set but empty means no spool at all."""
        assert Settings.from_env({"BRIDGE_SPOOL_DIR": raw}).spool_dir is None

    def test_settings_are_frozen(self) -> None:
        """Settings cannot be changed once built."""
        settings = Settings.from_env({})
        with pytest.raises(AttributeError):
            settings.port = 1  # type: ignore[misc]


class TestBadValues:
    """A bad value stops start-up with a ConfigError naming the variable."""

    @pytest.mark.parametrize(
        ("variable", "raw"),
        [
            pytest.param("BRIDGE_PORT", "abc", id="port-abc"),
            pytest.param("BRIDGE_PORT", "70000", id="port-70000"),
            pytest.param("BRIDGE_PORT", "65536", id="port-65536"),
            pytest.param("BRIDGE_PORT", "-1", id="port-negative"),
            pytest.param("BRIDGE_PORT", "80.5", id="port-fraction"),
            pytest.param("BRIDGE_MAX_BODY", "0", id="max-body-0"),
            pytest.param("BRIDGE_MAX_BODY", "-1", id="max-body-negative"),
            pytest.param("BRIDGE_MAX_BODY", "x", id="max-body-x"),
            pytest.param("BRIDGE_MAX_BODY", "1.5", id="max-body-fraction"),
            pytest.param("BRIDGE_SPOOL_MAX_BYTES", "0", id="spool-max-0"),
            pytest.param("BRIDGE_SPOOL_MAX_BYTES", "1GB", id="spool-max-units"),
            pytest.param("BRIDGE_DECLARE_QUEUES", "maybe", id="declare-maybe"),
            pytest.param("BRIDGE_LOG_FORMAT", "xml", id="log-xml"),
            pytest.param("BRIDGE_EXCHANGE", "amq.x", id="exchange-amq-reserved"),
            pytest.param("BRIDGE_EXCHANGE", "a b", id="exchange-space"),
            pytest.param("BRIDGE_EXCHANGE", "servio/events", id="exchange-slash"),
            pytest.param("BRIDGE_EXCHANGE", "x" * 201, id="exchange-too-long"),
            pytest.param("BRIDGE_AMQP_URL", "http://x", id="url-http"),
            pytest.param("BRIDGE_AMQP_URL", "amqp://", id="url-no-host"),
            pytest.param("BRIDGE_AMQP_URL", ",", id="url-only-comma"),
            pytest.param("BRIDGE_AMQP_URL", "localhost:5672", id="url-no-scheme"),
            pytest.param("BRIDGE_AMQP_URL", "amqp://rabbit:99999/", id="url-bad-port"),
            pytest.param("BRIDGE_AMQP_URL", "amqp://a/,http://b/", id="url-second-bad"),
            pytest.param("BRIDGE_ROUTING_KEY", "{nope}", id="template-unknown"),
            pytest.param("BRIDGE_ROUTING_KEY", "servio.{entity", id="template-broken"),
            pytest.param("BRIDGE_ROUTING_KEY", "servio.{}", id="template-positional"),
            pytest.param("BRIDGE_SHUTDOWN_TIMEOUT", "-1", id="shutdown-negative"),
            pytest.param("BRIDGE_SHUTDOWN_TIMEOUT", "nan", id="shutdown-nan"),
            pytest.param("BRIDGE_SHUTDOWN_TIMEOUT", "inf", id="shutdown-inf"),
            pytest.param("BRIDGE_SHUTDOWN_TIMEOUT", "soon", id="shutdown-word"),
            pytest.param("BRIDGE_PUBLISH_TIMEOUT", "-0.1", id="publish-negative"),
        ],
    )
    def test_refused(self, variable: str, raw: str) -> None:
        """The error names the variable, on one line, and means exit code 2."""
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({variable: raw})
        assert caught.value.variable == variable
        assert str(caught.value).startswith(f"{variable}: ")
        assert caught.value.problem
        assert "\n" not in str(caught.value)
        assert caught.value.exit_code == 2

    def test_first_bad_variable_named_among_good_ones(self) -> None:
        """With good values around it, the one bad variable is the one named."""
        env = {"BRIDGE_PORT": "8081", "BRIDGE_LOG_FORMAT": "yaml", "BRIDGE_EXCHANGE": "hotel"}
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env)
        assert caught.value.variable == "BRIDGE_LOG_FORMAT"


class TestSecrets:
    """The AMQP password never shows in the settings' repr, public view, or errors."""

    URLS = f"amqp://bridge:{PASSWORD}@node1:5672/hotel, amqps://bridge:{PASSWORD}2@node2:5671/hotel"

    def test_repr_and_str(self) -> None:
        """repr() and str() show user and hosts, never the password."""
        settings = Settings.from_env({"BRIDGE_AMQP_URL": self.URLS})
        for shown in (repr(settings), str(settings)):
            assert PASSWORD not in shown
            assert "bridge" in shown
            assert "node1" in shown
            assert "node2" in shown

    def test_public(self) -> None:
        """public() redacts every URL's password and keeps the rest of it."""
        public = Settings.from_env({"BRIDGE_AMQP_URL": self.URLS}).public()
        assert PASSWORD not in str(public)
        assert public["amqp_urls"] == [
            "amqp://bridge:***@node1:5672/hotel",
            "amqps://bridge:***@node2:5671/hotel",
        ]

    def test_connection_still_gets_the_password(self) -> None:
        """Redaction is for display only: the URLs used to connect keep the password."""
        settings = Settings.from_env({"BRIDGE_AMQP_URL": self.URLS})
        assert settings.amqp_urls[0] == f"amqp://bridge:{PASSWORD}@node1:5672/hotel"

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param(f"http://bridge:{PASSWORD}@rabbit/", id="wrong-scheme"),
            pytest.param(f"amqp://bridge:{PASSWORD}@:5672/", id="no-host"),
            pytest.param(f"amqp://bridge:{PASSWORD}@rabbit:port/", id="bad-port"),
            pytest.param(f"bridge:{PASSWORD}@rabbit:5672", id="no-scheme"),
            pytest.param(f"amqp://bridge:{PASSWORD}/x@rabbit/", id="unescaped-slash-in-password"),
            pytest.param(f"amqp://bridge:{PASSWORD}#x@rabbit/", id="unescaped-hash-in-password"),
            pytest.param(f"amqp://bridge:{PASSWORD}?x@rabbit/", id="unescaped-question-mark-in-password"),
            pytest.param(f"amqp://ok@node1/, ftp://bridge:{PASSWORD}@node2/", id="second-of-two"),
        ],
    )
    def test_bad_url_error_hides_password(self, url: str) -> None:
        """The ConfigError for a bad URL with a password does not show the password."""
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"BRIDGE_AMQP_URL": url})
        assert caught.value.variable == "BRIDGE_AMQP_URL"
        assert PASSWORD not in str(caught.value)
        assert PASSWORD not in caught.value.problem

    def test_misread_url_still_redacted(self) -> None:
        """A password with an unescaped "/" that happens to parse is still hidden in public()."""
        settings = Settings.from_env({"BRIDGE_AMQP_URL": "amqp://bridge:1234/secret@rabbit/"})
        assert "1234/secret" not in repr(settings)
        assert "secret" not in str(settings.public())

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            pytest.param(
                "amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/", id="default"
            ),
            pytest.param("amqp://guest@localhost/", "amqp://guest@localhost/", id="user-only"),
            pytest.param("amqp://localhost/", "amqp://localhost/", id="no-user"),
            pytest.param(
                "amqps://u:p@h:5671/v?heartbeat=5", "amqps://u:***@h:5671/v?heartbeat=5", id="query"
            ),
            pytest.param("amqp://u:p%40ss@h/", "amqp://u:***@h/", id="percent-escaped"),
        ],
    )
    def test_redact_url(self, url: str, expected: str) -> None:
        """redact_url replaces just the password with ***."""
        assert redact_url(url) == expected
