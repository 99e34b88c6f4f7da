"""docs/asyncapi.yaml and the JSON schemas it references, loaded for validation.

References resolve as a reader of the files would: relative to docs/, with no network.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DOCS = Path(__file__).resolve().parents[1] / "docs"
ASYNCAPI = DOCS / "asyncapi.yaml"
SCHEMA_FILES = ("message.schema.json", "dead-letter.schema.json")


@cache
def _parsed_asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text())
    return doc


def load_asyncapi() -> dict[str, Any]:
    """A fresh copy each call: tests may change it."""
    return copy.deepcopy(_parsed_asyncapi())


@cache
def registry() -> Registry[Any]:
    resources = [(ASYNCAPI.as_uri(), Resource.from_contents(load_asyncapi(), default_specification=DRAFT7))]
    for name in SCHEMA_FILES:
        path = DOCS / name
        resources.append((path.as_uri(), Resource.from_contents(json.loads(path.read_text()))))
    registry: Registry[Any] = Registry().with_resources(resources)
    return registry


def validator_for(pointer: str) -> jsonschema.Draft7Validator:
    """A validator for the schema at ``pointer`` in the AsyncAPI document, e.g.
    ``/components/messages/guestsDelete/payload``."""
    return jsonschema.Draft7Validator(
        {"$ref": f"{ASYNCAPI.as_uri()}#{pointer}"},
        registry=registry(),
        format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER,
    )


def errors(pointer: str, instance: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator_for(pointer).iter_errors(instance)]


def message_for_address(address: str) -> str:
    """The name of the component message the AsyncAPI channel with this address carries."""
    doc = load_asyncapi()
    for channel in doc["channels"].values():
        if channel["address"] == address:
            (ref,) = [m["$ref"] for m in channel["messages"].values()]
            return str(ref.rsplit("/", 1)[1])
    raise KeyError(address)
