"""The action and entity names Servio documents, listed once.

Every other list of them (the parser's section order, the declared queues, the metrics'
"unknown name" counter) is derived from ``KNOWN_KEYS``.
"""

from __future__ import annotations

# The (entity, action) pairs Servio sends: rooms are only ever updated.
KNOWN_KEYS = (
    ("clients", "add"),
    ("clients", "update"),
    ("clients", "delete"),
    ("guests", "add"),
    ("guests", "update"),
    ("guests", "delete"),
    ("companies", "add"),
    ("companies", "update"),
    ("companies", "delete"),
    ("rooms", "update"),
)
KNOWN_ACTIONS = tuple(dict.fromkeys(action for _, action in KNOWN_KEYS))
KNOWN_ENTITIES = tuple(dict.fromkeys(entity for entity, _ in KNOWN_KEYS))
