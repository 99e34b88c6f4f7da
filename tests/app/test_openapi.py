"""The OpenAPI 3.1 document: kept in the repo, served at /openapi.json, and true of the live app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings

from bridge.http.app import build_app
from bridge.service import runner_options
from bridge.settings import Settings
from tests.app.recording_sink import RecordingSink

TOKEN = "openapi-token-0123456789"  # noqa: S105 - a made-up token of this test
DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    """The app with a token set, on a real port (schemathesis talks plain HTTP to it)."""
    bridge_settings = Settings(spool_dir=None, token=TOKEN, max_ids=1000)
    server = TestServer(build_app(bridge_settings, RecordingSink()), host="127.0.0.1")
    await server.start_server(**runner_options(bridge_settings))
    test_client: TestClient[Any, Any] = TestClient(server)
    await test_client.start_server()
    yield test_client
    await test_client.close()


class TestDocument:
    async def test_served_document_is_the_one_in_the_repo(self, client: TestClient[Any, Any]) -> None:
        """GET /openapi.json answers the OpenAPI 3.1 document kept at docs/openapi.json."""
        response = await client.get("/openapi.json")
        assert response.status == 200
        served = await response.json()
        assert served == json.loads(DOCUMENT.read_text())
        assert served["openapi"].startswith("3.1")

    async def test_every_route_is_documented(self, client: TestClient[Any, Any]) -> None:
        """Each route the app answers appears in the document with its method, and nothing more."""
        app = client.server.app
        assert app is not None
        routes = {
            (route.method.lower(), route.resource.canonical.replace("{source:" + "", "{source"))
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
        routes = {(m, p.split("}")[0] + "}" if "{source" in p else p) for m, p in routes}
        documented = {
            (method, path)
            for path, item in json.loads(DOCUMENT.read_text())["paths"].items()
            for method in item
        }
        assert routes == documented


def run_schemathesis(base_url: str, examples: int, auth: dict[str, str]) -> int:
    """Generated requests against the live app, each validated against the document.

    With our own token in the request, ``ignored_auth`` would count the generated (wrong) query
    token beside it as ignored auth; the run without a token is where refusal is checked.
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    calls = 0

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy())
    def check(case: schemathesis.Case) -> None:
        nonlocal calls
        with requests.Session() as session:
            response = case.call_and_validate(
                base_url=base_url,
                session=session,
                headers=dict(auth),
                excluded_checks=[schemathesis.checks.ignored_auth] if auth else [],
            )
        calls += 1
        assert response.status_code < 500

    check()
    return calls


class TestLiveAppConformsToDocument:
    @pytest.mark.timeout(60)
    @pytest.mark.parametrize(
        "auth",
        [{"Authorization": f"Bearer {TOKEN}"}, {}],
        ids=["with-token", "without-token"],
    )
    async def test_schemathesis_finds_no_5xx_and_no_mismatch(
        self, client: TestClient[Any, Any], auth: dict[str, str]
    ) -> None:
        """Schemathesis' generated requests get no 5xx and answers that match the document."""
        base_url = str(client.make_url("")).rstrip("/")
        calls = await asyncio.to_thread(run_schemathesis, base_url, 150, auth)
        assert calls > 0
