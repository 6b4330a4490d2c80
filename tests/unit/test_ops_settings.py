"""The ops port and the API docs switch (settings and the apps they build; no I/O)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from services.dispatcher.settings import DispatcherSettings
from services.ingest.settings import IngestSettings
from services.reports.settings import ReportsSettings
from services.scheduler.settings import SchedulerSettings
from shared.api import docs_routes, ops_app


def paths(app: FastAPI) -> set[str]:
    return {getattr(route, "path", "") for route in app.routes}


def test_every_service_has_an_ops_port_of_its_own_and_no_docs_by_default(monkeypatch) -> None:
    for name in ("HERALD_HTTP_PORT", "HERALD_OPS_PORT", "HERALD_API_DOCS"):
        monkeypatch.delenv(name, raising=False)
    built = [IngestSettings(), SchedulerSettings(), DispatcherSettings(), ReportsSettings()]
    assert [s.ops_port for s in built] == [38180, 38181, 38182, 38183]
    assert (built[0].http_port, built[3].http_port) == (38080, 38083)
    assert not any(s.api_docs for s in built)


def test_the_ops_port_cannot_be_the_api_port() -> None:
    with pytest.raises(ValidationError, match="HERALD_OPS_PORT must differ"):
        IngestSettings(http_port=38080, ops_port=38080)


def test_docs_routes_switch_the_docs_on_and_off() -> None:
    assert not {"/docs", "/redoc", "/openapi.json"} & paths(FastAPI(**docs_routes(False)))
    assert {"/docs", "/redoc", "/openapi.json"} <= paths(FastAPI(**docs_routes(True)))


def test_the_ops_app_has_the_ops_routes_only() -> None:
    async def ready() -> dict[str, bool]:
        return {"database": True}

    assert paths(ops_app("x", ready)) == {"/healthz", "/readyz", "/metrics"}
