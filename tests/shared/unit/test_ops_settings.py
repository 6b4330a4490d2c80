"""The ops port and the API docs switch (settings and the apps they build; no I/O)."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.dispatcher.settings import DispatcherSettings
from services.ingest.settings import IngestSettings
from services.reports.settings import ReportsSettings
from services.scheduler.settings import SchedulerSettings
from shared.api import api_app, ops_app


def paths(app: FastAPI) -> set[str]:
    return {getattr(route, "path", "") for route in app.routes}


def test_every_service_has_an_ops_port_of_its_own_and_no_docs_by_default(monkeypatch) -> None:
    for name in ("HERALD_HTTP_PORT", "HERALD_OPS_PORT", "HERALD_API_DOCS"):
        monkeypatch.delenv(name, raising=False)
    built = [IngestSettings(), SchedulerSettings(), DispatcherSettings(), ReportsSettings()]
    assert [s.ops_port for s in built] == [28180, 28181, 28182, 28183]
    assert (built[0].http_port, built[3].http_port) == (28080, 28083)
    assert not any(s.api_docs for s in built)


def test_the_ops_port_cannot_be_the_api_port() -> None:
    with pytest.raises(ValidationError, match="HERALD_OPS_PORT must differ"):
        IngestSettings(http_port=28080, ops_port=28080)


def test_the_docs_switch_turns_the_docs_on_and_off() -> None:
    assert not {"/docs", "/redoc", "/openapi.json", "/docs/assets"} & paths(api_app(docs=False))
    assert {"/docs", "/redoc", "/openapi.json", "/docs/assets"} <= paths(api_app(docs=True))


def test_the_docs_pages_load_nothing_from_elsewhere() -> None:
    """Swagger UI and ReDoc work offline: every script, style and icon the pages name is served
    by the app itself."""
    client = TestClient(api_app(docs=True, title="t"))
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/docs/assets/") for a in assets), (page, assets)
        assert "http://" not in html and "https://" not in html, page
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 1000, asset


def test_the_ops_app_has_the_ops_routes_only() -> None:
    async def ready() -> dict[str, bool]:
        return {"database": True}

    assert paths(ops_app("x", ready)) == {"/healthz", "/readyz", "/metrics"}
