"""docker-compose.yml: valid against the compose spec, and wired the way the README promises."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SPOOL = "/var/lib/servio-bridge/spool"


def compose_spec_errors(path: Path) -> list[str]:
    """Errors against the compose-spec schema that check-jsonschema ships (no network at test time).

    The same schema as ``check-jsonschema --builtin-schema vendor.compose-spec``, used in-process.
    """
    vendor = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(vendor.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    doc = yaml.safe_load(path.read_text())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


class TestComposeSpec:
    def test_the_file_is_valid_against_the_compose_spec(self) -> None:
        """The compose file passes the compose-spec JSON schema."""
        assert compose_spec_errors(COMPOSE) == []

    def test_the_validator_rejects_a_broken_file(self, tmp_path: Path) -> None:
        """The same check fails on a misspelt key, so a pass means something."""
        broken = tmp_path / "docker-compose.yml"
        broken.write_text(COMPOSE.read_text().replace("depends_on:", "depends_onn:", 1))
        assert compose_spec_errors(broken) != []


class TestComposeWiring:
    def test_rabbitmq_is_the_management_image_with_a_healthcheck(self, compose: dict[str, Any]) -> None:
        """RabbitMQ runs the management image and says when it is healthy."""
        rabbit = compose["services"]["rabbitmq"]
        assert "management" in rabbit["image"]
        assert rabbit["healthcheck"]["test"][0] == "CMD"

    def test_rabbitmq_loads_our_definitions(self, compose: dict[str, Any]) -> None:
        """The mounted rabbitmq.conf loads the mounted definitions.json, and both files exist."""
        mounts = dict(
            (v.split(":")[1], ROOT / v.split(":")[0])
            for v in compose["services"]["rabbitmq"]["volumes"]
            if v.startswith("./")
        )
        for source in mounts.values():
            assert source.is_file(), source
        conf_target = next(t for t, s in mounts.items() if s.name == "rabbitmq.conf")
        assert conf_target.startswith("/etc/rabbitmq/conf.d/")
        conf = (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text()
        loaded = [
            line.split("=", 1)[1].strip() for line in conf.splitlines() if line.startswith("load_definitions")
        ]
        assert loaded, "rabbitmq.conf does not load definitions"
        assert mounts[loaded[0]].name == "definitions.json"

    def test_the_bridge_waits_for_a_healthy_rabbitmq(self, compose: dict[str, Any]) -> None:
        """The bridge starts only once RabbitMQ's healthcheck passes."""
        assert compose["services"]["bridge"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"

    def test_the_spool_is_a_named_volume_where_the_bridge_writes_it(self, compose: dict[str, Any]) -> None:
        """BRIDGE_SPOOL_DIR is on a named volume, so it outlives the container."""
        bridge = compose["services"]["bridge"]
        assert bridge["environment"]["BRIDGE_SPOOL_DIR"] == SPOOL
        named = {v.split(":")[0]: v.split(":")[1] for v in bridge["volumes"] if not v.startswith(("./", "/"))}
        assert SPOOL in named.values()
        assert set(named) <= set(compose["volumes"])

    def test_both_services_restart_and_publish_ports(self, compose: dict[str, Any]) -> None:
        """Both services come back after a crash or reboot, and are reachable from the host."""
        for name in ("rabbitmq", "bridge"):
            service = compose["services"][name]
            assert service["restart"] in ("always", "unless-stopped", "on-failure")
            assert service["ports"]
        assert any(str(p).endswith(":8080") for p in compose["services"]["bridge"]["ports"])

    def test_the_bridge_uses_the_user_the_definitions_create(self, compose: dict[str, Any]) -> None:
        """The default AMQP URL names the user that definitions.json brings (no guest there)."""
        url = compose["services"]["bridge"]["environment"]["BRIDGE_AMQP_URL"]
        definitions = yaml.safe_load((ROOT / "deploy/rabbitmq/definitions.json").read_text())
        users = {u["name"] for u in definitions["users"]}
        assert any(f"//{user}:" in url for user in users), url
        assert "@rabbitmq:5672" in url
