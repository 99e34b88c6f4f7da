"""Kubernetes manifests: valid against the Kubernetes schemas, and wired for the spool and probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
SPOOL = "/var/lib/servio-bridge/spool"


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def load_resources() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [r for r in load_resources() if r["kind"] == kind]


def validate(resource: dict[str, Any]) -> None:
    """Strict validation (unknown fields refused) with the schemas kubernetes-validate ships."""
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


class TestManifestsValid:
    @pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
    def test_every_resource_is_valid(self, path: Path) -> None:
        """Each resource in the file passes the Kubernetes JSON schema, strictly."""
        for resource in yaml.safe_load_all(path.read_text()):
            validate(resource)

    def test_the_validator_refuses_an_unknown_field(self) -> None:
        """A misspelt field fails, so a pass means something."""
        statefulset = by_kind("StatefulSet")[0]
        statefulset["spec"]["replica"] = statefulset["spec"].pop("replicas")
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(statefulset)

    def test_kustomization_lists_exactly_the_resources(self) -> None:
        """kubectl apply -k applies every manifest but the example Secret."""
        kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
        expected = {p.name for p in manifest_files()} - {"secret.example.yaml"}
        assert set(kustomization["resources"]) == expected


class TestStatefulSet:
    @pytest.fixture
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = by_kind("StatefulSet")[0]["spec"]["template"]["spec"]
        return spec

    def test_the_spool_is_on_a_claimed_volume(self, pod: dict[str, Any]) -> None:
        """BRIDGE_SPOOL_DIR is the mount path of a volumeClaimTemplate: one volume per replica."""
        statefulset = by_kind("StatefulSet")[0]
        claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert env["BRIDGE_SPOOL_DIR"] == SPOOL
        assert mounts[SPOOL] in claims

    def test_probes_ask_healthz_and_readyz(self, pod: dict[str, Any]) -> None:
        """Liveness on /healthz, readiness on /readyz, on the container's port."""
        container = pod["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["port"] in ports

    def test_it_runs_unprivileged(self, pod: dict[str, Any]) -> None:
        """Non-root, no privilege escalation, read-only root, no capabilities."""
        assert pod["securityContext"]["runAsNonRoot"] is True
        security = pod["containers"][0]["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]

    def test_grace_period_outlasts_the_drain(self, pod: dict[str, Any]) -> None:
        """SIGTERM gets longer than BRIDGE_SHUTDOWN_TIMEOUT before the kill."""
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert pod["terminationGracePeriodSeconds"] > float(env["BRIDGE_SHUTDOWN_TIMEOUT"])


class TestServiceAndBudget:
    def test_services_select_the_pods(self) -> None:
        """Every Service selects the StatefulSet's pods, and one of them is its governing Service."""
        statefulset = by_kind("StatefulSet")[0]
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        services = by_kind("Service")
        for service in services:
            assert service["spec"]["selector"].items() <= labels.items()
        assert statefulset["spec"]["serviceName"] in {s["metadata"]["name"] for s in services}

    def test_a_disruption_budget_keeps_one_replica(self) -> None:
        """The PodDisruptionBudget selects the pods and leaves at least one up."""
        statefulset = by_kind("StatefulSet")[0]
        budget = by_kind("PodDisruptionBudget")[0]["spec"]
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        assert budget.get("maxUnavailable", 0) < statefulset["spec"]["replicas"]
