"""HTTP pieces every service shares: error format, auth dependency, health and metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import AuthError, Principal, authenticate
from shared.errors import field_errors
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc), exc.details), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(exc.code, str(exc)), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = field_errors(exc.errors())
        codes = {d["code"] for d in details}
        code = "malformed_json" if "json_invalid" in codes else "validation_failed"
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

    return dependency


Check = Callable[[], Awaitable[dict[str, bool]]]


def add_ops_routes(app: FastAPI, readiness: Check) -> None:
    """``/healthz`` (alive), ``/readyz`` (dependencies reachable) and ``/metrics``."""

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
