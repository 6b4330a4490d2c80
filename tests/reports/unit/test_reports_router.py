"""reports' routes live on a module-level router that takes the pool and its settings from the
app's state: it mounts alone, and create_app documents the same operations in the same order."""

from __future__ import annotations

from fastapi import FastAPI

from services.reports.api import create_app, router


def operations(app: FastAPI) -> list[tuple[str, str, str]]:
    return [(path, method, op["operationId"]) for path, item in app.openapi()["paths"].items()
            for method, op in item.items()]


def test_the_router_mounts_alone_and_create_app_keeps_its_operations_in_order() -> None:
    alone = FastAPI()
    alone.include_router(router)
    assert [p for p, _, _ in operations(alone)] == [
        "/v1/messages", "/v1/messages/export", "/v1/messages/{message_id}", "/v1/campaigns/{campaign_id}/report"]
    app = create_app(None, 0.01, search_timeout_ms=1234)
    assert operations(app) == operations(alone)
    assert (app.state.ab_alpha, app.state.search_timeout_ms) == (0.01, 1234)
