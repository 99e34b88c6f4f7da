"""docs/asyncapi.yaml: a valid AsyncAPI 3 document that describes what the bridge publishes.

The AsyncAPI 3.0.0 JSON schema in tests/data comes from asyncapi/spec-json-schemas
(schemas/3.0.0-without-$id.json, Apache-2.0), kept here so the check runs offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bridge.core.outbound import APP_ID, PERSISTENT, invalid_queue
from bridge.core.topology import build_topology, known_binding_keys
from tests.message_documents import DOCS, SCHEMA_FILES, errors, load_asyncapi, message_for_address

SPEC_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "asyncapi-3.0.0.schema.json"


def spec_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SPEC_SCHEMA.read_text()))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


class TestAsyncApiDocument:
    def test_it_is_valid_asyncapi_3(self) -> None:
        """The document passes the official AsyncAPI 3.0.0 JSON schema."""
        doc = load_asyncapi()
        assert doc["asyncapi"] == "3.0.0"
        assert spec_errors(doc) == []

    def test_the_spec_schema_refuses_a_broken_document(self) -> None:
        """An operation with an action AsyncAPI 3 does not know fails, so a pass means something."""
        doc = load_asyncapi()
        next(iter(doc["operations"].values()))["action"] = "publish"
        assert spec_errors(doc) != []

    @pytest.mark.parametrize("name", SCHEMA_FILES)
    def test_the_body_schemas_are_valid_json_schemas(self, name: str) -> None:
        """Each referenced schema file is itself a valid draft-07 schema."""
        jsonschema.Draft7Validator.check_schema(json.loads((DOCS / name).read_text()))


class TestChannelsMatchTheBridge:
    def test_one_channel_per_known_routing_key(self) -> None:
        """The ten routing keys the bridge declares queues for each have their channel."""
        addresses = {c["address"] for c in load_asyncapi()["channels"].values()}
        assert set(known_binding_keys("servio.{entity}.{action}")) <= addresses

    def test_dead_letters_are_on_the_invalid_queue(self) -> None:
        """The dead-letter channel is the queue the bridge sends rejected parts to."""
        addresses = {c["address"] for c in load_asyncapi()["channels"].values()}
        assert invalid_queue("servio") in addresses

    def test_the_exchange_binding_is_the_bridge_exchange(self) -> None:
        """Event channels name the bridge's topic exchange, durable, as declared."""
        topic = {
            e.name: e.type
            for e in build_topology("servio", "servio.{entity}.{action}", declare_queues=False).exchanges
        }
        for channel in load_asyncapi()["channels"].values():
            binding = channel["bindings"]["amqp"]
            if binding["is"] == "routingKey":
                assert topic[binding["exchange"]["name"]] == binding["exchange"]["type"]
                assert binding["exchange"]["durable"] is True

    @pytest.mark.parametrize("key", known_binding_keys("servio.{entity}.{action}"))
    def test_each_key_accepts_only_its_own_entity_and_action(self, key: str) -> None:
        """A body for another key fails that key's payload schema."""
        _, entity, action = key.split(".")
        body = {
            "entity": entity,
            "action": action,
            "id": 1,
            "source": "Jam_1",
            "delivery_id": "d" * 32,
            "received_at": "2026-11-28T10:15:02.123456+00:00",
        }
        pointer = f"/components/messages/{message_for_address(key)}/payload"
        assert errors(pointer, body) == []
        assert errors(pointer, {**body, "action": "nope"}) != []

    def test_examples_validate_against_their_payloads(self) -> None:
        """Every example in the document is a valid payload of its message."""
        messages = load_asyncapi()["components"]["messages"]
        checked = 0
        for name, message in messages.items():
            for example in message.get("examples", []):
                assert errors(f"/components/messages/{name}/payload", example["payload"]) == [], name
                checked += 1
        assert checked >= 10

    def test_properties_say_what_the_bridge_sets(self) -> None:
        """app_id and delivery_mode in the document are the bridge's constants."""
        props = load_asyncapi()["components"]["messageTraits"]["bridgeProperties"]["x-amqp-properties"]
        assert props["properties"]["app_id"]["const"] == APP_ID
        assert props["properties"]["delivery_mode"]["const"] == PERSISTENT
