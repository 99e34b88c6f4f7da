"""deploy/rabbitmq/definitions.json declares exactly the topology the bridge declares, plus the
consumer-side dead-letter path, which only adds objects and a policy (never queue arguments)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bridge.core.topology import KNOWN_KEYS, Topology, build_topology

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
# Consumer-side objects the bridge does not declare itself.
CONSUMER_EXCHANGES = {"servio.dlx"}
CONSUMER_QUEUES = {"servio.dead"}


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DEFINITIONS.read_text())
    return doc


def expected_exchanges(topology: Topology) -> dict[str, dict[str, Any]]:
    """The exchanges as definitions.json spells them (publisher.py: durable, not auto-delete)."""
    return {
        ex.name: {
            "type": ex.type,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": dict(ex.arguments),
        }
        for ex in topology.exchanges
    }


def expected_queues(topology: Topology) -> dict[str, dict[str, Any]]:
    return {
        q.name: {"durable": True, "auto_delete": False, "arguments": dict(q.arguments)}
        for q in topology.queues
    }


def expected_bindings(topology: Topology) -> set[tuple[str, str, str, str]]:
    return {(exchange, q.name, "queue", key) for q in topology.queues for exchange, key in q.bindings}


@pytest.fixture(scope="module")
def topology() -> Topology:
    return build_topology("servio", "servio.{entity}.{action}", declare_queues=True)


class TestSameTopologyAsTheBridge:
    def test_exchanges_match(self, topology: Topology) -> None:
        """Same exchange names, types, flags and arguments (alternate-exchange included)."""
        found = {
            e["name"]: {k: e[k] for k in ("type", "durable", "auto_delete", "internal", "arguments")}
            for e in load()["exchanges"]
            if e["name"] not in CONSUMER_EXCHANGES
        }
        assert found == expected_exchanges(topology)

    def test_queues_match(self, topology: Topology) -> None:
        """Same queue names, flags and arguments: quorum, and nothing more."""
        found = {
            q["name"]: {k: q[k] for k in ("durable", "auto_delete", "arguments")}
            for q in load()["queues"]
            if q["name"] not in CONSUMER_QUEUES
        }
        assert found == expected_queues(topology)

    def test_bindings_match(self, topology: Topology) -> None:
        """Each known queue bound to its routing key, the unrouted queue to its fanout."""
        found = {
            (b["source"], b["destination"], b["destination_type"], b["routing_key"])
            for b in load()["bindings"]
            if b["destination"] not in CONSUMER_QUEUES
        }
        assert found == expected_bindings(topology)
        assert all(b["arguments"] == {} for b in load()["bindings"])

    def test_every_object_is_in_one_vhost_that_is_declared(self) -> None:
        """Everything lives in the vhost the file creates, and its user may use it."""
        doc = load()
        vhosts = {v["name"] for v in doc["vhosts"]}
        for kind in ("exchanges", "queues", "bindings", "policies", "permissions"):
            assert {item["vhost"] for item in doc[kind]} <= vhosts, kind
        users = {u["name"] for u in doc["users"]}
        assert {(p["user"], p["vhost"]) for p in doc["permissions"]} >= {
            (u, v) for u in users for v in vhosts
        }


class TestConsumerDeadLetters:
    def test_the_dead_letter_path_exists(self) -> None:
        """servio.dlx is bound to the durable quorum queue servio.dead."""
        doc = load()
        exchanges = {e["name"]: e for e in doc["exchanges"]}
        queues = {q["name"]: q for q in doc["queues"]}
        assert exchanges["servio.dlx"]["durable"] is True
        assert queues["servio.dead"]["arguments"] == {"x-queue-type": "quorum"}
        assert any(b["source"] == "servio.dlx" and b["destination"] == "servio.dead" for b in doc["bindings"])

    def test_the_policy_covers_exactly_the_ten_known_queues(self) -> None:
        """The dead-letter policy's pattern matches the ten known queues and no other queue."""
        (policy,) = load()["policies"]
        pattern = re.compile(policy["pattern"])
        known = {f"servio.{entity}.{action}" for entity, action in KNOWN_KEYS}
        names = {q["name"] for q in load()["queues"]}
        assert {name for name in names if pattern.search(name)} == known
        assert policy["apply-to"] == "queues"

    def test_the_policy_dead_letters_to_servio_dlx_with_a_delivery_limit(self) -> None:
        """Requeued too often, a message goes to servio.dlx, and at least once."""
        definition = load()["policies"][0]["definition"]
        assert definition["dead-letter-exchange"] == "servio.dlx"
        assert isinstance(definition["delivery-limit"], int)
        assert definition["delivery-limit"] > 0
        # at-least-once dead-lettering works only with reject-publish overflow.
        assert definition["dead-letter-strategy"] == "at-least-once"
        assert definition["overflow"] == "reject-publish"
