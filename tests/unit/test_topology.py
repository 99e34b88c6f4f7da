"""The RabbitMQ objects the bridge declares: exchange, alternate exchange, and queues."""

from __future__ import annotations

import pytest

from bridge.core.topology import ExchangeSpec, QueueSpec, Topology, build_topology

TEMPLATE = "servio.{entity}.{action}"
QUORUM = {"x-queue-type": "quorum"}
# PRODUCT.md: clients/guests/companies x add/update/delete, and rooms.update.
KNOWN_KEYS = [
    "servio.clients.add",
    "servio.clients.update",
    "servio.clients.delete",
    "servio.guests.add",
    "servio.guests.update",
    "servio.guests.delete",
    "servio.companies.add",
    "servio.companies.update",
    "servio.companies.delete",
    "servio.rooms.update",
]


def queues_by_name(topology: Topology) -> dict[str, QueueSpec]:
    names = [queue.name for queue in topology.queues]
    assert len(names) == len(set(names)), "a queue is declared twice"
    return {queue.name: queue for queue in topology.queues}


class TestExchanges:
    """A topic exchange whose alternate exchange keeps what nobody bound for."""

    @pytest.mark.parametrize("declare_queues", [True, False], ids=["declare-queues", "no-declare-queues"])
    def test_exchange_with_alternate(self, declare_queues: bool) -> None:
        """The exchange is topic, with alternate-exchange <exchange>.unrouted, a fanout."""
        topology = build_topology("servio", TEMPLATE, declare_queues=declare_queues)
        assert sorted(topology.exchanges, key=lambda e: e.name) == [
            ExchangeSpec("servio", "topic", {"alternate-exchange": "servio.unrouted"}),
            ExchangeSpec("servio.unrouted", "fanout"),
        ]

    def test_alternate_declared_before_the_exchange_that_names_it(self) -> None:
        """The fanout comes first, so it exists when the topic exchange points at it."""
        names = [
            exchange.name for exchange in build_topology("servio", TEMPLATE, declare_queues=True).exchanges
        ]
        assert names.index("servio.unrouted") < names.index("servio")

    def test_names_follow_the_exchange(self) -> None:
        """Another exchange name gives <name>.unrouted and <name>.invalid."""
        topology = build_topology("hotel", TEMPLATE, declare_queues=False)
        assert {exchange.name for exchange in topology.exchanges} == {"hotel", "hotel.unrouted"}
        assert set(queues_by_name(topology)) == {"hotel.unrouted", "hotel.invalid"}


class TestQueues:
    """Durable quorum queues: the known keys when asked, unrouted and invalid always."""

    def test_known_queues_when_declaring(self) -> None:
        """With declare_queues, each of the ten keys is a quorum queue named as its key, bound to it."""
        queues = queues_by_name(build_topology("servio", TEMPLATE, declare_queues=True))
        assert set(queues) == {*KNOWN_KEYS, "servio.unrouted", "servio.invalid"}
        for key in KNOWN_KEYS:
            assert queues[key] == QueueSpec(key, QUORUM, (("servio", key),))

    @pytest.mark.parametrize("declare_queues", [True, False], ids=["declare-queues", "no-declare-queues"])
    def test_unrouted_and_invalid_always(self, declare_queues: bool) -> None:
        """<exchange>.unrouted (bound to the fanout) and <exchange>.invalid exist either way."""
        queues = queues_by_name(build_topology("servio", TEMPLATE, declare_queues=declare_queues))
        assert queues["servio.unrouted"].bindings == (("servio.unrouted", ""),)
        assert queues["servio.unrouted"].arguments == QUORUM
        assert queues["servio.invalid"].arguments == QUORUM
        # Dead letters reach it through the default exchange, by its name.
        assert queues["servio.invalid"].bindings == ()

    def test_only_two_queues_without_declaring(self) -> None:
        """Without declare_queues only unrouted and invalid are declared."""
        queues = queues_by_name(build_topology("servio", TEMPLATE, declare_queues=False))
        assert set(queues) == {"servio.unrouted", "servio.invalid"}

    def test_keys_follow_the_template_lower_case(self) -> None:
        """Queue names and bindings use the template's keys, lower-cased like the routing keys."""
        queues = queues_by_name(build_topology("hotel", "Hotel.{entity}.{action}", declare_queues=True))
        assert "hotel.rooms.update" in queues
        assert queues["hotel.rooms.update"].bindings == (("hotel", "hotel.rooms.update"),)
        assert not any(name.startswith("Hotel") for name in queues)

    def test_no_queue_for_undocumented_pairs(self) -> None:
        """Rooms are only ever updated: no rooms.add or rooms.delete queue."""
        queues = queues_by_name(build_topology("servio", TEMPLATE, declare_queues=True))
        assert "servio.rooms.add" not in queues
        assert "servio.rooms.delete" not in queues
