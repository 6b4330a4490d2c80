"""HTTP pieces every service shares: error format, auth dependency, the API docs switch, and
the ops routes (health and metrics), which are served on a port of their own (shared/service.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import AuthError, Principal, authenticate
from shared.errors import CATALOGUE, codes_by_status, field_errors, top_level_code
from shared.http_guard import principal_from_scope


class ApiError(Exception):
    """Raise from a route to answer ``{"error": {"code", "message", "details"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or []
        self.headers = headers


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def is_json_media_type(value: str) -> bool:
    """``application/json`` or a ``+json`` type, any parameters (charset) aside."""
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def unsupported_media_type(request: Request) -> ApiError | None:
    """The 415 for a JSON route whose request does not say ``application/json`` (missing or
    another type), or None when it does."""
    value = request.headers.get("content-type")
    if value is not None and is_json_media_type(value):
        return None
    media = (value or "").split(";", 1)[0].strip()[:100] or "no Content-Type"
    return ApiError(415, "unsupported_media_type", f"this route takes application/json, not {media!r}")


def require_json(request: Request) -> None:
    """For routes that read their JSON body themselves: raise the 415 unless it is JSON."""
    error = unsupported_media_type(request)
    if error is not None:
        raise error


def document_errors(app: FastAPI) -> None:
    """The OpenAPI document lists the error catalogue: ``components.schemas.Error`` with every
    code (status and meaning in the description), and each operation's error answers refer to it,
    with the codes of their status (a JSON body's route also documents its 415)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        table = "\n".join(
            f"- {status}: " + ", ".join(f"`{c}`" for c in codes) for status, codes in codes_by_status().items()
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Error"] = {
            "type": "object",
            "required": ["error"],
            "description": "An error answer. Codes by HTTP status (meanings in docs/errors.md):\n" + table,
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "enum": sorted(CATALOGUE)},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"loc": {"type": "string"}, "code": {"type": "string"}, "msg": {"type": "string"}},
                    }},
                },
            }},
        }
        by_status = codes_by_status()
        ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                for status, answer in list(responses.items()):
                    if status.isdigit() and int(status) >= 400:
                        codes = by_status.get(int(status), [])
                        answer["description"] = "Error; the codes this status carries: " + ", ".join(f"`{c}`" for c in codes) \
                            if codes else answer.get("description", "Error")
                        answer["content"] = ref
                body = ((operation.get("requestBody") or {}).get("content") or {})
                if body and all(is_json_media_type(m) for m in body):
                    responses.setdefault("415", {"description": "Error; `error.code` is `unsupported_media_type`",
                                                 "content": ref})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_body_schema(app: FastAPI, path: str, schema: dict[str, Any]) -> None:
    """Show ``schema`` as ``POST path``'s JSON body in this app's document only: for a route of a
    shared router whose documented body depends on a setting (a batch's ``maxItems``), since
    routers, and their routes' ``openapi_extra``, are shared between apps."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = build()
        document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"] = schema
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI, on_invalid: Callable[[str], None] | None = None) -> None:
    """The one error shape for every answer. ``on_invalid`` hears the code of each request refused
    before a route ran (422 ``validation_failed`` / ``malformed_json``, 415): ingest counts them
    with the rejections its routes count themselves."""
    document_errors(app)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc), exc.details), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.code, str(exc)), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = field_errors(exc.errors())
        if request.method in ("POST", "PUT", "PATCH") and any(d["loc"].split(".")[0] == "body" for d in details):
            # FastAPI reads a body as JSON only when it says so: another (or no) content type
            # is a 415, not a confusing 422 about the body's shape
            wrong_type = unsupported_media_type(request)
            if wrong_type is not None:
                if on_invalid is not None:
                    on_invalid(wrong_type.code)
                return JSONResponse(error_body(wrong_type.code, str(wrong_type)), status_code=415)
        codes = {d["code"] for d in details}
        code = "malformed_json" if "json_invalid" in codes else top_level_code(details)
        if on_invalid is not None:
            on_invalid(code)
        return JSONResponse(error_body(code, "request is not valid", details), status_code=422)

    @app.exception_handler(Exception)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        # Database or broker away: a clear, retriable answer instead of a bare 500.
        from shared.kafka import is_transient

        if is_transient(exc):
            return JSONResponse(
                error_body("service_unavailable", "a dependency is unavailable, retry shortly"),
                status_code=503,
                headers={"Retry-After": "2"},
            )
        return JSONResponse(error_body("internal_error", "unexpected error"), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large"}.get(
            exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


def api_key_from(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


def principal_dependency(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency that authenticates the key and checks ``scope``."""

    async def dependency(request: Request) -> Principal:
        # Authenticated already, from the headers, by the RequestGuard (before the body was read)?
        principal = principal_from_scope(request.scope)
        if principal is None:
            keys = getattr(request.app.state, "keys", None)  # a KeyCache, where the service set one
            if keys is not None:
                principal = await keys.authenticate(api_key_from(request))
            else:
                principal = await authenticate(request.app.state.pool, api_key_from(request))
        principal.require(scope)
        return principal

    dependency.scope = scope  # type: ignore[attr-defined]  # read by the scope catalogue (docs/scopes.md)
    return dependency


Check = Callable[[], Awaitable[dict[str, bool]]]


def api_app(*, docs: bool, **kwargs: Any) -> FastAPI:
    """A public API's app: with ``docs``, /docs (Swagger UI), /redoc and /openapi.json, their
    scripts and styles served by the app itself from /docs/assets (fastapi-offline ships them),
    so the pages work offline and load nothing from a CDN; without, none of them.
    ``app.openapi()`` still builds the document in-process either way."""
    if docs:
        return FastAPIOffline(docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json",
                              static_url=DOCS_ASSETS, **kwargs)
    return FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **kwargs)


DOCS_ASSETS = "/docs/assets"


def ops_app(name: str, readiness: Check) -> FastAPI:
    """The app of the ops port: the ops routes and nothing else (no docs, no API)."""
    app = api_app(docs=False, title=f"Herald {name} ops")
    add_ops_routes(app, readiness)
    return app


def add_ops_routes(app: FastAPI, readiness: Check) -> None:
    """``/healthz`` (alive), ``/readyz`` (dependencies reachable) and ``/metrics``: for the ops
    port only (:func:`ops_app`); the metrics carry every tenant's volumes, never on the API port."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await readiness()
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
