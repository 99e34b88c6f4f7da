"""deploy/rabbitmq/definitions.json imported as is into a virtual host of the test's own.

Only the vhost and the user get unique names (so that nothing on the shared broker is touched);
exchange and queue names, types, arguments, bindings and the policy are the file's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from yarl import URL

from tests.conftest import AMQP_URL

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"
# The password docs/deploy.md gives for the user definitions.json creates.
DOCUMENTED_PASSWORD = "servio"  # noqa: S105 - the published quickstart password, not a secret


@dataclass(frozen=True)
class ImportedBroker:
    vhost: str
    user: str
    amqp_url: str


def rewritten(doc: dict[str, Any], vhost: str, user: str) -> dict[str, Any]:
    """The definitions with every vhost and the user renamed; nothing else changed."""
    (original_user,) = doc["users"]
    out = json.loads(json.dumps(doc))
    out["vhosts"] = [{"name": vhost}]
    out["users"] = [{**original_user, "name": user}]
    out["permissions"] = [{**p, "user": user, "vhost": vhost} for p in doc["permissions"]]
    for kind in ("exchanges", "queues", "bindings", "policies", "parameters"):
        out[kind] = [{**item, "vhost": vhost} for item in doc.get(kind, [])]
    return out


def import_into_broker(definitions: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    # Through stdin: Debian's rabbitmqctl runs as the rabbitmq user, who cannot read pytest's tmp.
    return subprocess.run(
        ["rabbitmqctl", "-q", "import_definitions", "--format", "json"],
        input=json.dumps(definitions),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@contextmanager
def imported_definitions() -> Iterator[ImportedBroker]:
    """Import the definitions with ``rabbitmqctl import_definitions``; delete vhost and user after."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH: cannot import definitions into the broker")
    host = URL(AMQP_URL)
    if host.host not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("rabbitmqctl reaches the local node only; TEST_AMQP_URL points elsewhere")
    name = f"test-{uuid.uuid4().hex[:12]}"
    vhost, user = name, f"{name}-servio"
    result = import_into_broker(rewritten(json.loads(DEFINITIONS.read_text()), vhost, user))
    try:
        assert result.returncode == 0, f"import_definitions failed: {result.stdout}{result.stderr}"
        url = f"amqp://{user}:{DOCUMENTED_PASSWORD}@{host.host}:{host.port or 5672}/{quote(vhost, safe='')}"
        yield ImportedBroker(vhost, user, url)
    finally:
        # The two deletions are independent: run them side by side.
        procs = [
            subprocess.Popen(
                ["rabbitmqctl", "-q", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for args in (("delete_vhost", vhost), ("delete_user", user))
        ]
        for proc in procs:
            proc.wait(timeout=60)
