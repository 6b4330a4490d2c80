"""docs/scopes.md is generated from the routes, and every route either needs a scope or says how
it is authenticated instead (no API route is open by accident)."""

from __future__ import annotations

from pathlib import Path

from herald_tools import scopedoc

DOC = Path(__file__).resolve().parents[2] / "docs" / "scopes.md"


def test_the_page_is_in_step_with_the_routes() -> None:
    assert DOC.read_text() == scopedoc.render(), "run: python -m herald_tools.scopedoc > docs/scopes.md"


def test_every_route_needs_a_scope_or_says_why_not() -> None:
    listed = {(m, p) for app in scopedoc.apps().values() for m, p, _ in scopedoc.routes(app)}
    open_routes = [(m, p) for app in scopedoc.apps().values() for m, p, scope in scopedoc.routes(app)
                   if not scope and (m, p) not in scopedoc.EXTRA]
    assert open_routes == [], "a route with no scope and no other authentication"
    assert set(scopedoc.EXTRA) <= listed, "an entry of EXTRA names no route"


def test_a_route_without_a_scope_would_be_reported() -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/oops")
    async def oops() -> dict[str, str]:
        return {}

    assert scopedoc.routes(app) == [("GET", "/v1/oops", "")]
    assert ("GET", "/v1/oops") not in scopedoc.EXTRA
