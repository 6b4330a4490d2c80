"""The HTTP trust boundary, before routing: body size per route, authentication from headers
before any body is read, and a bound on how long a body may take to arrive.

A FastAPI route reads and parses its JSON body before its dependencies run, so without this an
anonymous client could make a service hold and parse any amount of JSON before the 401. The
guard answers from the request line and headers alone where it can:

1. ``Content-Length`` over the route's limit: ``413 body_too_large`` at once.
2. A route that needs an API key: the key is authenticated from the headers (``401``/``403`` at
   once, nothing of the body read); the principal is kept in the scope for the route's
   dependency, so the key is looked up once.
3. While the route reads the body: more bytes than the limit (chunked bodies have no length)
   is ``413 body_too_large``; a body still arriving after ``body_timeout_s`` is
   ``408 body_timeout`` (a client trickling bytes cannot hold a request slot for minutes).

Connections in flight are bounded by uvicorn's ``limit_concurrency`` (``HERALD_HTTP_MAX_CONCURRENCY``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import AuthError, Principal

PRINCIPAL_SCOPE_KEY = "herald.principal"


@dataclass(frozen=True, slots=True)
class BodyRule:
    """Requests whose method and path match carry at most ``max_bytes`` of body."""

    methods: frozenset[str]
    path: re.Pattern[str]
    max_bytes: int
    timeout_s: float | None = None  # how long the body may take to arrive (None: the guard's default)

    @classmethod
    def of(cls, methods: str, path: str, max_bytes: int, timeout_s: float | None = None) -> BodyRule:
        return cls(frozenset(methods.split()), re.compile(path), max_bytes, timeout_s)


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Pure decisions: which limit applies, and whether a key is needed."""

    rules: Sequence[BodyRule]
    default_max_bytes: int
    keyless: Sequence[re.Pattern[str]]  # paths answered without an API key (callbacks, health, docs)
    keyed_prefix: str = "/v1/"

    def rule(self, method: str, path: str) -> BodyRule | None:
        return next((r for r in self.rules if method in r.methods and r.path.match(path)), None)

    def limit(self, method: str, path: str) -> int:
        rule = self.rule(method, path)
        return rule.max_bytes if rule else self.default_max_bytes

    def needs_key(self, path: str) -> bool:
        return path.startswith(self.keyed_prefix) and not any(p.match(path) for p in self.keyless)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body of this request is limited to {limit} bytes")


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


Authenticate = Callable[[str | None], Awaitable[Principal]]


def api_key_from_headers(headers: dict[bytes, bytes]) -> str | None:
    """The API key of ``Authorization: Bearer …`` (or ``X-Api-Key``), as shared.api reads it."""
    header = headers.get(b"authorization")
    if header:
        scheme, _, value = header.decode("latin-1").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key is not None else None


class RequestGuard:
    """ASGI middleware applying a :class:`GuardPolicy` (see the module docstring)."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy, authenticate: Authenticate, body_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.policy = policy
        self.authenticate = authenticate
        self.body_timeout_s = body_timeout_s
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        rule = self.policy.rule(method, path)
        limit = rule.max_bytes if rule else self.policy.default_max_bytes
        timeout_s = rule.timeout_s if rule and rule.timeout_s is not None else self.body_timeout_s
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "bad_content_length", "Content-Length is not a number")
                return
            if declared > limit:
                await _answer(send, 413, "body_too_large", f"the body of this request is limited to {limit} bytes")
                return
        if self.policy.needs_key(path):
            try:
                scope[PRINCIPAL_SCOPE_KEY] = await self.authenticate(api_key_from_headers(headers))
            except AuthError as exc:
                extra = {"www-authenticate": "Bearer"} if exc.status == 401 else {}
                await _answer(send, exc.status, exc.code, str(exc), extra)
                return
        await self.app(scope, self._bounded(receive, limit, timeout_s), send)

    def _bounded(self, receive: Receive, limit: int, timeout_s: float) -> Receive:
        deadline = self.clock() + timeout_s
        received = 0

        async def bounded() -> Message:
            nonlocal received
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise BodyTimeout(timeout_s)
            try:
                async with asyncio.timeout(remaining):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return bounded


async def _answer(send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    """An error in Herald's format, sent before the application (or any body) is touched."""
    body = json.dumps({"error": {"code": code, "message": message, "details": []}}).encode()
    raw: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body was not read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def principal_from_scope(scope: MutableMapping[str, Any]) -> Principal | None:
    return scope.get(PRINCIPAL_SCOPE_KEY)
