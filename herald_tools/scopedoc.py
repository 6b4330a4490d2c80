"""docs/scopes.md: which API key scope each endpoint of ingest's and reports' APIs needs,
read from the routes themselves (the scope of each route's ``principal_dependency``), so the
page cannot drift from the code. ``python -m herald_tools.scopedoc > docs/scopes.md``; a test
fails when they differ."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts

from shared.auth import DEFAULT_SCOPES, SCOPES

# What a route checks beyond its dependency's scope (inside the handler), or how a keyless route
# is authenticated instead. A test checks every entry names a route that exists.
EXTRA: dict[tuple[str, str], str] = {
    ("POST", "/v1/journeys"): "and `messages:write` when the journey has a send step",
    ("PUT", "/v1/journeys/{journey_id}"): "and `messages:write` when the journey has a send step",
    ("POST", "/v1/receipts/{gateway}"): "none: the gateway's signature (`X-Herald-Signature`, `HERALD_RECEIPT_SECRETS`)",
    ("POST", "/v1/callbacks/twilio/{gateway}/status"): "none: Twilio's signature (`X-Twilio-Signature`)",
    ("POST", "/v1/callbacks/twilio/{gateway}/inbound"): "none: Twilio's signature (`X-Twilio-Signature`)",
    ("GET", "/l/{code}"): "none: the public short-link redirect",
    ("HEAD", "/l/{code}"): "none: the public short-link redirect",
}


def _scopes(dependant: Any) -> set[str]:
    found: set[str] = set()
    for sub in dependant.dependencies:
        scope = getattr(sub.call, "scope", None)
        if isinstance(scope, str):
            found.add(scope)
        found |= _scopes(sub)
    return found


def routes(app: Any) -> list[tuple[str, str, str]]:
    """(method, path, scope or '') of every API route of ``app``, in the app's order."""
    out = []
    for context in iter_route_contexts(app.routes):  # routes of included routers too
        route = context.route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        scopes = sorted(_scopes(route.dependant))
        for method in sorted(context.methods or ()):
            out.append((method, context.path, ", ".join(f"`{s}`" for s in scopes)))
    return out


def apps() -> dict[str, Any]:
    """Ingest's app as its wiring builds it (create_app, then the routers services/ingest/app.py
    mounts after it), and reports'."""
    from services.ingest import app as ingest_wiring
    from services.ingest.api import create_app as ingest_app
    from services.ingest.settings import IngestSettings
    from services.reports.api import create_app as reports_app

    ingest = ingest_app(IngestSettings(), None, None, None, None)  # type: ignore[arg-type]
    for router in ingest_wiring.LATE_ROUTERS:
        ingest.include_router(router)
    return {"ingest": ingest, "reports": reports_app(None)}  # type: ignore[arg-type]


def render() -> str:
    lines = [
        "# API key scopes",
        "",
        "Generated from the routes by `python -m herald_tools.scopedoc > docs/scopes.md`; a test fails when",
        "they differ.",
        "",
        "Every request to `/v1/…` carries an API key (`Authorization: Bearer hk_…`), checked from the",
        "headers before the body is read; a key without the scope a route needs gets `403",
        "insufficient_scope`. Keys are made with `herald admin key create TENANT --scopes a,b` (an",
        "unknown scope is refused with the list of valid ones).",
        "",
        f"Scopes: {', '.join(f'`{s}`' for s in SCOPES)}.",
        f"A new key (and a tenant's first key) gets {', '.join(f'`{s}`' for s in DEFAULT_SCOPES)}.",
        "Not among them, so given on purpose: "
        + ", ".join(f"`{s}`" for s in SCOPES if s not in DEFAULT_SCOPES)
        + " (`policy:write` changes the tenant's consent mode, caps and reply webhook;"
        " `contacts:export` reads everything Herald holds about a number, texts and codes included).",
        "",
    ]
    for name, app in apps().items():
        lines += [f"## {name}", "", "| method | path | scope |", "| --- | --- | --- |"]
        for method, path, scope in routes(app):
            extra = EXTRA.get((method, path), "")
            shown = f"{scope} {extra}".strip() if scope else (extra or "none")
            lines.append(f"| {method} | `{path}` | {shown} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
